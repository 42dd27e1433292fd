"""The library end to end: local and S3 storage, layout, reruns, bad input."""

import shutil

import numpy as np
import pytest
import soundfile

import spectroflow
from spectroflow.storage import StorageError

from conftest import (
    DATA,
    REFERENCE,
    REFERENCE_PARAMS,
    WAVS,
    WHOLE_FILES,
    assert_arrays_match,
    assert_matches_fingerprint,
    load_npz,
    report_rows,
    upload_samples,
)


def out_relpath_to_reference_key(relpath: str) -> str:
    return relpath.replace("/Wave/", "/")


@pytest.mark.parametrize("param_set", sorted(REFERENCE_PARAMS))
def test_local_run_reproduces_vak_outputs(sample_copy, tmp_path, fingerprints, param_set):
    out = tmp_path / "spect"
    for fmt in ("wav", "cbin"):
        paths = spectroflow.make_spectrogram_files(
            fmt, REFERENCE_PARAMS[param_set], str(out), audio_dir=str(sample_copy), num_workers=2
        )
        assert paths == sorted(paths) and all(p.endswith(".spect.npz") for p in paths)
        assert len(paths) == {"wav": 20, "cbin": 6}[fmt]
    for path in out.rglob("*.spect.npz"):
        key = f"{param_set}/{out_relpath_to_reference_key(path.relative_to(out).as_posix())}"
        arrays = load_npz(path)
        assert_matches_fingerprint(arrays, fingerprints[key])
        assert arrays["audio_path"].item().startswith(str(sample_copy))
    for name in WHOLE_FILES:
        ref = np.load(REFERENCE / param_set / f"{name}.spect.npz")
        subset, file = name.rsplit("/", 1)
        folder = f"{subset}/Wave" if subset.startswith("birdsongrec") else subset
        assert_arrays_match(load_npz(out / folder / f"{file}.spect.npz"), ref)


def test_s3_to_s3_reproduces_vak_and_reruns_compute_nothing(s3, fingerprints):
    fs, bucket = s3
    upload_samples(fs, bucket)
    dest = f"s3://{bucket}/spect"
    summary = spectroflow.run(
        "wav", REFERENCE_PARAMS["tweety"], dest, audio_dir=f"s3://{bucket}/audio",
        annot_list=[f"s3://{bucket}/audio/birdsongrec/Bird0/Annotation.xml"],
        annot_format="birdsong-recognition-dataset", num_workers=2,
    )
    assert summary.counts["written"] == 20 and summary.ok
    assert summary.counts["missing_audio"] == 115
    for url in summary.outputs:
        rel = url.removeprefix(f"{dest}/")
        assert_matches_fingerprint(load_npz(url), fingerprints[f"tweety/{out_relpath_to_reference_key(rel)}"])
    assert load_npz(summary.outputs[0])["audio_path"].item().startswith(f"s3://{bucket}/audio/")

    fs.invalidate_cache()
    again = spectroflow.run("wav", REFERENCE_PARAMS["tweety"], dest, audio_dir=f"s3://{bucket}/audio")
    assert again.counts == {"up_to_date": 20}

    fs.pipe(f"{bucket}/audio/birdsongrec/Bird0/Wave/3.wav", fs.cat(f"{bucket}/audio/birdsongrec/Bird0/Wave/7.wav"))
    fs.invalidate_cache()
    changed = spectroflow.run("wav", REFERENCE_PARAMS["tweety"], dest, audio_dir=f"s3://{bucket}/audio")
    assert changed.counts == {"up_to_date": 19, "written": 1}
    rewritten = load_npz(f"{dest}/birdsongrec/Bird0/Wave/3.wav.spect.npz")
    np.testing.assert_array_equal(rewritten["s"], load_npz(f"{dest}/birdsongrec/Bird0/Wave/7.wav.spect.npz")["s"])


def test_new_params_recompute_and_rerun_after_deleting_one_output(sample_copy, tmp_path):
    out = tmp_path / "out"
    first = spectroflow.run("cbin", None, str(out), audio_dir=str(sample_copy))
    assert first.counts == {"written": 6}
    (out / "gy6or6/032312/gy6or6_baseline_230312_0808.138.cbin.spect.npz").unlink()
    assert spectroflow.run("cbin", None, str(out), audio_dir=str(sample_copy)).counts == {
        "written": 1, "up_to_date": 5}
    assert spectroflow.run("cbin", {"step_size": 32}, str(out), audio_dir=str(sample_copy)).counts == {
        "written": 6}


