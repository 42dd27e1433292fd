"""Output formats: what is written reads back the same, under vak's keys or the ones asked for."""

from __future__ import annotations

import typing
import zipfile

import numpy as np
import pytest
import zarr

from spectroflow import outputs, storage
from spectroflow.params import OutputFormatName, SpectParams
from spectroflow.provenance import OUTPUT_SUFFIX
from spectroflow.spectrogram import Spectrogram, SpectrogramStream, spectrogram
from spectroflow.storage import Location

from conftest import load_npz


def _spect() -> Spectrogram:
    rng = np.random.default_rng(0)
    return Spectrogram(rng.random((257, 40)), np.linspace(0, 16000, 257),
                       np.arange(40) * 0.002, "s3://lab/audio/a.wav")


@pytest.mark.parametrize("where", ["local", "memory"])
def test_an_npz_reads_back_as_written_with_the_keys_asked_for(tmp_path, where):
    params = SpectParams(spect_key="S", timebins_key="times")
    url = (str(tmp_path / "a.wav.spect.npz") if where == "local"
           else f"memory://outputs-{tmp_path.name}/a.wav.spect.npz")
    spect = _spect()
    assert outputs.write(Location(url=url), spect, params) is not None
    back = outputs.read(Location(url=url), params)
    np.testing.assert_array_equal(back.data, spect.data)
    np.testing.assert_array_equal(back.frequencies, spect.frequencies)
    np.testing.assert_array_equal(back.times, spect.times)
    assert back.audio_path == spect.audio_path
    arrays = load_npz(url)
    assert sorted(arrays) == ["S", "audio_path", "f", "times"]
    assert arrays["S"].dtype == np.float64 and arrays["audio_path"].shape == ()


def test_the_registry_names_each_format_and_provenance_finds_outputs_by_its_suffix():
    assert outputs.FORMATS == {"npz": outputs.NPZ, "npz-compressed": outputs.NPZ_COMPRESSED,
                               "zarr": outputs.ZARR}
    assert set(outputs.FORMATS) == set(typing.get_args(OutputFormatName))
    assert outputs.NPZ.suffix == outputs.NPZ_COMPRESSED.suffix == OUTPUT_SUFFIX == ".spect.npz"
    assert (outputs.ZARR.suffix, outputs.ZARR.listed) == (".spect.zarr", "/zarr.json")


@pytest.mark.parametrize("output_dtype", ["float64", "float32"])
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_a_zarr_output_is_a_group_chunked_along_time_that_zarr_reads(tmp_path, monkeypatch,
                                                                     output_dtype, streamed):
    monkeypatch.setattr(outputs, "ZARR_CHUNK_FRAMES", 100)
    x = np.random.default_rng(0).standard_normal(40000)
    params = SpectParams(output_format="zarr", output_dtype=output_dtype, spect_key="S")
    s, f, t = spectrogram(x, 16000.0, params)
    spect = (SpectrogramStream(lambda: np.array_split(x, 7), x.size, 16000.0, params, "a.wav")
             if streamed else Spectrogram(s, f, t, "a.wav"))
    path = tmp_path / "a.wav.spect.zarr"
    version = outputs.write(Location(url=str(path)), spect, params)
    assert version == storage.file_info(str(path / "zarr.json")).version
    group = zarr.open(str(path), mode="r")
    assert sorted(group.array_keys()) == ["S", "audio_path", "f", "t"]
    assert group["S"].dtype == np.dtype(output_dtype) and group["S"].chunks == (s.shape[0], 100)
    np.testing.assert_array_equal(group["S"][:, 150:260], s[:, 150:260].astype(output_dtype))
    np.testing.assert_array_equal(group["t"][...], t)
    np.testing.assert_array_equal(group["f"][...], f)
    assert group["audio_path"][()] == "a.wav"
    back = outputs.read(Location(url=str(path)), SpectParams(spect_key="S"))  # found by its suffix
    np.testing.assert_array_equal(back.data, s.astype(output_dtype))
    np.testing.assert_array_equal(outputs.read_times(Location(url=str(path))), t)


