"""Prefect tasks: thin wrappers over the library, with the orchestration settings in decorators.

This is the only module of the package that imports Prefect (besides the flows themselves).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext, get_run_context
from prefect.logging.handlers import APILogHandler
from prefect_dask import DaskTaskRunner

from . import pipeline, report, storage
from .params import DaskSettings, SpectParams
from .plan import WorkItem


@contextmanager
def forward_library_logs() -> Iterator[None]:
    """Send the library's log records (skips, failures, storage retries) to the run's logs.

    Works in Dask worker processes too, where Prefect's own logging setup does not know the
    library's logger. The handler is removed on exit so that library calls outside a run do
    not try to reach the API.
    """
    lib = logging.getLogger("spectroflow")
    if lib.level == logging.NOTSET or lib.level > logging.INFO:
        lib.setLevel(logging.INFO)
    handler = APILogHandler()
    lib.addHandler(handler)
    try:
        yield
    finally:
        lib.removeHandler(handler)


def _retry_transient(task, task_run, state) -> bool:
    """Retry a task only for faults worth retrying; a bad argument or a bug fails at once."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the state's exception is what we classify
        return storage.is_transient(exc)
    return False


@task(name="plan", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_transient,
      cache_policy=NO_CACHE, persist_result=False)
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
)
def spectrogram_batch(
    batch: int,
    items: list[WorkItem],
    destination: str,
    audio_format: str,
    params: SpectParams,
    storage_options: dict | None = None,
) -> list[report.FileResult]:
    """Make the ``.spect.npz`` of every item; a retried attempt keeps what an earlier one wrote."""
    context = TaskRunContext.get()
    recheck = context is not None and context.task_run.run_count > 1
    with forward_library_logs():
        results = pipeline.process_batch(items, destination, audio_format, params, storage_options, recheck)
    counts = report.summarize(results).counts
    get_run_logger().info("batch %d done: %s", batch, counts)
    # Long-lived workers of an existing cluster would otherwise hold the batch's logs until
    # the next periodic send, after the flow run has ended.
    APILogHandler().flush()
    return results


@task(name="report", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_transient,
      cache_policy=NO_CACHE, persist_result=False)
def report_task(results: list[report.FileResult], destination: str, storage_options: dict | None):
    with forward_library_logs():
        url = report.write_report(results, destination, storage_options)
    get_run_logger().info("report written to %s", url)
    return url


def api_url() -> str | None:
    """The API this run talks to, so Dask workers report to the same server."""
    return os.environ.get("PREFECT_API_URL") or str(get_run_context().client.api_url)


def task_runner(settings: DaskSettings) -> DaskTaskRunner:
    """A DaskTaskRunner for ``settings``: an existing cluster by address, else a new one.

    Local worker processes get this run's ``PREFECT_API_URL``; without it each would start a
    temporary API server of its own and its task runs would not reach this flow run.
    """
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if settings.address:
        return DaskTaskRunner(address=settings.address)
    env = {"PREFECT_API_URL": api_url(), "DASK_LOGGING__DISTRIBUTED": "warning"}
    for name in ("PREFECT_SERVER_ANALYTICS_ENABLED", "AWS_ENDPOINT_URL", "AWS_EC2_METADATA_DISABLED"):
        if name in os.environ:
            env[name] = os.environ[name]
    if settings.cluster_class:
        return DaskTaskRunner(cluster_class=settings.cluster_class, cluster_kwargs=settings.cluster_kwargs)
    kwargs = {
        "n_workers": settings.n_workers or os.cpu_count() or 1,
        "threads_per_worker": settings.threads_per_worker,
        "processes": True,
        "dashboard_address": ":0",
        "env": env,
    }
    return DaskTaskRunner(cluster_kwargs=kwargs)
