"""Validated parameters: spectrogram settings and labelsets.

One pydantic model serves Python callers (validation with messages that name the field), the
Prefect UI (it renders the model as a form) and the documentation (field descriptions).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator, model_validator

TransformType = Literal["log_spect", "log_spect_plus_one"]
#: How outputs are stored: the names of :data:`spectroflow.outputs.FORMATS`.
OutputFormatName = Literal["npz", "npz-compressed", "zarr"]
OutputDtype = Literal["float64", "float32"]
#: Output settings left out of :meth:`SpectParams.fingerprint` at their defaults, so outputs
#: made before they existed (vak's own layout) stay up to date.
_OUTPUT_DEFAULTS = {"output_format": "npz", "output_dtype": "float64"}

#: ``np.savez``'s own argument names: an array key among them raises (``file``) or is silently
#: taken as the argument and the array dropped (``allow_pickle``).
SAVEZ_RESERVED = frozenset(
    name
    for name, p in inspect.signature(np.savez).parameters.items()
    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
)


class SpectParams(BaseModel):
    """Parameters for computing spectrograms, with vak 1.1.0's names and defaults.

    ``thresh`` and ``freq_cutoffs`` must be finite (vak ignores a NaN threshold, writes inf for
    most infinite ones, and fails the run on infinite cutoffs), and the array keys must be names
    ``np.savez`` can store (not one of :data:`SAVEZ_RESERVED`, no NUL character).

    Examples
    --------
    >>> SpectParams().fft_size, SpectParams().step_size
    (512, 64)
    >>> SpectParams(freq_cutoffs=[500, 10000], thresh=6.25, transform_type="log_spect").freq_cutoffs
    (500.0, 10000.0)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    fft_size: Annotated[int, Field(gt=0, description="FFT window size in samples.")] = 512
    step_size: Annotated[
        int, Field(gt=0, description="Samples between the starts of consecutive windows.")
    ] = 64
    freq_cutoffs: tuple[FiniteFloat, FiniteFloat] | None = Field(
        default=None,
        description="Band-pass [low, high] in Hz (order-5 Butterworth, then rows with "
        "low <= f < high are kept). None: no filtering.",
    )
    thresh: FiniteFloat | None = Field(
        default=None,
        description="Threshold applied as vak does (see transform_type); 0 means none, as in vak.",
    )
    transform_type: TransformType | None = Field(
        default=None,
        description="'log_spect': log10(S / max S), floored at -thresh; "
        "'log_spect_plus_one': log10(S + 1), floored at thresh; None: raw power.",
    )
    spect_key: str = Field(default="s", min_length=1, description="Array key of the spectrogram.")
    freqbins_key: str = Field(default="f", min_length=1, description="Array key of frequencies.")
    timebins_key: str = Field(default="t", min_length=1, description="Array key of times.")
    audio_path_key: str = Field(
        default="audio_path", min_length=1, description="Array key of the source audio path."
    )
    output_format: OutputFormatName = Field(
        default="npz",
        description="'npz': uncompressed, as vak writes (np.savez); 'npz-compressed': "
        "np.savez_compressed's layout, smaller, slower to write and read; 'zarr': a zarr group "
        "per recording (.spect.zarr), chunked along time, for reading parts of it.",
    )
    output_dtype: OutputDtype = Field(
        default="float64",
        description="Type of the spectrogram's values: 'float64' as vak writes, or 'float32' "
        "(half the bytes; frequencies and times stay float64).",
    )

    @field_validator("freq_cutoffs")
    @classmethod
    def _low_below_high(cls, value):
        if value is not None and not 0 < value[0] < value[1]:
            raise ValueError(f"needs 0 < low < high, got {list(value)}")
        return value

    @field_validator("spect_key", "freqbins_key", "timebins_key", "audio_path_key")
    @classmethod
    def _savez_can_store(cls, value):
        if value in SAVEZ_RESERVED:
            raise ValueError(
                f"{value!r} is an argument of np.savez, which cannot store an array under it; "
                f"choose another name (reserved: {sorted(SAVEZ_RESERVED)})"
            )
        if "\0" in value:
            raise ValueError(f"{value!r} holds a NUL character, which np.savez cuts the name at")
        return value

    @model_validator(mode="after")
    def _step_within_window(self):
        if self.step_size > self.fft_size:
            raise ValueError(
                f"step_size ({self.step_size}) must not exceed fft_size ({self.fft_size})"
            )
        keys = [self.spect_key, self.freqbins_key, self.timebins_key, self.audio_path_key]
        if len(set(keys)) != len(keys):
            raise ValueError(f"array keys must be distinct, got {keys}")
        return self

    def fingerprint(self) -> str:
        """A short stable hash of every field, recorded with each output as its provenance.

        ``thresh=0`` hashes as ``thresh=None``: vak tests ``if thresh:``, so both give the same
        output and an output made with one is up to date for the other. The output settings
        count only when they are not their defaults (vak's layout): outputs made before they
        existed stay up to date, and any other format or dtype recomputes them.
        """
        fields = self.model_dump(mode="json")
        fields["thresh"] = self.thresh or None
        for name, default in _OUTPUT_DEFAULTS.items():
            if fields[name] == default:
                del fields[name]
        payload = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def range_str(spec: str) -> list[str]:
    """Expand a range specification such as ``"1-3, 5"`` to labels, as vak does.

    Examples
    --------
    >>> range_str("1-3, 5")
    ['1', '2', '3', '5']
    """
    labels: list[int] = []
    for part in "".join(spec.split()).split(","):
        bounds = part.split("-")
        if len(bounds) not in (1, 2) or not all(b.isdigit() for b in bounds):
            raise ValueError(f"cannot parse range {part!r} in labelset {spec!r}")
        low, high = int(bounds[0]), int(bounds[-1])
        labels.extend(range(low, high + 1))
    return [str(label) for label in sorted(labels)]


