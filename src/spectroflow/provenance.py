"""Which outputs are up to date, known from listings alone.

After an output is written, a marker ``<destination>/.spectroflow/provenance/<output relpath>.<key>``
records it, where ``key`` hashes the source's version (ETag, or size and mtime), the audio format
and the spectrogram parameters. An output is up to date when both it and the marker for the current
key exist, so a run over a million finished files costs two listings and no reads, and a changed
source or changed parameters give a new key.
"""

from __future__ import annotations

import hashlib

from . import storage
from .params import SpectParams

MARKERS_DIR = ".spectroflow/provenance"
OUTPUT_SUFFIX = ".spect.npz"


def key(version: str | None, audio_format: str, params: SpectParams) -> str | None:
    """Provenance key of an output, or None when the source has no known version.

    Examples
    --------
    >>> key("etag-1", "wav", SpectParams()) == key("etag-1", "wav", SpectParams())
    True
    >>> key("etag-1", "wav", SpectParams()) == key("etag-2", "wav", SpectParams())
    False
    >>> key(None, "wav", SpectParams()) is None
    True
    """
    if version is None:
        return None
    payload = f"{version}|{audio_format}|{params.fingerprint()}"
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def marker_url(destination: str, out_relpath: str, prov_key: str) -> str:
    return storage.join(destination, f"{MARKERS_DIR}/{out_relpath}.{prov_key}")


def mark(
    destination: str, out_relpath: str, prov_key: str | None, storage_options: dict | None = None
) -> None:
    """Record that ``out_relpath`` was made with ``prov_key``; call after the output is written.

    The marker is empty: its name says everything, and an empty file cannot be half-written.
    """
    if prov_key is not None:
        storage.touch(marker_url(destination, out_relpath, prov_key), storage_options)


def done(destination: str, storage_options: dict | None = None) -> set[tuple[str, str]]:
    """``(output relpath, key)`` of every output under ``destination`` that has its marker."""
    try:
        outputs = {
            f.relpath for f in storage.list_files(destination, (OUTPUT_SUFFIX,), storage_options)
        }
        markers = storage.list_files(
            storage.join(destination, MARKERS_DIR), ("",), storage_options
        )
    except storage.StorageError:
        return set()
    pairs = set()
    for marker in markers:
        relpath, _, prov_key = marker.relpath.rpartition(".")
        if relpath in outputs:
            pairs.add((relpath, prov_key))
    return pairs


def is_done(destination: str, out_relpath: str, prov_key: str | None, storage_options=None) -> bool:
    """Check one output without a listing (two metadata requests)."""
    if prov_key is None:
        return False
    fs, _ = storage.url_to_fs(destination, storage_options)
    return all(
        fs.exists(storage.url_to_fs(url, storage_options)[1])
        for url in (
            storage.join(destination, out_relpath),
            marker_url(destination, out_relpath, prov_key),
        )
    )


def output_relpath(source_relpath: str) -> str:
    """Where the output of a source sits under the destination: the same relative path.

    Examples
    --------
    >>> output_relpath("Bird0/Wave/0.wav")
    'Bird0/Wave/0.wav.spect.npz'
    """
    return storage.safe_relpath(source_relpath) + OUTPUT_SUFFIX
