"""Dask for a flow run: the cluster and its workers' setup, and the batches fed to it."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from queue import Empty, SimpleQueue
from typing import Any

import dask
import distributed
from prefect import Task, get_run_logger
from prefect.context import get_run_context
from prefect.runtime import flow_run
from prefect.utilities.importtools import import_object
from prefect_dask import DaskTaskRunner
from prefect_dask.task_runners import PrefectDaskFuture

from .. import executor, interrupt, pipeline, progress, report
from ..batching import chunked, sizes_for
from ..params import DaskSettings
from ..plan import Work, WorkItem
from ..request import BatchSpec
from .tasks import Items, spectrogram_batch, stop_batches
from .workers import CLUSTER_CONFIG, WorkerSetup, cluster_closing, unseen_paths, why_unreachable


def api_url() -> str | None:
    """The API this run talks to, so Dask workers report to the same server."""
    return os.environ.get("PREFECT_API_URL") or str(get_run_context().client.api_url)


class ClusterError(RuntimeError):
    """The cluster cannot run this run's work: no worker came, or its workers cannot reach
    what the run needs."""


@contextmanager
def _quiet(name: str, level: int) -> Iterator[None]:
    log = logging.getLogger(name)
    saved = log.level
    log.setLevel(max(level, saved))
    try:
        yield
    finally:
        log.setLevel(saved)


def _new_cluster(settings: DaskSettings, setup: WorkerSetup) -> Any:
    """A LocalCluster with the worker setup built in, or ``cluster_class``'s cluster, not scaled."""
    if settings.cluster_class:
        return import_object(settings.cluster_class)(**settings.cluster_kwargs)
    # Local workers leave Ctrl-C and the job's SIGTERM to this process (their nannies stop
    # them through a queue, and kill them at last with SIGKILL).
    with interrupt.signals_blocked(), executor.main_importable():
        return distributed.LocalCluster(
            n_workers=settings.workers, threads_per_worker=settings.threads_per_worker,
            processes=True, dashboard_address=":0", **setup.local_cluster_kwargs())


def _set_up_workers(client: distributed.Client, setup: WorkerSetup) -> None:
    """Give every nanny, present or to come, the worker setup; say which workers it misses."""
    client.register_plugin(setup)
    bare = [address for address, worker in client.scheduler_info()["workers"].items()
            if not worker.get("nanny")]
    if bare:
        logging.getLogger(__name__).warning(
            "%d workers run without a nanny (%s...), which spectroflow cannot set up: start them "
            "with PREFECT_API_URL set and spectroflow's Dask settings (see the README)",
            len(bare), bare[0])


def _closing(client: distributed.Client) -> None:
    """Tell the workers their cluster is closing (see :func:`.workers.cluster_closing`)."""
    if client.status == "running":
        with suppress(OSError):  # a scheduler already gone: nothing to tell
            client.run(cluster_closing, on_error="ignore")


#: A run that would start a local cluster computes on a local cluster of threads in its own
#: process when it has at most this many files, and :data:`SMALL_RUN_BYTES` of recordings:
#: worker processes take seconds to start (each imports Prefect, then sets up its task engine),
#: more than such a run computes (see docs/performance.md).
SMALL_RUN_FILES = 32
SMALL_RUN_BYTES = 128 * 2**20


def is_small(work: Work, settings: DaskSettings) -> bool:
    """Whether ``work`` is a small run's (see :data:`SMALL_RUN_FILES`) on a local cluster."""
    if settings.address or settings.cluster_class or len(work) > SMALL_RUN_FILES:
        return False
    return sum(item.size or 0 for item in work) <= SMALL_RUN_BYTES


