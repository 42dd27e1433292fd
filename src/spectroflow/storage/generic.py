"""Any fsspec filesystem (memory, GCS, Azure, ...): fsspec's common interface, each request
retried; the backend the others build on."""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, ClassVar

from .backend import Backend
from .errors import ChangedWhileReadingError, TruncatedBodyError, check_version
from .retry import retrying

#: Largest file not on this machine that :meth:`FsspecBackend.open_input` reads into memory; a
#: larger one is copied to a local temporary file first.
WHOLE_READ_BYTES = 64 << 20
#: Bytes read at a time when a file is copied to a local temporary file.
COPY_BYTES = 16 << 20


class FsspecBackend(Backend):
    """A store seen through fsspec's common interface alone.

    A write gathers the file in memory and stores it with one request, which object stores
    apply whole or not at all. A conditional write checks the version just before it writes,
    which another writer can slip between.
    """

    # GCS's and Azure's listings name the object's ETag so.
    version_keys: ClassVar[tuple[str, ...]] = ("etag",)

    def pages(self, path: str) -> Iterator[list[dict]]:
        """One page: ``find`` lists every file before returning."""
        yield sorted(self.find(path).values(), key=lambda info: info["name"])

    @retrying
    def find(self, path: str) -> dict[str, dict]:
        return self.fs.find(path, detail=True)

    @retrying
    def info(self, path: str) -> dict:
        return self.fs.info(path)

    def kind(self, path: str) -> str | None:
        if self.fs.isdir(path):
            return "folder"
        return "file" if self.fs.exists(path) else None

    @retrying
    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    @retrying
    def read(self, path: str, size: int | None = None) -> bytes:
        data = self.fs.cat_file(path)
        self._check_size(path, len(data), size)
        return data

    @contextmanager
    def open_input(self, path: str, size: int | None = None) -> Iterator[BinaryIO]:
        """The file read whole into memory up to :data:`WHOLE_READ_BYTES`, else copied to a
        local temporary file (retried whole)."""
        if size is None:
            size = self.info(path).get("size")
        if size is not None and size <= WHOLE_READ_BYTES:
            yield io.BytesIO(self.read(path, size))
            return
        with tempfile.TemporaryFile() as fh:
            self.copy_to(path, fh, size)
            fh.seek(0)
            yield fh

    @retrying
    def copy_to(self, path: str, fh: BinaryIO, size: int | None) -> None:
        """Copy the file to the local file ``fh``; ``size`` as for :meth:`read`."""
        fh.seek(0)
        fh.truncate()
        with self.fs.open(path, "rb", block_size=COPY_BYTES) as source:
            shutil.copyfileobj(source, fh, COPY_BYTES)
        self._check_size(path, fh.tell(), size)

    def _check_size(self, path: str, got: int, size: int | None) -> None:
        """Raise if ``got`` bytes were read of a file listed with ``size``."""
        if size is None or got == size:
            return
        now = self.fs.info(path).get("size")
        if now != got:
            raise TruncatedBodyError(f"got {got} of {now} bytes")
        raise ChangedWhileReadingError.sizes(size, now)

    def write(self, path: str, write: Callable[[BinaryIO], None], *, if_version: str | None = None,
              if_absent: bool = False) -> str | None:
        if if_version is not None or if_absent:
            check_version(self.url(path), self.current_version(path), if_version)
        buf = io.BytesIO()
        write(buf)
        answer = self.put(path, buf.getvalue())
        if isinstance(answer, dict) and (version := self.version(answer)):
            return version
        return self.version(self.info(path))

    def current_version(self, path: str) -> str | None:
        """The version of the file at ``path``, or None if there is none."""
        try:
            return self.version(self.info(path))
        except FileNotFoundError:
            return None

    @retrying
    def put(self, path: str, data: bytes) -> Any:
        """Store ``data`` with one request; returns the store's answer."""
        return self.fs.pipe_file(path, data)

    def touch(self, path: str) -> None:
        self.put(path, b"")

    @retrying
    def remove(self, path: str) -> None:
        self.fs.rm_file(path)

    @retrying
    def remove_many(self, paths: list[str]) -> None:
        for path in paths:
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:  # another run removed it first
                pass

    def remove_tree(self, path: str) -> None:
        try:
            files = [info["name"] for page in self.pages(path) for info in page]
        except FileNotFoundError:
            return
        self.remove_many(files)
        self.fs.invalidate_cache()  # what the listing cached

    def zarr_store(self, path: str, read_only: bool = False) -> Any:
        """zarr's ``FsspecStore`` (asynchronous) on this filesystem."""
        import zarr.storage

        fs = self.fs
        if fs.async_impl:  # the same filesystem, asynchronous, as zarr needs it
            fs = type(fs)(**{**fs.storage_options, "asynchronous": True})
        else:
            from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

            fs = AsyncFileSystemWrapper(fs, asynchronous=True)
        return zarr.storage.FsspecStore(fs, read_only=read_only, path=path)
