"""Run requests: vak's arguments validated once, with messages that name what was wrong."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from spectroflow.params import SpectParams
from spectroflow.request import AnnotatedFiles, Files, Folder, RunRequest, source_at

from conftest import DATA


def test_vak_arguments_become_one_request():
    request = RunRequest.from_vak("cbin", {"fft_size": 1024, "step_size": 128}, "out",
                                  audio_dir="audio", annot_format="notmat",
                                  annot_list=["a.not.mat"], labelset="range: 1-3, 5",
                                  storage_options={"anon": True})
    assert request.source == Folder(folder="audio")
    assert request.spect_params == SpectParams(fft_size=1024, step_size=128)
    assert request.labelset == frozenset({"1", "2", "3", "5"})
    spec = request.batch_spec()
    assert (spec.destination.url, spec.destination.options) == ("out", {"anon": True})
    assert spec.locate("audio/x.cbin").options == {"anon": True}
    assert RunRequest.from_vak("wav", None, "out", audio_files=["a.wav"]).spect_params == SpectParams()


@pytest.mark.parametrize(("arguments", "message"), [
    (dict(), "give exactly one of audio_dir, audio_files, audio_annot_map; got \\[\\]"),
    (dict(audio_dir="a", audio_files=["b.wav"]), "exactly one of .* got \\['audio_dir', 'audio_files'\\]"),
    (dict(audio_files=["a.wav", "b.WAV", "c.flac"]), "do not all end in .wav: \\['c.flac'\\]"),
    (dict(audio_dir="a", annot_list=["a.csv"]), "annot_format is required"),
    (dict(audio_annot_map={"a.wav": "a.csv"}), "annot_format is required"),
    (dict(audio_annot_map={"a.wav": "a.csv"}, annot_list=["a.csv"], annot_format="simple-seq"),
     "annot_list or audio_annot_map, not both"),
    (dict(audio_dir="a", annot_format="no-such-format"), "no-such-format"),
    (dict(audio_dir="a", labelset=[["nested"]]), "labelset items must be str or int"),
    (dict(audio_dir="a", spect_params={"fft_size": 0}), "fft_size"),
])
def test_bad_arguments_fail_naming_the_problem(arguments, message):
    with pytest.raises(ValueError, match=message):
        RunRequest.from_vak("wav", arguments.pop("spect_params", None), "out", **arguments)


def test_an_unknown_audio_format_names_the_known_ones():
    with pytest.raises(ValidationError, match=r"audio_format\n.*'cbin', 'flac', 'ogg' or 'wav'"):
        RunRequest(source=Folder(folder="a"), destination="out", audio_format="mp3")


def test_crowsetta_objects_need_no_annot_format():
    crowsetta = pytest.importorskip("crowsetta")
    annot = crowsetta.Annotation(annot_path="a.csv", notated_path="a.wav",
                                 seq=crowsetta.Sequence.from_keyword(labels=["a"], onsets_s=[0.1],
                                                                     offsets_s=[0.2]))
    request = RunRequest.from_vak("wav", None, "out", audio_annot_map={"a.wav": annot})
    assert isinstance(request.source, AnnotatedFiles) and request.annot_format is None


def test_a_flow_source_is_a_folder_a_file_or_a_list(tmp_path):
    wav = DATA / "birdsongrec" / "Bird0" / "Wave" / "0.wav"
    assert source_at(str(wav.parent)) == Folder(folder=str(wav.parent))
    assert source_at(str(wav)) == Files(files=[str(wav)])
    assert source_at([str(wav), "b.wav"]) == Files(files=[str(wav), "b.wav"])
    with pytest.raises(Exception, match="does not exist"):
        source_at(str(tmp_path / "missing"))


def test_vak_arguments_by_position_or_name_and_nothing_else():
    by_position = RunRequest.from_vak("wav", None, "out", "audio", None, ["a.csv"], None,
                                      "simple-seq", "ab", {"anon": True})
    by_name = RunRequest.from_vak("wav", None, "out", audio_dir="audio", annot_list=["a.csv"],
                                  annot_format="simple-seq", labelset="ab",
                                  storage_options={"anon": True})
    assert by_position == by_name and by_name.annotations == ["a.csv"]
    with pytest.raises(TypeError, match="unexpected arguments \\['audio_folder'\\]"):
        RunRequest.from_vak("wav", None, "out", audio_folder="audio")
    with pytest.raises(TypeError, match="given twice: \\['audio_dir'\\]"):
        RunRequest.from_vak("wav", None, "out", "audio", audio_dir="audio")
