"""Which outputs are up to date, known from listings alone.

After an output is written, a marker
``<destination>/.spectroflow/provenance/<source relpath>.markers/<key>`` records it: a folder per
output, named so that no name is longer than the output's, and no ``*.spect.npz`` glob of the
destination finds it. ``key`` hashes everything the output's content depends on (the source's
URL, which is stored inside it as ``audio_path``; the source's version, its ETag or size, mtime
and inode, and for a ``.cbin`` its ``.rec``'s too; the audio format; every spectrogram parameter;
:data:`COMPUTE_VERSION`) together with the version of the
output file as it was written. An output is up to date when a marker exists for the key computed from the source
as listed now and the output as listed now. So:

- a changed source, another source mirrored to the same output, or changed parameters give
  another key, and the output is recomputed;
- an output overwritten since its marker was written (by a run with other parameters or from
  another source tree) has another version, and no marker names it;
- a run over a million finished files costs two listings and no reads.

Markers that no longer match are deleted when their output is planned for recomputing.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import names, storage
from .outputs import FORMATS, NPZ, OutputFormat
from .params import SpectParams

#: Part of every key: raise it when the arrays written for the same inputs change (a fix in the
#: computation), so that every output is made again.
COMPUTE_VERSION = "1"
MARKERS_DIR = ".spectroflow/provenance"
#: The suffix of vak's outputs (each output format has its own: :data:`spectroflow.outputs.FORMATS`).
OUTPUT_SUFFIX = NPZ.suffix
_SUFFIXES = tuple(dict.fromkeys(f.suffix for f in FORMATS.values()))
_FOLDER_SUFFIX = ".markers"


def key(
    source_url: str,
    source_version: str | None,
    audio_format: str,
    params: SpectParams,
    output_version: str | None,
) -> str | None:
    """Provenance key of an output, or None when either version is unknown.

    Examples
    --------
    >>> k = key("a/1.wav", "etag-1", "wav", SpectParams(), "out-1")
    >>> k == key("a/1.wav", "etag-1", "wav", SpectParams(), "out-1")
    True
    >>> k in {key("b/1.wav", "etag-1", "wav", SpectParams(), "out-1"),
    ...       key("a/1.wav", "etag-2", "wav", SpectParams(), "out-1"),
    ...       key("a/1.wav", "etag-1", "wav", SpectParams(fft_size=1024), "out-1"),
    ...       key("a/1.wav", "etag-1", "wav", SpectParams(), "out-2")}
    False
    >>> key("a/1.wav", None, "wav", SpectParams(), "out-1") is None
    True
    """
    if source_version is None or output_version is None:
        return None
    payload = "\0".join((COMPUTE_VERSION, source_url, source_version, audio_format,
                          params.fingerprint(), output_version))
    # A local name that is not UTF-8 hashes as its bytes.
    return hashlib.sha256(payload.encode("utf-8", names.TEXT_ERRORS)).hexdigest()[:32]


def marker(destination: storage.Location, out_relpath: str, prov_key: str) -> storage.Location:
    """Where the marker of ``out_relpath`` made with ``prov_key`` goes.

    Examples
    --------
    >>> str(marker(storage.Location(url="s3://b/spect"), "day1/a.wav.spect.npz", "0123abcd"))
    's3://b/spect/.spectroflow/provenance/day1/a.wav.markers/0123abcd'
    """
    return _markers_of(destination, out_relpath).join(prov_key)


def _markers_of(destination: storage.Location, out_relpath: str) -> storage.Location:
    """The folder of the markers of ``out_relpath``."""
    return destination.join(f"{MARKERS_DIR}/{_source_of(out_relpath)}{_FOLDER_SUFFIX}")


def _source_of(out_relpath: str) -> str:
    """The source's relative path of an output's: the output's, without its format's suffix."""
    for suffix in _SUFFIXES:
        if out_relpath.endswith(suffix):
            return out_relpath[: -len(suffix)]
    return out_relpath


def mark(destination: storage.Location, out_relpath: str, prov_key: str | None) -> None:
    """Record that ``out_relpath`` holds what ``prov_key`` describes; call after writing it.

    The marker is empty: its name says everything, and an empty file cannot be half-written.
    """
    if prov_key is not None:
        marker(destination, out_relpath, prov_key).touch()


class _Outputs:
    """What the destination holds for the outputs asked about: :meth:`_at` gives an output's
    version, its markers' keys and whether it exists."""

    destination: storage.Location

    def _at(self, out_relpath: str) -> tuple[str | None, list[str], bool]:
        raise NotImplementedError

    def has_output(self, out_relpath: str) -> bool:
        return self._at(out_relpath)[2]

    def is_up_to_date(
        self, out_relpath: str, source_url: str, source_version: str | None,
        audio_format: str, params: SpectParams,
    ) -> bool:
        version, keys, _ = self._at(out_relpath)
        prov_key = key(source_url, source_version, audio_format, params, version)
        return prov_key is not None and prov_key in keys

    def stale_markers(self, out_relpath: str) -> list[str]:
        """URLs of the markers of an output that is not up to date (none of them applies)."""
        return [marker(self.destination, out_relpath, k).url for k in self._at(out_relpath)[1]]


