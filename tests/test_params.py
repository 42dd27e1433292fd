import pytest
from pydantic import ValidationError

from spectroflow.params import SpectParams, as_spect_params, labelset_to_set


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"fft_size": 0}, "fft_size"),
        ({"step_size": -1}, "step_size"),
        ({"freq_cutoffs": [10000, 500]}, "freq_cutoffs"),
        ({"freq_cutoffs": [500]}, "freq_cutoffs"),
        ({"transform_type": "log"}, "transform_type"),
        ({"spect_key": ""}, "spect_key"),
        ({"fft_sise": 256}, "fft_sise"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValidationError) as info:
        SpectParams(**kwargs)
    assert field in str(info.value)


def test_defaults_and_dict_input_are_vaks():
    params = as_spect_params({"fft_size": 512, "step_size": 64, "freq_cutoffs": [500, 10000]})
    assert params == SpectParams(freq_cutoffs=(500, 10000))
    default = as_spect_params(None)
    assert (default.fft_size, default.step_size, default.thresh, default.transform_type) == (512, 64, None, None)
    assert (default.spect_key, default.freqbins_key, default.timebins_key, default.audio_path_key) == (
        "s", "f", "t", "audio_path")


def test_fingerprint_changes_with_any_field():
    assert SpectParams().fingerprint() == SpectParams().fingerprint()
    assert SpectParams().fingerprint() != SpectParams(step_size=32).fingerprint()
    assert SpectParams().fingerprint() != SpectParams(spect_key="S").fingerprint()


@pytest.mark.parametrize(
    "labelset, expected",
    [
        ("abc", {"a", "b", "c"}),
        ("1235", {"1", "2", "3", "5"}),
        ("range: 1-3, 5", {"1", "2", "3", "5"}),
        ([1, 2, 3, 5], {"1", "2", "3", "5"}),
        (["en", "ab"], {"en", "ab"}),
        (["range: 1-3", "noise"], {"1", "2", "3", "noise"}),
        ({"x", "y"}, {"x", "y"}),
    ],
)
def test_labelset_follows_vak(labelset, expected):
    assert labelset_to_set(labelset) == expected


@pytest.mark.parametrize("bad", [3, [1.5], "range: a-b", [None]])
def test_bad_labelsets_are_refused(bad):
    with pytest.raises((TypeError, ValueError)):
        labelset_to_set(bad)
