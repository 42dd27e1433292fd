""""Up to date" means: written from exactly this source URL, source version and parameters, and
not overwritten since. Every other case recomputes."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spectroflow
from spectroflow import outputs, provenance, storage
from spectroflow.params import SpectParams

from conftest import DATA, WAVS, load_npz, report_rows


def expected(source: str, params: dict) -> np.ndarray:
    sound = spectroflow.audio.read_audio(source, "wav")
    spect_params = SpectParams(**params)
    s = spectroflow.spectrogram(sound.data, sound.samplerate, spect_params)[0]
    return s.astype(spect_params.output_dtype)


def run(src: str, out: str, params: dict | None = None) -> dict:
    summary = spectroflow.run("wav", params or {}, out, audio_dir=src, scheduler="synchronous")
    assert summary.ok, summary.failed
    return summary.counts


def test_parameters_changed_and_changed_back_recompute(tmp_path):
    src, out = tmp_path / "src", str(tmp_path / "out")
    src.mkdir()
    shutil.copy(WAVS[0], src / "a.wav")
    assert run(str(src), out) == {"written": 1}
    assert run(str(src), out, {"fft_size": 1024}) == {"written": 1}
    assert run(str(src), out) == {"written": 1}
    arrays = load_npz(f"{out}/a.wav.spect.npz")
    assert arrays["s"].shape[0] == 257
    np.testing.assert_array_equal(arrays["s"], expected(str(src / "a.wav"), {}))
    assert run(str(src), out) == {"up_to_date": 1}


def test_another_output_format_or_dtype_recomputes_and_the_defaults_keep_old_outputs(tmp_path):
    src, out = tmp_path / "src", str(tmp_path / "out")
    src.mkdir()
    shutil.copy(WAVS[0], src / "a.wav")
    assert run(str(src), out) == {"written": 1}
    # The defaults spelled out are the same outputs: nothing to do.
    assert run(str(src), out, {"output_format": "npz", "output_dtype": "float64"}) == {"up_to_date": 1}
    assert run(str(src), out, {"output_dtype": "float32"}) == {"written": 1}
    assert load_npz(f"{out}/a.wav.spect.npz")["s"].dtype == np.float32
    assert run(str(src), out, {"output_dtype": "float32"}) == {"up_to_date": 1}
    assert run(str(src), out, {"output_dtype": "float32", "output_format": "npz-compressed"}) == {"written": 1}
    assert run(str(src), out) == {"written": 1}
    np.testing.assert_array_equal(load_npz(f"{out}/a.wav.spect.npz")["s"], expected(str(src / "a.wav"), {}))
    # A zarr output is up to date by its group's zarr.json; the npz beside it is another output.
    assert run(str(src), out, {"output_format": "zarr"}) == {"written": 1}
    assert run(str(src), out, {"output_format": "zarr"}) == {"up_to_date": 1}
    assert run(str(src), out) == {"written": 1}, "the npz's marker went with the zarr's computation"
    assert run(str(src), out, {"output_format": "zarr"}) == {"written": 1}
    os.utime(f"{out}/a.wav.spect.zarr/zarr.json", (1e9, 1e9))  # the group replaced by hand
    assert run(str(src), out, {"output_format": "zarr"}) == {"written": 1}


def test_source_trees_a_then_b_then_a_into_one_destination(tmp_path):
    out = str(tmp_path / "out")
    for tree, wav in (("A", WAVS[0]), ("B", WAVS[1])):
        (tmp_path / tree).mkdir()
        shutil.copy(wav, tmp_path / tree / "x.wav")
    a, b = str(tmp_path / "A"), str(tmp_path / "B")
    assert run(a, out) == {"written": 1}
    assert run(b, out) == {"written": 1}
    assert run(a, out) == {"written": 1}
    arrays = load_npz(f"{out}/x.wav.spect.npz")
    assert arrays["audio_path"].item() == os.path.join(a, "x.wav")
    np.testing.assert_array_equal(arrays["s"], expected(os.path.join(a, "x.wav"), {}))


def test_a_moved_source_tree_recomputes_with_its_new_path(tmp_path):
    # A rename keeps size, mtime and inode (as rsync -a or cp -p keep size and mtime): only the
    # URL tells the stored audio_path is wrong.
    old, new, out = tmp_path / "old", tmp_path / "new", str(tmp_path / "out")
    old.mkdir()
    shutil.copy2(WAVS[0], old / "a.wav")
    assert run(str(old), out) == {"written": 1}
    old.rename(new)
    assert run(str(new), out) == {"written": 1}
    assert load_npz(f"{out}/a.wav.spect.npz")["audio_path"].item() == str(new / "a.wav")
    assert run(str(new), out) == {"up_to_date": 1}


def test_an_output_overwritten_by_hand_is_recomputed(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    shutil.copy(WAVS[0], src / "a.wav")
    assert run(str(src), str(out)) == {"written": 1}
    np.savez(out / "a.wav.spect.npz", s=np.zeros((2, 2)), f=np.zeros(2), t=np.zeros(2),
             audio_path=str(src / "a.wav"))
    assert run(str(src), str(out)) == {"written": 1}
    np.testing.assert_array_equal(load_npz(out / "a.wav.spect.npz")["s"],
                                  expected(str(src / "a.wav"), {}))


def test_stale_markers_are_removed_when_their_output_is_recomputed(tmp_path):
    src, out = tmp_path / "src", str(tmp_path / "out")
    src.mkdir()
    shutil.copy(WAVS[0], src / "a.wav")
    for params in ({}, {"step_size": 32}, {}, {"fft_size": 256}):
        run(str(src), out, params)
    assert len(provenance.markers(out)["a.wav.spect.npz"]) == 1


def test_s3_earlier_version_uploaded_again_recomputes(s3):
    fs, bucket = s3
    src, out = f"s3://{bucket}/audio", f"s3://{bucket}/spect"
    v1, v2 = WAVS[0].read_bytes(), WAVS[1].read_bytes()
    for content, counts in ((v1, {"written": 1}), (v2, {"written": 1}), (v1, {"written": 1}),
                            (v1, {"up_to_date": 1})):
        fs.pipe(f"{bucket}/audio/x.wav", content)
        fs.invalidate_cache()
        assert run(src, out) == counts
    arrays = load_npz(f"{out}/x.wav.spect.npz")
    np.testing.assert_array_equal(arrays["s"], expected(f"{src}/x.wav", {}))


def test_s3_source_prefixes_a_then_b_and_parameters_back_and_forth(s3):
    fs, bucket = s3
    out = f"s3://{bucket}/spect"
    fs.pipe(f"{bucket}/A/x.wav", WAVS[0].read_bytes())
    fs.pipe(f"{bucket}/B/x.wav", WAVS[1].read_bytes())
    fs.invalidate_cache()
    a, b = f"s3://{bucket}/A", f"s3://{bucket}/B"
    assert run(a, out) == {"written": 1}
    assert run(b, out) == {"written": 1}
    assert run(a, out) == {"written": 1}
    assert load_npz(f"{out}/x.wav.spect.npz")["audio_path"].item() == f"{a}/x.wav"
    assert run(a, out, {"fft_size": 1024}) == {"written": 1}
    assert run(a, out) == {"written": 1}
    np.testing.assert_array_equal(load_npz(f"{out}/x.wav.spect.npz")["s"], expected(f"{a}/x.wav", {}))


# A property: after any sequence of runs, with changing parameters, source trees and source
# contents, every output holds exactly what a fresh computation of its source gives.

PARAMS = [{}, {"fft_size": 256, "step_size": 32}, {"transform_type": "log_spect_plus_one"},
          {"output_dtype": "float32"}, {"output_format": "npz-compressed"},
          {"output_format": "zarr"}]
Step = st.one_of(
    st.tuples(st.just("run"), st.sampled_from(["A", "B"]), st.integers(0, len(PARAMS) - 1)),
    st.tuples(st.just("replace"), st.sampled_from(["A", "B"]), st.integers(0, 2**16)),
)


def _tiny_wav(path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    soundfile.write(path, rng.normal(0, 0.1, 2048), 8000, subtype="FLOAT")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(Step, min_size=1, max_size=8))
def test_every_output_equals_a_fresh_computation_after_any_sequence_of_runs(tmp_path_factory, steps):
    root = tmp_path_factory.mktemp("runs")
    for tree in ("A", "B"):
        (root / tree).mkdir()
        for name in ("x.wav", "y.wav"):
            _tiny_wav(root / tree / name, sum(map(ord, tree + name)))
    out = str(root / "out")
    for op, tree, arg in steps:
        src = str(root / tree)
        if op == "replace":
            _tiny_wav(root / tree / "x.wav", arg)
            continue
        params = PARAMS[arg]
        run(src, out, params)
        suffix = outputs.FORMATS[SpectParams(**params).output_format].suffix
        for name in ("x.wav", "y.wav"):
            spect = outputs.read(storage.Location(url=os.path.join(out, name + suffix)))
            assert spect.audio_path == os.path.join(src, name)
            np.testing.assert_array_equal(spect.data, expected(os.path.join(src, name), params))


#: Names whose outputs and markers list in another order than the recordings (``-`` and `` ``
#: sort before ``.``), beside a folder of the same stem and names that share a prefix.
AWKWARD = ("a.wav", "a.wav-b.wav", "a.wav b.wav", "a/b.wav", "a0.wav", "a.wav.d/c.wav", "é.wav")


@pytest.mark.parametrize("output_format", ["npz", "zarr"])
def test_names_that_prefix_one_another_are_each_up_to_date_or_not(tmp_path, output_format):
    src, out = tmp_path / "src", str(tmp_path / "out")
    params = {"output_format": output_format}
    for seed, name in enumerate(AWKWARD):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        _tiny_wav(src / name, seed)
    assert run(str(src), out, params) == {"written": len(AWKWARD)}
    assert run(str(src), out, params) == {"up_to_date": len(AWKWARD)}
    for changed in ("a.wav", "a.wav b.wav"):
        _tiny_wav(src / changed, 99)
    assert run(str(src), out, params) == {"up_to_date": len(AWKWARD) - 2, "written": 2}


def test_s3_keys_that_prefix_one_another_are_each_up_to_date_or_not(s3):
    fs, bucket = s3
    names = (*AWKWARD, "x.wav", "x.wav/y.wav")  # an object and a "folder" of the same name
    for seed, name in enumerate(names):
        buffer = io.BytesIO()
        soundfile.write(buffer, np.random.default_rng(seed).normal(0, 0.1, 2048), 8000,
                        format="WAV", subtype="FLOAT")
        fs.pipe(f"{bucket}/audio/{name}", buffer.getvalue())
    src, out = f"s3://{bucket}/audio", f"s3://{bucket}/spect"
    assert run(src, out) == {"written": len(names)}
    assert run(src, out) == {"up_to_date": len(names)}
    fs.pipe(f"{bucket}/audio/x.wav", (WAVS[0]).read_bytes())
    fs.invalidate_cache()
    assert run(src, out) == {"up_to_date": len(names) - 1, "written": 1}


def test_outputs_asked_for_out_of_order_are_refused(tmp_path):
    index = provenance.DestinationIndex(str(tmp_path))
    assert not index.has_output("b.wav.spect.npz")
    with pytest.raises(ValueError, match="out of order"):
        index.has_output("a.wav.spect.npz")


def test_a_recording_left_out_says_an_earlier_output_remains(tmp_path):
    # Skipped by a new labelset, or now unreadable: the output an earlier run wrote is not this
    # run's, and the report says it is there.
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for name, labels in (("a", "ab"), ("b", "bc")):
        shutil.copy(WAVS[0], src / f"{name}.wav")
        (src / f"{name}.csv").write_text("onset_s,offset_s,label\n" + "".join(
            f"{i * 0.1},{i * 0.1 + 0.05},{lab}\n" for i, lab in enumerate(labels)))
    annots = sorted(str(p) for p in src.glob("*.csv"))

    def annotated_run(labelset):
        return spectroflow.run("wav", {}, str(out), audio_dir=str(src), annot_list=annots,
                               annot_format="simple-seq", labelset=labelset,
                               scheduler="synchronous")

    assert annotated_run("abc").counts == {"written": 2}
    summary = annotated_run("ab")
    assert summary.counts == {"up_to_date": 1, "skipped": 1}
    (skipped,) = [r for r in report_rows(summary.report).values() if r["status"] == "skipped"]
    assert skipped["reason"].endswith(f"an output of an earlier run remains: {out / 'b.wav.spect.npz'}")

    (src / "a.wav").write_bytes(b"RIFF not audio any more")
    summary = annotated_run("abc")
    assert summary.counts == {"up_to_date": 1, "failed": 1}
    assert summary.failed[0][1].endswith(f"an output of an earlier run remains: {out / 'a.wav.spect.npz'}")


@pytest.mark.slow
def test_the_flow_recomputes_parameters_changed_and_changed_back(prefect_api, tmp_path):
    from spectroflow.flows.spectrograms import spectrogram_flow
    from spectroflow.params import DaskSettings

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    shutil.copy(WAVS[0], src / "a.wav")
    counts = []
    for params in ({}, {"fft_size": 1024}, {}, {}):
        state = spectrogram_flow(source=str(src), destination=str(out), spect_params=params,
                                 dask=DaskSettings(n_workers=1), return_state=True)
        counts.append(state.result()["counts"])
    assert counts == [{"written": 1}, {"written": 1}, {"written": 1}, {"up_to_date": 1}]
    np.testing.assert_array_equal(load_npz(out / "a.wav.spect.npz")["s"],
                                  expected(str(src / "a.wav"), {}))


def test_a_corrected_rec_file_recomputes_its_cbin(tmp_path):
    # The .rec beside a .cbin holds its sampling rate: the output depends on both.
    src, out = tmp_path / "src", str(tmp_path / "out")
    src.mkdir()
    stem = "gy6or6_baseline_230312_0808.138"
    for suffix in (".cbin", ".rec"):
        shutil.copy(DATA / "gy6or6/032312" / f"{stem}{suffix}", src / f"{stem}{suffix}")

    def cbin_run() -> dict:
        return spectroflow.run("cbin", {}, out, audio_dir=str(src), scheduler="synchronous").counts

    assert cbin_run() == {"written": 1}
    assert cbin_run() == {"up_to_date": 1}
    rec = src / f"{stem}.rec"
    rec.write_text(rec.read_text().replace("ADFREQ =   32000", "ADFREQ =   16000"))
    assert cbin_run() == {"written": 1}
    t = load_npz(f"{out}/{stem}.cbin.spect.npz")["t"]
    assert t[1] - t[0] == pytest.approx(64 / 16000)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_outputs_looked_up_one_by_one_are_known_as_listed_ones(where, tmp_path, request):
    """Runs over a few named recordings (an event's) look their outputs up, in any order,
    instead of listing the destination: the same answers as the listings give."""
    names = ("a.wav", "a.wav b.wav", "d/x.wav", "e.wav")
    if where == "s3":
        fs, bucket = request.getfixturevalue("s3")
        src, out = f"s3://{bucket}/audio", f"s3://{bucket}/spect"
        for name in names:
            fs.pipe(f"{bucket}/audio/{name}", WAVS[0].read_bytes())
    else:
        src, out = str(tmp_path / "src"), str(tmp_path / "out")
        for name in names:
            (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(WAVS[0], tmp_path / "src" / name)
    assert run(src, out) == {"written": 4}
    files = [f"{src}/{name}" for name in names]

    def named_run() -> dict:
        summary = spectroflow.run("wav", {}, out, audio_files=files, scheduler="synchronous")
        assert summary.ok, summary.failed
        return summary.counts

    assert named_run() == {"up_to_date": 4}
    wanted = [f"{name}.spect.npz" for name in (*names, "missing.wav")]
    listed = provenance.DestinationIndex(out)
    in_order = sorted(wanted, key=lambda rel: rel.removesuffix(".spect.npz"))  # as listings run
    expected = {rel: (listed.has_output(rel), listed.stale_markers(rel)) for rel in in_order}
    looked = provenance.LookedUp(out, reversed(wanted))
    assert {rel: (looked.has_output(rel), looked.stale_markers(rel)) for rel in wanted} == expected
    assert expected["missing.wav.spect.npz"] == (False, [])
    # A changed recording among those named is recomputed, the others are left alone.
    storage.as_location(files[2]).write_bytes(WAVS[1].read_bytes())
    if where == "s3":
        fs.invalidate_cache()
    assert named_run() == {"up_to_date": 3, "written": 1}
