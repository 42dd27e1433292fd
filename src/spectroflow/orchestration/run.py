"""The body the flows share: plan, compute on Dask, report, and decide how the run ends."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

from prefect import get_run_logger
from prefect.states import Cancelled, Completed, Failed, State
from pydantic import BaseModel

from .. import names, progress, report
from .. import plan as plan_mod
from ..params import DaskSettings
from ..plan import Plan
from ..request import RunRequest
from .artifacts import Preview
from .cancel import stop_requests
from .cluster import compute_on_dask
from .logs import printable_run_logs
from .tasks import manifest_task, plan_task, publish_task, report_task


class RunOutcome(BaseModel):
    """What a flow run returns (as a dict, its JSON result): counts per status, the report's
    and the manifest's URLs, the first failures, outputs in place, and whether and why it
    stopped early."""

    counts: dict[str, int]
    #: None when the run had nothing new (a report was not needed) or ``report_error`` says why.
    report: str | None
    report_error: str | None = None
    manifest: str | None = None
    failed: list[tuple[str, str]]
    outputs: int
    stopped: str | None = None
    #: The signal that stopped it, if one did (SIGINT, SIGTERM, SIGHUP).
    stop_signal: int | None = None
    not_done: int = 0
    #: A dry run: ``counts`` are what a run would do (``to_compute`` and the statuses decided
    #: while planning), ``to_compute`` the first recordings it would compute.
    dry_run: bool = False
    to_compute: list[str] = []
    #: A dry run's first recordings it would skip, with the reasons.
    skipped: list[tuple[str, str]] = []


def run_request(request: RunRequest, batch_size: int | None, dask: DaskSettings,
                dry_run: bool = False, batch_tags: Sequence[str] = ()) -> State:
    """Plan ``request``, compute its batches on Dask (their task runs tagged ``batch_tags``),
    write the report, and end the run.

    A ``dry_run`` plans, says what a run would compute, and changes nothing (see
    :func:`dry_run_outcome`).

    After planning, the first Ctrl-C (SIGINT), SIGTERM or SIGHUP, or cancelling the run in
    Prefect stops it early: no more batches start, those running return what they finished,
    the report lists it, and the run ends Cancelled with the files not done counted; a rerun
    computes them. A second signal interrupts at once. The state's data is a
    :class:`RunOutcome` as a dict.
    """
    with printable_run_logs():
        return _run(request, batch_size, dask, dry_run, batch_tags)


def _run(request: RunRequest, batch_size: int | None, dask: DaskSettings, dry_run: bool,
         batch_tags: Sequence[str]) -> State:
    logger = get_run_logger()
    request = request.anchored()
    destination = request.output
    plan = plan_task(request, dry_run)
    if dry_run:
        return dry_run_outcome(plan)
    preview = Preview(request.spect_params, destination)
    computed = 0
    with report.ResultLog() as log, stop_requests() as stop:
        for decided in plan.decided.chunks():
            log.add(decided)

        def finished(results: list[report.FileResult]) -> None:
            nonlocal computed
            computed += len(results)
            log.add(results)
            preview.offer(results)

        computing: AbstractContextManager[None]
        if plan.work:
            computing = compute_on_dask(plan.work, request.batch_spec(), dask, batch_size,
                                        on_batch=finished, stop=stop,
                                        local_paths=request.local_paths(), tags=batch_tags)
        else:
            logger.info("nothing to compute: every recording is up to date, skipped or failed")
            progress.update(0, 0)
            computing = nullcontext()
        with computing:  # the cluster shuts down while the report is written
            # A run with nothing new (a poll for new recordings) leaves the destination as it
            # was: no report, and the manifest rewritten only if a row changes.
            nothing_new = not plan.work and set(log.counts()) <= {"up_to_date"}
            url, report_error = None, None
            if not nothing_new:
                written = report_task(log, destination, return_state=True)
                # A report that cannot be written is reported; the summary is returned all the
                # same.
                url = written.result() if written.is_completed() else None
                report_error = None if url else written.message or written.name
            not_done = len(plan.work) - computed
            manifest_url = manifest_task(log, request, not_done == 0, nothing_new)
            summary = log.summary(url, report_error, manifest_url)
            # A Ctrl-C once every file is done (while the report is written) stops nothing; a
            # run cancelled in Prefect ends Cancelled whatever is left (it cannot end Completed).
            stopped = stop.requested and (not_done > 0 or
                                          (stop.reason or "").startswith("cancelled"))
            if stopped:
                logger.warning("run stopped (%s) with %d of %d files not done: %s", stop.reason,
                               not_done, len(plan.work), summary)
            else:
                logger.info("run finished: %s", summary)
            # Artifacts are a view of the report: one that cannot be made fails nothing.
            published = publish_task(log, summary, destination, preview, return_state=True)
            if not published.is_completed():
                logger.warning("the run's artifacts were not all made: %s", published.message)
    counts = summary.counts
    outcome = RunOutcome(counts=counts, report=url, report_error=summary.report_error,
                         manifest=manifest_url,
                         failed=_printable(summary.failed[:report.RECORDINGS_IN_OUTCOME]),
                         outputs=counts.get("written", 0) + counts.get("up_to_date", 0),
                         stopped=stop.reason if stopped else None,
                         stop_signal=stop.signal if stopped else None, not_done=not_done)
    payload = outcome.model_dump()
    if stopped:
        return Cancelled(message=f"{stop.reason}: {not_done} of {len(plan.work)} files not done "
                                 f"(a rerun computes them); {summary}", data=payload)
    if not summary.ok:
        names = ", ".join(src for src, _ in outcome.failed[:10])
        n_failed = counts["failed"]
        more = f" and {n_failed - 10} more" if n_failed > 10 else ""
        return Failed(message=f"{n_failed} files failed: {names}{more}; see {url}", data=payload)
    return Completed(message=str(summary), data=payload)


def _printable(failed: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Failures as Prefect's API takes them (see :func:`spectroflow.names.printable`)."""
    return [(names.printable(source), names.printable(reason)) for source, reason in failed]


def dry_run_outcome(plan: Plan) -> State:
    """What ``plan`` would do, logged and returned: nothing computed, nothing written."""
    logger = get_run_logger()
    preview = plan_mod.preview(plan)
    summary = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in preview.counts.items())
    logger.info("dry run: %s; nothing computed or written", summary)
    for source in preview.to_compute[:10]:
        logger.info("would compute %s", source)
    for source, reason in preview.skipped[:10]:
        logger.info("would skip %s: %s", source, reason)
    for source, reason in preview.failed[:10]:
        logger.warning("would fail %s: %s", source, reason)
    outcome = RunOutcome(counts=preview.counts, report=None, failed=preview.failed, outputs=0,
                         dry_run=True, to_compute=preview.to_compute, skipped=preview.skipped)
    return Completed(message=f"dry run: {summary}", data=outcome.model_dump())
