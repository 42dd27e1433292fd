"""Progress of a run, for whoever shows it (the command line's progress bar).

A flow calls :func:`update` as files finish; the listeners set with :func:`listen` around the
call receive ``(files done, files to compute)``. They are a context variable: runs in other
threads or contexts are not heard. Threads that report for a run (those receiving the Dask
workers' events) call the :func:`reporter` taken in the run's context. Nothing listens by
default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Listener = Callable[[int, int], None]
_listeners: ContextVar[tuple[Listener, ...]] = ContextVar("spectroflow_progress", default=())


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
    token = _listeners.set((*_listeners.get(), listener))
    try:
        yield
    finally:
        _listeners.reset(token)


def reporter() -> Listener:
    """The listeners of this context as one, to call from other threads."""
    listeners = _listeners.get()

    def report(done: int, total: int) -> None:
        for listener in listeners:
            listener(done, total)

    return report


def update(done: int, total: int) -> None:
    reporter()(done, total)


def listening() -> bool:
    """Whether anyone listens (so a run can skip collecting progress nobody shows)."""
    return bool(_listeners.get())
