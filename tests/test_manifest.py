"""The dataset manifest: vak's columns, rows that resolve, incremental and concurrent updates."""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from pathlib import Path

import crowsetta
import numpy as np
import pytest
import soundfile
import zarr
from typer.testing import CliRunner

import spectroflow
from spectroflow import manifest
from spectroflow.cli import app
from spectroflow.params import SpectParams
from spectroflow.report import FileResult
from spectroflow.storage import Location

from conftest import sample_path, some_wavs


def _csv_rows(destination: Location) -> list[dict[str, str]]:
    """The manifest file's own rows (without the journal's, which :func:`_rows` includes)."""
    text = destination.join(manifest.MANIFEST_NAME).read_bytes().decode()
    return list(csv.DictReader(io.StringIO(text)))


def _rows(destination) -> dict[str, dict[str, str]]:
    return {row["audio_path"]: row for row in manifest.read(destination)}


def vak_timebin_dur(t: np.ndarray) -> float:
    """The oracle: vak 1.1.0's ``vak.common.timebins.timebin_dur_from_vec``, as vak wrote it."""
    timebin_dur = np.around(np.mean(np.diff(t)), decimals=5)
    decade = 10**5
    return float(np.trunc(timebin_dur * decade) / decade)


def test_rows_hold_vaks_columns_resolve_and_match_the_time_bins(sample_copy, tmp_path):
    audio = sample_copy / "gy6or6" / "032312"
    notmats = sorted(str(p) for p in audio.glob("*.not.mat"))
    out = tmp_path / "spect"
    # The first recording's annotation is left out: annotations are required, so it fails.
    summary = spectroflow.run("cbin", {}, str(out), audio_dir=str(audio), annot_list=notmats[1:],
                              annot_format="notmat", labelset="iabcdefghjk", scheduler="threads")
    assert summary.counts == {"written": 5, "failed": 1}
    assert summary.manifest == str(out / manifest.MANIFEST_NAME)
    with open(summary.manifest, newline="") as fh:
        assert tuple(next(csv.reader(fh))) == manifest.COLUMNS
    recordings = sorted(str(p) for p in audio.glob("*.cbin"))
    assert [r["audio_path"] for r in manifest.read(out)] == recordings, "a row each, in order"
    rows = _rows(out)
    failed = rows.pop(recordings[0])
    assert failed["status"] == "failed" and "annotation required" in failed["reason"]
    assert failed["spect_path"] == failed["annot_path"] == failed["duration"] == ""
    for audio_path, row in rows.items():
        assert row["status"] == "ok" and row["reason"] == ""
        assert (row["annot_path"], row["annot_format"]) == (audio_path + ".not.mat", "notmat")
        assert row["fingerprint"] == SpectParams().fingerprint()
        with np.load(row["spect_path"]) as npz:  # the path resolves on the same storage
            assert str(npz["audio_path"]) == audio_path
            t = npz["t"]
        # vak's CSV: timebin_dur from the time bins, duration theirs all.
        assert row["timebin_dur"] == repr(vak_timebin_dur(t)) == "0.002"
        assert row["duration"] == repr(len(t) * vak_timebin_dur(t))
    metadata = json.loads((out / manifest.METADATA_NAME).read_text())
    assert metadata["spect_params"] == SpectParams().model_dump(mode="json")
    assert metadata["spectroflow_version"] == spectroflow.__version__
    assert metadata["audio_format"] == "cbin" and metadata["manifest"] == manifest.MANIFEST_NAME

    # Another labelset leaves every recording out ("k" is in every song): the rows say so.
    spectroflow.run("cbin", {}, str(out), audio_dir=str(audio), annot_list=notmats,
                    annot_format="notmat", labelset="iabcdefghj", scheduler="threads")
    for audio_path, row in _rows(out).items():
        assert row["status"] == "skipped" and "not in the labelset" in row["reason"]
        assert row["annot_path"] == audio_path + ".not.mat" and row["spect_path"] == ""


