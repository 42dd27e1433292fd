"""Prefect tasks: thin wrappers over the library, with the orchestration settings in decorators.

This is the only module of the package that imports Prefect (besides the flows themselves).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from queue import Empty, SimpleQueue

import dask
import distributed
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.context import FlowRunContext, TaskRunContext, get_run_context
from prefect.logging.handlers import APILogHandler
from prefect.runtime import flow_run
from prefect_dask import DaskTaskRunner
from prefect_dask.task_runners import PrefectDaskFuture

from . import interrupt, pipeline, progress, report, storage
from .params import DaskSettings, SpectParams
from .plan import WorkItem, batches, common_folder


def _dask_worker() -> distributed.Worker | None:
    """The Dask worker running this code, if any."""
    try:
        return distributed.get_worker()
    except ValueError:
        return None


class _ToRootAtWarning(logging.Handler):
    """Hands WARNING and above to the root logger's handlers (Prefect's console handler)."""

    def __init__(self):
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger().handle(record)


class _LibraryLogForwarding:
    """One :class:`APILogHandler` on the library's logger while any task of this process runs.

    Tasks that run at once (a Dask worker with several threads) share it: a handler per task
    would send every record once per running task. The handler finds the run each record
    belongs to in the emitting thread's context.

    On a Dask worker, the library's INFO records (a line per file written) go to the run's
    logs only, not to the worker's console as well: drawing them there (Prefect's console
    handler) took half as much CPU as reading the audio. Warnings still reach the console.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._active = 0
        self._handlers: list[logging.Handler] = []
        self._propagate = True

    @contextmanager
    def active(self) -> Iterator[None]:
        lib = logging.getLogger("spectroflow")
        with self._lock:
            if self._active == 0:
                if lib.level == logging.NOTSET or lib.level > logging.INFO:
                    lib.setLevel(logging.INFO)
                self._handlers = [APILogHandler()]
                self._propagate = lib.propagate
                if _dask_worker() is not None:
                    self._handlers.append(_ToRootAtWarning())
                    lib.propagate = False
                for handler in self._handlers:
                    lib.addHandler(handler)
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    for handler in self._handlers:
                        lib.removeHandler(handler)
                    self._handlers = []
                    lib.propagate = self._propagate


_forwarding = _LibraryLogForwarding()


def forward_library_logs():
    """Send the library's log records (skips, failures, storage retries) to the run's logs.

    Works in Dask worker processes too, where Prefect's own logging setup does not know the
    library's logger. Outside tasks the handler is gone, so library calls outside a run never
    try to reach the API. (A plain function: tasks shipped to Dask pickle it by reference.)
    """
    return _forwarding.active()


class Items:
    """A batch's work items, passed to its task as one opaque argument.

    Prefect walks list and dataclass arguments item by item looking for futures (when the task
    is submitted and again on the worker), and Dask tokenizes them item by item: about 15 ms
    per 256-item batch in the flow process, 6 s over 100 000 files. Prefect's ``quote()`` saves
    that for tasks in the flow process, but it does not survive pickling: on a Dask worker the
    task would get a tuple.
    """

    __slots__ = ("items", "_token")

    def __init__(self, items: list[WorkItem]):
        self.items = items
        self._token = uuid.uuid4().hex

    def __dask_tokenize__(self) -> str:
        return self._token