def labelset_to_set(labelset: str | list | set | frozenset) -> frozenset[str]:
    """Convert a labelset as vak accepts it into a set of string labels.

    A string is split into characters unless it starts with ``range:``; list items are kept whole
    (so multi-character labels go in a list), ints become strings, and ``range:`` items expand.

    Examples
    --------
    >>> sorted(labelset_to_set("abc"))
    ['a', 'b', 'c']
    >>> sorted(labelset_to_set("range: 1-3, 5"))
    ['1', '2', '3', '5']
    >>> sorted(labelset_to_set(["en", "ab", 3]))
    ['3', 'ab', 'en']
    >>> sorted(labelset_to_set(["range: 1-2", "noise"]))
    ['1', '2', 'noise']
    """
    if isinstance(labelset, (set, frozenset)):
        return frozenset(str(label) for label in labelset)
    if isinstance(labelset, str):
        if labelset.startswith("range:"):
            return frozenset(range_str(labelset.removeprefix("range:")))
        return frozenset(labelset)
    if isinstance(labelset, list):
        out: set[str] = set()
        for label in labelset:
            if isinstance(label, bool) or not isinstance(label, (int, str)):
                raise TypeError(
                    f"labelset items must be str or int, got {label!r} ({type(label).__name__})"
                )
            if isinstance(label, str) and label.startswith("range:"):
                out.update(range_str(label.removeprefix("range:")))
            else:
                out.add(str(label))
        return frozenset(out)
    raise TypeError(
        f"labelset must be a str, list or set, got {type(labelset).__name__}: {labelset!r}"
    )


def as_spect_params(value: SpectParams | dict | None) -> SpectParams:
    """Accept a params object, a dict of vak's field names, or None for the defaults."""
    if value is None:
        return SpectParams()
    if isinstance(value, SpectParams):
        return value
    if isinstance(value, dict):
        return SpectParams(**value)
    raise TypeError(
        f"spect_params must be a SpectParams or a dict of its fields, got {type(value).__name__}"
    )


class DaskSettings(BaseModel):
    """Where the per-file work runs: a local cluster by default, another cluster class (SLURM
    jobs, Kubernetes pods), or an existing Dask cluster by address."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        default=None,
        description="Scheduler address of an existing Dask cluster (e.g. tcp://10.0.0.5:8786); "
        "its nannies get spectroflow's worker setup from the run.",
    )
    n_workers: int | None = Field(
        default=None, ge=1,
        description="Workers to start: local processes (default: one per core), or jobs of "
        "cluster_class.",
    )
    threads_per_worker: int = Field(default=1, ge=1, description="Threads per local worker.")
    cluster_class: str | None = Field(
        default=None,
        description="Dotted name of a Dask cluster class to start instead of a LocalCluster "
        "(e.g. dask_jobqueue.SLURMCluster); give n_workers or adapt_maximum.",
    )
    cluster_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for cluster_class (e.g. queue, cores, memory, "
        "job_script_prologue).",
    )
    adapt_minimum: int | None = Field(
        default=None, ge=0, description="Adaptive scaling: fewest workers (with adapt_maximum)."
    )
    adapt_maximum: int | None = Field(
        default=None, ge=1,
        description="Adaptive scaling: most workers; workers come and go with the work left.",
    )
    worker_timeout: float = Field(
        default=600.0, gt=0,
        description="Seconds to wait for the first worker of a cluster_class or existing "
        "cluster (jobs may queue) before the run fails.",
    )

    @property
    def workers(self) -> int:
        """Workers asked for (``n_workers``, ``adapt_maximum``, else one per core): what batches
        are sized for until the cluster says otherwise."""
        return self.n_workers or self.adapt_maximum or os.cpu_count() or 1

    @property
    def adaptive(self) -> bool:
        return self.adapt_maximum is not None

    @model_validator(mode="after")
    def _consistent(self) -> DaskSettings:
        if self.address and (self.cluster_class or self.cluster_kwargs or self.n_workers
                             or self.adaptive):
            raise ValueError("give either address or settings for a new cluster, not both")
        if self.adapt_minimum is not None and not self.adaptive:
            raise ValueError("adapt_minimum needs adapt_maximum")
        if self.adaptive and self.n_workers:
            raise ValueError("give n_workers (a fixed size) or adapt_maximum (adaptive), not both")
        if self.adaptive and (self.adapt_minimum or 0) > (self.adapt_maximum or 0):
            raise ValueError(f"adapt_minimum ({self.adapt_minimum}) exceeds adapt_maximum "
                             f"({self.adapt_maximum})")
        if (self.cluster_class and not (self.n_workers or self.adaptive)
                and "n_workers" not in self.cluster_kwargs):
            raise ValueError(f"{self.cluster_class} starts no worker by itself: give n_workers "
                             "or adapt_maximum")
        return self

    def with_configured_cluster(self) -> DaskSettings:
        """These settings, or, when they ask for no cluster of their own (no address, size or
        class), the cluster Dask is configured to use: its ``scheduler-address`` setting, e.g.
        the environment's ``DASK_SCHEDULER_ADDRESS``. This is how a long-lived service
        (``deployments/serve.py``) shares the cluster it keeps warm with its runs."""
        if (self.address or self.n_workers or self.cluster_class or self.cluster_kwargs
                or self.adaptive):
            return self
        import dask.config

        # The environment first: Dask reads it once, when it is imported.
        address = (os.environ.get("DASK_SCHEDULER_ADDRESS")
                   or dask.config.get("scheduler-address", default=None))
        return self.model_copy(update={"address": address}) if address else self
