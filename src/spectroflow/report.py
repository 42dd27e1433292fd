"""Per-file outcomes of a run, the run's report file and its summary.

Errors at the file level are values (a :class:`FileResult` with a status and a reason), so one bad
file never stops the others and every input appears in the report.
"""

from __future__ import annotations

import csv
import io
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, fields
from typing import BinaryIO, Literal, TextIO

from . import storage

Status = Literal["written", "up_to_date", "skipped", "failed", "missing_audio"]

#: Folder, under the destination, that receives the run reports.
REPORTS_DIR = "spectroflow-reports"


@dataclass(frozen=True, slots=True)
class FileResult:
    """What happened to one input.

    ``status`` is ``written`` (output made now), ``up_to_date`` (an output from the same source
    version and parameters already existed), ``skipped`` (left out on purpose, e.g. labels outside
    the labelset), ``failed`` (the reason says why) or ``missing_audio`` (an annotation names a
    recording that was not found).
    """

    source: str
    status: Status
    reason: str = ""
    output: str | None = None
    duration: float | None = None
    samplerate: float | None = None
    shape: tuple[int, int] | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class RunSummary:
    """Counts per status, the failures, and where the report was written."""

    counts: dict[str, int]
    failed: list[tuple[str, str]]
    report: str | None
    outputs: list[str]

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items()))
        return f"{counts or 'no files'}; report: {self.report or 'not written'}"


def summarize(results: list[FileResult], report: str | None = None) -> RunSummary:
    return RunSummary(
        counts=dict(Counter(r.status for r in results)),
        failed=[(r.source, r.reason) for r in results if r.status == "failed"],
        report=report,
        outputs=sorted(r.output for r in results if r.output and r.status in ("written", "up_to_date")),
    )


def write_csv(results: list[FileResult], out: TextIO) -> None:
    """Write the report's rows to ``out``: a header, then one row per input, sorted by source.

    Examples
    --------
    >>> import sys
    >>> write_csv([FileResult("a.wav", "failed", "file is empty (0 bytes)")], sys.stdout)
    source,status,reason,output,duration,samplerate,shape,seconds
    a.wav,failed,file is empty (0 bytes),,,,,
    """
    writer = csv.writer(out, lineterminator="\n")
    names = [f.name for f in fields(FileResult)]
    writer.writerow(names)
    for result in sorted(results, key=lambda r: (r.source, r.status)):
        row = asdict(result)
        if row["shape"] is not None:
            row["shape"] = "x".join(map(str, row["shape"]))
        writer.writerow("" if row[n] is None else row[n] for n in names)


def report_url(destination: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return storage.join(destination, f"{REPORTS_DIR}/report-{stamp}-{uuid.uuid4().hex[:6]}.csv")


def write_report(
    results: list[FileResult], destination: str, storage_options: dict | None = None
) -> str:
    """Write the CSV report (:func:`write_csv`'s rows) under ``destination``; return its URL.

    Rows are written as they are made, not gathered into one string first: the flow process's
    memory stays flat however many files a run has.
    """
    url = report_url(destination)

    def write(fh: BinaryIO) -> None:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        write_csv(results, text)
        text.detach()  # flushed; write_with closes the file

    storage.write_with(url, write, storage_options)
    return url
