"""Stopping a run early: a Ctrl-C (SIGINT) reaches only the process that decides what stops.

A terminal sends Ctrl-C to every process of its foreground job: the flow's process and, without
care, the processes it starts (Prefect's temporary API server, Dask's worker processes), which
then die on their own, mid-run, before the flow can record how the run ended. So:

- :func:`stop_on_sigint` turns the first SIGINT into a :class:`Stop` request that the compute
  loop acts on (stop submitting, let running batches return, close the cluster, write the
  report); the second raises :class:`KeyboardInterrupt` as usual;
- :func:`sigint_blocked` starts child processes with SIGINT blocked, so they never receive it;
- :func:`call_without_sigint` runs a call that starts children (a server) in a helper thread
  that blocks SIGINT, leaving the calling thread interruptible.

None of this imports Prefect.
"""

from __future__ import annotations

import contextvars
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from multiprocessing import resource_tracker
from queue import SimpleQueue
from typing import TypeVar

T = TypeVar("T")


class Stop:
    """A request to stop a run before its end, made once from a signal handler or any thread.

    Requesting is safe in a signal handler: it sets an attribute and puts ``None`` on the queues
    given to :meth:`wake`, and :meth:`queue.SimpleQueue.put` is reentrant.

    Examples
    --------
    >>> stop, woken = Stop(), SimpleQueue()
    >>> stop.wake(woken)
    >>> stop.requested, woken.empty()
    (False, True)
    >>> stop.request("interrupted"); stop.request("cancelled")
    >>> stop.reason, woken.get_nowait()
    ('interrupted', None)
    """

    def __init__(self):
        self.reason: str | None = None
        self._queues: list[SimpleQueue] = []

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def request(self, reason: str) -> None:
        """Ask the run to stop, saying why; later requests change nothing."""
        if self.reason is None:
            self.reason = reason
            for queue in self._queues:
                queue.put(None)

    def wake(self, queue: SimpleQueue) -> None:
        """Put ``None`` on ``queue`` when a stop is requested (at once if it was already)."""
        self._queues.append(queue)
        if self.reason is not None:
            queue.put(None)


@contextmanager
def stop_on_sigint(stop: Stop, reason: str = "interrupted (SIGINT)") -> Iterator[Stop]:
    """Within the block, the first SIGINT requests ``stop``; the second raises KeyboardInterrupt.

    Python runs signal handlers in the main thread only, so elsewhere nothing changes. The
    previous handler is back after the block. The handler is installed even when SIGINT was
    ignored on entry (a background job of a shell script starts so), so that ``kill -INT``
    stops the run there too.

    Parameters
    ----------
    stop : Stop
        What the first SIGINT requests.
    reason : str
        The reason it gives.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    interrupted = False

    def handler(signum, frame):
        nonlocal interrupted
        if interrupted:
            raise KeyboardInterrupt
        interrupted = True
        stop.request(reason)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        # None: the previous handler was not set from Python; the default is the closest.
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


@contextmanager
def sigint_blocked() -> Iterator[None]:
    """Within the block, this thread does not receive SIGINT, nor will the processes it starts.

    A blocked signal mask is inherited by new threads and across ``fork`` and ``exec``: the
    processes started here, and through threads started here (a Dask cluster's event loop
    spawns its workers so), never receive the terminal's Ctrl-C; this process still does,
    through its other threads. multiprocessing's resource tracker unblocks SIGINT in the thread
    that starts it (CPython bpo-33613), so it is started first.
    """
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def call_without_sigint(func: Callable[[], T]) -> T:
    """Call ``func`` in a helper thread that blocks SIGINT (see :func:`sigint_blocked`).

    The calling thread waits, and a Ctrl-C still interrupts the wait; the helper finishes the
    call anyway (the process waits for it at exit).

    Parameters
    ----------
    func : callable
        Called without arguments, in a copy of this thread's context (so that settings held in
        context variables apply).

    Returns
    -------
    object
        What ``func`` returns; what it raises is raised here.
    """

    def call() -> T:
        with sigint_blocked():
            return func()

    pool = ThreadPoolExecutor(1, thread_name_prefix="sigint-blocked")
    try:
        return pool.submit(contextvars.copy_context().run, call).result()
    finally:
        pool.shutdown(wait=False)