@contextmanager
def task_runner(settings: DaskSettings, in_process: bool = False) -> Iterator[DaskTaskRunner]:
    """A started DaskTaskRunner for ``settings``, its workers set up (:mod:`.workers`): an
    existing cluster by address, else a new cluster with :data:`CLUSTER_CONFIG`, scaled or
    adaptive as asked, closed when the block ends. ``in_process``: a local cluster of as many
    threads as the settings' workers have, in this process (a small run's)."""
    setup = WorkerSetup.for_api(api_url())
    with ExitStack() as stack:
        stack.enter_context(_quiet("distributed", logging.WARNING))
        stack.enter_context(dask.config.set(CLUSTER_CONFIG))
        if settings.address:
            runner = stack.enter_context(DaskTaskRunner(address=settings.address))
            _set_up_workers(runner.client, setup)
            yield runner
            return
        if in_process:
            # This process's imports, Prefect client and environment: nothing to set up (nor
            # preloads, whose exit handler is a worker process's). Its dashboards listen on
            # loopback, and the link says so (an in-process cluster names itself by the
            # machine's address).
            stack.enter_context(dask.config.set(
                {"distributed.dashboard.link": "{scheme}://127.0.0.1:{port}/status"}))
            cluster = stack.enter_context(distributed.LocalCluster(
                n_workers=1, threads_per_worker=settings.workers * settings.threads_per_worker,
                processes=False, dashboard_address="127.0.0.1:0",
                worker_dashboard_address="127.0.0.1:0"))
            runner = stack.enter_context(DaskTaskRunner(cluster=cluster))
            yield runner
            return
        cluster = stack.enter_context(_new_cluster(settings, setup))
        # The client made from the cluster object shares its event loop, as prefect-dask's own
        # clusters do; prefect-dask leaves closing it to this stack.
        runner = stack.enter_context(DaskTaskRunner(cluster=cluster))
        stack.callback(_closing, runner.client)
        if settings.cluster_class:
            _set_up_workers(runner.client, setup)
            if settings.adaptive:
                # At least one worker: its checks (check_workers) come before any task, and
                # Dask adapts to the tasks it holds.
                cluster.adapt(minimum=max(settings.adapt_minimum or 0, 1),
                              maximum=settings.adapt_maximum)
            elif settings.n_workers:
                cluster.scale(settings.n_workers)
        yield runner


@contextmanager
def warm_cluster(settings: DaskSettings, api_url: str | None) -> Iterator[distributed.LocalCluster]:
    """A local cluster set up as a run's (:func:`task_runner`) for a long-lived process to keep
    and its runs to share by address: its workers import what the tasks need before they
    register, so the runs that follow start computing at once. Closed when the block ends."""
    setup = WorkerSetup.for_api(api_url)
    # The settings stay for the cluster's life: its nannies read them (WorkerSetup.setup).
    with _quiet("distributed", logging.WARNING), dask.config.set(CLUSTER_CONFIG), \
            _new_cluster(settings, setup) as cluster:
        cluster.wait_for_workers(settings.workers)
        yield cluster


def _worker_threads(runner: DaskTaskRunner, settings: DaskSettings, remote: bool) -> int:
    """Worker threads to size batches for: those present, or those asked for and coming."""
    threads = runner.client.nthreads().values()
    present = sum(threads)
    if not remote:
        return present or settings.workers
    per_worker = max(threads, default=settings.threads_per_worker)
    asked = 0 if settings.address else settings.workers * per_worker
    return max(present, asked)


def check_workers(runner: DaskTaskRunner, settings: DaskSettings, local_paths: list[str]) -> None:
    """Wait for a worker of a cluster not on this machine's terms (an existing one, or a
    cluster class's jobs), and fail at once, saying what to do, if it cannot reach this run's
    Prefect API or see its local paths."""
    client = runner.client
    try:
        client.wait_for_workers(1, timeout=settings.worker_timeout)
    except TimeoutError as exc:
        raise ClusterError(
            f"no Dask worker joined within {settings.worker_timeout:.0f} s: check the cluster "
            "(for a job queue: squeue; are jobs pending or failing?) or raise "
            "dask.worker_timeout") from exc
    url = api_url()
    if url:
        _check_each(client, why_unreachable, url, lambda n, worker, why: (
            f"{n} Dask workers cannot reach the Prefect API at {url} (e.g. {worker}: {why}). Run "
            "a Prefect server they can reach (prefect server start --host 0.0.0.0) and set "
            "PREFECT_API_URL to its address where the flow runs"))
    if local_paths:
        _check_each(client, unseen_paths, local_paths, lambda n, worker, paths: (
            f"{n} Dask workers cannot see the run's local paths (e.g. {worker} cannot see "
            f"{', '.join(paths)}): use a file system shared with the workers, or an object "
            "store (s3://...)"))


