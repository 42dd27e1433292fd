"""A URL bound to the storage options that reach it (:class:`Location`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, BinaryIO

from pydantic import BaseModel, ConfigDict, Field

from . import operations
from .operations import LEFTOVER_AGE, FileInfo
from .urls import is_local, join


class Location(BaseModel):
    """A URL bound to the storage options that reach it: a folder, prefix or file.

    Every run's sources and destination are locations; what they hold is read and written
    through their methods, so the options travel with the URL and no caller handles them.

    Examples
    --------
    >>> out = Location(url="s3://lab/spect", options={"anon": True})
    >>> out.join("day1/a.wav.spect.npz").url, out.join("x").options
    ('s3://lab/spect/day1/a.wav.spect.npz', {'anon': True})
    >>> str(out.at("s3://lab/audio/a.wav"))
    's3://lab/audio/a.wav'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    options: dict[str, Any] = Field(default_factory=dict)

    def __str__(self) -> str:
        return self.url

    def join(self, relpath: str) -> Location:
        """``relpath`` (``/``-separated) below this location (see
        :func:`~spectroflow.storage.urls.join`)."""
        return self.at(join(self.url, relpath))

    def at(self, url: str) -> Location:
        """Another URL reached with the same options."""
        return Location(url=url, options=self.options)

    @property
    def is_local(self) -> bool:
        return is_local(self.url)

    def kind(self, retry: bool = True) -> str | None:
        return operations.kind(self.url, self.options, retry)

    def exists(self) -> bool:
        return operations.exists(self.url, self.options)

    def info(self) -> FileInfo:
        return operations.file_info(self.url, self.options)

    def list_files(self, suffixes: tuple[str, ...]) -> list[FileInfo]:
        return operations.list_files(self.url, suffixes, self.options)

    def iter_files(self, suffixes: tuple[str, ...]) -> Iterator[FileInfo]:
        return operations.iter_files(self.url, suffixes, self.options)

    def read_bytes(self, size: int | None = None) -> bytes:
        return operations.read_bytes(self.url, self.options, size)

    def open_input(self, size: int | None = None) -> AbstractContextManager[BinaryIO]:
        """A seekable binary file to read this location from (see
        :func:`~spectroflow.storage.operations.open_input`)."""
        return operations.open_input(self.url, self.options, size)

    def write_with(self, write: Callable[[BinaryIO], None], *, if_version: str | None = None,
                   if_absent: bool = False) -> str | None:
        """Write this location whole or not at all (see :func:`~spectroflow.storage.operations.write_with`)."""
        return operations.write_with(self.url, write, self.options, if_version=if_version,
                          if_absent=if_absent)

    def write_bytes(self, data: bytes) -> str | None:
        return operations.write_bytes(self.url, data, self.options)

    def touch(self) -> None:
        operations.touch(self.url, self.options)

    def remove(self) -> None:
        operations.remove(self.url, self.options)

    def remove_tree(self) -> None:
        operations.remove_tree(self.url, self.options)

    def zarr_store(self, read_only: bool = False) -> Any:
        """A zarr store rooted here (see :func:`~spectroflow.storage.operations.zarr_store`)."""
        return operations.zarr_store(self.url, self.options, read_only)

    def remove_leftovers(self, older_than: float = LEFTOVER_AGE,
                         skip: tuple[str, ...] = ()) -> list[str]:
        """Remove what killed writes left here (see
        :func:`~spectroflow.storage.operations.remove_leftovers`)."""
        return operations.remove_leftovers(self.url, older_than, skip, self.options)

    def remove_many(self, urls: list[str]) -> None:
        """Remove ``urls``, reached with this location's options."""
        operations.remove_many(urls, self.options)

    def check_writable(self) -> None:
        operations.check_writable(self.url, self.options)


def as_location(where: str | Location) -> Location:
    """A location as given, or a URL reached with no options."""
    return where if isinstance(where, Location) else Location(url=str(where))
