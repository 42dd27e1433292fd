"""Output formats: how a :class:`~spectroflow.spectrogram.Spectrogram` is written and read.

One entry of :data:`FORMATS` per format (its file suffix, writer and reader), as
:data:`spectroflow.audio.READERS` has one reader per audio format: the pipeline writes with it,
provenance finds outputs by its suffix, and plots and previews read with it.

A :class:`~spectroflow.spectrogram.SpectrogramStream` is written as its blocks are made, so an
output of any size is written in memory that does not grow with it (see :func:`write`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import uuid
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

import numpy as np

from . import storage
from .params import SpectParams
from .spectrogram import Spectrogram, SpectrogramStream
from .storage import Location


@dataclass(frozen=True)
class OutputFormat:
    """A way to store spectrograms: an output is ``<recording>`` + ``suffix`` under the destination.

    ``store(location, spect, params)`` writes a whole :class:`Spectrogram` or a
    :class:`SpectrogramStream` so that no reader sees a partial output, and returns the version
    of what it wrote; ``load(location, params)`` reads it back, ``load_times`` its time bins
    alone. ``params`` names the arrays (``spect_key``, ``freqbins_key``, ``timebins_key``,
    ``audio_path_key``) and the spectrogram's type (``output_dtype``). ``listed`` is the file,
    below an output, that a listing shows for it and whose version is the output's ("" when the
    output is one file).
    """

    name: str
    suffix: str
    store: Callable[[Location, Spectrogram | SpectrogramStream, SpectParams], str | None]
    load: Callable[[Location, SpectParams], Spectrogram]
    load_times: Callable[[Location, SpectParams], np.ndarray]
    listed: str = ""

    def listed_file(self, output: Location) -> Location:
        """The file a listing shows for the output at ``output``: the output itself, or the
        file below it whose version is the output's."""
        return output.at(output.url + self.listed)


def _npz_writer(compression: int) -> Callable[[Spectrogram | SpectrogramStream, BinaryIO,
                                               SpectParams], None]:
    def write(spect: Spectrogram | SpectrogramStream, fh: BinaryIO, params: SpectParams) -> None:
        """``np.savez``'s layout (``np.savez_compressed``'s with ZIP_DEFLATED), as vak writes
        it: one ``.npy`` member per array, ZIP64 (``np.load`` reads it). The spectrogram is
        stored as ``params.output_dtype``. A stream's spectrogram is written a block of columns
        at a time: its ``.npy`` header says Fortran order, in which the columns of a frequency x
        time array are consecutive, so each block's bytes go out as they come."""
        dtype = np.dtype(params.output_dtype)
        with zipfile.ZipFile(fh, "w", compression, allowZip64=True) as archive:

            def member(key: str) -> IO[bytes]:
                return archive.open(f"{key}.npy", "w", force_zip64=True)

            if isinstance(spect, SpectrogramStream):
                with member(params.spect_key) as out:
                    _write_header(out, spect.shape, dtype, fortran_order=True)
                    for block in spect.blocks():
                        out.write((block if block.dtype == dtype else block.astype(dtype)).data)
                with member(params.timebins_key) as out:
                    _write_header(out, (spect.n_frames,), np.dtype(np.float64))
                    for times in spect.times():
                        out.write(times.data)
                members = {params.freqbins_key: spect.frequencies}
            else:
                data = spect.data
                members = {params.spect_key: data if data.dtype == dtype else data.astype(dtype),
                           params.freqbins_key: spect.frequencies,
                           params.timebins_key: spect.times}
            members[params.audio_path_key] = np.asanyarray(spect.audio_path)
            for key in (params.spect_key, params.freqbins_key, params.timebins_key,
                        params.audio_path_key):
                if key in members:
                    with member(key) as out:
                        np.lib.format.write_array(out, np.asanyarray(members[key]),
                                                  allow_pickle=False)

    return write


