"""Dask for a flow run: the cluster and its workers' setup, and the batches fed to it."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from queue import Empty, SimpleQueue

import dask
import distributed
from prefect import get_run_logger
from prefect.context import get_run_context
from prefect.runtime import flow_run
from prefect_dask import DaskTaskRunner
from prefect_dask.task_runners import PrefectDaskFuture

from .. import interrupt, progress, report
from ..params import DaskSettings
from ..plan import WorkItem, batches
from ..request import BatchSpec
from .tasks import Items, spectrogram_batch, stop_batches

#: Dask settings for the clusters spectroflow starts, while they run (why each: see
#: docs/performance.md): glibc's dynamic mmap threshold kept (distributed's
#: MALLOC_TRIM_THRESHOLD_ tripled the system time per file); the profiler off (it can deadlock a
#: worker on Python 3.11); health checks less often; no developers' message logs (they held
#: every batch's work items in the scheduler); distributed's INFO banners off in workers.
CLUSTER_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.nanny.pre-spawn-environ.DASK_LOGGING__DISTRIBUTED": "warning",
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "500ms",
    "distributed.admin.low-level-log-length": 0,
}

#: What local worker processes load before they register: worker_exit's exit handler first (it
#: must be registered before Prefect's), then the imports tasks need.
PRELOADS = ["spectroflow.orchestration.worker_exit", "spectroflow.orchestration.worker_imports"]
#: Variables of this process's environment that local workers get too.
PASSED_ENV = ("PREFECT_SERVER_ANALYTICS_ENABLED", "AWS_ENDPOINT_URL", "AWS_EC2_METADATA_DISABLED")


def api_url() -> str | None:
    """The API this run talks to, so Dask workers report to the same server."""
    return os.environ.get("PREFECT_API_URL") or str(get_run_context().client.api_url)


def worker_env() -> dict[str, str]:
    """The environment local workers add to this process's: without ``PREFECT_API_URL`` each
    would start a temporary API of its own, and its task runs would not reach this flow run."""
    env = {"PREFECT_API_URL": api_url() or ""}
    env.update((name, os.environ[name]) for name in PASSED_ENV if name in os.environ)
    return env


def _runner(settings: DaskSettings) -> DaskTaskRunner:
    if settings.address:
        return DaskTaskRunner(address=settings.address)
    if settings.cluster_class:
        return DaskTaskRunner(cluster_class=settings.cluster_class,
                              cluster_kwargs=settings.cluster_kwargs)
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": settings.workers,
        "threads_per_worker": settings.threads_per_worker,
        "processes": True,
        "dashboard_address": ":0",
        "env": worker_env(),
        "preload": PRELOADS,
    })


@contextmanager
def _quiet(name: str, level: int) -> Iterator[None]:
    log = logging.getLogger(name)
    saved = log.level
    log.setLevel(max(level, saved))
    try:
        yield
    finally:
        log.setLevel(saved)


@contextmanager
def task_runner(settings: DaskSettings) -> Iterator[DaskTaskRunner]:
    """A started DaskTaskRunner for ``settings``: an existing cluster by address, else a new one
    with :data:`CLUSTER_CONFIG`, which applies while the block runs."""
    with ExitStack() as stack:
        stack.enter_context(_quiet("distributed", logging.WARNING))
        stack.enter_context(dask.config.set(CLUSTER_CONFIG))
        yield stack.enter_context(_runner(settings))


def _cluster_threads(runner: DaskTaskRunner, fallback: int) -> int:
    """Worker threads of the runner's cluster (an existing cluster may have many), for sizing."""
    return sum(runner.client.nthreads().values()) or fallback


class BatchProgress:
    """Files done across batches, from per-file events and finished batches, sent to the
    :mod:`spectroflow.progress` listener of the flow's thread. Events arrive on the Dask
    client's thread."""

    def __init__(self, n_batches: int, total: int):
        self.total = total
        self._done = [0] * n_batches
        self._sum = 0
        self._lock = threading.Lock()
        self._report = progress.reporter()

    def set(self, batch: int, done: int) -> None:
        # A retried batch counts again from zero: keep the highest count, so the bar never goes back.
        with self._lock:
            if done > self._done[batch]:
                self._sum += done - self._done[batch]
                self._done[batch] = done
                self._report(self._sum, self.total)

    def on_event(self, event: tuple[float, dict]) -> None:
        _, msg = event
        self.set(msg["batch"], msg["done"])


#: Batches handed to Dask at once, per worker thread: the one it runs and the next, so no thread
#: waits for the flow to submit; the rest wait in the flow process as work items, not in Dask.
IN_FLIGHT = 2

#: Seconds a stopped run waits for its batches in flight to return what they finished (each ends
#: after its current file); those still running then are cancelled, and closing a local cluster
#: kills them mid-file (outputs are whole or absent: see :func:`spectroflow.storage.write_with`).
STOP_GRACE = 5.0


