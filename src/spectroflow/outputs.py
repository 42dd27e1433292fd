"""Output formats: how a :class:`~spectroflow.spectrogram.Spectrogram` is written and read.

One entry of :data:`FORMATS` per format (its file suffix, writer and reader), as
:data:`spectroflow.audio.READERS` has one reader per audio format: the pipeline writes with it,
provenance finds outputs by its suffix, and plots and previews read with it.

A :class:`~spectroflow.spectrogram.SpectrogramStream` is written as its blocks are made, so an
output of any size is written in memory that does not grow with it (see :func:`write`).
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, BinaryIO

import numpy as np

from .params import SpectParams
from .spectrogram import Spectrogram, SpectrogramStream
from .storage import Location


@dataclass(frozen=True)
class OutputFormat:
    """A way to store spectrograms: ``write(spect, file, params)``, ``read(bytes, params)``.

    ``params`` names the arrays (``spect_key``, ``freqbins_key``, ``timebins_key``,
    ``audio_path_key``). ``write`` takes a whole :class:`Spectrogram` or a
    :class:`SpectrogramStream`, and writes in order to a file that cannot seek.
    """

    name: str
    suffix: str
    write: Callable[[Spectrogram | SpectrogramStream, BinaryIO, SpectParams], None]
    read: Callable[[bytes, SpectParams], Spectrogram]


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


def _read_npz(raw: bytes, params: SpectParams) -> Spectrogram:
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        audio_path = npz[params.audio_path_key] if params.audio_path_key in npz.files else ""
        return Spectrogram(npz[params.spect_key], npz[params.freqbins_key],
                           npz[params.timebins_key], str(audio_path))


#: vak's ``.spect.npz``: ``np.savez`` of the four arrays.
NPZ = OutputFormat("npz", ".spect.npz", _npz_writer(zipfile.ZIP_STORED), _read_npz)
#: The same arrays, each member deflated, as ``np.savez_compressed`` stores them (vak and
#: ``np.load`` read it as they read ``npz``).
NPZ_COMPRESSED = OutputFormat("npz-compressed", ".spect.npz", _npz_writer(zipfile.ZIP_DEFLATED),
                              _read_npz)
#: Every output format, by name (:data:`spectroflow.params.OutputFormatName`).
FORMATS: dict[str, OutputFormat] = {f.name: f for f in (NPZ, NPZ_COMPRESSED)}


def write(location: Location, spect: Spectrogram | SpectrogramStream, params: SpectParams,
          output_format: OutputFormat | None = None) -> str | None:
    """Write ``spect`` to ``location`` whole or not at all, in ``params.output_format`` unless
    ``output_format`` is given; returns the version written.

    A :class:`SpectrogramStream` is computed as it is written, to a local temporary file or an
    object store's upload (see :func:`spectroflow.storage.write_with`); an error while it is
    computed leaves no output.
    """
    fmt = output_format or FORMATS[params.output_format]
    return location.write_with(lambda fh: fmt.write(spect, fh, params))


def read(location: Location, params: SpectParams | None = None,
         output_format: OutputFormat | None = None) -> Spectrogram:
    """The spectrogram stored at ``location``, its arrays named as in ``params`` (and in the
    format ``params`` names, unless ``output_format`` is given)."""
    params = params or SpectParams()
    fmt = output_format or FORMATS[params.output_format]
    return fmt.read(location.read_bytes(), params)


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