def _write_header(fh: IO[bytes], shape: tuple[int, ...], dtype: np.dtype,
                  fortran_order: bool = False) -> None:
    """The ``.npy`` header of an array of ``shape`` and ``dtype``, as ``np.save`` writes it."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran_order,
              "shape": shape}
    np.lib.format.write_array_header_1_0(fh, header)


def _read_npz(location: Location, params: SpectParams) -> Spectrogram:
    with np.load(io.BytesIO(location.read_bytes()), allow_pickle=False) as npz:
        audio_path = npz[params.audio_path_key] if params.audio_path_key in npz.files else ""
        return Spectrogram(npz[params.spect_key], npz[params.freqbins_key],
                           npz[params.timebins_key], str(audio_path))


def _npz_times(location: Location, params: SpectParams) -> np.ndarray:
    with location.open_input() as fh, np.load(fh, allow_pickle=False) as npz:
        return npz[params.timebins_key]


def _npz(name: str, compression: int) -> OutputFormat:
    writer = _npz_writer(compression)

    def store(location: Location, spect: Spectrogram | SpectrogramStream,
              params: SpectParams) -> str | None:
        return location.write_with(lambda fh: writer(spect, fh, params))

    return OutputFormat(name, ".spect.npz", store, _read_npz, _npz_times)


#: Time bins per chunk of a zarr output's ``s`` and ``t``: 4.2 MB of float64 at vak's 257
#: frequencies, so a window of a long recording is read without the rest.
ZARR_CHUNK_FRAMES = 2048


def _group_metadata() -> bytes:
    """A zarr v3 group's ``zarr.json``. Each write's differs (a random id in its attributes), so
    that its version (an S3 ETag is the MD5 of the bytes) tells one write from another, as
    provenance needs."""
    attributes = {"spectroflow": {"write": uuid.uuid4().hex}}
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attributes}).encode()


@storage.retrying
def _store_zarr(location: Location, spect: Spectrogram | SpectrogramStream,
                params: SpectParams) -> str | None:
    """A zarr (v3) group of the four arrays, ``s`` and ``t`` chunked along time, published last.

    The group's own ``zarr.json`` is removed first and written last: until it is written, no
    group is there (``zarr.open`` finds none, and provenance sees no output), so a reader never
    finds a partial output. An earlier output is removed before the new one is written; a write
    that fails removes what it wrote. Retried whole on transient faults: zarr makes its requests
    itself, out of reach of the storage layer's retries.
    """
    return _write_zarr(location, spect, params)


def _write_zarr(location: Location, spect: Spectrogram | SpectrogramStream,
                params: SpectParams) -> str | None:
    try:
        ZARR.listed_file(location).remove()  # unpublished first: no group while its arrays go
    except FileNotFoundError:
        pass
    location.remove_tree()
    try:
        return _write_arrays(location, spect, params)
    except BaseException:
        with contextlib.suppress(Exception):  # the write's own failure is what matters
            location.remove_tree()
        raise


def _write_arrays(location: Location, spect: Spectrogram | SpectrogramStream,
                  params: SpectParams) -> str | None:
    import zarr

    dtype = np.dtype(params.output_dtype)
    n_freqs, n_frames = spect.shape
    chunk = max(1, min(ZARR_CHUNK_FRAMES, n_frames))

    def array(key: str, shape: tuple[int, ...], dtype: Any, chunks: Any = "auto") -> zarr.Array:
        # Each array in a store of its own: created as a group's member, zarr would write the
        # group's zarr.json at once (as a parent), publishing it before its arrays are written.
        return zarr.create_array(location.join(key).zarr_store(), shape=shape, dtype=dtype,
                                 chunks=chunks, zarr_format=3)

    data = array(params.spect_key, (n_freqs, n_frames), dtype, (n_freqs, chunk))
    times = array(params.timebins_key, (n_frames,), np.float64, (chunk,))
    if isinstance(spect, SpectrogramStream):
        # Blocks come as the transpose of their columns (see SpectrogramStream.blocks).
        _write_columns(data, (block.T for block in spect.blocks()), chunk, dtype)
        _write_columns(times, spect.times(), chunk, np.dtype(np.float64))
    else:
        data[...] = spect.data
        times[...] = spect.times
    array(params.freqbins_key, spect.frequencies.shape, np.float64)[...] = spect.frequencies
    array(params.audio_path_key, (), str)[()] = spect.audio_path
    return ZARR.listed_file(location).write_bytes(_group_metadata())


def _write_columns(target: Any, blocks: Iterable[np.ndarray], chunk: int, dtype: np.dtype) -> None:
    """Write ``blocks`` of columns (the last axis) to ``target`` a whole chunk at a time, so no
    chunk is written twice (or read back to be completed)."""
    held = np.empty((*target.shape[:-1], chunk), dtype)
    filled = start = 0
    for block in blocks:
        taken = 0
        while taken < block.shape[-1]:
            n = min(chunk - filled, block.shape[-1] - taken)
            held[..., filled:filled + n] = block[..., taken:taken + n]
            filled, taken = filled + n, taken + n
            if filled == chunk:
                target[..., start:start + chunk] = held
                start, filled = start + chunk, 0
    if filled:
        target[..., start:start + filled] = held[..., :filled]


def _zarr_arrays(location: Location, *keys: str) -> list[np.ndarray]:
    import zarr

    group = zarr.open_group(location.zarr_store(read_only=True), mode="r")
    found = []
    for key in keys:
        member = group[key]
        if not isinstance(member, zarr.Array):
            raise ValueError(f"{location}: {key} is not an array")
        found.append(np.asarray(member[...]))
    return found


def _read_zarr(location: Location, params: SpectParams) -> Spectrogram:
    data, frequencies, times, audio_path = _zarr_arrays(
        location, params.spect_key, params.freqbins_key, params.timebins_key,
        params.audio_path_key)
    return Spectrogram(data, frequencies, times, str(audio_path))


def _zarr_times(location: Location, params: SpectParams) -> np.ndarray:
    return _zarr_arrays(location, params.timebins_key)[0]


#: vak's ``.spect.npz``: ``np.savez`` of the four arrays.
NPZ = _npz("npz", zipfile.ZIP_STORED)
#: The same arrays, each member deflated, as ``np.savez_compressed`` stores them (vak and
#: ``np.load`` read it as they read ``npz``).
NPZ_COMPRESSED = _npz("npz-compressed", zipfile.ZIP_DEFLATED)
#: A zarr group per recording (``zarr.open(url)["s"][:, 100:200]``), locally or on any fsspec
#: storage, chunked along time (:data:`ZARR_CHUNK_FRAMES`) with zarr's default codec (zstd).
ZARR = OutputFormat("zarr", ".spect.zarr", _store_zarr, _read_zarr, _zarr_times,
                    listed="/zarr.json")
#: Every output format, by name (:data:`spectroflow.params.OutputFormatName`).
FORMATS: dict[str, OutputFormat] = {f.name: f for f in (NPZ, NPZ_COMPRESSED, ZARR)}


def format_of(location: Location, params: SpectParams | None = None) -> OutputFormat:
    """The format of the output at ``location``: the one ``params`` name if its suffix is the
    location's, else the first format of that suffix (``npz`` for ``.spect.npz``)."""
    url = location.url.rstrip("/")
    named = FORMATS[params.output_format] if params is not None else NPZ
    if url.endswith(named.suffix):
        return named
    return next((f for f in FORMATS.values() if url.endswith(f.suffix)), named)