def test_later_runs_update_their_rows_and_keep_the_others(sample_copy, tmp_path):
    audio = sample_copy / "gy6or6" / "032312"
    out = tmp_path / "spect"
    spectroflow.run("cbin", {}, str(out), audio_dir=str(audio), scheduler="threads")
    first = _rows(out)
    assert len(first) == 6 and {r["status"] for r in first.values()} == {"ok"}

    # One recording changes and a run over it alone recomputes it with other parameters.
    changed = sorted(audio.glob("*.cbin"))[2]
    os.utime(changed, (1e9, 1e9))
    summary = spectroflow.run("cbin", {"fft_size": 1024, "step_size": 128}, str(out),
                              audio_files=[str(changed)], scheduler="threads")
    assert summary.counts == {"written": 1}
    second = _rows(out)
    assert {k: v for k, v in second.items() if k != str(changed)} == \
        {k: v for k, v in first.items() if k != str(changed)}, "rows it did not see are kept"
    row = second[str(changed)]
    assert row["fingerprint"] == SpectParams(fft_size=1024, step_size=128).fingerprint()
    assert float(row["timebin_dur"]) == pytest.approx(2 * float(first[str(changed)]["timebin_dur"]))

    # A manifest lost (or made for outputs of an earlier version) is rebuilt from the outputs.
    (out / manifest.MANIFEST_NAME).unlink()
    summary = spectroflow.run("cbin", {}, str(out), audio_dir=str(audio), scheduler="threads")
    assert summary.counts == {"up_to_date": 5, "written": 1}
    third = _rows(out)
    assert third.keys() == first.keys()
    for audio_path, row in third.items():
        for column in ("duration", "timebin_dur"):
            assert float(row[column]) == pytest.approx(float(first[audio_path][column]), rel=1e-12)


@pytest.mark.parametrize(("samplerate", "step_size"), [(44100, 64), (8000, 441), (48000, 100)])
def test_durations_are_vaks_whatever_the_rate_written_read_back_or_migrated(
        tmp_path, samplerate, step_size):
    """vak rounds, then truncates, the mean step of the time bins: at 44.1 kHz 0.00145 s (the
    step is 0.0014512 s), at 8 kHz a step of 441 samples rounds up (0.05513 s), at 48 kHz with
    100 the truncation takes a unit off (0.00207 s)."""
    wav = tmp_path / "audio" / "a.wav"
    wav.parent.mkdir()
    soundfile.write(wav, np.random.default_rng(0).uniform(-0.5, 0.5, samplerate), samplerate)
    out, params = tmp_path / "spect", {"step_size": step_size}
    spectroflow.run("wav", params, str(out), audio_dir=str(wav.parent), scheduler="synchronous")
    (row,) = manifest.read(out)
    with np.load(row["spect_path"]) as npz:
        t = npz["t"]
    expected = {"timebin_dur": repr(vak_timebin_dur(t)),
                "duration": repr(len(t) * vak_timebin_dur(t))}
    assert vak_timebin_dur(t) != step_size / samplerate
    assert {k: row[k] for k in expected} == expected, "written"
    (out / manifest.MANIFEST_NAME).unlink()
    spectroflow.run("wav", params, str(out), audio_dir=str(wav.parent), scheduler="synchronous")
    (row,) = manifest.read(out)
    assert row["status"] == "ok" and {k: row[k] for k in expected} == expected, "read back"
    # A manifest of an earlier version, with the step at full precision.
    def full_precision(header, rows):
        for r in rows:
            r[header.index("timebin_dur")] = repr(step_size / samplerate)
            r[header.index("duration")] = repr(len(t) * step_size / samplerate)
        return header, rows

    _rewrite(out / manifest.MANIFEST_NAME, full_precision)
    spectroflow.run("wav", params, str(out), audio_dir=str(wav.parent), scheduler="synchronous")
    (row,) = manifest.read(out)
    assert {k: row[k] for k in expected} == expected, "migrated"


