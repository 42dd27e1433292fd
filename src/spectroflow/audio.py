"""Reading audio from any storage backend, one reader per format.

Adding a format is one entry in :data:`READERS`. Readers return float64 samples for the soundfile
formats (as ``soundfile.read`` gives vak) and int16 samples for ``.cbin`` (as ``evfuncs.load_cbin``
gives vak); multichannel audio keeps its first channel, as ``evfuncs`` does for ``.cbin``.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soundfile

from . import storage


class AudioError(ValueError):
    """The file cannot be read as audio of the expected format (a property of the file)."""


@dataclass(frozen=True)
class Sound:
    """Samples of one channel and their sampling rate."""

    data: np.ndarray
    samplerate: float
    channels: int = 1

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.data.shape[0] / self.samplerate


#: libsndfile's names for the containers each format may hold.
_SOUNDFILE_CONTAINERS = {
    "wav": {"WAV", "WAVEX", "RF64", "W64"},
    "flac": {"FLAC"},
    "ogg": {"OGG"},
}


def _check_wav_length(raw: bytes) -> None:
    """Refuse a RIFF file whose ``data`` chunk declares more bytes than the file holds.

    libsndfile silently reads what is there, which would turn a cut-off upload into a short
    spectrogram.
    """
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        return
    offset = 12
    while offset + 8 <= len(raw):
        chunk, size = raw[offset : offset + 4], int.from_bytes(raw[offset + 4 : offset + 8], "little")
        if chunk == b"data":
            held = len(raw) - offset - 8
            if size != 0xFFFFFFFF and size > held:
                raise AudioError(f"truncated: header declares {size} data bytes, file holds {held}")
            return
        offset += 8 + size + (size & 1)


def _read_soundfile(audio_format: str) -> Callable[[str, dict | None, int | None], Sound]:
    def read(url: str, storage_options: dict | None, size: int | None) -> Sound:
        raw = storage.read_bytes(url, storage_options, size)
        if not raw:
            raise AudioError("file is empty (0 bytes)")
        try:
            with soundfile.SoundFile(io.BytesIO(raw)) as sf:
                if sf.format not in _SOUNDFILE_CONTAINERS[audio_format]:
                    raise AudioError(
                        f"content is {sf.format} audio, not {audio_format} as its name says"
                    )
                declared = sf.frames
                data = sf.read(dtype="float64", always_2d=True)
        except soundfile.LibsndfileError as exc:
            raise AudioError(f"not readable as {audio_format} audio: {exc.error_string}") from exc
        if data.shape[0] < declared:
            raise AudioError(
                f"truncated: header declares {declared} frames, file holds {data.shape[0]}"
            )
        if audio_format == "wav":
            _check_wav_length(raw)
        channels = data.shape[1]
        return Sound(np.ascontiguousarray(data[:, 0]), float(sf.samplerate), channels)

    return read


def _read_cbin(url: str, storage_options: dict | None, size: int | None) -> Sound:
    rec_url = url[: -len(".cbin")] + ".rec"
    try:
        rec = storage.read_bytes(rec_url, storage_options)
    except FileNotFoundError as exc:
        raise AudioError(
            f"no .rec file beside it ({rec_url}): it holds the sampling rate of a .cbin"
        ) from exc
    import evfuncs  # here: it imports scipy.signal (0.6 s), which other formats never need

    raw = storage.read_bytes(url, storage_options, size)
    if len(raw) % 2:
        raise AudioError(f"odd number of bytes ({len(raw)}): not 16-bit .cbin samples")
    with tempfile.TemporaryDirectory() as tmp:
        cbin_path = os.path.join(tmp, "audio.cbin")
        with open(cbin_path, "wb") as fh:
            fh.write(raw)
        with open(os.path.join(tmp, "audio.rec"), "wb") as fh:
            fh.write(rec)
        try:
            rec_dict = evfuncs.readrecf(os.path.join(tmp, "audio.rec"))
            data, samplerate = evfuncs.load_cbin(cbin_path)
        except Exception as exc:  # noqa: BLE001 - evfuncs raises bare errors on malformed .rec
            raise AudioError(f"malformed .cbin/.rec pair: {type(exc).__name__}: {exc}") from exc
    return Sound(data, float(samplerate), int(rec_dict.get("num_channels", 1)))


#: One reader per audio format: ``reader(url, storage_options, size) -> Sound``.
READERS: dict[str, Callable[[str, dict | None, int | None], Sound]] = {
    "cbin": _read_cbin,
    "flac": _read_soundfile("flac"),
    "ogg": _read_soundfile("ogg"),
    "wav": _read_soundfile("wav"),
}


def read_audio(
    url: str, audio_format: str, storage_options: dict | None = None, size: int | None = None
) -> Sound:
    """Read ``url`` as ``audio_format``.

    Parameters
    ----------
    url : str
        Local path or fsspec URL.
    audio_format : str
        A key of :data:`READERS`.
    storage_options : dict, optional
        Passed to fsspec.
    size : int, optional
        Size from a listing; a shorter body is a truncated transfer and is retried.

    Raises
    ------
    AudioError
        The content is not readable audio of that format.
    OSError
        Storage failed (after retries for transient faults).
    """
    try:
        reader = READERS[audio_format]
    except KeyError:
        raise ValueError(
            f"unknown audio format {audio_format!r}; known: {sorted(READERS)}"
        ) from None
    return reader(url, storage_options, size)