def _check_each(client: distributed.Client, check: Callable[[Any], Any], argument: Any,
                message: Callable[[int, str, Any], str]) -> None:
    """``check(argument)`` on every worker: a problem it returns fails the run with
    ``message(workers with a problem, one of them, its problem)``."""
    problems = {worker: problem for worker, problem in client.run(check, argument).items()
                if problem}
    if problems:
        worker, problem = next(iter(problems.items()))
        raise ClusterError(message(len(problems), worker, problem))


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


def _finished_before_stop(chunks: list[list[WorkItem]], spec: BatchSpec,
                          why: str) -> list[list[report.FileResult]]:
    """The results of the files of ``chunks`` (batches a stop ended before their end) whose
    outputs are whole and marked; the others are not done, and the next run computes them."""
    logger = get_run_logger()
    # Files are planned when not up to date (unless the run recomputes all), so an output now
    # whole and marked was written during this run.
    finished_files, unchecked = pipeline.finished_files(
        [item for chunk in chunks for item in chunk], spec)
    logger.warning("%d files of the batches the stop ended had finished; the next run computes "
                   "the other %d%s", len(finished_files),
                   sum(map(len, chunks)) - len(finished_files),
                   f" ({unchecked} could not be checked)" if unchecked else "")
    reason = f"finished before the run stopped; {why}"
    return [[report.FileResult(item.source, "written", reason, item.output,
                               annot_path=item.annot_path)
             for item in chunk if item.source in finished_files] for chunk in chunks]


def _submit(runner: DaskTaskRunner, task: Task, parameters: dict) -> PrefectDaskFuture:
    """``runner.submit(task, parameters)`` under a key of its own: without one, Dask hashes the
    task and its arguments (Prefect's serialized context among them) to name it, which costs
    about a quarter of each submission."""
    future = runner.client.submit(task, parameters=parameters, return_type="state",
                                  key=f"{task.name}-{uuid.uuid4().hex}")
    return PrefectDaskFuture(wrapped_future=future, task_run_id=future.task_run_id)


