"""Stopping a run early: a Ctrl-C or SIGTERM reaches only the process that decides what stops.

A terminal sends Ctrl-C to every process of its foreground job: the flow's process and, without
care, the processes it starts (Prefect's temporary API server, Dask's worker processes), which
then die on their own, mid-run, before the flow can record how the run ended. So:

- :func:`stop_on_signals` turns the first SIGINT, SIGTERM or SIGHUP (how a terminal, SLURM,
  Kubernetes, systemd, ``timeout`` and a closed ssh session stop a job) into a :class:`Stop`
  request that the compute loop acts on (stop submitting, let running batches return, close
  the cluster, write the report); a second SIGINT raises :class:`KeyboardInterrupt` as usual,
  a second SIGTERM or SIGHUP does what it did before the block;
- :func:`signals_blocked` starts child processes (Dask's local workers) with those signals
  blocked, so that a signal sent to the whole process group (a terminal's, ``timeout``'s)
  reaches the run alone; Prefect's temporary API runs in a session of its own
  (:mod:`spectroflow.orchestration.ephemeral`).

None of this imports Prefect.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from multiprocessing import resource_tracker
from queue import SimpleQueue
from typing import Any, Protocol


class Wakeable(Protocol):
    """What :meth:`Stop.wake` can wake: a queue, or anything with its ``put``."""

    def put(self, item: None) -> None: ...


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
        #: The signal that asked, if one did: a command exits with 128 + its number.
        self.signal: int | None = None
        self._queues: list[SimpleQueue | Wakeable] = []

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def request(self, reason: str, signum: int | None = None) -> None:
        """Ask the run to stop, saying why (and which signal asked); later requests change
        nothing."""
        if self.reason is None:
            self.reason, self.signal = reason, signum
            for queue in self._queues:
                queue.put(None)

    def wake(self, queue: SimpleQueue | Wakeable) -> None:
        """Put ``None`` on ``queue`` when a stop is requested (at once if it was already)."""
        self._queues.append(queue)
        if self.reason is not None:
            queue.put(None)


#: The signals that stop a run, and the reason each gives.
STOP_SIGNALS = {signal.SIGINT: "interrupted (SIGINT)", signal.SIGTERM: "terminated (SIGTERM)",
                signal.SIGHUP: "hung up (SIGHUP)"}


@contextmanager
def stop_on_signals(stop: Stop) -> Iterator[Stop]:
    """Within the block, the first of :data:`STOP_SIGNALS` requests ``stop``; then a SIGINT
    raises KeyboardInterrupt, and a SIGTERM or SIGHUP is handled as before the block.

    Python runs signal handlers in the main thread only, so elsewhere nothing changes. The
    previous handlers are back after the block. They are installed even when a signal was
    ignored on entry (a background job of a shell script starts with SIGINT ignored), so that
    ``kill -INT`` stops the run there too.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous: dict[int, Any] = {}

    def handler(signum, frame):
        if not stop.requested:
            stop.request(STOP_SIGNALS[signum], signum)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:  # asked twice: as it would have been without the block
            _restore(signum, previous[signum])
            signal.raise_signal(signum)

    previous.update((signum, signal.signal(signum, handler)) for signum in STOP_SIGNALS)
    try:
        yield stop
    finally:
        for signum, before in previous.items():
            _restore(signum, before)


@contextmanager
def exit_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP end the process as an uncaught Ctrl-C would: with
    exit code 128 + the signal, through the context managers' exits and ``atexit``, so that
    what the process started (a cluster, Prefect's temporary API) stops with it. A run's own
    :func:`stop_on_signals`, while it computes, stops more gently."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, before in previous.items():
            _restore(signum, before)


def _restore(signum: int, handler: Any) -> None:
    # None: the previous handler was not set from Python; the default is the closest.
    signal.signal(signum, signal.SIG_DFL if handler is None else handler)


#: Signals a terminal (Ctrl-C, a closed session) or ``timeout`` sends a job's whole process group,
#: which the processes a run starts leave to the run.
GROUP_SIGNALS = frozenset(STOP_SIGNALS)


@contextmanager
def signals_blocked(signals: Iterable[int] = GROUP_SIGNALS) -> Iterator[None]:
    """Within the block, this thread does not receive ``signals``, nor will the processes it
    starts.

    A blocked signal mask is inherited by new threads and across ``fork`` and ``exec``: the
    processes started here, and through threads started here (a Dask cluster's event loop
    spawns its workers so), never receive the terminal's Ctrl-C or a signal sent to the
    process group; this process still does, through its other threads. multiprocessing's
    resource tracker unblocks SIGINT in the thread that starts it (CPython bpo-33613), so it is
    started first.
    """
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(signals))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
