"""Batches of work on this machine: worker processes (or threads), a few batches in flight, a
stop that lets each running batch end after its current file.

This is how :func:`spectroflow.run` and ``spectroflow run`` without Prefect compute; the flows
do the same on Dask (:mod:`spectroflow.orchestration.cluster`).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    BrokenExecutor,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from contextlib import contextmanager
from typing import Any

from . import names, pipeline, report
from .interrupt import GROUP_SIGNALS, Stop, signals_blocked
from .plan import WorkItem
from .request import BatchSpec

logger = names.get_logger("spectroflow.executor")

#: Batches handed to the workers at once, per worker: the one each runs and the next.
IN_FLIGHT = 2
#: Names of the schedulers, as dask spells them.
PROCESSES = ("processes", "multiprocessing")
THREADS = ("threads", "threading")
SYNCHRONOUS = ("synchronous", "sync", "single-threaded")

#: In a worker process: set by the run when it stops (see :func:`_start_worker`).
_stopping: Any = None


def compute(
    chunks: Iterable[list[WorkItem]],
    spec: BatchSpec,
    workers: int,
    scheduler: str = "processes",
    stop: Stop | None = None,
    on_batch: Callable[[list[report.FileResult]], None] | None = None,
) -> list[report.FileResult]:
    """The results of every batch of ``chunks``, computed by ``workers`` worker processes
    (``scheduler="processes"``), threads (``"threads"``) or in this thread (``"synchronous"``).

    ``on_batch`` gets each batch's results as it finishes. Once ``stop`` is requested, no batch
    starts, and each running batch ends after its current file; the files it did not reach get
    no result. When worker processes die (killed, out of memory), the batches that finished are
    kept, and the files of the others are failed, or reported written where their outputs are
    whole and marked.
    """
    stop = stop or Stop()
    if scheduler not in (*PROCESSES, *THREADS, *SYNCHRONOUS):
        raise ValueError(f"scheduler: {scheduler!r} is not one of processes, threads, synchronous")
    results: list[report.FileResult] = []
    waiting = iter(chunks)
    with _executor(scheduler, workers) as (executor, stopping):
        stop.wake(_Wake(stopping))
        running: dict[Future, list[WorkItem]] = {}

        def finish(batch: list[report.FileResult]) -> None:
            results.extend(batch)
            if on_batch is not None:
                on_batch(batch)

        def submit_next() -> None:
            while not stop.requested and (chunk := next(waiting, None)) is not None:
                try:
                    event = None if scheduler in PROCESSES else stopping
                    # A worker process started here gets no signal of the run's group before
                    # it is in a session of its own (_start_worker): a Ctrl-C then waits.
                    with signals_blocked():
                        running[executor.submit(_batch, chunk, spec, event)] = chunk
                    return
                except BrokenExecutor as exc:  # a worker died: nothing more runs
                    finish(_unfinished(chunk, spec, exc, stop.requested))

        for _ in range(IN_FLIGHT * workers):
            submit_next()
        while running:
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                chunk = running.pop(future)
                try:
                    batch = future.result()
                except Exception as exc:  # noqa: BLE001 - the batch's files, not the run
                    batch = _unfinished(chunk, spec, exc, stop.requested)
                finish(batch)
                submit_next()
    return results


class _Wake:
    """Sets an event when :class:`Stop` puts ``None`` on it (see :meth:`Stop.wake`)."""

    def __init__(self, event: Any):
        self._event = event

    def put(self, _: None) -> None:
        self._event.set()


def _batch(items: list[WorkItem], spec: BatchSpec, stopping: Any) -> list[report.FileResult]:
    """:func:`pipeline.process_batch` of ``items``, up to the file at which the run stops."""
    event = stopping if stopping is not None else _stopping
    return pipeline.process_batch(_until(items, event), spec)


def _until(items: list[WorkItem], stopping: Any) -> Iterator[WorkItem]:
    for item in items:
        if stopping is not None and stopping.is_set():
            return
        yield item


def _unfinished(chunk: list[WorkItem], spec: BatchSpec, exc: Exception,
                stopped: bool) -> list[report.FileResult]:
    """The results of a batch whose worker failed: files whose outputs are whole and marked are
    written; the others failed, or, once the run stops, not done (no result)."""
    reason = f"not computed: the run's workers failed ({type(exc).__name__}: {exc})"
    finished, _ = pipeline.finished_files(chunk, spec)
    results = []
    for item in chunk:
        if item.source in finished:
            results.append(report.FileResult(item.source, "written",
                                              "finished before its worker failed", item.output,
                                              annot_path=item.annot_path))
        elif not stopped:
            results.append(report.FileResult(item.source, "failed", reason,
                                             annot_path=item.annot_path))
    failed = len(chunk) - len(results)
    if failed:
        logger.error("%d files were not computed: %s", failed, reason)
    return results


@contextmanager
def _executor(scheduler: str, workers: int) -> Iterator[tuple[Executor, Any]]:
    """The executor for ``scheduler``, and the event that stops its batches."""
    if scheduler in PROCESSES:
        context = multiprocessing.get_context("spawn")
        stopping = context.Event()
        with main_importable(), ProcessPoolExecutor(
                workers, mp_context=context, initializer=_start_worker,
                initargs=(stopping,)) as pool:
            yield pool, stopping
    elif scheduler in THREADS:
        with ThreadPoolExecutor(workers, thread_name_prefix="spectroflow") as pool:
            yield pool, threading.Event()
    else:
        yield _InThisThread(), threading.Event()


def _start_worker(stopping: Any) -> None:
    """A worker process's start: in a session of its own, so that signals sent to the run's
    process group (a terminal's Ctrl-C, ``timeout``'s SIGTERM) reach the run alone, which stops
    its batches through ``stopping``."""
    global _stopping
    _stopping = stopping
    os.setsid()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, GROUP_SIGNALS)


@contextmanager
def main_importable() -> Iterator[None]:
    """multiprocessing's spawn and forkserver run the main script again in each process they
    start; a script read from standard input (``python -``) has none to run (its ``__file__`` is
    ``"<stdin>"``), and every worker died on it. Such a ``__file__`` is hidden while the workers
    start (here, and for a flow's local Dask cluster)."""
    main = sys.modules["__main__"]
    path = getattr(main, "__file__", None)
    if (path is None or getattr(main, "__spec__", None) is not None
            or os.path.isfile(path)):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


class _InThisThread(Executor):
    """Runs each call when it is submitted, in the calling thread."""

    def submit(self, fn, /, *args, **kwargs):
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future
