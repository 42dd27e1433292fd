"""Recordings of any length: a spectrogram made a block of frames at a time from audio read in
chunks, written as it is made, with the numbers of the whole computation (vak's), in memory that
does not grow with the recording, and never a partial output."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import zarr

import spectroflow
from spectroflow import outputs, storage
from spectroflow.audio import AudioError, open_audio, read_audio
from spectroflow.params import SpectParams
from spectroflow.spectrogram import SpectrogramError, SpectrogramStream, spectrogram

from conftest import (
    DATA,
    REFERENCE,
    REFERENCE_PARAMS,
    WHOLE_FILES,
    assert_arrays_match,
    sample_path,
)

# The module, not the function the package exports under its name.
spectrogram_module = importlib.import_module("spectroflow.spectrogram")

PARAMS = {
    "vak-defaults": SpectParams(),
    "tweety": SpectParams(freq_cutoffs=(500, 10000), thresh=6.25, transform_type="log_spect"),
    "log-spect": SpectParams(transform_type="log_spect"),
    "plus-one": SpectParams(transform_type="log_spect_plus_one", thresh=0.5),
    "odd-step": SpectParams(fft_size=256, step_size=100, freq_cutoffs=(300, 8000)),
}


@pytest.fixture(scope="module")
def birdsong() -> np.ndarray:
    return read_audio(str(sample_path("birdsongrec/Bird0/3.wav")), "wav").data


@pytest.mark.parametrize("hold", [True, False], ids=["one-pass", "two-passes"])
@pytest.mark.parametrize("params", PARAMS.values(), ids=PARAMS.keys())
def test_a_stream_gives_the_numbers_of_the_whole_computation(birdsong, params, hold, monkeypatch):
    if not hold:  # log_spect's peak from a first pass over the audio, then computed again
        monkeypatch.setattr(spectrogram_module, "WHOLE_BYTES", 0)
    cuts = np.sort(np.random.default_rng(1).integers(0, birdsong.size, 9))  # chunks of any size
    stream = SpectrogramStream(lambda: np.split(birdsong, cuts), birdsong.size, 32000.0, params)
    s = np.concatenate([block.copy() for block in stream.blocks()]).T
    times = np.concatenate(list(stream.times(size=1000)))
    whole_s, whole_f, whole_t = spectrogram(birdsong, 32000.0, params)
    assert stream.shape == whole_s.shape
    np.testing.assert_array_equal(s, whole_s)
    np.testing.assert_array_equal(stream.frequencies, whole_f)
    np.testing.assert_array_equal(times, whole_t)


@pytest.mark.parametrize(
    ("audio", "params", "message"),
    [
        (np.r_[np.ones(40000), np.nan, np.ones(40000)], SpectParams(), "NaN or infinite samples"),
        (np.zeros(80000), SpectParams(transform_type="log_spect"), "silent"),
        (np.ones(300), SpectParams(), "fewer than one FFT window"),
    ],
)
def test_a_stream_refuses_what_the_whole_computation_refuses(audio, params, message):
    with pytest.raises(SpectrogramError, match=message):
        spectrogram(audio, 16000.0, params)
    with pytest.raises(SpectrogramError, match=message):
        _drain(lambda: np.array_split(audio, 5), audio.size, params)


def test_a_stream_of_audio_that_ends_early_fails():
    audio = np.ones(50000)
    with pytest.raises(SpectrogramError, match="ended after 30000 of its 50000 samples"):
        _drain(lambda: [audio[:30000]], audio.size, SpectParams())


def _drain(chunks, n_samples: int, params: SpectParams) -> None:
    for _ in SpectrogramStream(chunks, n_samples, 16000.0, params).blocks():
        pass


@pytest.mark.parametrize("name", ["birdsongrec/Bird0/3.wav", WHOLE_FILES[-1]])
def test_audio_read_in_chunks_is_the_audio_read_whole(name):
    audio_format = name.rsplit(".", 1)[1]
    whole = read_audio(str(sample_path(name)), audio_format)
    with open_audio(str(sample_path(name)), audio_format) as sound:
        chunks = list(sound.chunks(10007))
        assert (sound.frames, sound.samplerate) == (whole.data.size, whole.samplerate)
    assert {c.size for c in chunks[:-1]} == {10007}
    got = np.concatenate(chunks)
    assert chunks[0].dtype == whole.data.dtype
    np.testing.assert_array_equal(got, whole.data)


def test_a_wav_cut_short_fails_when_its_chunks_run_out(tmp_path):
    path = tmp_path / "cut.wav"
    soundfile.write(str(path), np.zeros(100000), 16000, subtype="PCM_16")
    with open(path, "r+b") as fh:
        fh.truncate(44 + 2 * 60000)
    with pytest.raises(AudioError, match="truncated"):
        with open_audio(str(path), "wav") as sound:
            list(sound.chunks(4096))


def _reference_run(destination: str, sources: list[str], params: dict) -> dict[str, str]:
    """Outputs of ``sources``, by recording name, made in this process (so the module settings
    the test changed apply)."""
    made = {}
    for audio_format in ("wav", "cbin"):
        files = [s for s in sources if s.endswith(f".{audio_format}")]
        summary = spectroflow.run(audio_format, params, f"{destination}/{audio_format}",
                                  audio_files=files, scheduler="synchronous")
        assert summary.counts == {"written": len(files)}, summary.failed
        made.update({url.rsplit("/", 1)[1].removesuffix(".spect.npz").removesuffix(".spect.zarr"): url
                     for url in summary.outputs})
    return made


@pytest.mark.parametrize("param_set", sorted(REFERENCE_PARAMS))
def test_streamed_outputs_equal_vaks_locally(tmp_path, monkeypatch, param_set):
    monkeypatch.setattr(spectrogram_module, "WHOLE_BYTES", 0)  # streamed, log_spect in two passes
    sources = [str(sample_path(name)) for name in WHOLE_FILES]
    made = _reference_run(str(tmp_path / "out"), sources, REFERENCE_PARAMS[param_set])
    for name in WHOLE_FILES:
        with (np.load(REFERENCE / param_set / f"{name}.spect.npz") as ref,
              np.load(made[name.rsplit("/", 1)[1]]) as got):
            assert_arrays_match(dict(got), ref)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".tmp")]


def _upload_whole_files(fs, bucket: str) -> list[str]:
    """The recordings vak's whole outputs were made from (a .cbin with its .rec) on S3."""
    sources = []
    for name in WHOLE_FILES:
        path = sample_path(name)
        for companion in ([path, path.with_suffix(".rec")] if name.endswith(".cbin") else [path]):
            fs.pipe(f"{bucket}/audio/{companion.relative_to(DATA)}", companion.read_bytes())
        sources.append(f"s3://{bucket}/audio/{path.relative_to(DATA)}")
    fs.invalidate_cache()
    return sources


