"""The one place a backend is chosen: by the filesystem's protocol."""

from __future__ import annotations

from typing import Any

from .backend import Backend
from .generic import FsspecBackend
from .local import LocalBackend
from .s3 import S3Backend

#: Backends by fsspec protocol; any other is :class:`FsspecBackend`.
BACKENDS: dict[str, type[Backend]] = {
    "file": LocalBackend,
    "local": LocalBackend,
    "s3": S3Backend,
    "s3a": S3Backend,
}


def backend_class(protocol: str) -> type[Backend]:
    """The backend of URLs of ``protocol``.

    Examples
    --------
    >>> backend_class("s3").__name__, backend_class("memory").__name__
    ('S3Backend', 'FsspecBackend')
    """
    return BACKENDS.get(protocol, FsspecBackend)


def backend_for(fs: Any) -> Backend:
    """The backend on the fsspec filesystem ``fs``."""
    return backend_class(fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0])(fs)
