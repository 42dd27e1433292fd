"""A change to process-wide state (loggers) that the blocks needing it share."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager


class SharedSetup:
    """``install(stack)`` while any block of this process needs it, undone after the last.

    Blocks that run at once (the threads of a Dask worker) share one installation: the first
    to enter installs it, registering how to undo each change on ``stack``; the last to leave
    closes the stack.

    Examples
    --------
    >>> seen = []
    >>> setup = SharedSetup(lambda stack: (seen.append("on"), stack.callback(seen.append, "off")))
    >>> with setup.active():
    ...     with setup.active():
    ...         seen.append("work")
    >>> seen
    ['on', 'work', 'off']
    """

    def __init__(self, install: Callable[[ExitStack], object]):
        self._install = install
        self._lock = threading.Lock()
        self._users = 0
        self._undo = ExitStack()

    @contextmanager
    def active(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._install(self._undo)
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._undo.close()