def run_batches(runner: DaskTaskRunner, work: list[WorkItem], spec: BatchSpec,
                settings: DaskSettings, batch_size: int | None,
                on_batch: Callable[[list[report.FileResult]], None],
                stop: interrupt.Stop | None = None) -> None:
    """Run ``work`` in batches of :func:`spectrogram_batch`, a few at a time; ``on_batch`` gets
    each one's results as it finishes (every file's, failed batches included).

    Batches are sized for the cluster's worker threads unless ``batch_size`` is given.
    Submitting every batch at once would put all their work items in the scheduler (in the flow
    process for a local cluster) until each runs, and holding every future would keep each
    batch's results in the flow process to the end of the run. A finished batch's future is
    dropped at once, so Dask forgets it.

    Once ``stop`` is requested, no batch is submitted, the batches in flight end after their
    current file, and ``on_batch`` gets what they finished: the files of the batches never
    submitted, or cancelled after :data:`STOP_GRACE`, get no result.
    """
    logger = get_run_logger()
    stop = stop or interrupt.Stop()
    if settings.address:
        workers = _cluster_threads(runner, settings.workers)
    else:
        with interrupt.sigint_blocked():  # local workers leave Ctrl-C to this process
            workers = _cluster_threads(runner, settings.workers)
    # prefect-dask says this on the console only (its logger is not a run logger).
    if runner.client.dashboard_link:
        logger.info("The Dask dashboard is available at %s", runner.client.dashboard_link)
    chunks = batches(work, workers, batch_size)
    logger.info("computing %d files in %d tasks of %d to %d files on %d worker threads",
                len(work), len(chunks), max(map(len, chunks)), min(map(len, chunks)), workers)
    tracker = BatchProgress(len(chunks), len(work))
    topic = None
    if progress.listening():
        topic = f"spectroflow-progress-{uuid.uuid4().hex}"
        runner.client.subscribe_topic(topic, tracker.on_event)
    progress.update(0, len(work))
    waiting = iter(enumerate(chunks))
    running: dict[distributed.Future, tuple[PrefectDaskFuture, int, list[WorkItem]]] = {}
    # Finished futures, and None when a stop is requested (a signal handler may put it there).
    finished: SimpleQueue[distributed.Future | None] = SimpleQueue()
    stop.wake(finished)

    def submit_next() -> None:
        following = None if stop.requested else next(waiting, None)
        if following is not None:
            i, chunk = following
            future = runner.submit(spectrogram_batch, {"batch": i, "items": Items(chunk),
                                                       "spec": spec, "progress_topic": topic})
            running[future.wrapped_future] = (future, i, chunk)
            future.wrapped_future.add_done_callback(finished.put)

    for _ in range(IN_FLIGHT * workers):
        submit_next()
    deadline = None
    while running:
        if stop.requested and deadline is None:
            logger.warning("stopping (%s): %d batches in flight end after their current file",
                           stop.reason, len(running))
            runner.client.run(stop_batches, str(flow_run.id), on_error="ignore")
            deadline = time.monotonic() + STOP_GRACE
        try:
            done = finished.get(timeout=None if deadline is None
                                else max(0.0, deadline - time.monotonic()))
        except Empty:
            logger.warning("cancelling %d batches still running after %.0f s", len(running),
                           STOP_GRACE)
            runner.client.cancel(list(running))
            break
        if done is None:  # the stop request itself
            continue
        future, i, chunk = running.pop(done)
        submit_next()
        future.wait()
        state = future.state
        if state.is_completed():
            results = future.result()
        elif stop.requested:  # its files are left for the next run, not failed
            results = []
        else:
            message = state.message or state.type.value
            logger.error("a batch of %d files did not finish: %s", len(chunk), message)
            results = [report.FileResult(item.source, "failed", f"batch did not finish: {message}")
                       for item in chunk]
        on_batch(results)
        tracker.set(i, len(results))
        del done, future, results  # let Dask forget this batch before the next one finishes
    if topic is not None:
        runner.client.unsubscribe_topic(topic)


@contextmanager
def compute_on_dask(
    work: list[WorkItem],
    spec: BatchSpec,
    settings: DaskSettings,
    batch_size: int | None,
    on_batch: Callable[[list[report.FileResult]], None],
    stop: interrupt.Stop | None = None,
) -> Iterator[None]:
    """Compute ``work`` on Dask (:func:`run_batches`) on entering the block.

    The cluster is closed in a background thread while the block runs (a local cluster takes
    most of a second to shut down; what follows a run needs no cluster).
    """
    with ExitStack() as cluster:
        runner = cluster.enter_context(task_runner(settings))
        run_batches(runner, work, spec, settings, batch_size, on_batch, stop)
        closing = cluster.pop_all()
    with ThreadPoolExecutor(1, thread_name_prefix="dask-close") as pool:
        closed = pool.submit(closing.close)
        yield
        closed.result()
