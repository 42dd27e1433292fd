"""What a flow run shows in Prefect's UI: a per-file table, a summary with a preview, the report."""

from __future__ import annotations

import base64
import csv
import io
import json
from concurrent.futures import Future, ThreadPoolExecutor

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.context import TaskRunContext

from .. import names, outputs, plot, report, storage
from ..discovery import common_folder
from ..params import SpectParams
from ..spectrogram import fits_whole

logger = names.get_logger("spectroflow.orchestration.artifacts")

#: Above this many inputs, the results table artifact lists the failures only.
TABLE_ROWS = 200
#: Longest text in the table's details column: with more, Prefect's newer UI cuts the table's
#: last columns off at 1280 px (the report and the summary have every reason in full).
DETAILS_CHARS = 48
#: Rows of the report its table artifact shows, the first in its order: enough to browse, few
#: enough that the artifact stays small in Prefect's database (the CSV has them all).
REPORT_ROWS = 1000


def _json(rows: list[dict[str, str]]) -> str:
    """A table's rows as JSON, names that are not UTF-8 spelt printably in each value (spelt in
    the JSON text, their ``\\xNN`` would be invalid escapes)."""
    return json.dumps([{k: names.printable(v) for k, v in row.items()} for row in rows],
                      ensure_ascii=False)


def _fits(shape: tuple[int, ...] | None) -> bool:
    # An hour-long recording's output (gigabytes) is never read into the flow process; a later,
    # shorter one is drawn instead.
    return shape is None or fits_whole(shape)


class Preview:
    """The first written output small enough to hold whole
    (:func:`~spectroflow.spectrogram.fits_whole`) drawn as a small PNG
    (:func:`spectroflow.plot.preview_png`) on a background thread of the flow process, while the
    remaining batches compute.

    Offer it each finished batch's results; :meth:`result` waits for the drawing.
    """

    def __init__(self, params: SpectParams, destination: storage.Location):
        self._params, self._destination = params, destination
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="preview")
        self._drawing: Future | None = None

    def offer(self, results: list[report.FileResult]) -> None:
        if self._drawing is None:
            written = next((r for r in results if r.status == "written" and r.output
                            and _fits(r.shape)), None)
            if written is not None:
                self._drawing = self._pool.submit(self._draw, written)

    def _draw(self, written: report.FileResult) -> tuple[str, bytes]:
        assert written.output is not None
        spect = outputs.read(self._destination.at(written.output), self._params)
        return written.source, plot.preview_png(spect)

    def result(self) -> tuple[str, bytes] | None:
        """(source URL, PNG) of the drawn output, or None if nothing was written.

        Raises what drawing raised."""
        try:
            return None if self._drawing is None else self._drawing.result()
        finally:
            self._pool.shutdown(wait=False)


def _details(result: report.FileResult) -> str:
    made = "" if result.shape is None else f"{result.shape[0]} x {result.shape[1]}"
    if made and result.duration is not None:
        made += f" from {result.duration:.2f} s"
    text = "; ".join(part for part in (made, result.reason) if part)
    return text if len(text) <= DETAILS_CHARS else text[:DETAILS_CHARS - 1] + "\u2026"


def results_table(log: report.ResultLog) -> tuple[str, str]:
    """The table artifact's rows (JSON) and description: every input, or the failures of many.

    Sources are shown relative to their deepest common folder, with their status and details
    (the spectrogram's shape and the audio's duration, or why it failed), short enough that
    every column fits a browser window; the report has every field in full.
    """
    if len(log) <= TABLE_ROWS:
        listed, described = list(log.rows()), "every input"
    else:
        listed = list(log.rows("failed", TABLE_ROWS * 5))
        described = f"the failures of {len(log)} inputs"
    root = common_folder([r.source for r in listed])
    rows = [{"source": r.source[len(root) + 1:] if root else r.source, "status": r.status,
             "details": _details(r)} for r in listed]
    where = f" under {root}" if root else ""
    return _json(rows), f"spectroflow: {described}{where}; every column: spectroflow-report"