def test_same_names_in_two_folders_do_not_collide(tmp_path):
    src = tmp_path / "src"
    for bird in ("Bird0", "Bird1"):
        shutil.copytree(DATA / "birdsongrec" / "Bird0", src / bird)
    (src / "Bird1" / "Wave" / "0.wav").write_bytes((src / "Bird1" / "Wave" / "3.wav").read_bytes())
    out = tmp_path / "out"
    paths = spectroflow.make_spectrogram_files("wav", {}, str(out), audio_dir=str(src))
    assert len(paths) == 40
    a, b = load_npz(out / "Bird0/Wave/0.wav.spect.npz"), load_npz(out / "Bird1/Wave/0.wav.spect.npz")
    assert a["s"].shape != b["s"].shape


def test_explicit_files_with_spaces_and_non_ascii_names(tmp_path):
    src = tmp_path / "chants d'oiseaux"
    src.mkdir()
    names = ["chant 1.wav", "pinson_é_ü.WAV", "鳥 2.wav"]
    for name in names:
        shutil.copy(DATA / "birdsongrec/Bird0/Wave/3.wav", src / name)
    paths = spectroflow.make_spectrogram_files(
        "wav", None, str(tmp_path / "out"), audio_files=[str(src / n) for n in names]
    )
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == sorted(f"{n}.spect.npz" for n in names)
    assert load_npz(paths[0])["audio_path"].item() in {str(src / n) for n in names}


def write_wav(path, data, samplerate=32000, **kwargs):
    soundfile.write(str(path), data, samplerate, **kwargs)