def run_batches(runner: DaskTaskRunner, work: Work, spec: BatchSpec,
                settings: DaskSettings, batch_size: int | None,
                on_batch: Callable[[list[report.FileResult]], None],
                stop: interrupt.Stop | None = None, local_paths: list[str] | None = None,
                tags: Sequence[str] = ()) -> None:
    """Run ``work`` in batches of :func:`spectrogram_batch`, a few at a time; ``on_batch`` gets
    each one's results as it finishes (every file's, failed batches included).

    The batch task runs carry ``tags``: a tag-based concurrency limit on one of them
    (``prefect concurrency-limit create <tag> 2``) caps the batches running at once across runs.

    Batches are sized for the cluster's worker threads unless ``batch_size`` is given.
    Submitting every batch at once would put all their work items in the scheduler (in the flow
    process for a local cluster) until each runs, and holding every future would keep each
    batch's results in the flow process to the end of the run. A finished batch's future is
    dropped at once, so Dask forgets it.

    Once ``stop`` is requested, no batch is submitted, the batches in flight end after their
    current file, and ``on_batch`` gets what they finished. Batches still running
    :data:`STOP_GRACE` seconds after the stop are cancelled: their files whose outputs are whole
    and marked are reported written, the others get no result, as the files of the batches never
    submitted (they are not done, and the next run computes them).

    On an existing cluster or a cluster class's, the workers are checked first
    (:func:`check_workers`), with ``local_paths`` the run's local source and destination.
    """
    logger = get_run_logger()
    stop = stop or interrupt.Stop()
    batch_task = spectrogram_batch.with_options(tags=set(tags)) if tags else spectrogram_batch
    remote = bool(settings.address or settings.cluster_class)
    if remote:
        check_workers(runner, settings, local_paths or [])
    workers = _worker_threads(runner, settings, remote)
    # prefect-dask says this on the console only (its logger is not a run logger).
    if runner.client.dashboard_link:
        logger.info("The Dask dashboard is available at %s", runner.client.dashboard_link)
    sizes = sizes_for(len(work), workers, batch_size)
    logger.info("computing %d files in %d tasks of %d to %d files on %d worker threads",
                len(work), len(sizes), max(sizes), min(sizes), workers)
    tracker = BatchProgress(len(sizes), len(work))
    topic = None
    if progress.listening():
        topic = f"spectroflow-progress-{uuid.uuid4().hex}"
        runner.client.subscribe_topic(topic, tracker.on_event)
    progress.update(0, len(work))
    waiting = enumerate(chunked(work, sizes))  # read from the plan as batches are submitted
    running: dict[distributed.Future, tuple[PrefectDaskFuture, int, list[WorkItem]]] = {}
    # Finished futures, and None when a stop is requested (a signal handler may put it there).
    finished: SimpleQueue[distributed.Future | None] = SimpleQueue()
    stop.wake(finished)

    def submit_next() -> None:
        following = None if stop.requested else next(waiting, None)
        if following is not None:
            i, chunk = following
            future = _submit(runner, batch_task, {"batch": i, "items": Items(chunk), "spec": spec,
                                                  "progress_topic": topic})
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
            for results, (_, i, _) in zip(
                    _finished_before_stop([chunk for _, _, chunk in running.values()], spec,
                                          "its batch was cancelled"),
                    running.values(), strict=True):
                on_batch(results)
                tracker.set(i, len(results))
            break
        if done is None:  # the stop request itself
            continue
        future, i, chunk = running.pop(done)
        submit_next()
        future.wait()
        state = future.state
        if state.is_completed():
            results = future.result()
        elif stop.requested:  # (a worker the signal reached) left for the next run, not failed
            (results,) = _finished_before_stop([chunk], spec, "its batch did not finish")
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
    work: Work,
    spec: BatchSpec,
    settings: DaskSettings,
    batch_size: int | None,
    on_batch: Callable[[list[report.FileResult]], None],
    stop: interrupt.Stop | None = None,
    local_paths: list[str] | None = None,
    tags: Sequence[str] = (),
) -> Iterator[None]:
    """Compute ``work`` on Dask (:func:`run_batches`) on entering the block.

    The cluster is closed in a background thread while the block runs (a local cluster takes
    most of a second to shut down; what follows a run needs no cluster). Settings that ask for
    no cluster of their own use the one Dask is configured with, if any
    (:meth:`~spectroflow.params.DaskSettings.with_configured_cluster`).
    """
    configured = settings.with_configured_cluster()
    if configured is not settings:
        get_run_logger().info("computing on the Dask cluster at %s (Dask's scheduler-address "
                              "setting, e.g. DASK_SCHEDULER_ADDRESS)", configured.address)
        settings = configured
    in_process = is_small(work, settings)
    if in_process:
        get_run_logger().info("a small run (%d files): computing on a local Dask cluster of "
                              "threads in this process, which starts no worker process",
                              len(work))
    with ExitStack() as cluster:
        runner = cluster.enter_context(task_runner(settings, in_process))
        run_batches(runner, work, spec, settings, batch_size, on_batch, stop, local_paths, tags)
        closing = cluster.pop_all()
    with ThreadPoolExecutor(1, thread_name_prefix="dask-close") as pool:
        closed = pool.submit(closing.close)
        yield
        closed.result()
