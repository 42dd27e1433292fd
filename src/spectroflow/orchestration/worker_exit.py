"""A Dask worker preload that lets worker processes exit without tearing down the interpreter.

A worker process that has imported Prefect frees its thousands of modules one by one at exit,
and a local cluster's shutdown waits for that at the end of every run (figures: "Flow overhead"
in docs/performance.md). Once the worker has closed (its tasks finished, its results sent, its
files written and renamed into place), this preload ends the process with ``os._exit`` instead,
after the exit work that matters has run:

- handlers registered with :mod:`atexit` after this preload (Prefect's among them) run first,
  as atexit runs them last-registered first, and Prefect's log and event services, which are
  drained at interpreter shutdown before any atexit handler, have delivered their queues;
- log handlers are flushed and closed, and standard output and error flushed.

Only a worker that closed normally exits this way; any other exit is left to Python. Load it
with ``preload=["spectroflow.orchestration.worker_exit"]`` on the workers (spectroflow does so
for the local clusters it starts). Neither this module nor its package imports Prefect, so the
handler is registered before Prefect registers its own.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys

from distributed.core import Status


def _exit_now(worker) -> None:
    if worker.status != Status.closed:  # it did not close, or not all the way: Python's exit
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(0)


def dask_setup(worker) -> None:
    atexit.register(_exit_now, worker)
