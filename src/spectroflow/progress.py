"""Progress of a run in this process, for whoever shows it (the command line's progress bar).

A flow calls :func:`update` as files finish; listeners registered with :func:`listen` in the
same process receive ``(files done, files to compute)``, from the flow's thread or from the
thread that receives the Dask workers' events. Nothing listens by default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Listener = Callable[[int, int], None]
_listeners: list[Listener] = []


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
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def update(done: int, total: int) -> None:
    for listener in list(_listeners):
        listener(done, total)


def listening() -> bool:
    """Whether anyone listens (so a run can skip collecting progress nobody shows)."""
    return bool(_listeners)
