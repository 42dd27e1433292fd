"""Output formats: what is written reads back the same, under vak's keys or the ones asked for."""

from __future__ import annotations

import io

import numpy as np
import pytest

from spectroflow import outputs
from spectroflow.params import SpectParams
from spectroflow.provenance import OUTPUT_SUFFIX
from spectroflow.spectrogram import Spectrogram
from spectroflow.storage import Location


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
    with np.load(io.BytesIO(Location(url=url).read_bytes()), allow_pickle=False) as npz:
        assert sorted(npz.files) == ["S", "audio_path", "f", "times"]
        assert npz["S"].dtype == np.float64 and npz["audio_path"].shape == ()


def test_the_registry_names_each_format_and_provenance_finds_outputs_by_its_suffix():
    assert outputs.FORMATS == {"npz": outputs.NPZ}
    assert OUTPUT_SUFFIX == outputs.NPZ.suffix == ".spect.npz"
