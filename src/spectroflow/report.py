"""Per-file outcomes of a run, the run's report file and its summary.

Errors at the file level are values (a :class:`FileResult` with a status and a reason), so one bad
file never stops the others and every input appears in the report.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import BinaryIO, Literal, TextIO

from . import names, storage

Status = Literal["written", "up_to_date", "skipped", "failed", "missing_audio"]

#: Folder, under the destination, that receives the run reports.
REPORTS_DIR = "spectroflow-reports"


@dataclass(frozen=True, slots=True)
class FileResult:
    """What happened to one input.

    ``status`` is ``written`` (output made now), ``up_to_date`` (an output from the same source
    version and parameters already existed), ``skipped`` (left out on purpose, e.g. labels outside
    the labelset), ``failed`` (the reason says why) or ``missing_audio`` (an annotation names a
    recording that was not found). ``annot_path`` is the annotation the run read for it.
    """

    source: str
    status: Status
    reason: str = ""
    output: str | None = None
    duration: float | None = None
    samplerate: float | None = None
    shape: tuple[int, int] | None = None
    seconds: float | None = None
    annot_path: str | None = None


@dataclass(frozen=True)
class RunSummary:
    """Counts per status, the failures, and where the report was written.

    ``failed`` holds ``(source, reason)`` of the failed files, sorted; ``outputs`` the URLs of the
    outputs written or up to date, sorted. A summary made by :class:`ResultLog` (a flow run) lists
    at most :data:`ResultLog.FAILURES_IN_SUMMARY` failures and no outputs (``None``): the report
    has them all. ``report_error`` says why the report could not be written, when it could not;
    ``manifest`` is the URL of the destination's dataset manifest (:mod:`spectroflow.manifest`),
    if updated. A run stopped early says why (``stopped``) and how many files it did not reach
    (``not_done``): a rerun computes them.
    """

    counts: dict[str, int]
    failed: list[tuple[str, str]]
    report: str | None
    outputs: list[str] | None
    report_error: str | None = None
    manifest: str | None = None
    #: Why the run stopped before its end (a signal), the signal, and the files not done.
    stopped: str | None = None
    stop_signal: int | None = None
    not_done: int = 0

    @property
    def ok(self) -> bool:
        return not self.counts.get("failed")

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items()))
        report = self.report or (f"not written ({self.report_error})" if self.report_error
                                 else "none, nothing new")
        return f"{counts or 'no files'}; report: {report}"


#: Recordings a run's outcome (what a flow run or ``spectroflow run`` returns) names of each kind:
#: its failures, and a dry run's recordings to compute and to skip. The report has them all.
RECORDINGS_IN_OUTCOME = 100


def _order(result: FileResult) -> tuple[str, str]:
    """The report's order: by source, then status."""
    return result.source, result.status


def summarize(
    results: list[FileResult], report: str | None = None, report_error: str | None = None,
    manifest: str | None = None,
) -> RunSummary:
    failed = sorted((r for r in results if r.status == "failed"), key=_order)
    return RunSummary(
        counts=dict(Counter(r.status for r in results)),
        failed=[(r.source, r.reason) for r in failed],
        report=report,
        outputs=sorted(r.output for r in results if r.output and r.status in ("written", "up_to_date")),
        report_error=report_error,
        manifest=manifest,
    )


#: The report's columns: :class:`FileResult`'s fields.
COLUMNS = tuple(f.name for f in fields(FileResult))


def _row(result: FileResult) -> list:
    """A result as the report's row values (shape as ``"rowsxcols"``)."""
    row = [getattr(result, name) for name in COLUMNS]
    if result.shape is not None:
        row[COLUMNS.index("shape")] = "x".join(map(str, result.shape))
    return row


def write_csv(results: Iterable[FileResult], out: TextIO, ordered: bool = False) -> None:
    """Write the report's rows to ``out``: a header, then one row per input, sorted by source.

    With ``ordered``, ``results`` are taken to be in that order already (an iterator then
    streams through).

    Examples
    --------
    >>> import sys
    >>> write_csv([FileResult("a.wav", "failed", "file is empty (0 bytes)")], sys.stdout)
    source,status,reason,output,duration,samplerate,shape,seconds,annot_path
    a.wav,failed,file is empty (0 bytes),,,,,,
    """
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for result in results if ordered else sorted(results, key=_order):
        writer.writerow("" if v is None else v for v in _row(result))