class DestinationIndex(_Outputs):
    """What the destination holds: each output's version (in ``output_format``) and every
    marker, from two listings read alongside the recordings.

    The listings arrive in order of name, a page at a time, and recordings are asked about in
    order of their paths below the source (as :func:`spectroflow.storage.iter_files` lists
    them): each question reads the listings on to the names it concerns, and what is behind
    every later question is dropped. So a destination of a million outputs is never held.
    """

    def __init__(self, destination: str | storage.Location, output_format: OutputFormat = NPZ):
        self.destination = destination = storage.as_location(destination)
        # An output that is a folder (zarr) is listed as the file whose version is its own.
        self._listed = listed = output_format.listed
        self._outputs = _Window(
            (f.relpath, f.relpath.removesuffix(listed), f.version)
            for f in _listed(destination, output_format.suffix + listed))
        self._markers = _Window(_marker_entries(_listed(destination.join(MARKERS_DIR), "")))
        self._last = ""

    def _at(self, out_relpath: str) -> tuple[str | None, list[str], bool]:
        source = _source_of(out_relpath)
        if source < self._last:
            raise ValueError(f"outputs asked for out of order: {out_relpath} after {self._last}")
        self._last = source
        versions = self._outputs.get(out_relpath, source, out_relpath + self._listed)
        keys = self._markers.get(source, source, f"{source}{_FOLDER_SUFFIX}/\U0010ffff")
        return (versions[0] if versions else None), keys, bool(versions)


#: Requests in flight at once when outputs are looked up one by one (:class:`LookedUp`).
LOOKUPS_IN_FLIGHT = 32


class LookedUp(_Outputs):
    """What the destination holds for a few named outputs, asked about one by one (an output's
    metadata and its markers' folder: two requests each, :data:`LOOKUPS_IN_FLIGHT` at a time)
    instead of listing the destination: for runs over the recordings an event names, in a
    destination of millions of outputs, in any order."""

    def __init__(self, destination: str | storage.Location, out_relpaths: Iterable[str],
                 output_format: OutputFormat = NPZ):
        self.destination = storage.as_location(destination)
        self._format = output_format
        wanted = list(dict.fromkeys(out_relpaths))
        with ThreadPoolExecutor(LOOKUPS_IN_FLIGHT, thread_name_prefix="lookup") as pool:
            self._found = dict(zip(wanted, pool.map(self._look, wanted), strict=True))

    def _look(self, out_relpath: str) -> tuple[str | None, list[str], bool]:
        try:
            info = self._format.listed_file(self.destination.join(out_relpath)).info()
            version, exists = info.version, True
        except FileNotFoundError:
            version, exists = None, False
        markers = _listed(_markers_of(self.destination, out_relpath), "")
        keys = [found.relpath.rpartition("/")[2] for found in markers]
        return version, keys, exists

    def _at(self, out_relpath: str) -> tuple[str | None, list[str], bool]:
        found = self._found.get(out_relpath)
        return found if found is not None else self._look(out_relpath)


def _listed(location: storage.Location, suffix: str) -> Iterator[storage.FileInfo]:
    try:
        yield from location.iter_files((suffix,))
    except storage.StorageError:  # nothing written there yet
        return


def _marker_entries(markers: Iterable[storage.FileInfo]) -> Iterator[tuple[str, str, str]]:
    for found in markers:
        folder, _, prov_key = found.relpath.rpartition("/")
        yield found.relpath, folder.removesuffix(_FOLDER_SUFFIX), prov_key


class _Window:
    """A listing's ``(name, key, value)`` entries, in order of name, asked for in ascending order.

    :meth:`get` reads entries up to the last name it may concern and drops those before the
    first: recordings are asked about in order of path, and every name concerning a recording
    starts with its path, so an entry before the current one's path concerns no later one. Only
    the entries between the two are held (an output and its markers, as a rule).

    Examples
    --------
    >>> window = _Window(iter([("a", "a", 1), ("a.x", "a", 2), ("b", "b", 3)]))
    >>> window.get("a", "a", "a.\U0010ffff"), window.get("b", "b", "b"), window.get("c", "c", "c")
    ([1, 2], [3], [])
    """

    def __init__(self, entries: Iterator[tuple[str, str, Any]]):
        self._entries = entries
        self._next = next(entries, None)
        self._held: deque[tuple[str, str, Any]] = deque()

    def get(self, key: str, first: str, last: str) -> list:
        """The values of ``key``'s entries, whose names lie between ``first`` and ``last``."""
        while self._held and self._held[0][0] < first:
            self._held.popleft()
        while self._next is not None and self._next[0] <= last:
            if self._next[0] >= first:
                self._held.append(self._next)
            self._next = next(self._entries, None)
        return [value for _, k, value in self._held if k == key]


def markers(destination: str | storage.Location) -> dict[str, list[str]]:
    """Every marker's key under ``destination`` by output, from one listing (held whole)."""
    found: dict[str, list[str]] = {}
    for _, source, prov_key in _marker_entries(
            _listed(storage.as_location(destination).join(MARKERS_DIR), "")):
        found.setdefault(source + OUTPUT_SUFFIX, []).append(prov_key)
    return found


def is_done(
    destination: storage.Location, out_relpath: str, source_url: str,
    source_version: str | None, audio_format: str, params: SpectParams,
) -> bool:
    """Check one output without a listing (two metadata requests)."""
    if source_version is None:
        return False
    try:
        written = FORMATS[params.output_format].listed_file(destination.join(out_relpath)).info()
    except FileNotFoundError:
        return False
    prov_key = key(source_url, source_version, audio_format, params, written.version)
    return prov_key is not None and marker(destination, out_relpath, prov_key).exists()


def output_relpath(source_relpath: str, suffix: str = OUTPUT_SUFFIX) -> str:
    """Where the output of a source sits under the destination: the same relative path, and
    the output format's ``suffix``.

    Examples
    --------
    >>> output_relpath("Bird0/Wave/0.wav"), output_relpath("0.wav", ".spect.zarr")
    ('Bird0/Wave/0.wav.spect.npz', '0.wav.spect.zarr')
    """
    return storage.safe_relpath(source_relpath) + suffix