def write(location: Location, spect: Spectrogram | SpectrogramStream, params: SpectParams,
          output_format: OutputFormat | None = None) -> str | None:
    """Write ``spect`` to ``location`` whole or not at all, in ``params.output_format`` unless
    ``output_format`` is given; returns the version written.

    A :class:`SpectrogramStream` is computed as it is written (to a local temporary file or an
    object store's upload for an ``.npz``, see :func:`spectroflow.storage.write_with`; chunk by
    chunk for zarr); an error while it is computed leaves no output.
    """
    return (output_format or FORMATS[params.output_format]).store(location, spect, params)


def read(location: Location, params: SpectParams | None = None,
         output_format: OutputFormat | None = None) -> Spectrogram:
    """The spectrogram stored at ``location``, its arrays named as in ``params``, in the format
    its name says (``.spect.zarr``) or ``params`` names, unless ``output_format`` is given."""
    params = params or SpectParams()
    return (output_format or format_of(location, params)).load(location, params)


def read_times(location: Location, params: SpectParams | None = None) -> np.ndarray:
    """The time bins alone of the output at ``location`` (see :func:`read`)."""
    params = params or SpectParams()
    return format_of(location, params).load_times(location, params)


def open_array(path: str | os.PathLike, key: str = "s") -> np.memmap:
    """One array of a local ``.npz`` stored uncompressed (as vak and spectroflow write them),
    memory-mapped: a slice reads only its own bytes, so a spectrogram larger than memory can be
    looked at a part at a time.

    Examples
    --------
    >>> import tempfile
    >>> from spectroflow.storage import Location
    >>> path = os.path.join(tempfile.mkdtemp(), "a.spect.npz")
    >>> data = np.arange(12.0).reshape(3, 4)
    >>> _ = write(Location(url=path), Spectrogram(data, np.arange(3.0), np.arange(4.0)), SpectParams())
    >>> open_array(path)[:, 1:3]
    memmap([[ 1.,  2.],
            [ 5.,  6.],
            [ 9., 10.]])
    """
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{key}.npy in {path} is compressed: read it with np.load")
    with open(path, "rb") as fh:
        fh.seek(info.header_offset + 26)  # the local header's name and extra field lengths
        name_length, extra_length = struct.unpack("<HH", fh.read(4))
        fh.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(fh)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(fh)
        offset = fh.tell()
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran_order else "C")
