"""The library's log records, sent to the run's logs in Prefect while its tasks run."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager

import distributed
from prefect.logging.handlers import APILogHandler

from .. import storage


def on_dask_worker() -> bool:
    """Whether this code runs in a Dask worker."""
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


class _ToRootAtWarning(logging.Handler):
    """Hands WARNING and above to the root logger's handlers (Prefect's console handler)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger().handle(record)


class _LibraryLogForwarding:
    """One :class:`APILogHandler` on the library's logger while any task of this process runs.

    Tasks that run at once (a Dask worker with several threads) share it: a handler per task
    would send every record once per running task. The handler finds the run each record
    belongs to in the emitting thread's context. The last task to finish restores the logger.

    On a Dask worker, the library's INFO records go to the run's logs only, not to the worker's
    console as well: drawing them there (Prefect's console handler) took half as much CPU as
    reading the audio. Warnings still reach the console.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._restore = ExitStack()

    def _install(self) -> None:
        lib = logging.getLogger("spectroflow")
        level, propagate = lib.level, lib.propagate
        if level == logging.NOTSET or level > logging.INFO:
            lib.setLevel(logging.INFO)
        handlers: list[logging.Handler] = [APILogHandler()]
        if on_dask_worker():
            handlers.append(_ToRootAtWarning())
            lib.propagate = False
        for handler in handlers:
            lib.addHandler(handler)
            self._restore.callback(lib.removeHandler, handler)
        self._restore.callback(setattr, lib, "propagate", propagate)
        self._restore.callback(lib.setLevel, level)
        self._restore.enter_context(storage.backend_retries_logged())

    @contextmanager
    def active(self) -> Iterator[None]:
        with self._lock:
            if self._active == 0:
                self._install()
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self._restore.close()


_forwarding = _LibraryLogForwarding()


def forward_library_logs() -> AbstractContextManager[None]:
    """Send the library's log records (skips, failures, storage retries) to the run's logs.

    Works in Dask worker processes too, where Prefect's own logging setup does not know the
    library's logger. Outside tasks the handler is gone, so library calls outside a run never
    try to reach the API.
    """
    return _forwarding.active()
