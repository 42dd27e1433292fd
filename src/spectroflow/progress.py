"""Progress of a run, for whoever shows it (the command line's progress bar).

A flow calls :func:`update` as files finish; the listener set with :func:`listen` around the
call receives ``(files done, files to compute)``. It is a context variable: runs in other
threads or contexts are not heard. Threads that report for a run (those receiving the Dask
workers' events) call the :func:`reporter` taken in the run's context. Nothing listens by
default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Listener = Callable[[int, int], None]
_listener: ContextVar[Listener | None] = ContextVar("spectroflow_progress", default=None)


@contextmanager
def listen(listener: Listener) -> Iterator[None]:
    """Call ``listener(done, total)`` on every update while the block runs.

    Examples
    --------
    >>> seen = []
    >>> with listen(lambda done, total: seen.append((done, total))):
    ...     update(3, 10)
    >>> update(4, 10)
    >>> seen
    [(3, 10)]
    """
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def _ignore(done: int, total: int) -> None:
    pass


def reporter() -> Listener:
    """The listener of this context (or one that ignores updates), to call from other threads."""
    return _listener.get() or _ignore


def update(done: int, total: int) -> None:
    reporter()(done, total)


def listening() -> bool:
    """Whether anyone listens (so a run can skip collecting progress nobody shows)."""
    return _listener.get() is not None