def _retry_transient(task, task_run, state) -> bool:
    """Retry a task only for faults worth retrying; a bad argument or a bug fails at once."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the state's exception is what we classify
        return storage.is_transient(exc)
    return False


#: Tags of every spectroflow task run, and of the batch tasks: an admin caps the batches running at
#: once across all runs with a tag-based concurrency limit (``prefect concurrency-limit create
#: spectroflow-batch 2``).
TAGS = ["spectroflow"]
BATCH_TAGS = [*TAGS, "spectroflow-batch"]


@task(name="plan", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_transient,
      cache_policy=NO_CACHE, persist_result=False, tags=TAGS)
def plan_task(**prepare_kwargs):
    """Validate, check the destination, discover, read annotations, drop up-to-date outputs."""
    with forward_library_logs():
        return pipeline.prepare(**prepare_kwargs)


@task(
    name="spectrograms",
    task_run_name="spectrograms-{batch}",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_transient,
    cache_policy=NO_CACHE,
    persist_result=False,
    tags=BATCH_TAGS,
)
def spectrogram_batch(
    batch: int,
    items: Items,
    destination: str,
    audio_format: str,
    params: SpectParams,
    storage_options: dict | None = None,
    progress_topic: str | None = None,
) -> list[report.FileResult]:
    """Make the ``.spect.npz`` of every item; a retried attempt keeps what an earlier one wrote.

    With ``progress_topic``, each finished file is announced as a Dask event on that topic. When
    the flow run stops (:func:`_stop_batches`), the batch ends after its current file and returns
    the results of the files it finished.
    """
    context = TaskRunContext.get()
    recheck = context is not None and context.task_run.run_count > 1
    run_id = str(context.task_run.flow_run_id) if context is not None else None
    announce = _announcer(progress_topic, batch)
    with forward_library_logs():
        results = pipeline.process_batch(_until_stopped(items.items, run_id), destination,
                                         audio_format, params, storage_options, recheck, announce)
    counts = report.summarize(results).counts
    if len(results) < len(items.items):
        get_run_logger().info("batch %d stopped with its run after %d of %d files: %s", batch,
                              len(results), len(items.items), counts)
    else:
        get_run_logger().info("batch %d done: %s", batch, counts)
    return results


#: Flow runs whose batches stop, in this process (a Dask worker), after their current file.
_stopped_runs: set[str] = set()


def _stop_batches(run_id: str) -> None:
    """Run on each Dask worker (``Client.run``) when flow run ``run_id`` stops early."""
    _stopped_runs.add(run_id)


def _until_stopped(items: list[WorkItem], run_id: str | None) -> Iterator[WorkItem]:
    """``items`` until flow run ``run_id`` stops: :func:`pipeline.process_batch` iterates its
    items once, so the batch then ends with the results of the files it finished."""
    for item in items:
        if run_id in _stopped_runs:
            return
        yield item


def _announcer(topic: str | None, batch: int) -> Callable[[int], None] | None:
    """``on_progress`` for :func:`pipeline.process_batch` that posts Dask events, on a Dask worker."""
    worker = _dask_worker() if topic is not None else None
    if worker is None:  # no topic, or not on a Dask worker: nobody to tell
        return None
    return lambda done: worker.log_event(topic, {"batch": batch, "done": done})


class BatchProgress:
    """Files done across batches, from per-file events and finished batches, sent to the
    :mod:`spectroflow.progress` listeners. Events arrive on the Dask client's thread."""

    def __init__(self, n_batches: int, total: int):
        self.total = total
        self._done = [0] * n_batches
        self._sum = 0
        self._lock = threading.Lock()

    def set(self, batch: int, done: int) -> None:
        # A retried batch counts again from zero: keep the highest count, so the bar never goes back.
        with self._lock:
            if done > self._done[batch]:
                self._sum += done - self._done[batch]
                self._done[batch] = done
                progress.update(self._sum, self.total)

    def on_event(self, event: tuple[float, dict]) -> None:
        _, msg = event
        self.set(msg["batch"], msg["done"])


@task(name="report", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_transient,
      cache_policy=NO_CACHE, persist_result=False, tags=TAGS)
def report_task(log: report.ResultLog, destination: str, storage_options: dict | None):
    """Write the run's report, named after the flow run (see :func:`report.report_url`)."""
    with forward_library_logs():
        url = log.write_report(destination, storage_options, name=flow_run.get_name())
    get_run_logger().info("report written to %s", url)
    return url


#: Above this many inputs, the results table artifact lists the failures only.
TABLE_ROWS = 200
#: Longest text in the table's details column: with more, Prefect's newer UI cuts the table's
#: last columns off at 1280 px (the report and the summary have every reason in full).
DETAILS_CHARS = 48


def _link(url: str) -> str:
    return url if "://" in url else Path(url).resolve().as_uri()


class Preview:
    """The first written output drawn as a small PNG (:func:`spectroflow.plot.preview_png`) on a
    background thread of the flow process, while the remaining batches compute.

    Offer it each finished batch's results; :meth:`result` waits for the drawing.
    """

    def __init__(self, params: SpectParams, storage_options: dict | None):
        self._params, self._options = params, storage_options
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="preview")
        self._drawing: Future | None = None

    def offer(self, results: list[report.FileResult]) -> None:
        if self._drawing is None:
            written = next((r for r in results if r.status == "written" and r.output), None)
            if written is not None:
                self._drawing = self._pool.submit(self._draw, written)

    def _draw(self, written: report.FileResult) -> tuple[str, bytes]:
        from . import plot

        spect = plot.load_npz(written.output, self._options)
        return written.source, plot.preview_png(spect, self._params)

    def result(self) -> tuple[str, bytes] | None:
        """(source URL, PNG) of the drawn output, or None if nothing was written.

        Raises what drawing raised."""
        try:
            return None if self._drawing is None else self._drawing.result()
        finally:
            self._pool.shutdown(wait=False)