def test_streamed_outputs_equal_vaks_on_s3_in_a_multipart_upload(s3, tmp_path, monkeypatch):
    fs, bucket = s3
    monkeypatch.setattr(spectrogram_module, "WHOLE_BYTES", 0)
    monkeypatch.setattr(storage.s3, "PART_BYTES", 5 << 20)  # S3's smallest part: outputs of 2-3 parts
    sources = _upload_whole_files(fs, bucket)
    made = _reference_run(f"s3://{bucket}/out", sources, REFERENCE_PARAMS["tweety"])
    parts = []
    for name in WHOLE_FILES:
        url = made[name.rsplit("/", 1)[1]]
        info = fs.info(url)
        # The ETag of a multipart upload ends in its number of parts; of a single PUT, no dash.
        etag = info["ETag"].strip('"')
        parts.append(int(etag.rsplit("-", 1)[1]) if "-" in etag else 1)
        assert parts[-1] == -(-info["size"] // (5 << 20)), (info["size"], etag)
        with fs.open(url, "rb") as fh:
            with np.load(fh) as npz:
                got = dict(npz)
        with np.load(REFERENCE / "tweety" / f"{name}.spect.npz") as ref:
            assert_arrays_match(got, ref)
    assert max(parts) >= 2, parts


def test_streamed_zarr_outputs_on_s3_equal_vaks_and_read_a_chunk_at_a_time(s3, monkeypatch):
    fs, bucket = s3
    monkeypatch.setattr(spectrogram_module, "WHOLE_BYTES", 0)
    monkeypatch.setattr(outputs, "ZARR_CHUNK_FRAMES", 256)
    sources = _upload_whole_files(fs, bucket)
    made = _reference_run(f"s3://{bucket}/out", sources,
                          {**REFERENCE_PARAMS["tweety"], "output_format": "zarr"})
    for name in WHOLE_FILES:
        group = zarr.open_group(made[name.rsplit("/", 1)[1]], mode="r")  # as a user opens it
        got = {key: np.asarray(group[key][...]) for key in ("s", "f", "t", "audio_path")}
        assert got["audio_path"].item().endswith(name.rsplit("/", 1)[1])
        assert group["s"].chunks[1] == 256 and group["s"].shape[1] > 256
        with np.load(REFERENCE / "tweety" / f"{name}.spect.npz") as ref:
            assert_arrays_match(got, ref)
            np.testing.assert_allclose(group["s"][:, 300:400], ref["s"][:, 300:400], rtol=1e-9,
                                       atol=0)


def _bad_recording(path, seconds: float = 30.0, bad_at: float = 20.0) -> None:
    """A float wav that is fine for ``bad_at`` seconds, then holds a NaN: its stream fails after
    several megabytes of output were written."""
    x = np.random.default_rng(0).standard_normal(int(seconds * 32000)) * 0.1
    x[int(bad_at * 32000)] = np.nan
    soundfile.write(str(path), x, 32000, subtype="DOUBLE")


def test_a_stream_that_fails_midway_leaves_the_earlier_output_whole_locally(tmp_path, monkeypatch):
    monkeypatch.setattr(spectrogram_module, "WHOLE_BYTES", 0)
    audio, out = tmp_path / "audio" / "a.wav", tmp_path / "out"
    audio.parent.mkdir()
    soundfile.write(str(audio), np.random.default_rng(1).standard_normal(64000) * 0.1, 32000)
    first = spectroflow.run("wav", {}, str(out), audio_dir=str(audio.parent), scheduler="synchronous")
    before = (out / "a.wav.spect.npz").read_bytes()
    _bad_recording(audio)
    again = spectroflow.run("wav", {}, str(out), audio_dir=str(audio.parent), scheduler="synchronous")
    assert first.counts == {"written": 1} and again.counts == {"failed": 1}
    reason = again.failed[0][1]
    assert "NaN or infinite samples" in reason and "an output of an earlier run remains" in reason
    assert (out / "a.wav.spect.npz").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [
        ".spectroflow", ".spectroflow-manifest.csv.lock", "a.wav.spect.npz",
        "spectroflow-manifest.csv", "spectroflow-manifest.json", "spectroflow-reports"]


def test_a_zarr_stream_that_fails_midway_leaves_no_group(tmp_path, monkeypatch):
    monkeypatch.setattr(spectrogram_module, "WHOLE_BYTES", 0)
    monkeypatch.setattr(outputs, "ZARR_CHUNK_FRAMES", 256)  # chunks written before the fault
    audio, out = tmp_path / "audio" / "a.wav", tmp_path / "out"
    audio.parent.mkdir()
    soundfile.write(str(audio), np.random.default_rng(1).standard_normal(64000) * 0.1, 32000)
    params = {"output_format": "zarr"}
    first = spectroflow.run("wav", params, str(out), audio_dir=str(audio.parent), scheduler="synchronous")
    _bad_recording(audio)
    again = spectroflow.run("wav", params, str(out), audio_dir=str(audio.parent), scheduler="synchronous")
    assert first.counts == {"written": 1} and again.counts == {"failed": 1}
    reason = again.failed[0][1]
    assert "NaN or infinite samples" in reason and "earlier run remains" not in reason
    with pytest.raises(FileNotFoundError):  # no group is there to open
        zarr.open_group(str(out / "a.wav.spect.zarr"), mode="r")
    assert not (out / "a.wav.spect.zarr").exists(), "the chunks written before the fault went"
    summary = spectroflow.run("wav", params, str(out), audio_dir=str(audio.parent), scheduler="synchronous")
    assert summary.counts == {"failed": 1}, "a group cut short is never taken as up to date"


def test_a_stream_that_fails_midway_leaves_no_object_and_no_parts_on_s3(s3, tmp_path, monkeypatch):
    fs, bucket = s3
    monkeypatch.setattr(spectrogram_module, "WHOLE_BYTES", 0)
    monkeypatch.setattr(storage.s3, "PART_BYTES", 5 << 20)
    _bad_recording(tmp_path / "bad.wav")  # about 10 MB of output before the NaN: two parts sent
    fs.pipe(f"{bucket}/audio/bad.wav", (tmp_path / "bad.wav").read_bytes())
    fs.invalidate_cache()
    summary = spectroflow.run("wav", {}, f"s3://{bucket}/out", audio_dir=f"s3://{bucket}/audio",
                              scheduler="synchronous")
    assert summary.counts == {"failed": 1}
    assert "NaN or infinite samples" in summary.failed[0][1]
    fs.invalidate_cache()
    assert not fs.exists(f"{bucket}/out/bad.wav.spect.npz")
    uploads = fs.call_s3("list_multipart_uploads", Bucket=bucket)
    assert uploads.get("Uploads", []) == []


_MEASURE = """
import json, resource, sys
import spectroflow
paths = spectroflow.make_spectrogram_files(audio_format="wav", spect_params={},
                                           output_dir=sys.argv[2], audio_files=[sys.argv[1]])
assert len(paths) == 1, paths
print(json.dumps(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
"""


def test_a_long_recording_is_written_in_memory_that_does_not_grow_with_it(tmp_path):
    # The worker process's peak for a 4-minute 44.1 kHz recording (a 340 MB output, 85 MB of
    # float64 audio) against that of a 2-second one: computing it whole would hold both.
    peaks, sizes = {}, {}
    for name, seconds in (("short", 2), ("long", 240)):
        audio = tmp_path / name / f"{name}.wav"
        audio.parent.mkdir()
        noise = np.random.default_rng(0).integers(-3000, 3000, int(seconds * 44100), dtype=np.int16)
        soundfile.write(str(audio), noise, 44100)
        done = subprocess.run([sys.executable, "-c", _MEASURE, str(audio), str(tmp_path / f"out-{name}")],
                              capture_output=True, text=True, timeout=300, check=True)
        peaks[name] = json.loads(done.stdout.splitlines()[-1]) * 1024  # ru_maxrss is in KiB
        output = tmp_path / f"out-{name}" / f"{name}.wav.spect.npz"
        sizes[name] = output.stat().st_size
        if name == "long":  # columns from the start and the end, read without loading it all
            s = outputs.open_array(output)
            assert s.shape == (257, (noise.size - 512) // 64 + 1)
            head = spectrogram(noise[: 44100 * 3] / 32768, 44100.0, SpectParams())[0]
            np.testing.assert_array_equal(s[:, : head.shape[1]], head)
            first = s.shape[1] - 2000  # the tail's frames start on a step
            tail = spectrogram(noise[64 * first :] / 32768, 44100.0, SpectParams())[0]
            np.testing.assert_array_equal(s[:, first:], tail)
            del s
    assert sizes["long"] > 300e6
    assert peaks["long"] - peaks["short"] < 64 << 20, peaks