def test_bad_inputs_fail_one_by_one_and_the_rest_are_written(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    good = (DATA / "birdsongrec/Bird0/Wave/3.wav").read_bytes()
    (src / "good.wav").write_bytes(good)
    (src / "empty.wav").write_bytes(b"")
    (src / "truncated.wav").write_bytes(good[: len(good) // 2])
    (src / "notaudio.wav").write_bytes(b"<html>this is not audio</html>" * 50)
    write_wav(src / "isflac.wav", np.zeros(8000), format="FLAC")
    write_wav(src / "short.wav", np.zeros(100, dtype=np.int16))
    write_wav(src / "lowrate.wav", np.random.default_rng(0).normal(0, 0.1, 16000), samplerate=8000)
    write_wav(src / "nan.wav", np.array([0.1, np.nan] * 4000), subtype="FLOAT")
    rng = np.random.default_rng(1)
    stereo = rng.normal(0, 0.1, (32000, 2))
    write_wav(src / "stereo.wav", stereo, subtype="FLOAT")

    summary = spectroflow.run(
        "wav", {"freq_cutoffs": [500, 10000]}, str(tmp_path / "out"), audio_dir=str(src)
    )
    rows = report_rows(summary.report)
    assert len(rows) == 9
    status = {k.rsplit("/", 1)[1]: (v["status"], v["reason"]) for k, v in rows.items()}
    assert status["good.wav"][0] == "written"
    assert status["stereo.wav"] == ("written", "kept channel 1 of 2")
    expected = {
        "empty.wav": "empty",
        "truncated.wav": "truncated",
        "notaudio.wav": "not readable as wav",
        "isflac.wav": "content is FLAC",
        "short.wav": "fewer than one FFT window",
        "lowrate.wav": "Nyquist",
        "nan.wav": "NaN",
    }
    for name, words in expected.items():
        assert status[name][0] == "failed" and words in status[name][1], (name, status[name])
    assert len(summary.failed) == 7 and not summary.ok
    stereo_out = load_npz(tmp_path / "out/stereo.wav.spect.npz")
    s, _, _ = spectroflow.spectrogram(stereo[:, 0].astype(np.float32).astype(np.float64), 32000.0,
                                      spectroflow.SpectParams(freq_cutoffs=(500, 10000)))
    np.testing.assert_allclose(stereo_out["s"], s, rtol=1e-9)


def test_cbin_without_rec_and_silent_log_spect(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(DATA / "gy6or6/032312", src)
    (src / "gy6or6_baseline_230312_0808.138.rec").unlink()
    (src / "gy6or6_baseline_230312_0809.141.cbin").write_bytes(b"\0" * 64000)
    summary = spectroflow.run("cbin", {"transform_type": "log_spect"}, str(tmp_path / "out"), audio_dir=str(src))
    reasons = {k.rsplit("/", 1)[1]: v for k, v in summary.failed}
    assert ".rec" in reasons["gy6or6_baseline_230312_0808.138.cbin"]
    assert "silent" in reasons["gy6or6_baseline_230312_0809.141.cbin"]
    assert summary.counts["written"] == 4


def test_invalid_arguments_fail_before_any_work(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="fft_size"):
        spectroflow.run("wav", {"fft_size": -1}, str(out), audio_dir=str(DATA))
    with pytest.raises(ValueError, match="audio_format"):
        spectroflow.run("mp3", None, str(out), audio_dir=str(DATA))
    with pytest.raises(ValueError, match="exactly one of"):
        spectroflow.run("wav", None, str(out), audio_dir=str(DATA), audio_files=[])
    with pytest.raises(StorageError, match="not a folder"):
        spectroflow.run("wav", None, str(out), audio_dir=str(tmp_path / "nope"))
    assert not list(out.rglob("*.npz"))


def test_missing_bucket_fails_at_start(s3, tmp_path):
    # Read-only and full destinations: tests/test_errors.py (on tmpfs mounts, as root too).
    with pytest.raises(StorageError, match="not writable"):
        spectroflow.run("wav", None, "s3://no-such-bucket-here/spect", audio_dir=str(DATA))


def test_timit_nist_recordings_are_written_with_their_annotations(tmp_path):
    # TIMIT's layout: NIST SPHERE audio named .WAV beside a .PHN annotation (crowsetta "timit").
    samples = soundfile.read(str(DATA / "birdsongrec/Bird0/Wave/3.wav"), dtype="int16")[0]
    speaker = tmp_path / "TRAIN/DR1/FCJF0"
    speaker.mkdir(parents=True)
    for name, labels in (("SA1", ["h#", "sh", "h#"]), ("SA2", ["h#", "zz", "h#"])):
        soundfile.write(str(speaker / f"{name}.WAV"), samples, 16000, format="NIST", subtype="PCM_16")
        bounds = np.linspace(0, len(samples), len(labels) + 1).astype(int)
        (speaker / f"{name}.PHN").write_text(
            "".join(f"{a} {b} {lab}\n" for a, b, lab in zip(bounds, bounds[1:], labels, strict=False)))
    out = tmp_path / "out"
    summary = spectroflow.run(
        "wav", None, str(out), audio_dir=str(tmp_path / "TRAIN"), annot_format="timit",
        annot_list=sorted(str(p) for p in speaker.glob("*.PHN")), labelset=["h#", "sh"],
        scheduler="synchronous",
    )
    assert summary.counts == {"written": 1, "skipped": 1}, summary.failed
    rows = report_rows(summary.report)
    written = rows[str(speaker / "SA1.WAV")]
    assert written["status"] == "written" and "NIST" in written["reason"]
    arrays = load_npz(written["output"])
    sound = spectroflow.audio.read_audio(str(speaker / "SA1.WAV"), "wav")
    np.testing.assert_array_equal(arrays["s"], spectroflow.spectrogram(sound.data, 16000.0)[0])


@pytest.mark.parametrize("how", ["stdin", "-c"])
def test_the_library_runs_from_a_script_on_standard_input_and_from_python_c(tmp_path, how):
    """Worker processes start by running the parent's main script again, which a script read
    from standard input does not have (before, every worker died: BrokenProcessPool)."""
    import subprocess
    import sys

    script = (f"import spectroflow\n"
              f"s = spectroflow.run('wav', None, {str(tmp_path / 'out')!r}, "
              f"audio_files={[str(w) for w in WAVS[:3]]!r}, num_workers=2, batch_size=1)\n"
              f"print(s.counts)\n")
    args = [sys.executable, "-"] if how == "stdin" else [sys.executable, "-c", script]
    done = subprocess.run(args, input=script if how == "stdin" else None, capture_output=True,
                          text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{'written': 3}", done.stderr


def test_run_has_a_visible_signature_in_vaks_order():
    import inspect

    parameters = inspect.signature(spectroflow.run).parameters
    assert list(parameters)[:10] == list(inspect.signature(spectroflow.make_spectrogram_files)
                                         .parameters)[:10]
    assert {"num_workers", "batch_size", "skip_done", "scheduler"} <= parameters.keys()
    assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters.values())