@task(name="publish", cache_policy=NO_CACHE, persist_result=False, tags=TAGS)
def publish_task(
    log: report.ResultLog,
    summary: report.RunSummary,
    destination: str,
    preview: Preview,
    storage_options: dict | None,
) -> str | None:
    """Artifacts of the run: per-file table, markdown summary with a preview, link to the report.

    They belong to the flow run, not to this task: the UI's run page lists a run's own artifacts
    under "Flow run" (which read "None" when this task made them) and its tasks' below. The
    table shows sources relative to their deepest common folder, and for each its status and
    details (the spectrogram's shape and the audio's duration, or why it failed), short enough
    that every column fits a browser window; the report has every field in full.

    The preview (one written output drawn as a PNG) is also written beside the report; it is a
    convenience, so a failure to draw or save it is logged and does not fail the run. Returns
    its URL.
    """
    logger = get_run_logger()
    flow_run_id = get_run_context().task_run.flow_run_id

    def publish(kind: str, key: str, data: str, description: str) -> None:
        with get_client(sync_client=True) as client:
            client.create_artifact(ArtifactCreate(type=kind, key=key, data=data,
                                                  description=description, flow_run_id=flow_run_id))

    if len(log) <= TABLE_ROWS:
        listed, described = list(log.rows()), "every input"
    else:
        listed = list(log.rows("failed", TABLE_ROWS * 5))
        described = f"the failures of {len(log)} inputs"

    def details(result: report.FileResult) -> str:
        made = "" if result.shape is None else f"{result.shape[0]} x {result.shape[1]}"
        if made and result.duration is not None:
            made += f" from {result.duration:.2f} s"
        text = "; ".join(part for part in (made, result.reason) if part)
        return text if len(text) <= DETAILS_CHARS else text[:DETAILS_CHARS - 1] + "\u2026"

    root = common_folder([r.source for r in listed])
    rows = [{"source": r.source[len(root) + 1:] if root else r.source, "status": r.status,
             "details": details(r)} for r in listed]
    where = f" under {root}" if root else ""
    publish("table", "spectroflow-results", json.dumps(rows, ensure_ascii=False),
            f"spectroflow: {described}{where}; every field in full: the report")
    if summary.report:
        publish("markdown", "spectroflow-report", f"[run report (CSV)]({_link(summary.report)})",
                f"spectroflow: the run's report, a row per input: {summary.report}")

    preview_md, preview_url = "", None
    try:
        drawn = preview.result()
        if drawn is not None and summary.report:
            source, png = drawn
            preview_url = summary.report.rsplit(".", 1)[0] + "-preview.png"
            storage.write_bytes(preview_url, png, storage_options)
            # A data: URI, which both of Prefect's UIs show: the file's own URL (local or s3://)
            # is not one a browser can load from the UI's page.
            preview_md = (f"\n\n### Preview: {source}\n\n"
                          f"![spectrogram of {source}]"
                          f"(data:image/png;base64,{base64.b64encode(png).decode()})\n\n"
                          f"Saved as `{preview_url}`.")
    except Exception as exc:  # noqa: BLE001 - a picture must not fail the run
        logger.warning("no preview: %s", exc)
        preview_url = None
    counts = "\n".join(f"| {status} | {n} |" for status, n in sorted(summary.counts.items()))
    failures = "\n".join(f"- `{src}`: {reason}" for src, reason in summary.failed[:20])
    n_failed = summary.counts.get("failed", 0)
    more = f"\n- ... and {n_failed - 20} more (see the report)" if n_failed > 20 else ""
    publish(
        "markdown", "spectroflow-summary",
        f"## spectroflow run\n\n| status | files |\n| --- | --- |\n{counts}\n\n"
        f"Destination: `{destination}`  \nReport: `{summary.report}`"
        + (f"\n\n### Failed\n\n{failures}{more}" if failures else "")
        + preview_md,
        "spectroflow: summary of the run",
    )
    return preview_url


def api_url() -> str | None:
    """The API this run talks to, so Dask workers report to the same server."""
    return os.environ.get("PREFECT_API_URL") or str(get_run_context().client.api_url)


