"""Names and links in a source tree: every recording vak would find is written where it mirrors,
with its own ``audio_path``, or reported; nothing is written outside the destination."""

from __future__ import annotations

import logging
import posixpath
import shutil

import numpy as np
import pytest

import spectroflow
from spectroflow import manifest, storage

from conftest import DATA, load_npz, report_rows

WAVE = DATA / "birdsongrec" / "Bird0" / "Wave"


def recording(path, number=0):
    """A copy of sample recording ``number`` at ``path`` (the samples themselves are read-only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(WAVE / f"{number}.wav", path)
    return path


def run(out, **sources):
    return spectroflow.run("wav", {}, str(out), scheduler="synchronous", **sources)


def test_a_symlinked_recording_is_written_under_the_links_name(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "x.wav").symlink_to(recording(tmp_path / "elsewhere" / "x.wav"))
    summary = run(out, audio_dir=str(src))
    source = str(src / "x.wav")
    assert report_rows(summary.report)[source]["status"] == "written"
    assert load_npz(out / "x.wav.spect.npz")["audio_path"] == source


def test_a_symlinked_folder_is_mirrored_as_seen_through_the_link(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    recording(tmp_path / "elsewhere" / "dir" / "a.wav")
    src.mkdir()
    (src / "dir").symlink_to(tmp_path / "elsewhere" / "dir", target_is_directory=True)
    summary = run(out, audio_dir=str(src))
    source = str(src / "dir" / "a.wav")
    assert report_rows(summary.report)[source]["status"] == "written"
    assert load_npz(out / "dir" / "a.wav.spect.npz")["audio_path"] == source


def test_symlink_loops_end_and_each_recording_is_listed_once(tmp_path):
    src, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    recording(src / "a.wav", 0)
    recording(src / "sub" / "b.wav", 1)
    recording(elsewhere / "c.wav", 2)
    (src / "sub" / "up").symlink_to(src)  # a loop inside the tree
    (src / "sub" / "again").symlink_to(src / "sub")  # a folder of the tree, linked: listed once
    (elsewhere / "back").symlink_to(elsewhere)  # a loop outside it
    (src / "ext").symlink_to(elsewhere)
    (src / "ext2").symlink_to(elsewhere)  # two links to one folder: listed under the first
    summary = run(tmp_path / "out", audio_dir=str(src))
    expected = [str(src / p) for p in ("a.wav", "ext/c.wav", "sub/b.wav")]
    assert sorted(report_rows(summary.report)) == expected
    assert summary.counts == {"written": 3}


def test_a_broken_symlink_is_reported_not_lost(tmp_path, caplog):
    src = tmp_path / "src"
    recording(src / "ok.wav")
    (src / "gone.wav").symlink_to(tmp_path / "deleted.wav")
    (src / "self.wav").symlink_to(src / "self.wav")  # a loop of one link
    with caplog.at_level(logging.WARNING, logger="spectroflow"):
        summary = run(tmp_path / "out", audio_dir=str(src))
    rows = report_rows(summary.report)
    assert rows[str(src / "ok.wav")]["status"] == "written"
    for name in ("gone.wav", "self.wav"):
        assert rows[str(src / name)]["status"] == "failed"
        assert rows[str(src / name)]["reason"].startswith("broken symlink -> ")
        assert any(m.startswith(f"{src / name} is a broken symlink -> ") for m in caplog.messages)


def test_names_with_colons_are_read_and_written_as_named(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    recording(src / "12:30:00.wav", 0)
    recording(src / "sub" / "a::b.wav", 1)
    recording(src / "sub" / "a", 2)  # what fsspec's URL chaining read for sub/a::b.wav
    recording(src / "plain.wav", 1)
    summary = run(out, audio_dir=str(src))
    rows = report_rows(summary.report)
    for name in ("12:30:00.wav", "sub/a::b.wav"):
        assert rows[str(src / name)]["status"] == "written"
        assert load_npz(out / f"{name}.spect.npz")["audio_path"] == str(src / name)
    # The same recording's spectrogram, not that of sub/a.
    got, same = (load_npz(out / n)["s"] for n in ("sub/a::b.wav.spect.npz", "plain.wav.spect.npz"))
    np.testing.assert_array_equal(got, same)


NAME_240 = "n" * 236 + ".wav"


def test_a_name_of_240_characters_is_written(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    recording(src / NAME_240)
    run(out, audio_dir=str(src))
    assert load_npz(out / f"{NAME_240}.spect.npz")["audio_path"] == str(src / NAME_240)
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted([
        f"{NAME_240}.spect.npz", manifest.MANIFEST_NAME, manifest.METADATA_NAME,
        f".{manifest.MANIFEST_NAME}.lock"])


def test_a_name_of_240_characters_is_reported_written(tmp_path):
    recording(tmp_path / "src" / NAME_240)
    assert run(tmp_path / "out", audio_dir=str(tmp_path / "src")).counts == {"written": 1}
    assert run(tmp_path / "out", audio_dir=str(tmp_path / "src")).counts == {"up_to_date": 1}


def test_dot_slash_and_bare_audio_files_share_their_folder(tmp_path, monkeypatch):
    src, out = tmp_path / "src", tmp_path / "out"
    recording(src / "a.wav", 0)
    recording(src / "b.wav", 1)
    monkeypatch.chdir(src)
    summary = run(out, audio_files=["./a.wav", "b.wav"])
    # Relative paths are taken against the current folder, and recorded absolute
    # (docs/differences-from-vak.md).
    assert {s: row["status"] for s, row in report_rows(summary.report).items()} == {
        str(src / "a.wav"): "written",
        str(src / "b.wav"): "written",
    }
    assert load_npz(out / "a.wav.spect.npz")["audio_path"] == str(src / "a.wav")
    assert load_npz(out / "b.wav.spect.npz")["audio_path"] == str(src / "b.wav")


def test_object_keys_with_colons_are_read_and_written_as_named(s3):
    fs, bucket = s3
    fs.pipe(f"{bucket}/audio/12:30::00.wav", (WAVE / "0.wav").read_bytes())
    fs.pipe(f"{bucket}/audio/sub/a::b.wav", (WAVE / "1.wav").read_bytes())
    fs.invalidate_cache()
    summary = run(f"s3://{bucket}/spect", audio_dir=f"s3://{bucket}/audio")
    rows = report_rows(summary.report)
    for key in ("12:30::00.wav", "sub/a::b.wav"):
        source = f"s3://{bucket}/audio/{key}"
        assert rows[source]["status"] == "written"
        assert load_npz(f"s3://{bucket}/spect/{key}.spect.npz")["audio_path"] == source


#: Object keys below ``audio/`` that would climb out of the destination, or name a place
#: that a client resolving paths (a local destination, ``aws s3 sync``) would read as another.
UNSAFE_KEYS = ["x/../../evil.wav", "../up.wav", "/abs.wav", "./dot.wav"]


@pytest.mark.parametrize("relpath", [*UNSAFE_KEYS, "a//b.wav", "sub/..", "", "\\\\host\\x.wav"])
def test_safe_relpath_refuses_what_could_leave_the_destination(relpath):
    with pytest.raises(ValueError, match="unsafe relative path"):
        storage.safe_relpath(relpath)


@pytest.mark.parametrize("destination", ["local", "s3"])
def test_unsafe_object_names_fail_and_nothing_is_written_outside_the_destination(
    s3, tmp_path, destination
):
    fs, bucket = s3
    for key in ["ok.wav", *UNSAFE_KEYS]:
        fs.pipe(f"{bucket}/audio/{key}", (WAVE / "3.wav").read_bytes())
    fs.invalidate_cache()
    # Deep, so that "x/../.." stays inside tmp_path, where everything written is looked for.
    out = tmp_path / "deep" / "out"
    summary = run(out if destination == "local" else f"s3://{bucket}/spect",
                  audio_dir=f"s3://{bucket}/audio")
    rows = report_rows(summary.report)
    assert rows[f"s3://{bucket}/audio/ok.wav"]["status"] == "written"
    for key in UNSAFE_KEYS:
        row = rows[f"s3://{bucket}/audio/{key}"]
        assert (row["status"], row["reason"]) == (
            "failed", f"unsafe relative path {key!r}: it must stay inside the destination"
        )
    if destination == "local":
        written = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert written and all(out in p.parents for p in written), written
    else:
        written = [k for k in fs.find(bucket) if not k.startswith(f"{bucket}/audio/")]
        # Under spect/, and in no spelling that resolving the path would move elsewhere.
        assert written and all(
            k.startswith(f"{bucket}/spect/") and posixpath.normpath(k) == k for k in written
        ), written


def test_a_recording_listed_twice_is_computed_once(tmp_path, monkeypatch):
    src = tmp_path / "src"
    recording(src / "a.wav", 0)
    monkeypatch.chdir(src)
    summary = spectroflow.run("wav", {}, str(tmp_path / "out"), audio_files=["a.wav", "./a.wav"],
                              scheduler="synchronous")
    assert summary.counts == {"written": 1}


#: A name an old recorder writes in Latin-1, as Python reads it from the file system.
LATIN1 = "caf\udce9.wav"


def test_a_name_that_is_not_utf8_is_written_and_listed_in_every_text_file(tmp_path):
    src, out = tmp_path / "src", tmp_path / "spect"
    recording(src / LATIN1, 1)
    recording(src / "ok.wav", 0)
    summary = run(out, audio_dir=str(src))
    assert summary.counts == {"written": 2}, summary.failed
    assert summary.report and summary.manifest, summary.report_error
    output = out / f"{LATIN1}.spect.npz"
    assert str(load_npz(output)["audio_path"]) == str(src / LATIN1)
    # The report and the manifest hold the name's own bytes, which read back to the same path.
    assert report_rows(summary.report)[str(src / LATIN1)]["status"] == "written"
    assert b"caf\xe9.wav" in (out / manifest.MANIFEST_NAME).read_bytes()
    (row,) = [r for r in manifest.read(out) if r["audio_path"] == str(src / LATIN1)]
    assert row["status"] == "ok" and row["spect_path"] == str(output)
    # Its provenance is recorded: the next run finds it up to date.
    assert run(out, audio_dir=str(src)).counts == {"up_to_date": 2}


def test_a_name_that_is_not_utf8_fails_alone_for_an_object_store(tmp_path, s3):
    fs, bucket = s3
    src = tmp_path / "src"
    recording(src / LATIN1, 1)
    recording(src / "ok.wav", 0)
    summary = spectroflow.run("wav", {}, f"s3://{bucket}/spect", audio_dir=str(src),
                              scheduler="synchronous",
                              storage_options={"client_kwargs": fs.client_kwargs})
    assert summary.counts == {"written": 1, "failed": 1}
    ((source, reason),) = summary.failed
    assert source == str(src / LATIN1)
    assert "its name is not UTF-8 (caf\\xe9.wav)" in reason and "rename it" in reason
    assert summary.report and summary.manifest, summary.report_error
    fs.invalidate_cache()  # listings this client cached before the run wrote
    assert fs.find(f"{bucket}/spect", withdirs=False) and not [
        key for key in fs.find(f"{bucket}/spect") if "caf" in key.removeprefix(bucket)]