def report_table(log: report.ResultLog, url: str) -> tuple[str, str]:
    """The report artifact's rows (JSON) and description: the report's first
    :data:`REPORT_ROWS` rows with every column, as its CSV at ``url`` has them, and that URL.

    A code span, not a link, names the CSV: browsers open no file:// or s3:// link from the
    UI's page, and Prefect's newer UI drops such links.
    """
    text = io.StringIO()
    report.write_csv(log.rows(limit=REPORT_ROWS), text, ordered=True)
    rows = list(csv.DictReader(io.StringIO(text.getvalue())))
    shown = (f"every input ({len(log)}); the CSV" if len(log) <= REPORT_ROWS
             else f"the first {REPORT_ROWS} of {len(log)} inputs; all of them in the CSV")
    return _json(rows), f"spectroflow: the run's report, {shown}: `{url}`"


def summary_markdown(summary: report.RunSummary, destination: storage.Location,
                     preview_md: str) -> str:
    """The summary artifact: counts, where things are, the first failures, the preview."""
    counts = "\n".join(f"| {status} | {n} |" for status, n in sorted(summary.counts.items()))
    failures = "\n".join(f"- `{src}`: {reason}" for src, reason in summary.failed[:20])
    n_failed = summary.counts.get("failed", 0)
    more = f"\n- ... and {n_failed - 20} more (see the report)" if n_failed > 20 else ""
    return (f"## spectroflow run\n\n| status | files |\n| --- | --- |\n{counts}\n\n"
            f"Destination: `{destination}`  \nReport: `{summary.report}`"
            + (f"\n\n### Failed\n\n{failures}{more}" if failures else "")
            + preview_md)


def _save_preview(preview: Preview, summary: report.RunSummary,
                  destination: storage.Location) -> tuple[str, str | None]:
    """The preview's markdown, and its URL once saved beside the report; a picture is a
    convenience, so a failure to draw or save it is logged and fails nothing."""
    try:
        drawn = preview.result()
        if drawn is None or not summary.report:
            return "", None
        source, png = drawn
        url = summary.report.rsplit(".", 1)[0] + "-preview.png"
        destination.at(url).write_bytes(png)
    except Exception as exc:  # noqa: BLE001 - a picture must not fail the run
        logger.warning("no preview: %s", exc)
        return "", None
    # A data: URI, which both of Prefect's UIs show: the file's own URL (local or s3://) is not
    # one a browser can load from the UI's page.
    return (f"\n\n### Preview: {source}\n\n![spectrogram of {source}]"
            f"(data:image/png;base64,{base64.b64encode(png).decode()})\n\n"
            f"Saved as `{url}`."), url


def publish(log: report.ResultLog, summary: report.RunSummary, destination: storage.Location,
            preview: Preview) -> str | None:
    """Create the run's artifacts; returns the URL of the preview saved beside the report.

    They belong to the flow run, not to the calling task: the UI's run page lists a run's own
    artifacts under "Flow run" (which read "None" when a task made them) and its tasks' below.
    """
    context = TaskRunContext.get()
    assert context is not None, "publish runs in a task"
    flow_run_id = context.task_run.flow_run_id

    def create(kind: str, key: str, data: str, description: str) -> None:
        with get_client(sync_client=True) as client:
            client.create_artifact(ArtifactCreate(
                type=kind, key=key, data=names.printable(data),
                description=names.printable(description), flow_run_id=flow_run_id))

    rows, described = results_table(log)
    create("table", "spectroflow-results", rows, described)
    if summary.report:
        create("table", "spectroflow-report", *report_table(log, summary.report))
    preview_md, preview_url = _save_preview(preview, summary, destination)
    create("markdown", "spectroflow-summary", summary_markdown(summary, destination, preview_md),
           "spectroflow: summary of the run")
    return preview_url