#: Dask settings for the clusters spectroflow starts (see the README for existing clusters):
#:
#: - distributed starts workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's dynamic
#:   mmap threshold: every multi-MiB array (a spectrogram is several) is then mapped and faulted in
#:   anew, tripling the system time per file (measured: 1 350 files in 58 s instead of 30 s on two
#:   workers). Workers keep glibc's defaults.
#: - a worker's statistical profiler calls sys._current_frames() every 10 ms, which on Python 3.11
#:   can deadlock the worker against the garbage collector (CPython issues 106883 and 116969,
#:   dask/distributed 8616): seen here as a batch stuck forever in the middle of a write, about
#:   one run in ten. Off, and it saves the profiler's CPU too.
#: - every scheduler, nanny and worker checks its event loop's health every 20 ms, samples the
#:   machine's CPU, memory and I/O every 500 ms, and a worker's memory every 100 ms. An idle
#:   two-worker cluster spent 1.5-1.7 s of CPU per 30 s in the flow process (scheduler and
#:   nannies) and 0.6-0.7 s in each worker doing so, 0.3 s and 0.1 s with the values below (the
#:   health check interval is the one distributed's own test clusters use). Over a 1 350-file
#:   run that is CPU the workers get back; the checks still catch an event loop blocked for
#:   seconds and a worker outgrowing its memory.
#: - distributed's logs for developers (recent messages on each connection, the scheduler's
#:   transitions, a worker's stimuli) keep 1 000 entries each, and the messages that hand a task
#:   to a worker hold its arguments: every batch's work items stayed in the scheduler, in the
#:   flow process, to the end of a run (10 MB for 13 500 files). Off.
#: - a worker process logs distributed's INFO banners (about 30 lines each) to the terminal:
#:   its logging is set up when it imports distributed, before the ``env`` given to the cluster
#:   applies, so the level goes in the environment it is spawned with (distributed sets it in
#:   this process's environment too).
CLUSTER_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.nanny.pre-spawn-environ.DASK_LOGGING__DISTRIBUTED": "warning",
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "500ms",
    "distributed.admin.low-level-log-length": 0,
}


def task_runner(settings: DaskSettings) -> DaskTaskRunner:
    """A DaskTaskRunner for ``settings``: an existing cluster by address, else a new one.

    Local worker processes get this run's ``PREFECT_API_URL``; without it each would start a
    temporary API server of its own and its task runs would not reach this flow run. They also
    load :mod:`spectroflow.worker_exit`, so the cluster shuts down in a fraction of a second, and
    :mod:`spectroflow.worker_imports`, so they import Prefect while they wait for their first task.
    """
    logging.getLogger("distributed").setLevel(logging.WARNING)
    dask.config.set(CLUSTER_CONFIG)
    if settings.address:
        return DaskTaskRunner(address=settings.address)
    env = {"PREFECT_API_URL": api_url()}
    for name in ("PREFECT_SERVER_ANALYTICS_ENABLED", "AWS_ENDPOINT_URL", "AWS_EC2_METADATA_DISABLED"):
        if name in os.environ:
            env[name] = os.environ[name]
    if settings.cluster_class:
        return DaskTaskRunner(cluster_class=settings.cluster_class, cluster_kwargs=settings.cluster_kwargs)
    kwargs = {
        "n_workers": settings.workers,
        "threads_per_worker": settings.threads_per_worker,
        "processes": True,
        "dashboard_address": ":0",
        "env": env,
        # In this order: worker_exit's exit handler is registered before Prefect's.
        "preload": ["spectroflow.worker_exit", "spectroflow.worker_imports"],
    }
    return DaskTaskRunner(cluster_kwargs=kwargs)


def _cluster_threads(runner: DaskTaskRunner, fallback: int) -> int:
    """Worker threads of the runner's cluster (an existing cluster may have many), for sizing."""
    return sum(runner.client.nthreads().values()) or fallback


#: Batches handed to Dask at once, per worker thread: the one it runs and the next, so no thread
#: waits for the flow to submit; the rest wait in the flow process as work items, not in Dask.
IN_FLIGHT = 2

#: Seconds a stopped run waits for its batches in flight to return what they finished (each ends
#: after its current file); those still running then are cancelled, and closing a local cluster
#: kills them mid-file (outputs are whole or absent: see :func:`spectroflow.storage.write_with`).
STOP_GRACE = 5.0


