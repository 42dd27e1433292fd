"""spectroflow: vak-compatible spectrogram datasets from animal vocalization recordings, at scale."""

from .params import SpectParams, labelset_to_set
from .pipeline import make_spectrogram_files, process_file, run
from .report import FileResult, RunSummary
from .spectrogram import spectrogram

__all__ = [
    "FileResult",
    "RunSummary",
    "SpectParams",
    "labelset_to_set",
    "make_spectrogram_files",
    "process_file",
    "run",
    "spectrogram",
]
__version__ = "0.1.0"
