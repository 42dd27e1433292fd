"""The command line: a vak config reused as it is, the run's summary, and pictures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from matplotlib.image import imread
from typer.testing import CliRunner

from spectroflow import manifest, outputs, storage, vakconfig
from spectroflow.cli import app
from spectroflow.params import SpectParams

from conftest import DATA, REFERENCE, assert_matches_fingerprint, load_npz, some_wavs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("console_level_restored")]


VAK_TOML = """
[vak.prep]
dataset_type = "frame classification"
input_type = "spect"
data_dir = "{data}"
output_dir = "{out}"
audio_format = "cbin"
annot_format = "notmat"
labelset = "iabcdefghjk"
train_dur = 50
val_dur = 15

[vak.prep.spect_params]
fft_size = 512
step_size = 64
freq_cutoffs = [500, 10000]
thresh = 6.25
transform_type = "log_spect"

[vak.train]
model = "TweetyNet"
"""


def test_run_from_a_vak_config_matches_vak_and_prints_a_summary(prefect_api, sample_copy, tmp_path, fingerprints):
    out = tmp_path / "prep"
    config = tmp_path / "gy6or6_train.toml"
    config.write_text(VAK_TOML.format(data=sample_copy / "gy6or6", out=out))
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "6 written" in result.output and "report: " in result.output
    assert "6/6" in result.output, "the progress bar counted every file"
    written = sorted(out.rglob("*.spect.npz"))
    assert len(written) == 6
    for path in written:
        assert_matches_fingerprint(load_npz(path), fingerprints[f"tweety/gy6or6/032312/{path.name}"])

    again = CliRunner().invoke(app, ["run", "--config", str(config), "--workers", "1"])
    assert again.exit_code == 0 and "6 up_to_date" in again.output


def test_a_dry_run_says_what_a_run_would_do_and_writes_nothing(prefect_api, tmp_path):
    audio, out = tmp_path / "audio", tmp_path / "out"
    audio.mkdir()
    for name in ("a.wav", "b.wav", "c.wav"):
        (audio / name).write_bytes((DATA / "birdsongrec/Bird0/Wave/0.wav").read_bytes())
    (audio / "empty.wav").write_bytes(b"")
    before = CliRunner().invoke(app, ["run", str(audio), str(out), "--dry-run"])
    assert before.exit_code == 0, before.output
    assert "dry run, nothing computed or written: 4 to compute" in before.output
    assert f"would compute {audio / 'a.wav'}" in before.output
    assert not out.exists()

    (audio / "empty.wav").unlink()
    assert CliRunner().invoke(app, ["run", str(audio), str(out), "--workers", "1"]).exit_code == 0
    (audio / "b.wav").write_bytes((DATA / "birdsongrec/Bird0/Wave/1.wav").read_bytes())
    (audio / "d.wav").write_bytes(b"")
    written = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    after = CliRunner().invoke(app, ["run", str(audio), str(out), "--dry-run"])
    assert after.exit_code == 0, after.output
    assert "2 to compute, 2 up to date" in after.output
    assert f"would compute {audio / 'b.wav'}" in after.output
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == written, \
        "a dry run removes no marker and writes no report"


@pytest.mark.parametrize("output_format", ["npz-compressed", "zarr"])
def test_run_exits_nonzero_naming_failed_files_and_writes_the_others_as_asked(prefect_api, tmp_path,
                                                                             output_format):
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "empty.wav").write_bytes(b"")
    (audio / "ok.wav").write_bytes((DATA / "birdsongrec/Bird0/Wave/0.wav").read_bytes())
    result = CliRunner().invoke(app, ["run", str(audio), str(tmp_path / "out"), "--workers", "1",
                                      "--output-format", output_format, "--output-dtype", "float32"])
    assert result.exit_code == 1
    printed = result.output.replace("\n", "")  # rich folds long paths at 80 columns
    assert "1 failed, 1 written" in printed and "empty.wav" in printed
    assert "manifest:" in printed
    rows = manifest.read(tmp_path / "out")
    assert [(Path(r["audio_path"]).name, r["status"]) for r in rows] == [("empty.wav", "failed"),
                                                                         ("ok.wav", "ok")]
    if output_format == "zarr":
        group = zarr.open_group(str(tmp_path / "out" / "ok.wav.spect.zarr"), mode="r")
        assert group["s"].dtype == np.float32 and group["t"].dtype == np.float64
        return
    output = tmp_path / "out" / "ok.wav.spect.npz"
    with zipfile.ZipFile(output) as archive:
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    arrays = load_npz(output)
    assert arrays["s"].dtype == np.float32 and arrays["t"].dtype == np.float64


def test_vak_0x_config_and_bad_spect_params_name_the_field(tmp_path):
    old = tmp_path / "old.toml"
    old.write_text('[PREP]\naudio_format = "wav"\nlabelset = "range: 1-3"\n[SPECT_PARAMS]\nfft_size = 256\n')
    cfg = vakconfig.load(old)
    assert (cfg.audio_format, cfg.labelset, cfg.spect_params.fft_size) == ("wav", "range: 1-3", 256)
    bad = tmp_path / "bad.toml"
    bad.write_text("[vak.prep.spect_params]\nstep_size = -4\n")
    with pytest.raises(vakconfig.ConfigError, match="step_size"):
        vakconfig.load(bad)
    (tmp_path / "none.toml").write_text("[vak.train]\nmodel = 'x'\n")
    with pytest.raises(vakconfig.ConfigError, match=r"no \[vak.prep\]"):
        vakconfig.load(tmp_path / "none.toml")


def test_plot_draws_axes_and_annotated_segments(tmp_path):
    name = "gy6or6_baseline_230312_0809.141.cbin"
    spect = REFERENCE / "tweety/gy6or6/032312" / f"{name}.spect.npz"
    plain, annotated = tmp_path / "plain.png", tmp_path / "annotated.png"
    result = CliRunner().invoke(app, ["plot", str(spect), "-o", str(plain)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["plot", str(spect), "-o", str(annotated), "--annot",
                                      str(DATA / "gy6or6/032312" / f"{name}.not.mat"), "--annot-format", "notmat"])
    assert result.exit_code == 0, result.output
    a, b = imread(plain), imread(annotated)
    assert a.ndim == 3 and a.shape[1] > 600
    assert a.shape == b.shape and not np.array_equal(a, b), "segments drawn over the same figure"
    # The same spectrogram as a zarr group draws the same picture.
    group = storage.Location(url=str(tmp_path / f"{name}.spect.zarr"))
    outputs.write(group, outputs.read(storage.Location(url=str(spect))),
                  SpectParams(output_format="zarr"))
    result = CliRunner().invoke(app, ["plot", group.url, "-o", str(tmp_path / "zarr.png")])
    assert result.exit_code == 0, result.output
    assert np.array_equal(imread(tmp_path / "zarr.png"), a)

    missing_format = CliRunner().invoke(app, ["plot", str(spect), "--annot", "x.not.mat"])
    assert missing_format.exit_code != 0 and "annot-format" in missing_format.output


def test_batch_tags_reach_the_batch_tasks_only(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterTags

    tag = f"cli-tag-{os.getpid()}"
    audio = some_wavs(tmp_path / "audio", 2)
    result = CliRunner().invoke(app, ["run", str(audio), str(tmp_path / "out"), "--workers", "1",
                                      "--batch-size", "1", "--batch-tag", tag,
                                      "--batch-tag", "second"])
    assert result.exit_code == 0, result.output
    with get_client(sync_client=True) as client:
        tagged = client.read_task_runs(task_run_filter=TaskRunFilter(
            tags=TaskRunFilterTags(all_=[tag])))
    assert sorted(r.name for r in tagged) == ["spectrograms-0", "spectrograms-1"]
    assert all(sorted(r.tags) == sorted([tag, "second"]) for r in tagged)


SPECTROFLOW = Path(sys.executable).parent / "spectroflow"


def command(*args: str, home: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """``spectroflow ARGS`` as a user types it: no Prefect server configured, a Prefect home of
    its own, output to pipes (not a terminal)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "AWS_EC2_METADATA_DISABLED": "true"}
    return subprocess.run([str(SPECTROFLOW), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_a_small_run_needs_no_prefect_and_prints_its_summary_as_json(tmp_path):
    audio = some_wavs(tmp_path / "audio", 6)
    out = tmp_path / ("a-destination-with-a-path-longer-than-a-terminal-line-" + "x" * 40)
    done = command("run", str(audio), str(out), "--json", home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # standard output holds the JSON alone
    assert summary["counts"] == {"written": 6} and summary["failed"] == []
    assert Path(summary["report"]).is_file() and Path(summary["manifest"]).is_file()
    assert len(list(out.glob("*.spect.npz"))) == 6
    assert f"report: {summary['report']}\n" in done.stderr, "paths are not wrapped"
    assert "6/6" in done.stderr, "the progress bar counted every file"
    assert not (tmp_path / "home").exists(), "no Prefect API was started"


def test_a_forgotten_audio_format_names_what_was_found_and_writes_nothing(tmp_path):
    out = tmp_path / "out" / "gy6or6"
    done = command("run", str(DATA / "gy6or6"), str(out), home=tmp_path / "home")
    assert done.returncode == 2, done.stderr
    assert ("error: no .wav recordings under " in done.stderr
            and "but 6 .cbin files: is the audio format cbin? (--audio-format cbin)"
            in done.stderr), done.stderr
    assert not (tmp_path / "out").exists()


def test_a_dry_run_names_what_it_would_skip_and_why(tmp_path):
    config = tmp_path / "gy6or6.toml"
    config.write_text(VAK_TOML.format(data=DATA / "gy6or6", out=tmp_path / "out")
                      .replace('labelset = "iabcdefghjk"', 'labelset = "iabcdefghj"'))
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "6 skipped" in result.output
    first = sorted((DATA / "gy6or6" / "032312").glob("*.cbin"))[0]
    assert f"would skip {first}: labels ['k'] are not in the labelset" in result.output


def test_spectrogram_options_reach_the_outputs(tmp_path, fingerprints):
    wav = DATA / "birdsongrec" / "Bird0" / "Wave" / "3.wav"
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "run", str(wav), str(out), "--freq-cutoffs", "500,10000", "--thresh", "6.25",
        "--transform-type", "log_spect", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert_matches_fingerprint(load_npz(out / "3.wav.spect.npz"),
                               fingerprints["tweety/birdsongrec/Bird0/3.wav.spect.npz"])
    bad = CliRunner().invoke(app, ["run", str(wav), str(out), "--freq-cutoffs", "500"])
    assert bad.exit_code == 2 and "--freq-cutoffs" in bad.output


def test_the_flow_path_gives_the_same_summary(prefect_api, tmp_path):
    audio = some_wavs(tmp_path / "audio", 2)
    result = CliRunner().invoke(app, ["run", str(audio), str(tmp_path / "out"), "--flow",
                                      "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["counts"] == {"written": 2} and Path(summary["report"]).is_file()


def test_the_command_leaves_its_objects_to_the_exit_uncollected():
    """``spectroflow`` ends its process: what it made is frozen out of the collection at exit."""
    import gc

    before = gc.get_freeze_count()
    try:
        with pytest.raises(SystemExit) as ended:
            app(["--help"], prog_name="spectroflow")
        assert ended.value.code == 0
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


def test_the_commands_flow_runs_send_heartbeats_only_when_a_setting_asks():
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    from spectroflow.cli import _heartbeats_as_set

    assert get_current_settings().flows.heartbeat_frequency == 180  # Prefect's default
    with _heartbeats_as_set():
        assert get_current_settings().flows.heartbeat_frequency is None
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}), _heartbeats_as_set():
        assert get_current_settings().flows.heartbeat_frequency == 60
    assert get_current_settings().flows.heartbeat_frequency == 180
