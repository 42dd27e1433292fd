"""The body the flows share: plan, compute on Dask, report, and decide how the run ends."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from prefect import get_run_logger
from prefect.states import Cancelled, Completed, Failed, State
from pydantic import BaseModel

from .. import progress, report
from ..params import DaskSettings
from ..request import RunRequest
from .artifacts import Preview
from .cancel import stop_requests
from .cluster import compute_on_dask
from .tasks import plan_task, publish_task, report_task


class RunOutcome(BaseModel):
    """What a flow run returns (as a dict, its JSON result): counts per status, the report's
    URL, the first failures, outputs in place, and whether and why it stopped early."""

    counts: dict[str, int]
    report: str | None
    failed: list[tuple[str, str]]
    outputs: int
    stopped: str | None = None
    not_done: int = 0


#: Failures a run's result lists (the report has them all).
LISTED = 100


def run_request(request: RunRequest, batch_size: int | None, dask: DaskSettings) -> State:
    """Plan ``request``, compute its batches on Dask, write the report, and end the run.

    After planning, the first Ctrl-C (SIGINT) or cancelling the run in Prefect stops it early:
    no more batches start, those running return what they finished, the report lists it, and
    the run ends Cancelled with the files not done counted; a rerun computes them. A second
    Ctrl-C interrupts at once. The state's data is a :class:`RunOutcome` as a dict.
    """
    logger = get_run_logger()
    request = request.anchored()
    destination = request.output
    plan = plan_task(request)
    preview = Preview(request.spect_params, destination)
    computed = 0
    with report.ResultLog() as log, stop_requests() as stop:
        log.add(plan.decided)

        def finished(results: list[report.FileResult]) -> None:
            nonlocal computed
            computed += len(results)
            log.add(results)
            preview.offer(results)

        computing: AbstractContextManager[None]
        if plan.work:
            computing = compute_on_dask(plan.work, request.batch_spec(), dask, batch_size,
                                        on_batch=finished, stop=stop,
                                        local_paths=request.local_paths())
        else:
            logger.info("nothing to compute: every recording is up to date, skipped or failed")
            progress.update(0, 0)
            computing = nullcontext()
        with computing:  # the cluster shuts down while the report is written
            written = report_task(log, destination, return_state=True)
            # A report that cannot be written is reported; the summary is returned all the same.
            url = written.result() if written.is_completed() else None
            summary = log.summary(url, None if url else written.message or written.name)
            not_done = len(plan.work) - computed
            # A Ctrl-C once every file is done (while the report is written) stops nothing; a
            # run cancelled in Prefect ends Cancelled whatever is left (it cannot end Completed).
            stopped = stop.requested and (not_done > 0 or
                                          (stop.reason or "").startswith("cancelled"))
            if stopped:
                logger.warning("run stopped (%s) with %d of %d files not done: %s", stop.reason,
                               not_done, len(plan.work), summary)
            else:
                logger.info("run finished: %s", summary)
            publish_task(log, summary, destination, preview)
    counts = summary.counts
    outcome = RunOutcome(counts=counts, report=url, failed=summary.failed[:LISTED],
                         outputs=counts.get("written", 0) + counts.get("up_to_date", 0),
                         stopped=stop.reason if stopped else None, not_done=not_done)
    payload = outcome.model_dump()
    if stopped:
        return Cancelled(message=f"{stop.reason}: {not_done} of {len(plan.work)} files not done "
                                 f"(a rerun computes them); {summary}", data=payload)
    if not summary.ok:
        names = ", ".join(src for src, _ in summary.failed[:10])
        n_failed = counts["failed"]
        more = f" and {n_failed - 10} more" if n_failed > 10 else ""
        return Failed(message=f"{n_failed} files failed: {names}{more}; see {url}", data=payload)
    return Completed(message=str(summary), data=payload)