def report_url(destination: str | storage.Location, name: str | None = None) -> str:
    """Where a run's report goes: ``report-<name>-<UTC time>-<random>.csv`` for a named run (a
    flow run), else ``report-<UTC time>-<random>.csv``, under ``destination``'s
    :data:`REPORTS_DIR` (the random part keeps two runs of one name and second apart).

    Examples
    --------
    >>> report_url("s3://lab/spect", "lilac bug/2")  # doctest: +ELLIPSIS
    's3://lab/spect/spectroflow-reports/report-lilac-bug-2-...Z-....csv'
    """
    stamp = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    # A flow run's name is the user's choice: keep it to characters every store takes.
    named = re.sub(r"[^A-Za-z0-9._-]+", "-", name or "").strip("-.")
    leaf = f"report-{named}-{stamp}.csv" if named else f"report-{stamp}.csv"
    return storage.as_location(destination).join(f"{REPORTS_DIR}/{leaf}").url


def write_report(
    results: Iterable[FileResult],
    destination: str | storage.Location,
    ordered: bool = False,
    name: str | None = None,
) -> str:
    """Write the CSV report (:func:`write_csv`'s rows) under ``destination``; return its URL.

    ``name`` (a flow run's) names the file: see :func:`report_url`.

    Rows are written as they are made, not gathered into one string first.
    """
    destination = storage.as_location(destination)
    url = report_url(destination, name)

    def write(fh: BinaryIO) -> None:
        text = io.TextIOWrapper(fh, encoding="utf-8", errors=names.TEXT_ERRORS, newline="")
        write_csv(results, text, ordered)
        text.detach()  # flushed; write_with closes the file

    destination.at(url).write_with(write)
    return url


class ResultLog:
    """A run's per-file results, kept in a temporary SQLite file on local disk as they arrive.

    A flow run adds each batch's results as it finishes and keeps none of them in memory, so the
    flow process's memory does not grow with the number of files; the report is then written
    from the file, sorted by SQLite (on disk when large). Close it (or use it as a context
    manager) to delete the file.

    Examples
    --------
    >>> with ResultLog() as log:
    ...     log.add([FileResult("b.wav", "written", output="b.spect.npz", shape=(257, 10)),
    ...              FileResult("a.wav", "failed", "file is empty (0 bytes)")])
    ...     print(log.counts(), log.failed())
    ...     print([(r.source, r.shape) for r in log.rows()])
    {'failed': 1, 'written': 1} [('a.wav', 'file is empty (0 bytes)')]
    [('a.wav', None), ('b.wav', (257, 10))]
    """

    #: Failures a :meth:`summary` lists (the report lists them all).
    FAILURES_IN_SUMMARY = 1000

    def __init__(self):
        self._dir = tempfile.mkdtemp(prefix="spectroflow-results-")
        # Used by one thread at a time (the flow's), which need not be the one that made it.
        self._db = sqlite3.connect(Path(self._dir) / "results.sqlite", check_same_thread=False)
        self._db.execute(f"CREATE TABLE results ({', '.join(COLUMNS)})")
        self._counts: Counter[str] = Counter()

    def add(self, results: Iterable[FileResult]) -> None:
        results = list(results)
        self._db.executemany(f"INSERT INTO results VALUES ({', '.join('?' * len(COLUMNS))})",
                             [[names.sortable_bytes(v) for v in _row(r)] for r in results])
        self._counts.update(r.status for r in results)

    def __len__(self) -> int:
        return self._counts.total()

    def counts(self) -> dict[str, int]:
        """Files per status, in order of status."""
        return dict(sorted(self._counts.items()))

    def rows(self, status: Status | None = None, limit: int | None = None) -> Iterator[FileResult]:
        """The results (those of one ``status``, at most ``limit``) in the report's order."""
        where, args = ("WHERE status = ?", [names.sortable_bytes(status)]) if status else ("", [])
        cursor = self._db.execute(
            f"SELECT * FROM results {where} ORDER BY source, status, rowid LIMIT ?",
            [*args, -1 if limit is None else limit],
        )
        for row in cursor:
            values = dict(zip(COLUMNS, map(names.from_sortable_bytes, row), strict=True))
            if values["shape"] is not None:
                values["shape"] = tuple(int(x) for x in values["shape"].split("x"))
            yield FileResult(**values)

    def failed(self, limit: int | None = None) -> list[tuple[str, str]]:
        return [(r.source, r.reason) for r in self.rows("failed", limit)]

    def write_report(self, destination: storage.Location, name: str | None = None) -> str:
        """Write the CSV report of every result under ``destination``, named after ``name`` if
        given (:func:`report_url`); return its URL."""
        return write_report(self.rows(), destination, ordered=True, name=name)

    def summary(self, report: str | None = None, report_error: str | None = None,
                manifest: str | None = None) -> RunSummary:
        """Counts, the first :data:`FAILURES_IN_SUMMARY` failures and the report's URL (or why it
        is missing), and the manifest's URL."""
        return RunSummary(self.counts(), self.failed(self.FAILURES_IN_SUMMARY), report, None,
                          report_error, manifest)

    def close(self) -> None:
        self._db.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> ResultLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
