"""A sequence kept on local disk as it is built, so that planning a million recordings holds a
chunk of them in memory, not a million."""

from __future__ import annotations

import os
import pickle
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Spool(Generic[T]):
    """An append-only sequence of picklable items in a temporary file, written and read a chunk
    at a time; it can be read any number of times, even while it grows. The file is deleted with
    the spool.

    Examples
    --------
    >>> spool = Spool(chunk=2)
    >>> spool.extend(["a", "b", "c"])
    >>> len(spool), list(spool), [len(c) for c in spool.chunks()]
    (3, ['a', 'b', 'c'], [2, 1])
    >>> bool(Spool())
    False
    """

    def __init__(self, items: Iterable[T] = (), chunk: int = 1024):
        fd, self._path = tempfile.mkstemp(prefix="spectroflow-plan-")
        self._file = os.fdopen(fd, "wb")
        self._chunk = chunk
        self._buffer: list[T] = []
        self._len = 0
        weakref.finalize(self, _delete, self._file, self._path)
        self.extend(items)

    def append(self, item: T) -> None:
        self._buffer.append(item)
        self._len += 1
        if len(self._buffer) >= self._chunk:
            self._flush()

    def extend(self, items: Iterable[T]) -> None:
        for item in items:
            self.append(item)

    def _flush(self) -> None:
        if self._buffer:
            pickle.dump(self._buffer, self._file, protocol=pickle.HIGHEST_PROTOCOL)
            self._file.flush()
            self._buffer = []

    def __len__(self) -> int:
        return self._len

    def chunks(self) -> Iterator[list[T]]:
        """The items as the lists they were written in (at most ``chunk`` items each)."""
        self._flush()
        end = self._file.tell()
        with open(self._path, "rb") as f:
            while f.tell() < end:
                yield pickle.load(f)

    def __iter__(self) -> Iterator[T]:
        for chunk in self.chunks():
            yield from chunk

    def __repr__(self) -> str:
        return f"Spool({self._len} items)"


def _delete(file, path: str) -> None:
    file.close()
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
