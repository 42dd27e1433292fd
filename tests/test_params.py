import pytest
from pydantic import ValidationError

from spectroflow.params import SpectParams, as_spect_params, labelset_to_set


@pytest.mark.parametrize(
    ("kwargs", "field"),
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


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"thresh": float("nan")}, "thresh", "finite"),
        ({"thresh": float("inf")}, "thresh", "finite"),
        ({"thresh": float("-inf")}, "thresh", "finite"),
        ({"freq_cutoffs": [500, float("inf")]}, "freq_cutoffs", "finite"),
        ({"freq_cutoffs": [float("nan"), 10000]}, "freq_cutoffs", "finite"),
        *(
            ({key: name}, key, "np.savez")
            for key in ("spect_key", "freqbins_key", "timebins_key", "audio_path_key")
            for name in ("file", "allow_pickle")
        ),
        ({"spect_key": "s\0x"}, "spect_key", "NUL"),
    ],
)
def test_values_that_would_write_wrong_outputs_are_refused(kwargs, field, words):
    with pytest.raises(ValidationError) as info:
        SpectParams(**kwargs)
    assert field in str(info.value) and words in str(info.value)


#: Values of every type SpectParams' fields take; each field is varied with those it accepts.
CANDIDATES = [1, 2, 32, 1024, 0.5, 6.25, "log_spect", "log_spect_plus_one", "other",
              (500.0, 10000.0), (300.0, 8000.0), "npz-compressed", "float32"]


def test_fingerprint_changes_with_every_field():
    base = SpectParams()
    variants = {}
    for name in SpectParams.model_fields:
        for value in CANDIDATES:
            try:
                params = SpectParams(**{name: value})
            except ValidationError:
                continue
            if getattr(params, name) != getattr(base, name):
                variants[(name, value)] = params
        # A new field of a type no candidate fits fails here until CANDIDATES covers it.
        assert any(field == name for field, _ in variants), f"no candidate value varies {name}"
    fingerprints = {key: params.fingerprint() for key, params in variants.items()}
    assert base.fingerprint() == SpectParams().fingerprint()
    assert base.fingerprint() not in fingerprints.values()
    assert len(set(fingerprints.values())) == len(fingerprints), "two variants share a fingerprint"


@pytest.mark.parametrize("transform_type", [None, "log_spect", "log_spect_plus_one"])
def test_fingerprint_of_thresh_0_is_that_of_no_thresh(transform_type):
    none = SpectParams(transform_type=transform_type)
    for zero in (0, 0.0, -0.0):
        assert SpectParams(thresh=zero, transform_type=transform_type).fingerprint() == (
            none.fingerprint()
        )
    assert SpectParams(thresh=0.5, transform_type=transform_type).fingerprint() != (
        none.fingerprint()
    )


@pytest.mark.parametrize(
    ("labelset", "expected"),
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


def test_settings_asking_for_no_cluster_take_the_one_dask_is_configured_with(monkeypatch):
    """A service (deployments/serve.py) shares its cluster with its runs through Dask's own
    setting; a run that asks for a cluster of its own keeps it."""
    from spectroflow.params import DaskSettings

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert DaskSettings().with_configured_cluster().address is None
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:8786")
    assert DaskSettings().with_configured_cluster().address == "tcp://127.0.0.1:8786"
    own = [DaskSettings(n_workers=2), DaskSettings(address="tcp://127.0.0.1:9999"),
           DaskSettings(adapt_maximum=3),
           DaskSettings(cluster_class="dask_jobqueue.SLURMCluster", n_workers=1)]
    assert [s.with_configured_cluster() for s in own] == own
