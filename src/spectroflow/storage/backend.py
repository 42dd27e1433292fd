"""What spectroflow asks of a store: the interface each backend implements, on one fsspec
filesystem (:class:`Backend`), and the file a streamed write fills (:class:`SequentialFile`)."""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, BinaryIO, ClassVar


class SequentialFile(io.RawIOBase):
    """A file written in order, as output writers need: it counts what it was given
    (``tell``) and cannot seek."""

    def __init__(self) -> None:
        super().__init__()
        self._written = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written


class Backend(ABC):
    """A kind of store, reached through the fsspec filesystem ``fs``.

    Paths are the filesystem's own (``bucket/key`` on S3, a plain path locally). A method that
    makes requests retries transient faults itself, a request at a time where it makes several
    (see :mod:`spectroflow.storage.retry`); :meth:`kind` alone leaves retrying to its caller.
    """

    #: Keys of a file's details that hold its version (an ETag), in the order looked for.
    version_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, fs: Any):
        self.fs = fs

    @classmethod
    def filesystem(cls, fs_class: type, options: dict[str, Any]) -> Any:
        """The filesystem of a URL of this backend: fsspec's class for its protocol, given the
        URL's options (fsspec keeps one instance per class and options)."""
        return fs_class(**options)

    def url(self, path: str) -> str:
        """``path`` as a URL, for messages."""
        return self.fs.unstrip_protocol(path)

    def version(self, info: dict) -> str | None:
        """The version of the file with details ``info``: its ETag where the backend has one,
        else ``size:mtime[:inode]``.

        Examples
        --------
        >>> from fsspec.implementations.memory import MemoryFileSystem
        >>> from spectroflow.storage.generic import FsspecBackend
        >>> FsspecBackend(MemoryFileSystem()).version({"size": 3, "mtime": 1.5, "ino": 7})
        '3:1.500000:7'
        """
        for name in self.version_keys:
            if info.get(name):
                return str(info[name]).strip('"')
        mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
        if mtime is None:
            return None
        if hasattr(mtime, "timestamp"):
            mtime = mtime.timestamp()
        version = f"{info.get('size')}:{float(mtime):.6f}"
        return f"{version}:{info['ino']}" if info.get("ino") else version

    @abstractmethod
    def pages(self, path: str) -> Iterator[list[dict]]:
        """The details (``name``, ``type``, ``size``, ...) of every file under the folder
        ``path``, in order of name, a page at a time: no more than a page is held at once."""

    @abstractmethod
    def info(self, path: str) -> dict:
        """The details of one file; ``FileNotFoundError`` if it is missing."""

    @abstractmethod
    def kind(self, path: str) -> str | None:
        """``"folder"``, ``"file"`` or None (nothing there); asked once, not retried."""

    @abstractmethod
    def exists(self, path: str) -> bool:
        """Whether a file or folder is at ``path``."""

    @abstractmethod
    def read(self, path: str, size: int | None = None) -> bytes:
        """The whole file. ``size`` is the size a listing gave: a body of another size is
        truncated (:class:`~spectroflow.storage.errors.TruncatedBodyError`, retried) or the file
        changed since (:class:`~spectroflow.storage.errors.ChangedWhileReadingError`)."""

    @abstractmethod
    def open_input(self, path: str, size: int | None = None) -> AbstractContextManager[BinaryIO]:
        """A seekable binary file to read ``path`` from, in memory that does not grow with its
        size; ``size`` as for :meth:`read`."""

    @abstractmethod
    def write(self, path: str, write: Callable[[BinaryIO], None], *, if_version: str | None = None,
              if_absent: bool = False) -> str | None:
        """Write ``path`` through ``write(file)``, whole or not at all, only if it is still at
        ``if_version`` (or absent, with ``if_absent``) when either is given; returns the version
        written. See :func:`spectroflow.storage.write_with`."""

    @abstractmethod
    def touch(self, path: str) -> None:
        """Create an empty file."""

    @abstractmethod
    def remove(self, path: str) -> None:
        """Remove one file; ``FileNotFoundError`` if it is missing."""

    @abstractmethod
    def remove_many(self, paths: list[str]) -> None:
        """Remove these files, each path taken as written, never as a pattern; one already gone
        is no error."""

    @abstractmethod
    def remove_tree(self, path: str) -> None:
        """Remove ``path`` and everything below it, if anything is there."""

    def leftovers(self, path: str, older_than: float, skip: tuple[str, ...] = ()) -> list[str]:
        """Remove what writes cut short left under ``path``, unchanged for ``older_than``
        seconds, except in the folders ``skip`` names (``/``-separated, below ``path``) where
        the backend keeps folders; returns their URLs. Writes stored with one request leave
        nothing."""
        return []

    @abstractmethod
    def zarr_store(self, path: str, read_only: bool = False) -> Any:
        """A zarr store rooted at ``path``."""
