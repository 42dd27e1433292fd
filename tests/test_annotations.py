
import pytest

import spectroflow
from spectroflow import annotations
from spectroflow.discovery import discover
from spectroflow.plan import plan_run, prepare
from spectroflow.request import Folder, RunRequest

from conftest import DATA, fresh_python

BIRD0 = DATA / "birdsongrec" / "Bird0"
GY6OR6 = DATA / "gy6or6" / "032312"


def test_one_xml_is_mapped_to_each_recording_and_orphans_reported():
    loaded = annotations.load(str(BIRD0 / "Annotation.xml"), "birdsong-recognition-dataset")
    wavs = [str(p) for p in sorted((BIRD0 / "Wave").glob("*.wav"))]
    matched, orphans = annotations.match(wavs, loaded)
    assert len(wavs) == 20 and all(isinstance(m, annotations.Annotated) for m in matched.values())
    assert len(orphans) == len(loaded) - 20
    assert matched[str(BIRD0 / "Wave" / "0.wav")].labels <= set("0123456789")


def _plan(audio_root, audio_format, annot_files, annot_format, labelset, tmp_path):
    request = RunRequest(source=Folder(folder=str(audio_root)), destination=str(tmp_path),
                         audio_format=audio_format, labelset=labelset)
    files = list(discover(request))  # read twice below
    loaded = [a for f in annot_files for a in annotations.load(str(f), annot_format)]
    matched, _ = annotations.match([f.url for f in files], loaded)
    return plan_run(files, request, matched)


def test_notmat_labelset_keeps_or_skips_every_file_as_vak(tmp_path):
    notmats = sorted(GY6OR6.glob("*.not.mat"))
    keep = _plan(GY6OR6, "cbin", notmats, "notmat", "iabcdefghjk", tmp_path)
    assert len(keep.work) == 6 and not keep.decided
    skip = _plan(GY6OR6, "cbin", notmats, "notmat", "iabcdefghj", tmp_path)
    assert not skip.work and {r.status for r in skip.decided} == {"skipped"}
    assert all("'k'" in r.reason for r in skip.decided)


def test_labels_outside_labelset_are_skipped_and_named(tmp_path, caplog):
    caplog.set_level("INFO", logger="spectroflow")
    plan = _plan(BIRD0, "wav", [BIRD0 / "Annotation.xml"], "birdsong-recognition-dataset", "01234567", tmp_path)
    skipped = [r for r in plan.decided if r.status == "skipped"]
    assert skipped and len(skipped) + len(plan.work) == 20
    assert all("['8']" in r.reason or "'9'" in r.reason for r in skipped)
    assert any("skipped" in m and "are not in the labelset" in m for m in caplog.messages)


def test_recording_without_annotation_fails_when_annotations_required(tmp_path):
    notmats = sorted(GY6OR6.glob("*.not.mat"))[1:]
    plan = _plan(GY6OR6, "cbin", notmats, "notmat", None, tmp_path)
    assert len(plan.work) == 5
    [failed] = plan.decided
    assert failed.status == "failed" and "no annotation" in failed.reason
    assert failed.source.endswith("0808.138.cbin")


def test_malformed_annotation_file_names_file_and_format(tmp_path):
    bad = tmp_path / "x.wav.csv"
    bad.write_text("this is, not\na generic-seq file\n")
    with pytest.raises(annotations.AnnotationError, match=r"x\.wav\.csv"):
        annotations.load(str(bad), "generic-seq")


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown annotation format"):
        annotations.suffixes("not-a-format")


def test_same_name_in_two_folders_takes_the_nearest_annotation(tmp_path):
    a = annotations.Annotated("0", frozenset("a"), f"{tmp_path}/A/Annotation.xml", f"{tmp_path}/A/Wave/0.wav")
    b = annotations.Annotated("0", frozenset("b"), f"{tmp_path}/B/Annotation.xml", f"{tmp_path}/B/Wave/0.wav")
    matched, orphans = annotations.match([f"{tmp_path}/A/Wave/0.wav", f"{tmp_path}/B/Wave/0.wav"], [a, b])
    assert matched[f"{tmp_path}/A/Wave/0.wav"] is a and matched[f"{tmp_path}/B/Wave/0.wav"] is b
    assert orphans == []


def test_annotation_objects_from_the_caller_decide_as_their_files_do(tmp_path):
    import crowsetta

    notmats = sorted(GY6OR6.glob("*.not.mat"))
    objects = [crowsetta.Transcriber(format="notmat").from_file(f).to_annot() for f in notmats]
    common = dict(audio_format="cbin", spect_params=None, output_dir=str(tmp_path),
                  labelset="iabcdefghj")
    by_files = prepare(RunRequest.from_vak(**common, audio_dir=str(GY6OR6),
                                           annot_list=[str(f) for f in notmats],
                                           annot_format="notmat"))
    by_objects = prepare(RunRequest.from_vak(**common, audio_dir=str(GY6OR6), annot_list=objects))
    mapping = {str(GY6OR6 / a.notated_path.name): a for a in objects}
    by_map = prepare(RunRequest.from_vak(**common, audio_annot_map=mapping))

    def outcomes(plan):
        return sorted((r.source, r.status) for r in plan.decided)

    assert outcomes(by_files) and {s for _, s in outcomes(by_files)} == {"skipped"}
    assert outcomes(by_objects) == outcomes(by_files) == outcomes(by_map)


def test_workers_computing_spectrograms_never_import_crowsetta():
    # A fresh interpreter: this one has imported crowsetta already.
    code = ("import sys, spectroflow.orchestration.tasks, spectroflow.pipeline; "
            "print(sorted({'crowsetta', 'pandas'} & set(sys.modules)))")
    assert fresh_python(code) == "[]"


def test_a_folder_in_annot_list_is_searched_as_the_readme_shows(tmp_path):
    """The README's library example, on local copies: a folder of .not.mat files in
    ``annot_list`` (before, every recording failed and the call returned [] silently)."""
    paths = spectroflow.make_spectrogram_files(
        "cbin", {}, str(tmp_path / "out"), audio_dir=str(GY6OR6),
        annot_list=[str(GY6OR6)], annot_format="notmat", labelset="iabcdefghjk",
        scheduler="threads")
    assert len(paths) == 6


def test_a_call_that_writes_nothing_raises_naming_why(tmp_path):
    with pytest.raises(spectroflow.NothingWrittenError,
                       match=r"no spectrogram file was written: 6 recordings failed, e\.g\. .*"
                             r"annotation required but no annotation names this recording"):
        spectroflow.make_spectrogram_files(
            "cbin", {}, str(tmp_path / "out"), audio_dir=str(GY6OR6),
            annot_list=[str(tmp_path)], annot_format="notmat", scheduler="threads")
