"""Every read, listing and write of the project, through fsspec.

Paths are URLs (``/local/dir``, ``s3://bucket/prefix``, ``memory://x``); ``storage_options`` go
to fsspec untouched, but for the retries of s3fs and botocore, which are turned off unless the
options set them. Nothing outside this package knows which backend it is on.

The package, a module per concern:

- :mod:`~spectroflow.storage.operations`: what the rest of spectroflow does with storage, by URL;
- :mod:`~spectroflow.storage.location`: :class:`Location`, a URL bound to its options;
- :mod:`~spectroflow.storage.backend`: the interface of a backend (:class:`Backend`), one class
  per store: :mod:`~spectroflow.storage.local`, :mod:`~spectroflow.storage.s3`, and
  :mod:`~spectroflow.storage.generic` for any other fsspec filesystem, chosen by protocol in
  :mod:`~spectroflow.storage.registry`;
- :mod:`~spectroflow.storage.urls`: the filesystem of a URL, and how a run writes a path;
- :mod:`~spectroflow.storage.retry`: the one retry layer, for transient faults (HTTP 5xx,
  SlowDown, connection resets, truncated bodies), with exponential backoff and jitter;
- :mod:`~spectroflow.storage.errors`: the errors, and which faults are transient.
"""

from .backend import Backend
from .errors import (
    ChangedWhileReadingError,
    StorageError,
    TruncatedBodyError,
    VersionConflict,
    is_transient,
)
from .generic import WHOLE_READ_BYTES, FsspecBackend
from .local import DIRECT_CHUNK, DIRECT_FILESYSTEMS, DIRECT_WRITES, NAME_MAX, LocalBackend
from .location import Location, as_location
from .operations import (
    LEFTOVER_AGE,
    PROBE_BYTES,
    FileInfo,
    check_writable,
    exists,
    file_info,
    iter_files,
    kind,
    list_files,
    open_input,
    read_bytes,
    remove,
    remove_leftovers,
    remove_many,
    remove_tree,
    source_kind,
    touch,
    write_bytes,
    write_with,
    zarr_store,
)
from .registry import BACKENDS, backend_for
from .retry import RETRY_ATTEMPTS, RETRY_MAX_WAIT, retrying
from .s3 import PART_BYTES, S3_PAGE, S3Backend
from .urls import absolute, is_local, join, safe_relpath, url_to_fs

__all__ = [
    "BACKENDS",
    "DIRECT_CHUNK",
    "DIRECT_FILESYSTEMS",
    "DIRECT_WRITES",
    "LEFTOVER_AGE",
    "NAME_MAX",
    "PART_BYTES",
    "PROBE_BYTES",
    "RETRY_ATTEMPTS",
    "RETRY_MAX_WAIT",
    "S3_PAGE",
    "WHOLE_READ_BYTES",
    "Backend",
    "ChangedWhileReadingError",
    "FileInfo",
    "FsspecBackend",
    "LocalBackend",
    "Location",
    "S3Backend",
    "StorageError",
    "TruncatedBodyError",
    "VersionConflict",
    "absolute",
    "as_location",
    "backend_for",
    "check_writable",
    "exists",
    "file_info",
    "is_local",
    "is_transient",
    "iter_files",
    "join",
    "kind",
    "list_files",
    "open_input",
    "read_bytes",
    "remove",
    "remove_leftovers",
    "remove_many",
    "remove_tree",
    "retrying",
    "safe_relpath",
    "source_kind",
    "touch",
    "url_to_fs",
    "write_bytes",
    "write_with",
    "zarr_store",
]
