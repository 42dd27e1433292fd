"""Reading audio from any storage backend, one reader per format.

Adding a format is one entry in :data:`READERS`. Readers return float64 samples for the soundfile
formats (as ``soundfile.read`` gives vak) and int16 samples for ``.cbin`` (as ``evfuncs.load_cbin``
gives vak); multichannel audio keeps its first channel, as ``evfuncs`` does for ``.cbin``.

vak reads ``wav``, ``flac`` and ``ogg`` with ``soundfile.read``, which opens any container
libsndfile knows whatever the file is called. So does spectroflow, with one exception: content
in the container of another of these formats (FLAC or Ogg in a ``.wav``, RIFF WAV in a
``.flac``) is refused, since its name puts it in the wrong run. Any other container (NIST SPHERE,
as TIMIT's ``.WAV`` files are; AIFF; ...) is read as vak reads it and noted in :attr:`Sound.note`.

A RIFF WAV whose ``data`` chunk declares fewer bytes than follow it (0, a stale size, or
0xFFFFFFFF for "unknown"), with no chunk after them, is what a recorder leaves when it stops
before finalising its header: its audio is read to the end of the file in whole frames, as
``ffmpeg -ignore_length 1`` reads it, and noted. Compressed audio cannot be read without its
length and is refused.

A recording of any length is read a chunk at a time through :func:`open_audio` (soundfile reads
blocks of frames; a ``.cbin`` is read as blocks of its big-endian 16-bit samples); the samples
are the same as :func:`read_audio`'s, which reads it whole.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Literal

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


#: Samples :meth:`AudioStream.chunks` reads at a time by default (1 MiB of float64).
CHUNK_FRAMES = 1 << 17


@dataclass(frozen=True)
class AudioStream:
    """An open recording, read a chunk at a time: its length and rate are known up front.

    ``frames`` is the number of samples a channel holds; ``channels`` and ``note`` are as in
    :class:`Sound`.
    """

    frames: int
    samplerate: float
    channels: int
    note: str
    read: Callable[[int | None], Iterator[np.ndarray]]

    def chunks(self, size: int | None = CHUNK_FRAMES) -> Iterator[np.ndarray]:
        """The first channel's samples from the start, ``size`` at a time (the last chunk
        shorter; all in one when ``size`` is None), of :func:`read_audio`'s dtype.

        Each call reads the recording again. Raises :class:`AudioError` if it holds fewer samples
        than its header declares.
        """
        return self.read(size)

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.samplerate


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


#: What a RIFF size field holds when the writer did not know the length (a stream, a recorder).
_UNKNOWN_SIZE = 0xFFFFFFFF

#: libsndfile's WAV subtypes whose frames all have the same number of bytes, so that the audio
#: between a header and the end of the file can be read without the length the header lacks.
_FIXED_FRAME_SUBTYPES = {"PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"}


@dataclass(frozen=True)
class _DataChunk:
    """The ``data`` chunk of a RIFF WAV file: where its size field is, what it declares, what
    follows. ``held`` is the bytes from its start to the end of the file, ``block`` the bytes of a
    frame (the ``fmt`` chunk's block align), ``next_chunk`` the ID of a chunk right after the
    declared bytes, if one is there."""

    size_at: int
    declared: int
    held: int
    block: int
    next_chunk: bytes | None

    @property
    def whole(self) -> int:
        """Bytes of the whole frames that follow, as many as a RIFF size field can declare."""
        return min(self.held, _UNKNOWN_SIZE) // self.block * self.block

    @property
    def unfinalised(self) -> bool:
        """The header declares fewer bytes than the whole frames that follow, and no chunk comes
        after them: what a recorder that never finalised its header leaves."""
        declared = 0 if self.declared == _UNKNOWN_SIZE else self.declared
        return self.next_chunk is None and self.whole > declared

    @property
    def problem(self) -> str:
        shown = "0xFFFFFFFF" if self.declared == _UNKNOWN_SIZE else self.declared
        return f"the WAV header declares {shown} bytes of audio"

    @property
    def note(self) -> str:
        """What reading it to the end of the file did, for :attr:`Sound.note`."""
        read = (f"read the {self.whole} bytes" if self.whole == self.held
                else f"read {self.whole} of the {self.held} bytes")
        frames = "" if self.whole == self.held else ", in whole frames"
        return f"{self.problem}; {read} that follow{frames} (an unfinalised recording)"


def _is_chunk_header(header: bytes, room: int) -> bool:
    """``header`` starts a RIFF chunk: an ID of printable ASCII and a size that fits in ``room``
    (a last chunk's pad byte may be missing)."""
    return (len(header) == 8 and all(0x20 <= c <= 0x7E for c in header[:4])
            and int.from_bytes(header[4:], "little") <= room + 1)


def _riff_data_chunk(fh: BinaryIO, total: int) -> _DataChunk | None:
    """The ``data`` chunk of a RIFF WAV file of ``total`` bytes; None for another container, or
    one without ``fmt`` and ``data`` chunks (libsndfile says what is wrong with those)."""
    fh.seek(0)
    head = fh.read(12)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset, block = 12, 0
    while offset + 8 <= total:
        fh.seek(offset)
        header = fh.read(22)
        chunk, size = header[:4], int.from_bytes(header[4:8], "little")
        if chunk == b"fmt " and len(header) == 22:
            block = int.from_bytes(header[20:22], "little")  # nBlockAlign
        elif chunk == b"data":
            if not block:
                return None
            after = offset + 8 + size + (size & 1)
            fh.seek(after)
            following = fh.read(8)
            next_chunk = following[:4] if _is_chunk_header(following, total - after - 8) else None
            return _DataChunk(offset + 4, size, total - offset - 8, block, next_chunk)
        offset += 8 + size + (size & 1)
    return None


def _check_data_chunk(data: _DataChunk, subtype: str, fixed_frames: bool) -> None:
    """Refuse a ``data`` chunk that cannot be read as it is, nor to the end of the file.

    libsndfile reads a short file silently, which would turn a cut-off upload into a short
    spectrogram. ``subtype`` names the audio's encoding; ``fixed_frames`` says whether all its
    frames have ``data.block`` bytes.
    """
    if data.declared != _UNKNOWN_SIZE and data.declared > data.held:
        raise AudioError(f"truncated: header declares {data.declared} data bytes, "
                         f"file holds {data.held}")
    if data.declared == 0 and data.next_chunk is not None:
        raise AudioError(f"{data.problem}, and a {data.next_chunk.decode()} chunk follows: "
                         "the file holds no audio")
    if data.unfinalised and not fixed_frames:
        raise AudioError(
            f"{data.problem}, but more follow (an unfinalised recording): its {subtype} audio "
            "cannot be read without its length; rewrite it with "
            "`ffmpeg -ignore_length 1 -i IN.wav OUT.wav`, which reads to the end of the file"
        )


class _PatchedFile:
    """A binary file read as if ``patch`` were written at ``offset``: a header corrected without
    copying the file (which may be a whole object of remote storage held in memory)."""

    def __init__(self, fh: BinaryIO, offset: int, patch: bytes) -> None:
        self._fh, self._offset, self._patch = fh, offset, patch

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def read(self, n: int = -1) -> bytes:
        start = self._fh.tell()
        raw = self._fh.read(n)
        lo = max(start, self._offset)
        hi = min(start + len(raw), self._offset + len(self._patch))
        if lo >= hi:
            return raw
        out = bytearray(raw)
        out[lo - start:hi - start] = self._patch[lo - self._offset:hi - self._offset]
        return bytes(out)


def _check_nist_length(fh: BinaryIO, frames: int) -> None:
    """Refuse a NIST SPHERE file holding fewer frames than its header's ``sample_count``.

    libsndfile counts the frames a SPHERE file holds from its size, so a cut-off file would
    otherwise read short without a word, as a truncated RIFF wav would.
    """
    fh.seek(0)
    header = fh.read(1024).split(b"end_head", 1)[0]
    for line in header.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == b"sample_count" and fields[2].isdigit():
            declared = int(fields[2])
            if declared > frames:
                raise AudioError(
                    f"truncated: header declares {declared} frames, file holds {frames}"
                )
            return


def _open_soundfile(
    audio_format: str,
) -> Callable[[storage.Location, int | None], AbstractContextManager[AudioStream]]:
    def unreadable(exc: soundfile.LibsndfileError) -> AudioError:
        return AudioError(f"not readable as {audio_format} audio: {exc.error_string}")

    @contextmanager
    def open_(location: storage.Location, size: int | None) -> Iterator[AudioStream]:
        with location.open_input(size) as fh:
            total = fh.seek(0, io.SEEK_END)
            if not total:
                raise AudioError("file is empty (0 bytes)")
            data = _riff_data_chunk(fh, total)
            # The data chunk when it is read to the end of the file, else None.
            unfinalised = data if data is not None and data.unfinalised else None
            source: BinaryIO | _PatchedFile = fh
            if unfinalised is not None:
                source = _PatchedFile(fh, unfinalised.size_at,
                                      unfinalised.whole.to_bytes(4, "little"))
            source.seek(0)
            try:
                sf = soundfile.SoundFile(source)
            except soundfile.LibsndfileError as exc:
                raise unreadable(exc) from exc
            with sf:
                _check_container(sf.format, audio_format)
                if data is not None:
                    _check_data_chunk(data, sf.subtype_info, sf.subtype in _FIXED_FRAME_SUBTYPES)
                declared = sf.frames
                if sf.format == "NIST":
                    # Read the header beside libsndfile, which expects the file where it left it.
                    here = fh.tell()
                    _check_nist_length(fh, declared)
                    fh.seek(here)

                def read(n: int | None) -> Iterator[np.ndarray]:
                    got = 0
                    try:
                        sf.seek(0)
                        while True:
                            block = sf.read(-1 if n is None else min(n, declared - got),
                                            dtype="float64", always_2d=True)
                            got += block.shape[0]
                            if n is None or block.shape[0]:
                                yield np.ascontiguousarray(block[:, 0])
                            if n is None or got >= declared or not block.shape[0]:
                                break
                    except soundfile.LibsndfileError as exc:
                        raise unreadable(exc) from exc
                    if got < declared:
                        raise AudioError(f"truncated: header declares {declared} frames, "
                                         f"file holds {got}")

                note = unfinalised.note if unfinalised is not None else ""
                if sf.format not in _OWN_CONTAINERS[audio_format]:
                    note = f"container is {sf.format_info}, read as vak reads it"
                yield AudioStream(declared, float(sf.samplerate), sf.channels, note, read)

    return open_


@contextmanager
def _open_cbin(location: storage.Location, size: int | None) -> Iterator[AudioStream]:
    rec_url = location.url[: -len(".cbin")] + ".rec"
    try:
        rec = location.at(rec_url).read_bytes()
    except FileNotFoundError as exc:
        raise AudioError(
            f"no .rec file beside it ({rec_url}): it holds the sampling rate of a .cbin"
        ) from exc
    import evfuncs  # here: it imports scipy.signal (0.6 s), which other formats never need

    with tempfile.TemporaryDirectory() as tmp:
        rec_path = os.path.join(tmp, "audio.rec")
        with open(rec_path, "wb") as fh:
            fh.write(rec)
        try:
            rec_dict = evfuncs.readrecf(rec_path)
            samplerate, channels = float(rec_dict["sample_freq"]), int(rec_dict["num_channels"])
        except Exception as exc:
            raise AudioError(f"malformed .cbin/.rec pair: {type(exc).__name__}: {exc}") from exc
    with location.open_input(size) as cbin:
        total = cbin.seek(0, io.SEEK_END)
        if total % 2:
            raise AudioError(f"odd number of bytes ({total}): not 16-bit .cbin samples")
        # evfuncs.load_cbin: big-endian int16, channels interleaved, the first channel kept.
        frames = -(-total // 2 // channels)

        def read(n: int | None) -> Iterator[np.ndarray]:
            step = max(total if n is None else 2 * channels * n, 2)
            cbin.seek(0)
            for start in range(0, max(total, 1), step):
                raw = cbin.read(min(step, total - start))
                if len(raw) < min(step, total - start):
                    raise AudioError(f"truncated: {total} bytes when opened, "
                                     f"{start + len(raw)} now")
                # Writable, as evfuncs' array is.
                yield np.frombuffer(bytearray(raw), dtype=">i2")[::channels]

        yield AudioStream(frames, samplerate, channels, "", read)


#: One reader per audio format: ``open(location, size)``, a context manager giving an
#: :class:`AudioStream`. Adding one here adds the format everywhere (parameters, the UI's form,
#: the command line).
READERS: dict[str, Callable[[storage.Location, int | None], AbstractContextManager[AudioStream]]] = {
    "cbin": _open_cbin,
    "flac": _open_soundfile("flac"),
    "ogg": _open_soundfile("ogg"),
    "wav": _open_soundfile("wav"),
}

#: The audio formats, as a type: pydantic validates them and Prefect's UI offers them as a list.
if TYPE_CHECKING:  # a type checker cannot build a Literal from the registry
    AudioFormat = str
else:
    AudioFormat = Literal[tuple(READERS)]


def open_audio(
    where: str | storage.Location, audio_format: str, size: int | None = None
) -> AbstractContextManager[AudioStream]:
    """Open a recording as ``audio_format``, to read it a chunk at a time.

    Parameters are as for :func:`read_audio`, which says what is raised; a fault found while
    reading (a truncated file) is raised by :meth:`AudioStream.chunks`.

    Examples
    --------
    >>> import io, soundfile
    >>> from spectroflow.storage import Location
    >>> url = "memory://doc/tone.wav"
    >>> buf = io.BytesIO(); soundfile.write(buf, np.zeros(1000), 8000, format="WAV")
    >>> _ = Location(url=url).write_bytes(buf.getvalue())
    >>> with open_audio(url, "wav") as sound:
    ...     sound.frames, sound.samplerate, [c.shape for c in sound.chunks(400)]
    (1000, 8000.0, [(400,), (400,), (200,)])
    """
    try:
        reader = READERS[audio_format]
    except KeyError:
        raise ValueError(
            f"unknown audio format {audio_format!r}; known: {sorted(READERS)}"
        ) from None
    return reader(storage.as_location(where), size)


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
    with open_audio(where, audio_format, size) as stream:
        (data,) = stream.chunks(None)
        return Sound(data, stream.samplerate, stream.channels, stream.note)
