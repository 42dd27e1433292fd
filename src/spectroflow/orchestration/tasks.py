"""Prefect tasks: thin wrappers over the library, with the orchestration settings in decorators."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import distributed
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.runtime import flow_run

from .. import pipeline, report, storage
from ..plan import Plan, WorkItem, prepare
from ..request import BatchSpec, RunRequest
from . import artifacts
from .logs import forward_library_logs


class Items:
    """A batch's work items, passed to its task as one opaque argument.

    Prefect walks list and dataclass arguments item by item looking for futures (when the task
    is submitted and again on the worker), and Dask tokenizes them item by item: about 15 ms
    per 256-item batch in the flow process, 6 s over 100 000 files. Prefect's ``quote()`` saves
    that for tasks in the flow process, but it does not survive pickling: on a Dask worker the
    task would get a tuple.
    """

    __slots__ = ("_token", "items")

    def __init__(self, items: list[WorkItem]):
        self.items = items
        self._token = uuid.uuid4().hex

    def __dask_tokenize__(self) -> str:
        return self._token


# No retries: the storage layer retries each request on transient faults, and a file whose
# retries ran out is failed in the report; a task's retries would multiply the attempts.
_SETTINGS: dict[str, Any] = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="plan", **_SETTINGS)
def plan_task(request: RunRequest, dry_run: bool = False) -> Plan:
    """Check the destination, discover, read annotations, drop up-to-date outputs (see
    :func:`~spectroflow.plan.prepare`)."""
    with forward_library_logs():
        return prepare(request, dry_run)


#: Flow runs whose batches stop, in this process (a Dask worker), after their current file.
_stopped_runs: set[str] = set()


def stop_batches(run_id: str) -> None:
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
    """``on_progress`` for :func:`pipeline.process_batch` that posts Dask events, on a worker."""
    if topic is None:
        return None
    try:
        worker = distributed.get_worker()
    except ValueError:  # not on a Dask worker: nobody to tell
        return None
    return lambda done: worker.log_event(topic, {"batch": batch, "done": done})


# No tags by default: a tagged task run waits for the API to grant it a concurrency slot before it
# starts (one round trip per task, seconds per run on a busy server); a run's ``batch_tags`` opt
# in (see :func:`spectroflow.orchestration.cluster.run_batches`).
@task(name="spectrograms", task_run_name="spectrograms-{batch}", **_SETTINGS)
def spectrogram_batch(
    batch: int,
    items: Items,
    spec: BatchSpec,
    progress_topic: str | None = None,
) -> list[report.FileResult]:
    """Make the output of every item.

    With ``progress_topic``, each finished file is announced as a Dask event on that topic
    (:class:`~spectroflow.orchestration.cluster.BatchProgress` counts them). When the flow run stops
    (:func:`stop_batches`), the batch ends after its current file and returns the results of
    the files it finished.
    """
    context = TaskRunContext.get()
    run_id = str(context.task_run.flow_run_id) if context is not None else None
    with forward_library_logs():
        results = pipeline.process_batch(_until_stopped(items.items, run_id), spec,
                                         _announcer(progress_topic, batch))
    counts = report.summarize(results).counts
    if len(results) < len(items.items):
        get_run_logger().info("batch %d stopped with its run after %d of %d files: %s", batch,
                              len(results), len(items.items), counts)
    else:
        get_run_logger().info("batch %d done: %s", batch, counts)
    return results


@task(name="report", **_SETTINGS)
def report_task(log: report.ResultLog, destination: storage.Location) -> str:
    """Write the run's report, named after the flow run (see :func:`report.report_url`)."""
    with forward_library_logs():
        url = log.write_report(destination, name=flow_run.get_name())
    get_run_logger().info("report written to %s", url)
    return url


@task(name="manifest", **_SETTINGS)
def manifest_task(log: report.ResultLog, request: RunRequest, complete: bool,
                  skip_unchanged: bool = False) -> str | None:
    """Merge the run's results into the destination's manifest; its URL, or None (logged).
    See :func:`pipeline.update_manifest` for ``complete`` and ``skip_unchanged``."""
    with forward_library_logs():
        return pipeline.update_manifest(request, log.rows, complete, skip_unchanged)


@task(name="publish", **_SETTINGS)
def publish_task(
    log: report.ResultLog,
    summary: report.RunSummary,
    destination: storage.Location,
    preview: artifacts.Preview,
) -> str | None:
    """The run's artifacts (see :func:`artifacts.publish`); returns the preview's URL."""
    return artifacts.publish(log, summary, destination, preview)