def _run_batches(runner: DaskTaskRunner, work: list[WorkItem], batch_size: int | None,
                 settings: DaskSettings, on_batch: Callable[[list[report.FileResult]], None],
                 batch_kwargs: dict, stop: interrupt.Stop | None = None) -> None:
    """Run the batches, a few at a time; ``on_batch`` gets each one's results as it finishes.

    Submitting every batch at once would put all their work items in the scheduler (in the flow
    process for a local cluster) until each runs, and holding every future would keep each
    batch's results in the flow process to the end of the run. A finished batch's future is
    dropped at once, so Dask forgets it.

    Once ``stop`` is requested, no batch is submitted, the batches in flight end after their
    current file (see :func:`spectrogram_batch`), and ``on_batch`` gets what they finished: the
    files of the batches never submitted, or cancelled after :data:`STOP_GRACE`, get no result.
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
        i, chunk = (None, None) if stop.requested else next(waiting, (None, None))
        if chunk is not None:
            future = runner.submit(spectrogram_batch, {"batch": i, "items": Items(chunk),
                                                       "progress_topic": topic, **batch_kwargs})
            running[future.wrapped_future] = (future, i, chunk)
            future.wrapped_future.add_done_callback(finished.put)

    for _ in range(IN_FLIGHT * workers):
        submit_next()
    deadline = None
    while running:
        if stop.requested and deadline is None:
            logger.warning("stopping (%s): %d batches in flight end after their current file",
                           stop.reason, len(running))
            runner.client.run(_stop_batches, str(get_run_context().flow_run.id), on_error="ignore")
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
    settings: DaskSettings,
    batch_size: int | None,
    on_batch: Callable[[list[report.FileResult]], None],
    stop: interrupt.Stop | None = None,
    **batch_kwargs,
) -> Iterator[None]:
    """Compute ``work`` in batches of :func:`spectrogram_batch` on Dask, on entering the block.

    ``on_batch`` gets each finished batch's results (every file's, failed batches included).
    ``batch_kwargs`` are the batch task's other arguments (destination, audio_format, params,
    storage_options). Batches are sized for the cluster's worker threads unless ``batch_size``
    is given. The cluster is closed in a background thread while the block runs (a local
    cluster takes most of a second to shut down; what follows a run needs no cluster).
    ``stop`` ends the computing early (see :func:`_run_batches`); the block still runs.
    """
    runner = task_runner(settings).__enter__()
    try:
        _run_batches(runner, work, batch_size, settings, on_batch, batch_kwargs, stop)
    except BaseException:
        runner.__exit__(*sys.exc_info())
        raise
    with ThreadPoolExecutor(1, thread_name_prefix="dask-close") as pool:
        closing = pool.submit(runner.__exit__, None, None, None)
        yield
        closing.result()


#: Seconds between two looks at the flow run's state, for a cancellation asked in Prefect.
CANCEL_POLL = 1.0


@contextmanager
def watch_cancellation(stop: interrupt.Stop) -> Iterator[None]:
    """Within the block, request ``stop`` when this flow run is cancelled in Prefect's UI or API.

    Prefect marks the run Cancelling; its workers and runners stop the runs they started by
    killing their process, but a flow called in-process (``spectroflow run``, a script) has
    nobody watching: a thread asks the API for the run's state every :data:`CANCEL_POLL`
    seconds. Outside a flow run nothing is watched.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        yield
        return
    run_id, client, logger = context.flow_run.id, context.client, get_run_logger()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(CANCEL_POLL):
            try:
                state = client.read_flow_run(run_id).state
            except Exception as exc:  # noqa: BLE001 - the next look may succeed
                logger.debug("could not read this run's state: %s", exc)
                continue
            if state is not None and (state.is_cancelling() or state.is_cancelled()):
                stop.request(f"cancelled in Prefect ({state.name})")
                return

    watcher = threading.Thread(target=watch, name="spectroflow-cancel-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join(CANCEL_POLL)  # a look at the API in flight ends on its own (a daemon)


@contextmanager
def stop_requests() -> Iterator[interrupt.Stop]:
    """A :class:`~spectroflow.interrupt.Stop` requested, within the block, by the first Ctrl-C
    (SIGINT; the second raises KeyboardInterrupt) or by cancelling this flow run in Prefect."""
    stop = interrupt.Stop()
    with interrupt.stop_on_sigint(stop), watch_cancellation(stop):
        yield stop