def test_every_path_is_absolute_or_a_url_however_the_run_was_named(sample_copy, monkeypatch):
    """Relative paths (as the command takes them), file:// URLs and crowsetta objects: each
    path column holds an absolute path, never a mix of forms."""
    monkeypatch.chdir(sample_copy)
    audio = "gy6or6/032312"
    names = sorted(p.name for p in (sample_copy / audio).glob("*.cbin"))
    absolute = str(sample_copy / audio)
    annots = [crowsetta.formats.seq.NotMat.from_file(f"{audio}/{n}.not.mat").to_annot()
              for n in names]
    runs = {
        "relative": dict(audio_dir=audio, annot_list=[audio]),
        "file:// URLs": dict(audio_dir=f"file://{absolute}", annot_list=[f"file://{absolute}"]),
        "relative map": dict(audio_annot_map={f"{audio}/{n}": f"{audio}/{n}.not.mat"
                                              for n in names}),
        "crowsetta objects": dict(audio_files=[f"{audio}/{n}" for n in names], annot_list=annots),
    }
    for i, (name, where) in enumerate(runs.items()):
        out = f"out{i}" if i % 2 == 0 else f"file://{sample_copy}/out{i}"
        summary = spectroflow.run("cbin", {}, out, **where, annot_format="notmat",
                                  labelset="iabcdefghjk", scheduler="threads")
        assert summary.counts == {"written": 6}, name
        for row in manifest.read(sample_copy / f"out{i}"):
            assert row["audio_path"] == f"{absolute}/{Path(row['audio_path']).name}", name
            assert row["spect_path"] == f"{sample_copy}/out{i}/{Path(row['audio_path']).name}.spect.npz"
            assert row["annot_path"] == row["audio_path"] + ".not.mat", name
    # The command: source and destination relative, annotations found under the source.
    result = CliRunner().invoke(app, ["run", audio, "cli", "--audio-format", "cbin",
                                      "--annot-format", "notmat", "--workers", "1"])
    assert result.exit_code == 0, result.output
    for row in manifest.read(sample_copy / "cli"):
        assert row["annot_path"] == row["audio_path"] + ".not.mat"
        assert Path(row["audio_path"]).is_absolute() and Path(row["spect_path"]).is_absolute()


def _destination(store: str, request, tmp_path) -> Location:
    """An empty destination, local or on moto's S3, whose manifest has one row."""
    if store == "s3":
        _, bucket = request.getfixturevalue("s3")
        destination = Location(url=f"s3://{bucket}/spect")
    else:
        destination = Location(url=str(tmp_path / "spect"))
    manifest.update(destination, lambda: [FileResult("/a/0.wav", "skipped", "by an earlier run")],
                    SpectParams(), "wav")
    return destination


def _written(name: str, frames: int = 100) -> FileResult:
    return FileResult(f"/a/{name}.wav", "written", output=f"/b/{name}.wav.spect.npz",
                      shape=(257, frames), samplerate=32000.0)


