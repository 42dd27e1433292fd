import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib import mlab

from spectroflow.audio import read_audio
from spectroflow.params import SpectParams
from spectroflow.spectrogram import (
    SpectrogramError,
    frame_times,
    power_spectrum,
    spectrogram,
    timebin_dur,
)

from conftest import (
    REFERENCE,
    REFERENCE_PARAMS,
    WHOLE_FILES,
    assert_matches_fingerprint,
    sample_path,
)


def compute(subset_name: str, params: SpectParams) -> dict:
    path = sample_path(subset_name)
    sound = read_audio(str(path), path.suffix[1:])
    s, f, t = spectrogram(sound.data, sound.samplerate, params)
    return {"s": s, "f": f, "t": t, "audio_path": np.array(str(path))}


@pytest.mark.parametrize("param_set", sorted(REFERENCE_PARAMS))
@pytest.mark.parametrize("subset_name", WHOLE_FILES)
def test_whole_arrays_match_vak(param_set, subset_name):
    ref = np.load(REFERENCE / param_set / f"{subset_name}.spect.npz")
    got = compute(subset_name, SpectParams(**REFERENCE_PARAMS[param_set]))
    for key in ("s", "f", "t"):
        assert got[key].dtype == ref[key].dtype == np.float64
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-9, atol=0, err_msg=key)


def test_every_sample_recording_matches_its_fingerprint(fingerprints):
    assert len(fingerprints) == 52
    for key, fp in fingerprints.items():
        param_set, subset_name = key.removesuffix(".spect.npz").split("/", 1)
        assert_matches_fingerprint(compute(subset_name, SpectParams(**REFERENCE_PARAMS[param_set])), fp)


# A recording one window long is a case tested on purpose; matplotlib warns of it.
@pytest.mark.filterwarnings("ignore:Only one segment is calculated:UserWarning")
@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(64, 3000),
    log2_fft=st.integers(4, 9),
    step_frac=st.floats(0.05, 1.0),
    samplerate=st.sampled_from([8000.0, 22050.0, 32000.0, 44100.0]),
    seed=st.integers(0, 2**32 - 1),
    as_int16=st.booleans(),
)
def test_power_spectrum_equals_mlab_specgram(n, log2_fft, step_frac, samplerate, seed, as_int16):
    fft_size = 2**log2_fft
    step = max(1, int(fft_size * step_frac))
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 3000, max(n, fft_size))
    if as_int16:
        x = x.astype(np.int16)
    ref_s, ref_f, ref_t = mlab.specgram(x, fft_size, samplerate, noverlap=fft_size - step)[:3]
    s, f, t = power_spectrum(x, samplerate, fft_size, step)
    np.testing.assert_allclose(s, ref_s, rtol=1e-9, atol=1e-12 * ref_s.max())
    np.testing.assert_array_equal(f, ref_f)
    np.testing.assert_array_equal(t, ref_t)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    thresh=st.one_of(st.none(), st.floats(0.5, 10)),
    transform=st.sampled_from([None, "log_spect", "log_spect_plus_one"]),
)
def test_transforms_follow_vak_rules(seed, thresh, transform):
    x = np.random.default_rng(seed).normal(0, 1, 4096)
    params = SpectParams(thresh=thresh, transform_type=transform)
    raw = mlab.specgram(x, 512, 32000.0, noverlap=448)[0]
    expected = raw.copy()
    if transform == "log_spect":
        expected = np.log10(expected / expected.max())
        if thresh:
            expected[expected < -thresh] = -thresh
    elif transform == "log_spect_plus_one":
        expected = np.log10(expected + 1)
        if thresh:
            expected[expected < thresh] = thresh
    elif thresh:
        expected[expected < thresh] = thresh
    s, _, _ = spectrogram(x, 32000.0, params)
    np.testing.assert_allclose(s, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("data", "params", "message"),
    [
        (np.zeros(100), SpectParams(), "fewer than one FFT window"),
        (np.zeros(4096), SpectParams(transform_type="log_spect"), "silent"),
        (np.array([0.0, np.nan] * 2048), SpectParams(), "NaN"),
        (np.ones(4096), SpectParams(freq_cutoffs=(500, 10000)), "Nyquist"),
        (np.ones((4096, 2)), SpectParams(), "1-d"),
    ],
)
def test_audio_the_parameters_cannot_handle_is_refused(data, params, message):
    with pytest.raises(SpectrogramError, match=message):
        spectrogram(data, 16000.0, params)


@pytest.fixture(scope="module")
def birdsong() -> np.ndarray:
    return read_audio(str(sample_path("birdsongrec/Bird0/3.wav")), "wav").data


@pytest.mark.parametrize("cutoffs", [(5, 100), (50, 500)])
@pytest.mark.parametrize(("transform", "thresh"), [(None, None), ("log_spect", 6.25)])
def test_unstable_bandpass_is_refused_not_written(birdsong, cutoffs, transform, thresh):
    # At 32 kHz these order-5 Butterworth filters have poles outside the unit circle: vak writes
    # NaN/inf (from 5-100 Hz) or inf from a diverging but finite signal (50-500 Hz).
    params = SpectParams(freq_cutoffs=cutoffs, transform_type=transform, thresh=thresh)
    with pytest.raises(SpectrogramError, match=r"non-finite values of \d+ .*numerically unstable"):
        spectrogram(birdsong, 32000.0, params)


@pytest.mark.parametrize("transform", [None, "log_spect", "log_spect_plus_one"])
def test_power_that_overflows_is_refused_not_written(tmp_path, birdsong, transform):
    # A float wav can hold any double; vak would write inf (or NaN under log_spect).
    path = tmp_path / "loud.wav"
    soundfile.write(str(path), birdsong * 1e200, 32000, subtype="DOUBLE")
    sound = read_audio(str(path), "wav")
    with pytest.raises(SpectrogramError, match=r"non-finite values of .*overflows float64"):
        spectrogram(sound.data, sound.samplerate, SpectParams(transform_type=transform))


@pytest.mark.parametrize("thresh", [None, 0.0])
def test_log_spect_without_thresh_keeps_vaks_minus_inf_for_digital_silence(birdsong, thresh):
    # Exact zeros over several windows give S == 0 there, whose log10 vak writes as -inf.
    x = birdsong.copy()
    x[32000:40000] = 0.0
    s, _, _ = spectrogram(x, 32000.0, SpectParams(transform_type="log_spect", thresh=thresh))
    raw = mlab.specgram(x, 512, 32000.0, noverlap=448)[0]
    with np.errstate(divide="ignore"):
        expected = np.log10(raw / raw.max())
    assert np.isneginf(s).any() and not np.isnan(s).any()
    np.testing.assert_array_equal(np.isneginf(s), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(s[finite], expected[finite], rtol=1e-9, atol=1e-12)


def test_timebin_dur_is_rounded_then_truncated_as_vak_does():
    """vak 1.1.0's timebin_dur_from_vec: the mean step to 5 decimals, then truncated there."""
    assert timebin_dur(np.arange(5) * 64 / 32000) == 0.002
    assert timebin_dur(np.arange(5) * 64 / 44100) == 0.00145
    assert timebin_dur(frame_times(0, 17, 8000.0, 512, 441)) == 0.05513  # 0.055125 rounds up
    assert timebin_dur(frame_times(0, 10, 48000.0, 512, 100)) == 0.00207  # 0.0020833: truncated
    assert np.isnan(timebin_dur(np.array([0.5])))