def test_a_zarr_output_cut_short_shows_no_group_and_a_new_one_replaces_the_old(tmp_path):
    params = SpectParams(output_format="zarr")
    where = Location(url=str(tmp_path / "a.wav.spect.zarr"))
    x = np.random.default_rng(0).standard_normal(40000)
    outputs.write(where, Spectrogram(*spectrogram(x, 16000.0, params), "old.wav"), params)

    def failing():
        yield x[:20000]
        raise OSError("the recording could not be read further")

    stream = SpectrogramStream(lambda: failing(), x.size, 16000.0, params, "a.wav")
    with pytest.raises(OSError, match="read further"):
        outputs.write(where, stream, params)
    with pytest.raises(FileNotFoundError):
        zarr.open_group(where.url, mode="r")  # no group: nothing partial is visible
    assert not (tmp_path / "a.wav.spect.zarr" / "zarr.json").exists()
    outputs.write(where, Spectrogram(*spectrogram(x[:30000], 16000.0, params), "new.wav"), params)
    assert zarr.open_group(where.url, mode="r")["audio_path"][()] == "new.wav"


@pytest.mark.parametrize("output_dtype", ["float64", "float32"])
@pytest.mark.parametrize("output_format", ["npz", "npz-compressed"])
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_each_format_and_dtype_is_what_np_load_reads(tmp_path, output_format, output_dtype,
                                                      streamed):
    x = np.random.default_rng(0).standard_normal(40000)
    params = SpectParams(output_format=output_format, output_dtype=output_dtype)
    s, f, t = spectrogram(x, 16000.0, params)
    spect = (SpectrogramStream(lambda: np.array_split(x, 3), x.size, 16000.0, params, "a.wav")
             if streamed else Spectrogram(s, f, t, "a.wav"))
    path = tmp_path / "a.wav.spect.npz"
    outputs.write(Location(url=str(path)), spect, params)
    with np.load(path, allow_pickle=False) as npz:
        assert npz["s"].dtype == np.dtype(output_dtype)
        np.testing.assert_array_equal(npz["s"], s.astype(output_dtype))
        np.testing.assert_array_equal(npz["f"], f)
        np.testing.assert_array_equal(npz["t"], t)
        assert npz["f"].dtype == npz["t"].dtype == np.float64
        assert npz["audio_path"].item() == "a.wav"
    with zipfile.ZipFile(path) as archive:
        compression = {i.compress_type for i in archive.infolist()}
    assert compression == {zipfile.ZIP_DEFLATED if output_format == "npz-compressed"
                           else zipfile.ZIP_STORED}
    back = outputs.read(Location(url=str(path)), params)
    np.testing.assert_array_equal(back.data, s.astype(output_dtype))
    # The bytes of the spectrogram's values, as a smaller dtype or compression makes them.
    assert path.stat().st_size < s.nbytes if (output_dtype, output_format) != ("float64", "npz") \
        else path.stat().st_size > s.nbytes


def test_zarr_outputs_on_s3_are_versioned_per_write_and_named_as_written(s3):
    fs, bucket = s3
    params = SpectParams(output_format="zarr")
    spect = _spect()
    # [1] is a glob pattern to fsspec (it matches "take1"), :: a URL chain: both are plain names.
    names = ["take1.wav.spect.zarr", "take[1].wav.spect.zarr", "a::b.wav.spect.zarr"]
    versions = {name: outputs.write(Location(url=f"s3://{bucket}/out/{name}"), spect, params)
                for name in names}
    again = outputs.write(Location(url=f"s3://{bucket}/out/take[1].wav.spect.zarr"), spect, params)
    assert again != versions["take[1].wav.spect.zarr"], "a rewrite is another version"
    fs.invalidate_cache()
    for name in names:  # each group whole, take1's too
        back = outputs.read(Location(url=f"s3://{bucket}/out/{name}"))
        np.testing.assert_array_equal(back.data, spect.data)


def test_reading_takes_the_format_from_the_name():
    zarr_params = SpectParams(output_format="zarr")
    compressed = SpectParams(output_format="npz-compressed")
    assert outputs.format_of(Location(url="a.wav.spect.npz"), zarr_params) is outputs.NPZ
    assert outputs.format_of(Location(url="a.wav.spect.npz"), compressed) is outputs.NPZ_COMPRESSED
    assert outputs.format_of(Location(url="s3://b/a.wav.spect.zarr/")) is outputs.ZARR
