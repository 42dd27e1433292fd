"""Output formats: how a :class:`~spectroflow.spectrogram.Spectrogram` is written and read.

One entry of :data:`FORMATS` per format (its file suffix, writer and reader), as
:data:`spectroflow.audio.READERS` has one reader per audio format: the pipeline writes with it,
provenance finds outputs by its suffix, and plots and previews read with it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from .params import SpectParams
from .spectrogram import Spectrogram
from .storage import Location


@dataclass(frozen=True)
class OutputFormat:
    """A way to store spectrograms: ``write(spect, file, params)``, ``read(bytes, params)``.

    ``params`` names the arrays (``spect_key``, ``freqbins_key``, ``timebins_key``,
    ``audio_path_key``).
    """

    name: str
    suffix: str
    write: Callable[[Spectrogram, BinaryIO, SpectParams], None]
    read: Callable[[bytes, SpectParams], Spectrogram]


def _write_npz(spect: Spectrogram, fh: BinaryIO, params: SpectParams) -> None:
    # Uncompressed, as vak writes (np.savez).
    arrays: dict[str, Any] = {params.spect_key: spect.data, params.freqbins_key: spect.frequencies,
                              params.timebins_key: spect.times,
                              params.audio_path_key: spect.audio_path}
    np.savez(fh, **arrays)


def _read_npz(raw: bytes, params: SpectParams) -> Spectrogram:
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        audio_path = npz[params.audio_path_key] if params.audio_path_key in npz.files else ""
        return Spectrogram(npz[params.spect_key], npz[params.freqbins_key],
                           npz[params.timebins_key], str(audio_path))


#: vak's ``.spect.npz``: ``np.savez`` of the four arrays.
NPZ = OutputFormat("npz", ".spect.npz", _write_npz, _read_npz)
#: Every output format, by name.
FORMATS: dict[str, OutputFormat] = {f.name: f for f in (NPZ,)}


def write(location: Location, spect: Spectrogram, params: SpectParams,
          output_format: OutputFormat = NPZ) -> str | None:
    """Write ``spect`` to ``location`` whole or not at all; returns the version written."""
    return location.write_with(lambda fh: output_format.write(spect, fh, params))


def read(location: Location, params: SpectParams | None = None,
         output_format: OutputFormat = NPZ) -> Spectrogram:
    """The spectrogram stored at ``location``, its arrays named as in ``params``."""
    return output_format.read(location.read_bytes(), params or SpectParams())
