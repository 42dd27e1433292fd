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

from . import storage
from .outputs import NPZ
from .params import SpectParams

#: Part of every key: raise it when the arrays written for the same inputs change (a fix in the
#: computation), so that every output is made again.
COMPUTE_VERSION = "1"
MARKERS_DIR = ".spectroflow/provenance"
OUTPUT_SUFFIX = NPZ.suffix
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
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def marker(destination: storage.Location, out_relpath: str, prov_key: str) -> storage.Location:
    """Where the marker of ``out_relpath`` made with ``prov_key`` goes.

    Examples
    --------
    >>> str(marker(storage.Location(url="s3://b/spect"), "day1/a.wav.spect.npz", "0123abcd"))
    's3://b/spect/.spectroflow/provenance/day1/a.wav.markers/0123abcd'
    """
    folder = out_relpath.removesuffix(OUTPUT_SUFFIX) + _FOLDER_SUFFIX
    return destination.join(f"{MARKERS_DIR}/{folder}/{prov_key}")


def mark(destination: storage.Location, out_relpath: str, prov_key: str | None) -> None:
    """Record that ``out_relpath`` holds what ``prov_key`` describes; call after writing it.

    The marker is empty: its name says everything, and an empty file cannot be half-written.
    """
    if prov_key is not None:
        marker(destination, out_relpath, prov_key).touch()


class Finished:
    """What the destination holds: each output's version and every marker, from two listings."""

    def __init__(self, destination: str | storage.Location):
        self.destination = destination = storage.as_location(destination)
        self.outputs: dict[str, str | None] = {}
        self.markers: dict[str, list[str]] = {}
        try:
            for f in destination.list_files((OUTPUT_SUFFIX,)):
                self.outputs[f.relpath] = f.version
            markers = destination.join(MARKERS_DIR).list_files(("",))
        except storage.StorageError:  # nothing written there yet
            return
        for marker in markers:
            folder, _, prov_key = marker.relpath.rpartition("/")
            out_relpath = folder.removesuffix(_FOLDER_SUFFIX) + OUTPUT_SUFFIX
            self.markers.setdefault(out_relpath, []).append(prov_key)

    def output_version(self, out_relpath: str) -> str | None:
        return self.outputs.get(out_relpath)

    def is_up_to_date(
        self, out_relpath: str, source_url: str, source_version: str | None,
        audio_format: str, params: SpectParams,
    ) -> bool:
        prov_key = key(source_url, source_version, audio_format, params,
                       self.outputs.get(out_relpath))
        return prov_key is not None and prov_key in self.markers.get(out_relpath, ())

    def stale_markers(self, out_relpath: str) -> list[str]:
        """URLs of the markers of an output that is not up to date (none of them applies)."""
        return [marker(self.destination, out_relpath, k).url
                for k in self.markers.get(out_relpath, ())]


def is_done(
    destination: storage.Location, out_relpath: str, source_url: str,
    source_version: str | None, audio_format: str, params: SpectParams,
) -> bool:
    """Check one output without a listing (two metadata requests)."""
    if source_version is None:
        return False
    try:
        written = destination.join(out_relpath).info()
    except FileNotFoundError:
        return False
    prov_key = key(source_url, source_version, audio_format, params, written.version)
    return prov_key is not None and marker(destination, out_relpath, prov_key).exists()


def output_relpath(source_relpath: str) -> str:
    """Where the output of a source sits under the destination: the same relative path.

    Examples
    --------
    >>> output_relpath("Bird0/Wave/0.wav")
    'Bird0/Wave/0.wav.spect.npz'
    """
    return storage.safe_relpath(source_relpath) + OUTPUT_SUFFIX
