"""spectroflow: vak-compatible spectrogram datasets from animal vocalizations, at scale."""

from .params import DaskSettings, SpectParams, labelset_to_set
from .pipeline import (
    NothingWrittenError,
    make_spectrogram_files,
    process_file,
    run,
    run_request,
)
from .report import FileResult, RunSummary
from .request import RunRequest
from .spectrogram import Spectrogram, spectrogram
from .storage import Location

__all__ = [
    "DaskSettings",
    "FileResult",
    "Location",
    "NothingWrittenError",
    "RunRequest",
    "RunSummary",
    "SpectParams",
    "Spectrogram",
    "labelset_to_set",
    "make_spectrogram_files",
    "process_file",
    "run",
    "run_request",
    "spectrogram",
]
__version__ = "0.1.0"