def _two_runs_at_once(destination: Location, caplog) -> list[BaseException]:
    """Runs "1" and "2" update the manifest from threads, both having read it before either
    replaces it; what they raised."""
    both_read = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(name: str) -> None:
        calls = []

        def results() -> list[FileResult]:
            if not calls:
                both_read.wait(timeout=60)
            calls.append(1)
            return [_written(name)]
        try:
            manifest.update(destination, results, SpectParams(), "wav")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("1", "2")]
    with caplog.at_level("INFO", logger="spectroflow.manifest"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    return errors


@pytest.mark.parametrize("store", ["local", "s3"])
def test_runs_finishing_at_once_lose_no_row(store, request, tmp_path, caplog):
    destination = _destination(store, request, tmp_path)
    assert not _two_runs_at_once(destination, caplog)
    assert any("merging again" in m for m in caplog.messages), "the runs did overlap"
    rows = _rows(destination)
    assert sorted(rows) == ["/a/0.wav", "/a/1.wav", "/a/2.wav"]
    assert rows["/a/1.wav"]["duration"] == repr(100 * 64 / 32000.0)
    assert rows["/a/0.wav"]["status"] == "skipped"
    if store == "local":
        assert [p.name for p in Path(destination.url).iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("store", ["local", "s3"])
def test_a_run_that_gives_up_merging_leaves_its_rows_to_readers_and_the_next_run(
        store, request, tmp_path, monkeypatch, caplog):
    destination = _destination(store, request, tmp_path)
    monkeypatch.setattr(manifest, "ATTEMPTS", 1)
    assert not _two_runs_at_once(destination, caplog)
    (waiting,) = [m for m in caplog.messages if "its rows wait in" in m]
    journal = destination.join(manifest.JOURNAL_DIR)
    (entry,) = journal.list_files((".jsonl",))
    assert entry.url in waiting
    csv_rows = _csv_rows(destination)
    assert len(csv_rows) == 2, "one run's rows are in the journal only"
    (journaled,) = {"/a/1.wav", "/a/2.wav"} - {r["audio_path"] for r in csv_rows}
    rows = _rows(destination)
    assert sorted(rows) == ["/a/0.wav", "/a/1.wav", "/a/2.wav"]
    assert rows["/a/1.wav"]["duration"] == rows["/a/2.wav"]["duration"] == repr(100 * 64 / 32000.0)

    # The next run merges the journal, its own rows last: the journaled recording, written
    # again, has the new row.
    again = _written(Path(journaled).stem, 200)
    manifest.update(destination, lambda: [again], SpectParams(), "wav")
    assert journal.kind() is None or journal.list_files((".jsonl",)) == []
    csv_rows = _csv_rows(destination)
    assert [r["audio_path"] for r in csv_rows] == ["/a/0.wav", "/a/1.wav", "/a/2.wav"]
    assert {r["audio_path"]: r["duration"] for r in csv_rows}[journaled] == repr(200 * 64 / 32000.0)
    assert _rows(destination) == {r["audio_path"]: r for r in csv_rows}


def test_a_long_journal_is_merged_in_passes_and_read_whatever_wrote_it(tmp_path, monkeypatch):
    destination = Location(url=str(tmp_path / "spect"))
    manifest.update(destination, lambda: [_written("0")], SpectParams(), "wav")
    monkeypatch.setattr(manifest, "DEFER_ABOVE_BYTES", 0)  # runs of events leave a journal
    for name in "12345":
        manifest.update(destination, lambda name=name: [_written(name)], SpectParams(), "wav",
                        defer=True)
    journal = Path(destination.url) / manifest.JOURNAL_DIR
    files = sorted(journal.iterdir())
    assert len(files) == 5 and all(f.suffix == ".jsonl" for f in files), "no lock files"
    # A journal another version wrote: a field this one does not know, one it added missing.
    lines = files[0].read_text().splitlines()
    result = json.loads(lines[1])
    del result["seconds"]
    files[0].write_text("\n".join([lines[0], json.dumps({**result, "later": 1})]) + "\n")
    expected = [f"/a/{n}.wav" for n in "012345"]
    assert [r["audio_path"] for r in manifest.read(destination)] == expected

    # More journal files than a merge takes: merged in passes, oldest first.
    monkeypatch.setattr(manifest, "DEFER_ABOVE_BYTES", 2**30)
    monkeypatch.setattr(manifest, "JOURNALS_AT_ONCE", 2)
    manifest.update(destination, lambda: [_written("6")], SpectParams(), "wav")
    assert list(journal.iterdir()) == []
    assert [r["audio_path"] for r in _csv_rows(destination)] == [*expected, "/a/6.wav"]


def test_annotation_files_and_missing_recordings_have_no_row(tmp_path):
    manifest.update(tmp_path, lambda: [
        FileResult("/a/1.wav", "missing_audio", "x.csv annotates 1.wav, which was not found"),
        FileResult("/a/x.csv", "failed", "not a csv", annot_path="/a/x.csv"),
        FileResult("/a/2.wav", "failed", "file is empty (0 bytes)"),
    ], SpectParams(), "wav")
    assert [(r["audio_path"], r["status"]) for r in manifest.read(tmp_path)] == [("/a/2.wav", "failed")]


def test_zarr_outputs_have_rows_that_resolve_and_durations_read_back(tmp_path):
    audio = sample_path("birdsongrec/Bird0/0.wav")
    out = tmp_path / "spect"
    spectroflow.run("wav", {"output_format": "zarr"}, str(out), audio_files=[str(audio)],
                    scheduler="synchronous")
    written = manifest.read(out)
    (out / manifest.MANIFEST_NAME).unlink()
    summary = spectroflow.run("wav", {"output_format": "zarr"}, str(out), audio_files=[str(audio)],
                              scheduler="synchronous")
    assert summary.counts == {"up_to_date": 1}
    (row,) = manifest.read(out)
    assert row["spect_path"] == str(out / "0.wav.spect.zarr")
    t = zarr.open_group(row["spect_path"], mode="r")["t"][...]
    assert float(row["duration"]) == pytest.approx(len(t) * 64 / 32000, rel=1e-9)
    assert float(row["timebin_dur"]) == pytest.approx(float(written[0]["timebin_dur"]), rel=1e-9)


def test_results_out_of_order_are_refused_not_merged(tmp_path):
    unordered = [FileResult("/a/2.wav", "skipped", "x"), FileResult("/a/1.wav", "skipped", "x")]
    with pytest.raises(ValueError, match="out of order"):
        manifest.update(tmp_path, lambda: unordered, SpectParams(), "wav")
    assert manifest.read(tmp_path) == []


def _rewrite(path: Path, edit) -> None:
    """Edit a CSV file as a person with a spreadsheet would: ``edit(header, rows)``."""
    with open(path, newline="") as fh:
        header, *rows = list(csv.reader(fh))
    header, rows = edit(header, rows)
    with open(path, "w", newline="", encoding="utf-8-sig") as fh:  # a spreadsheet's BOM
        csv.writer(fh).writerows([header, *rows])


def test_a_manifest_sorted_and_extended_by_hand_keeps_a_row_per_recording(tmp_path, caplog):
    src, out = some_wavs(tmp_path / "src", 4), tmp_path / "spect"
    spectroflow.run("wav", {}, str(out), audio_dir=str(src), scheduler="threads")
    # Rows reversed (a sort by hand), one of them twice, and a column of the person's own.
    _rewrite(out / manifest.MANIFEST_NAME, lambda header, rows: (
        [*header, "notes"], [[*row, f"note {i}"] for i, row in enumerate([*rows[::-1], rows[0]])]))
    (src / "new.wav").write_bytes((src / "0.wav").read_bytes())
    with caplog.at_level("WARNING", logger="spectroflow.manifest"):
        summary = spectroflow.run("wav", {}, str(out), audio_dir=str(src), scheduler="threads")
    assert summary.counts == {"up_to_date": 4, "written": 1}
    assert any("not in order of audio_path" in m for m in caplog.messages)
    assert any("more than once" in m for m in caplog.messages)
    rows = manifest.read(out)
    paths = [r["audio_path"] for r in rows]
    assert paths == sorted(str(p) for p in src.glob("*.wav")), "a row each, in order"
    assert {r["status"] for r in rows} == {"ok"}
    notes = {Path(r["audio_path"]).name: r["notes"] for r in rows}
    assert notes["0.wav"] == "note 4", "the last of its duplicates"
    assert notes["new.wav"] == "" and notes["1.wav"] == "note 2"

    # A later run finds it in order and keeps it so.
    caplog.clear()
    with caplog.at_level("WARNING", logger="spectroflow.manifest"):
        spectroflow.run("wav", {}, str(out), audio_dir=str(src), scheduler="threads")
    assert not caplog.messages and manifest.read(out) == rows


def test_a_manifest_with_columns_moved_dropped_or_cut_short_by_hand_is_merged(tmp_path):
    src, out = some_wavs(tmp_path / "src", 3), tmp_path / "spect"
    spectroflow.run("wav", {}, str(out), audio_dir=str(src), scheduler="threads")
    before = {Path(r["audio_path"]).name: r for r in manifest.read(out)}

    def edit(header, rows):
        # Columns in reverse order, ``reason`` deleted, a blank line, and the last row cut
        # short after its ``audio_path`` (the last column now).
        keep = [i for i, name in reversed(list(enumerate(header))) if name != "reason"]
        moved = [[row[i] for i in keep] for row in rows]
        return [header[i] for i in keep], [*moved[:-1], [], moved[-1][: keep.index(0) + 1]]

    _rewrite(out / manifest.MANIFEST_NAME, edit)
    (src / "new.wav").write_bytes((src / "0.wav").read_bytes())
    summary = spectroflow.run("wav", {}, str(out), audio_dir=str(src), scheduler="threads")
    assert summary.counts == {"up_to_date": 3, "written": 1}
    rows = manifest.read(out)
    assert list(rows[0]) == list(manifest.COLUMNS), "the manifest's own columns, in order"
    after = {Path(r["audio_path"]).name: r for r in rows}
    assert sorted(after) == sorted([*before, "new.wav"])
    # Every row as it was, the one cut short too: merged as a recording of the run, its values
    # are whole again.
    assert {name: after[name] for name in before} == before
    assert after["new.wav"]["status"] == "ok" and after["new.wav"]["duration"]


def test_a_manifest_without_its_audio_path_column_is_refused_naming_it(tmp_path):
    src, out = some_wavs(tmp_path / "src", 1), tmp_path / "spect"
    spectroflow.run("wav", {}, str(out), audio_dir=str(src), scheduler="threads")
    _rewrite(out / manifest.MANIFEST_NAME, lambda header, rows: (
        ["path", *header[1:]], rows))
    before = (out / manifest.MANIFEST_NAME).read_bytes()
    with pytest.raises(ValueError, match=r"spectroflow-manifest.csv has no audio_path column"):
        manifest.update(out, lambda: [], SpectParams(), "wav")
    assert (out / manifest.MANIFEST_NAME).read_bytes() == before, "left as it was"


def test_rows_of_recordings_gone_from_the_source_are_not_ok(tmp_path):
    src, out = some_wavs(tmp_path / "src", 4), tmp_path / "spect"
    spectroflow.run("wav", {}, str(out), audio_dir=str(src), scheduler="threads")
    # 0.wav and its output deleted by hand; 1.wav deleted, its output left.
    (src / "0.wav").unlink()
    (out / "0.wav.spect.npz").unlink()
    (src / "1.wav").unlink()
    # A run over a list of files sees only them: it cannot tell, and changes no other row.
    spectroflow.run("wav", {}, str(out), audio_files=[str(src / "10.wav")],
                    scheduler="threads")
    assert {r["status"] for r in manifest.read(out)} == {"ok"}

    summary = spectroflow.run("wav", {}, str(out), audio_dir=str(src), scheduler="threads")
    assert summary.counts == {"up_to_date": 2}
    rows = _rows(out)
    assert len(rows) == 4
    gone, kept = rows[str(src / "0.wav")], rows[str(src / "1.wav")]
    assert gone["status"] == kept["status"] == "gone"
    assert gone["spect_path"] == "" and "no longer at the source" in gone["reason"]
    assert kept["spect_path"] == str(out / "1.wav.spect.npz")
    assert f"its output remains: {out / '1.wav.spect.npz'}" in kept["reason"]
    assert all(r["status"] == "ok" for p, r in rows.items() if Path(p).name not in ("0.wav", "1.wav"))

    # A recording back at the source is computed, and its row is ok again.
    (src / "0.wav").write_bytes(sample_path("birdsongrec/Bird0/0.wav").read_bytes())
    spectroflow.run("wav", {}, str(out), audio_dir=str(src), scheduler="threads")
    assert _rows(out)[str(src / "0.wav")]["status"] == "ok"


def test_a_recording_added_after_a_runs_listing_is_not_gone(tmp_path):
    """A whole-folder run that did not list a recording, because it arrived after its listing
    and another run (an event's) computed it meanwhile, leaves that row ok."""

    src, out = some_wavs(tmp_path / "src", 2), tmp_path / "spect"
    spectroflow.run("wav", {}, str(out), audio_dir=str(src), scheduler="threads")
    late = str(src / "0.wav")  # stands for the late recording: at the source, but not listed
    listed = manifest.Listed(str(src), ".wav")
    others = [r for r in manifest.read(out) if r["audio_path"] != late]
    results = [FileResult(r["audio_path"], "up_to_date", "", r["spect_path"]) for r in others]
    manifest.update(str(out), lambda: results, SpectParams(), "wav", listed=listed)
    assert {r["audio_path"]: r["status"] for r in manifest.read(out)}[late] == "ok"
    (src / "0.wav").unlink()
    manifest.update(str(out), lambda: results, SpectParams(), "wav", listed=listed)
    assert {r["audio_path"]: r["status"] for r in manifest.read(out)}[late] == "gone"


def test_a_run_with_nothing_new_writes_no_report_and_leaves_the_manifest(tmp_path):
    src, out = some_wavs(tmp_path / "src", 2), tmp_path / "spect"
    first = spectroflow.run("wav", {}, str(out), audio_dir=str(src), scheduler="threads")
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = spectroflow.run("wav", {}, str(out), audio_dir=str(src), scheduler="threads")
    assert again.counts == {"up_to_date": 2} and again.report is None
    assert again.manifest == first.manifest and "report: none, nothing new" in str(again)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == files

    # Nothing to compute, but a row to change: the manifest is written.
    (src / "0.wav").unlink()
    gone = spectroflow.run("wav", {}, str(out), audio_dir=str(src), scheduler="threads")
    assert gone.report is None and _rows(out)[str(src / "0.wav")]["status"] == "gone"
