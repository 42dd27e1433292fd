"""Errors that explain: user mistakes, missing sources, full or read-only destinations, a report
that cannot be written, a file replaced while the run goes on, a worker process that dies."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import threading

import numpy as np
import psutil
import pytest
from typer.testing import CliRunner

import spectroflow
from spectroflow import pipeline, progress, storage
from spectroflow.cli import app
from spectroflow.params import SpectParams
from spectroflow.plan import prepare
from spectroflow.request import RunRequest
from spectroflow.storage import StorageError

from conftest import WAVS, load_npz, some_wavs


def expected(path, params=None) -> np.ndarray:
    sound = spectroflow.audio.read_audio(str(path), "wav")
    return spectroflow.spectrogram(sound.data, sound.samplerate, SpectParams(**(params or {})))[0]


@pytest.fixture
def mount_tmpfs(tmp_path):
    """Mount a small tmpfs of the given size (root only: CI runs as root); unmounted after."""
    mounted = []

    def mount(size: str, *options: str):
        if os.geteuid() != 0:
            pytest.skip("mounting a small file system needs root")
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}", *options)),
                        "tmpfs", str(point)], check=True)
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill(folder) -> None:
    """Take every free byte of the file system holding ``folder``."""
    with open(folder / "filler", "wb") as fh, pytest.raises(OSError, match="No space left") as full:  # noqa: PT012
        while True:
            fh.write(bytes(64 << 10))
            fh.flush()
    assert full.value.errno == errno.ENOSPC


def test_a_full_destination_fails_before_any_work(mount_tmpfs, tmp_path):
    disk = mount_tmpfs("4m")
    fill(disk)
    with pytest.raises(StorageError, match=r"cannot take a file.*No space left"):
        spectroflow.run("wav", {}, str(disk / "out"), audio_dir=str(some_wavs(tmp_path / "src")))
    assert sorted(p.name for p in disk.rglob("*") if p.is_file()) == ["filler"]


def test_a_destination_that_fills_up_fails_those_files_and_keeps_the_report(mount_tmpfs, tmp_path):
    # Room for the probe and the report, not for a 3 MB spectrogram.
    disk = mount_tmpfs("1536k")
    summary = spectroflow.run("wav", {}, str(disk), audio_dir=str(some_wavs(tmp_path / "src")),
                              scheduler="synchronous")
    assert summary.counts == {"failed": 3}
    assert all("No space left" in reason for _, reason in summary.failed)
    assert summary.report and storage.read_bytes(summary.report).count(b"\n") == 4
    assert not [p for p in disk.rglob("*") if p.name.endswith((".npz", ".tmp"))]


def test_a_read_only_destination_fails_at_start_even_for_root(mount_tmpfs, tmp_path):
    disk = mount_tmpfs("4m", "ro")
    with pytest.raises(StorageError, match=r"cannot take a file.*Read-only"):
        spectroflow.run("wav", {}, str(disk), audio_dir=str(some_wavs(tmp_path / "src")))


def test_a_report_that_cannot_be_written_is_in_the_summary(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "spectroflow-reports").write_text("a file where the reports folder belongs")
    summary = spectroflow.run("wav", {}, str(out), audio_dir=str(some_wavs(tmp_path / "src", 2)),
                              scheduler="synchronous")
    assert summary.counts == {"written": 2} and summary.report is None
    assert "Error" in summary.report_error and "not written" in str(summary)
    assert len(list(out.glob("*.spect.npz"))) == 2


def test_missing_sources_are_named_before_any_work(s3, tmp_path, caplog):
    _fs, bucket = s3
    caplog.set_level(logging.INFO)
    for source in (str(tmp_path / "nope"), "s3://no-such-bucket-here/audio", f"s3://{bucket}/nope"):
        with pytest.raises(StorageError, match=f"{source}.*not a folder or prefix that exists"):
            spectroflow.run("wav", {}, str(tmp_path / "out"), audio_dir=source)
    assert not [r for r in caplog.records if "transient" in r.getMessage()]
    assert not list((tmp_path / "out").rglob("*.npz"))


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_file_replaced_after_planning_fails_alone_and_the_next_run_computes_it(backend, tmp_path,
                                                                               s3):
    fs, bucket = s3
    if backend == "local":
        src, out = str(some_wavs(tmp_path / "src", 1)), str(tmp_path / "out")
        replace = lambda: shutil.copy(WAVS[1], tmp_path / "src" / WAVS[0].name)  # noqa: E731
    else:
        fs.pipe(f"{bucket}/audio/{WAVS[0].name}", WAVS[0].read_bytes())
        src, out = f"s3://{bucket}/audio", f"s3://{bucket}/spect"
        replace = lambda: fs.pipe(f"{bucket}/audio/{WAVS[0].name}", WAVS[1].read_bytes())  # noqa: E731
    assert WAVS[0].stat().st_size != WAVS[1].stat().st_size
    request = RunRequest.from_vak("wav", {}, out, audio_dir=src)
    plan = prepare(request)
    replace()
    # Its output could not be marked with the version it was made from (on S3, the version
    # listed would name the replaced object's ETag): it fails, saying why, not as truncated.
    (result,) = pipeline.process_batch(plan.work, request.batch_spec())
    assert result.status == "failed" and "changed while the run went on" in result.reason
    assert "Truncated" not in result.reason
    rerun = spectroflow.run("wav", {}, out, audio_dir=src, scheduler="synchronous")
    assert rerun.counts == {"written": 1}
    np.testing.assert_array_equal(load_npz(rerun.outputs[0])["s"], expected(WAVS[1]))


def test_library_run_whose_worker_is_killed_returns_what_finished(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(24):
        os.link(WAVS[i % 4], src / f"{i:02d}.wav")
    out = tmp_path / "out"
    me = psutil.Process()
    four_back = threading.Event()

    def count_back(done: int, total: int) -> None:
        # As batches of one file come back.
        if done >= 4:
            four_back.set()

    def kill_a_worker() -> None:
        # Once a few batches are back: the pool runs one batch per worker at a time.
        four_back.wait(60)
        workers = [p for p in me.children() if "spawn_main" in " ".join(p.cmdline())]
        workers[0].kill()

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    with progress.listen(count_back):
        summary = spectroflow.run("wav", {}, str(out), audio_dir=str(src), num_workers=2,
                                  batch_size=1)
    killer.join()
    assert four_back.is_set(), "the worker was killed once four files were back"
    written = summary.counts.get("written", 0)
    assert 0 < written < 24 and written + summary.counts["failed"] == 24
    assert all("workers failed" in reason for _, reason in summary.failed)
    assert summary.report and len(summary.outputs) == written
    for url in summary.outputs:
        assert load_npz(url)["s"].shape[0] == 257
    again = spectroflow.run("wav", {}, str(out), audio_dir=str(src), num_workers=2)
    # A batch killed after writing a file but before returning: its file is up to date now.
    assert again.counts["up_to_date"] >= written and sum(again.counts.values()) == 24
    assert again.ok and len(list(out.glob("*.spect.npz"))) == 24


@pytest.mark.parametrize(("args", "names"), [
    (["--fft-size", "-3"], "--fft-size"),
    (["--audio-format", "mp3"], "--audio-format"),
    (["--labelset", '["a"'], "--labelset"),
    (["--step-size", "1024"], "step_size"),
    (["--annot-format", "nope"], "--annot-format"),
    (["--batch-size", "0"], "--batch-size"),
    (["--output-format", "zip"], "--output-format"),
    (["--output-dtype", "float16"], "--output-dtype"),
])
def test_command_line_mistakes_print_one_line_and_exit_2(args, names, tmp_path):
    result = CliRunner().invoke(app, ["run", str(WAVS[0].parent), str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], lines
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.npz"))


def test_command_line_names_a_mistyped_config_key_and_a_missing_source(tmp_path):
    config = tmp_path / "vak.toml"
    config.write_text(f'[vak.prep]\ndata_dir = "{WAVS[0].parent}"\noutput_dir = "{tmp_path}/o"\n'
                      '[vak.prep.spect_params]\nfft_sise = 512\n')
    for args, names in ((["--config", str(config)], "fft_sise"),
                        ([str(tmp_path / "nope"), str(tmp_path / "o")], "does not exist")):
        result = CliRunner().invoke(app, ["run", *args])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and names in lines[0], lines
