"""The library's log records, sent to the run's logs in Prefect while its tasks run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager

import distributed
from prefect.logging.handlers import APILogHandler

from ..names import PrintableNames
from ..shared_setup import SharedSetup


def on_dask_worker() -> bool:
    """Whether this code runs in a Dask worker."""
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


@contextmanager
def printable_run_logs() -> Iterator[None]:
    """Within the block, the run's own loggers send Prefect printable messages (see
    :class:`~spectroflow.names.PrintableNames`): Prefect sends logs as JSON, and one name that
    is not UTF-8 failed the whole batch of them."""
    names = PrintableNames()
    handlers = [handler for name in ("prefect.flow_runs", "prefect.task_runs")
                for handler in logging.getLogger(name).handlers
                if isinstance(handler, APILogHandler)]
    for handler in handlers:
        handler.addFilter(names)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(names)


class _ToRootAtWarning(logging.Handler):
    """Hands WARNING and above to the root logger's handlers (Prefect's console handler)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger().handle(record)


def _forward_library_logs(undo: ExitStack) -> None:
    """One :class:`APILogHandler` on the library's logger, until ``undo``.

    Tasks that run at once (a Dask worker with several threads) share it: a handler per task
    would send every record once per running task. The handler finds the run each record
    belongs to in the emitting thread's context.

    On a Dask worker, the library's INFO records go to the run's logs only, not to the worker's
    console as well: drawing them there (Prefect's console handler) took half as much CPU as
    reading the audio. Warnings still reach the console.
    """
    lib = logging.getLogger("spectroflow")
    undo.callback(lib.setLevel, lib.level)
    undo.callback(setattr, lib, "propagate", lib.propagate)
    if lib.level == logging.NOTSET or lib.level > logging.INFO:
        lib.setLevel(logging.INFO)
    handlers: list[logging.Handler] = [APILogHandler()]
    handlers[0].addFilter(PrintableNames())
    if on_dask_worker():
        handlers.append(_ToRootAtWarning())
        lib.propagate = False
    for handler in handlers:
        lib.addHandler(handler)
        undo.callback(lib.removeHandler, handler)


_forwarding = SharedSetup(_forward_library_logs)


def forward_library_logs() -> AbstractContextManager[None]:
    """Send the library's log records (skips, failures, storage retries) to the run's logs.

    Works in Dask worker processes too, where Prefect's own logging setup does not know the
    library's logger. Outside tasks the handler is gone, so library calls outside a run never
    try to reach the API.
    """
    return _forwarding.active()
