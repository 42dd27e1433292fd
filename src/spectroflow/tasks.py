"""Prefect tasks: thin wrappers over the library, with the orchestration settings in decorators.

This is the only module of the package that imports Prefect (besides the flows themselves).
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dask
from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext, get_run_context
from prefect.logging.handlers import APILogHandler
from prefect_dask import DaskTaskRunner

from . import pipeline, plot, report, storage
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
    return results


@task(name="report", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_transient,
      cache_policy=NO_CACHE, persist_result=False)
def report_task(results: list[report.FileResult], destination: str, storage_options: dict | None):
    with forward_library_logs():
        url = report.write_report(results, destination, storage_options)
    get_run_logger().info("report written to %s", url)
    return url


#: Above this many inputs, the results table artifact lists the failures only.
TABLE_ROWS = 200


def _link(url: str) -> str:
    return url if "://" in url else Path(url).resolve().as_uri()


@task(name="publish", cache_policy=NO_CACHE, persist_result=False)
def publish_task(
    results: list[report.FileResult],
    summary: report.RunSummary,
    destination: str,
    params: SpectParams,
    storage_options: dict | None,
) -> str | None:
    """Artifacts of the run: per-file table, markdown summary with a preview, link to the report.

    The preview (one written output drawn as a PNG) is also written beside the report; it is a
    convenience, so a failure to draw it is logged and does not fail the run. Returns its URL.
    """
    logger = get_run_logger()
    rows = [
        {"source": r.source, "status": r.status, "reason": r.reason, "output": r.output or "",
         "duration_s": r.duration, "shape": "" if r.shape is None else "x".join(map(str, r.shape))}
        for r in results
        if len(results) <= TABLE_ROWS or r.status == "failed"
    ]
    described = "every input" if len(results) <= TABLE_ROWS else f"the failures of {len(results)} inputs"
    create_table_artifact(rows[:TABLE_ROWS * 5], key="spectroflow-results",
                          description=f"spectroflow: {described}")
    if summary.report:
        create_link_artifact(_link(summary.report), link_text="run report (CSV)", key="spectroflow-report")

    preview_md, preview_url = "", None
    written = next((r for r in results if r.status == "written" and r.output), None)
    if written is not None and summary.report:
        try:
            png = plot.png_bytes(plot.figure(plot.load_npz(written.output, storage_options), params), dpi=60)
            preview_url = summary.report.rsplit(".", 1)[0] + "-preview.png"
            storage.write_bytes(preview_url, png, storage_options)
            preview_md = (f"\n\n### Preview: {written.source}\n\n"
                          f"![preview](data:image/png;base64,{base64.b64encode(png).decode()})\n\n"
                          f"Saved as `{preview_url}`.")
        except Exception as exc:  # noqa: BLE001 - a picture must not fail the run
            logger.warning("no preview of %s: %s", written.output, exc)
    counts = "\n".join(f"| {status} | {n} |" for status, n in sorted(summary.counts.items()))
    failures = "\n".join(f"- `{src}`: {reason}" for src, reason in summary.failed[:20])
    more = f"\n- ... and {len(summary.failed) - 20} more (see the report)" if len(summary.failed) > 20 else ""
    create_markdown_artifact(
        f"## spectroflow run\n\n| status | files |\n| --- | --- |\n{counts}\n\n"
        f"Destination: `{destination}`  \nReport: `{summary.report}`"
        + (f"\n\n### Failed\n\n{failures}{more}" if failures else "")
        + preview_md,
        key="spectroflow-summary",
        description="spectroflow: summary of the run",
    )
    return preview_url


def api_url() -> str | None:
    """The API this run talks to, so Dask workers report to the same server."""
    return os.environ.get("PREFECT_API_URL") or str(get_run_context().client.api_url)


#: distributed starts workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's dynamic
#: mmap threshold: every multi-MiB array (a spectrogram is several) is then mapped and faulted in
#: anew, tripling the system time per file (measured: 1 350 files in 58 s instead of 30 s on two
#: workers). Workers started here keep glibc's defaults; see the README for existing clusters.
WORKER_PRE_SPAWN_ENV = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def task_runner(settings: DaskSettings) -> DaskTaskRunner:
    """A DaskTaskRunner for ``settings``: an existing cluster by address, else a new one.

    Local worker processes get this run's ``PREFECT_API_URL``; without it each would start a
    temporary API server of its own and its task runs would not reach this flow run.
    """
    logging.getLogger("distributed").setLevel(logging.WARNING)
    dask.config.set(WORKER_PRE_SPAWN_ENV)
    if settings.address:
        return DaskTaskRunner(address=settings.address)
    env = {"PREFECT_API_URL": api_url(), "DASK_LOGGING__DISTRIBUTED": "warning"}
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
    }
    return DaskTaskRunner(cluster_kwargs=kwargs)
