"""Reading audio from any storage backend, one reader per format.

Adding a format is one entry in :data:`READERS`. Readers return float64 samples for the soundfile
formats (as ``soundfile.read`` gives vak) and int16 samples for ``.cbin`` (as ``evfuncs.load_cbin``
gives vak); multichannel audio keeps its first channel, as ``evfuncs`` does for ``.cbin``.

vak reads ``wav``, ``flac`` and ``ogg`` with ``soundfile.read``, which opens any container
libsndfile knows whatever the file is called. So does spectroflow, with one exception: content
in the container of another of these formats (FLAC or Ogg in a ``.wav``, RIFF WAV in a
``.flac``) is refused, since its name puts it in the wrong run. Any other container (NIST SPHERE,
as TIMIT's ``.WAV`` files are; AIFF; ...) is read as vak reads it and noted in :attr:`Sound.note`.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import soundfile

from . import storage


class AudioError(ValueError):
    """The file cannot be read as audio of the expected format (a property of the file)."""


@dataclass(frozen=True)
class Sound:
    """Samples of one channel and their sampling rate.

    ``note`` says what the caller should know about how the file was read (e.g. its container
    differs from what its name says); empty when there is nothing to say.
    """

    data: np.ndarray
    samplerate: float
    channels: int = 1
    note: str = ""

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.data.shape[0] / self.samplerate


#: libsndfile's names for each format's own containers. Content in another format's own container
#: is refused; any other container libsndfile opens is read, as vak reads it, with a note.
_OWN_CONTAINERS = {
    "wav": {"WAV", "WAVEX", "RF64", "W64"},
    "flac": {"FLAC"},
    "ogg": {"OGG"},
}


def _check_container(container: str, audio_format: str) -> None:
    """Refuse content whose container is another soundfile format's own."""
    for other, containers in _OWN_CONTAINERS.items():
        if other != audio_format and container in containers:
            raise AudioError(
                f"content is {container} audio, not {audio_format} as its name says: "
                f"name it .{other} and run it with audio_format {other!r}"
            )


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


def _check_nist_length(raw: bytes, frames: int) -> None:
    """Refuse a NIST SPHERE file holding fewer frames than its header's ``sample_count``.

    libsndfile counts the frames a SPHERE file holds from its size, so a cut-off file would
    otherwise read short without a word, as a truncated RIFF wav would.
    """
    header = raw[:1024].split(b"end_head", 1)[0]
    for line in header.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == b"sample_count" and fields[2].isdigit():
            declared = int(fields[2])
            if declared > frames:
                raise AudioError(
                    f"truncated: header declares {declared} frames, file holds {frames}"
                )
            return


def _read_soundfile(audio_format: str) -> Callable[[storage.Location, int | None], Sound]:
    def read(location: storage.Location, size: int | None) -> Sound:
        raw = location.read_bytes(size)
        if not raw:
            raise AudioError("file is empty (0 bytes)")
        try:
            with soundfile.SoundFile(io.BytesIO(raw)) as sf:
                _check_container(sf.format, audio_format)
                declared = sf.frames
                data = sf.read(dtype="float64", always_2d=True)
        except soundfile.LibsndfileError as exc:
            raise AudioError(f"not readable as {audio_format} audio: {exc.error_string}") from exc
        if data.shape[0] < declared:
            raise AudioError(
                f"truncated: header declares {declared} frames, file holds {data.shape[0]}"
            )
        _check_wav_length(raw)
        note = ""
        if sf.format == "NIST":
            _check_nist_length(raw, data.shape[0])
        if sf.format not in _OWN_CONTAINERS[audio_format]:
            note = f"container is {sf.format_info}, read as vak reads it"
        channels = data.shape[1]
        return Sound(np.ascontiguousarray(data[:, 0]), float(sf.samplerate), channels, note)

    return read


def _read_cbin(location: storage.Location, size: int | None) -> Sound:
    rec_url = location.url[: -len(".cbin")] + ".rec"
    try:
        rec = location.at(rec_url).read_bytes()
    except FileNotFoundError as exc:
        raise AudioError(
            f"no .rec file beside it ({rec_url}): it holds the sampling rate of a .cbin"
        ) from exc
    import evfuncs  # here: it imports scipy.signal (0.6 s), which other formats never need

    raw = location.read_bytes(size)
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
        except Exception as exc:
            raise AudioError(f"malformed .cbin/.rec pair: {type(exc).__name__}: {exc}") from exc
    return Sound(data, float(samplerate), int(rec_dict.get("num_channels", 1)))


#: One reader per audio format: ``reader(location, size) -> Sound``. Adding one here adds the
#: format everywhere (parameters, the UI's form, the command line).
READERS: dict[str, Callable[[storage.Location, int | None], Sound]] = {
    "cbin": _read_cbin,
    "flac": _read_soundfile("flac"),
    "ogg": _read_soundfile("ogg"),
    "wav": _read_soundfile("wav"),
}

#: The audio formats, as a type: pydantic validates them and Prefect's UI offers them as a list.
if TYPE_CHECKING:  # a type checker cannot build a Literal from the registry
    AudioFormat = str
else:
    AudioFormat = Literal[tuple(READERS)]


def read_audio(
    where: str | storage.Location, audio_format: str, size: int | None = None
) -> Sound:
    """Read a recording as ``audio_format``.

    Parameters
    ----------
    where : str or Location
        Local path, or a URL with the options that reach it.
    audio_format : str
        A key of :data:`READERS`.
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
    return reader(storage.as_location(where), size)
