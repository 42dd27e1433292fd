"""The dataset manifest: one CSV row per recording at the destination, vak's dataset columns.

Each run updates ``<destination>/spectroflow-manifest.csv`` (:data:`COLUMNS`: vak's
``audio_path``, ``spect_path``, ``annot_path``, ``annot_format``, ``duration``,
``timebin_dur``, then ``status``, ``reason`` and the parameters' ``fingerprint``) and writes
``spectroflow-manifest.json`` beside it (the last run's parameters and spectroflow's version),
so a dataset is loaded without listing the destination::

    pandas.read_csv("spect/spectroflow-manifest.csv").query("status == 'ok'")

A row's ``status`` is ``ok`` (its output is in place: written or up to date), ``skipped``
(labels outside the labelset), ``failed`` (``reason`` says why) or ``gone`` (the recording is no
longer at the source; ``spect_path`` names its output while that remains). A run that listed a
whole folder and computed all it planned (:class:`Listed`) marks ``gone`` the rows under that
folder it did not find; other rows of recordings a run did not see are kept as they were.
``duration`` and ``timebin_dur`` are the spectrogram's as vak 1.1.0 writes them in a
dataset's CSV: ``timebin_dur`` the mean step of the time bins rounded, then truncated, to 5
decimals (:func:`spectroflow.spectrogram.timebin_dur`; 0.00145 s at 44.1 kHz with vak's step of
64 samples, not 0.0014512...), ``duration`` the time bins x ``timebin_dur``. Every path
(``audio_path``, ``spect_path``, ``annot_path``) is written one way: an absolute path on this
machine's file system, or a URL (:func:`spectroflow.storage.absolute`).

The manifest may be edited by hand: columns added to it are kept (a recomputed recording keeps
its values in them), and rows sorted or duplicated by hand are merged in order again (one row per
recording, the last of its duplicates; logged). Names are written as the file system holds them:
a name that is not UTF-8 (an old recorder's Latin-1 ``café.wav``) keeps its bytes, which
``pandas.read_csv(..., encoding_errors="surrogateescape")`` reads back.

Runs may finish at once (ingest runs): each merges its rows into the manifest as it finds it
and replaces it only if no other run replaced it meanwhile (a conditional write, see
:func:`spectroflow.storage.write_with`; locally it takes a lock on the hidden file
``.spectroflow-manifest.csv.lock`` beside it). A run that another replaced the manifest under
first writes its results to the destination's journal (``.spectroflow/manifest-journal/``, a
file per run, in order of their names), then merges again, every pending journal with it, and
removes the journals it merged once its manifest is in place. Its rows are then never lost: a
run that gives up (other runs kept replacing the manifest), or is killed, leaves them in the
journal, which the next run merges, and which :func:`read` (and ``spectroflow prep``) merges in
meanwhile. The merge streams every side in order of ``audio_path``: memory does not grow with
the manifest.

A merge rewrites the whole manifest: seconds for a million rows. Runs that events start (a few
recordings each) are asked to ``defer``: above :data:`DEFER_ABOVE_BYTES` they only write their
journal, and the next run that does not defer (the ingest deployment's schedule, a run over the
whole source) merges every journal at once. The CSV file is then behind by up to that
schedule's interval; :func:`read` is not.
"""

from __future__ import annotations

import csv
import heapq
import io
import itertools
import json
import random
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np

from . import names, outputs, storage
from .params import SpectParams
from .report import FileResult
from .spectrogram import frame_times, timebin_dur

logger = names.get_logger("spectroflow.manifest")

#: The manifest's file name under the destination, and its metadata's.
MANIFEST_NAME = "spectroflow-manifest.csv"
METADATA_NAME = "spectroflow-manifest.json"
#: vak's dataset columns, then spectroflow's.
COLUMNS = ("audio_path", "spect_path", "annot_path", "annot_format", "duration", "timebin_dur",
           "status", "reason", "fingerprint")
#: Merges tried before giving up when other runs keep replacing the manifest.
ATTEMPTS = 10
#: Where runs that met another's merge keep their results until one merges them.
JOURNAL_DIR = ".spectroflow/manifest-journal"
#: The manifest size above which runs asked to ``defer`` leave their rows in the journal.
DEFER_ABOVE_BYTES = 8 * 2**20
#: Journal files merged in one pass (each open while it merges), oldest first.
JOURNALS_AT_ONCE = 100
#: Journal files up to this size are read whole before a merge, not held open.
_JOURNAL_IN_MEMORY_BYTES = 2**20
_JOURNAL_SUFFIX = ".jsonl"

Row = dict[str, str]
#: A row as the merge handles it: its values in the order of the columns written.
Record = list[str]
#: Where the columns the merge reads are in a record (the first of :data:`COLUMNS`).
_PATH, _SPECT, _STATUS, _REASON = (COLUMNS.index(c)
                                   for c in ("audio_path", "spect_path", "status", "reason"))
_RESULT_FIELDS = frozenset(f.name for f in fields(FileResult))

@dataclass(frozen=True)
class Listed:
    """A run found every recording under ``root`` (a folder's URL) named ``*<suffix>``, and
    has a result for each: rows under it that it did not find are ``gone``.

    Examples
    --------
    >>> listed = Listed("s3://lab/audio", ".wav")
    >>> listed.covers("s3://lab/audio/day1/a.WAV"), listed.covers("s3://lab/audio2/a.wav")
    (True, False)
    """

    root: str
    suffix: str

    def covers(self, audio_path: str) -> bool:
        return (audio_path.startswith(self.root.rstrip("/") + "/")
                and audio_path.lower().endswith(self.suffix.lower()))


class UnorderedError(ValueError):
    """The previous manifest's rows are not in order of ``audio_path`` (sorted by hand), or name
    a recording twice."""


def location(destination: str | storage.Location) -> storage.Location:
    """Where ``destination``'s manifest is."""
    return storage.as_location(destination).join(MANIFEST_NAME)


def has_row(result: FileResult) -> bool:
    """Whether ``result`` is about a recording that was found: annotation files' own results
    and recordings an annotation names but that were not found (``missing_audio``) have no row."""
    return result.status != "missing_audio" and result.source != result.annot_path


def update(
    destination: str | storage.Location,
    results: Callable[[], Iterable[FileResult]],
    params: SpectParams,
    audio_format: str,
    annot_format: str | None = None,
    listed: Listed | None = None,
    skip_unchanged: bool = False,
    defer: bool = False,
) -> str:
    """Merge a run's ``results`` into ``destination``'s manifest and write its metadata; return
    the manifest's URL.

    ``results()`` gives the run's results in order of source (as
    :meth:`spectroflow.report.ResultLog.rows` does); it is called again if another run replaced
    the manifest while this one merged. ``listed``: what the run listed whole (see
    :class:`Listed`). With ``skip_unchanged``, the manifest is read first, and neither it nor
    its metadata is written when the run changes none of its rows and no journal is pending.

    Merges that other runs keep replacing leave this run's rows in the journal (see the
    module's description), which the next run merges; that is logged. With ``defer``, a
    manifest over :data:`DEFER_ABOVE_BYTES` is not merged into: the rows go to the journal.
    """
    where = location(destination)
    journal = _Journal(storage.as_location(destination))
    run = _Stage(results, _Rows(where, params, annot_format, listed))
    if defer and (found := _found(where)) is not None and (found.size or 0) > DEFER_ABOVE_BYTES:
        if any(has_row(r) for r in results()):
            kept = journal.add(results, params, annot_format, listed)
            logger.info("this run's rows are in %s, which the next run over the whole source "
                        "merges into %s (%d MB)", kept.url, where.url, (found.size or 0) // 10**6)
        return where.url
    if skip_unchanged and not journal.pending() and not _changes(where, run):
        logger.info("manifest unchanged: %s", where.url)
        return where.url
    own: storage.FileInfo | None = None
    ordered = True
    tries = 0  # merges replaced by another run's, and passes over part of a long journal
    while tries < ATTEMPTS:
        found = _found(where)
        # Listed after the manifest's version is taken: a journal merged into that version and
        # not yet removed is merged again, to the same rows.
        pending = journal.pending()
        if own is not None and own.url not in {p.url for p in pending}:
            logger.info("this run's rows were merged into %s by another run", where.url)
            break
        if own is None and pending:  # merged with them, in the journal's order
            own = journal.add(results, params, annot_format, listed)
            pending = sorted([*pending, own], key=lambda p: p.relpath)
        merging = pending[:JOURNALS_AT_ONCE]
        try:
            stages = [journal.stage(p, where) for p in merging] if own is not None else [run]
            _merge(where, found, stages, ordered)
        except UnorderedError as exc:
            if not ordered:
                raise
            logger.warning("%s: merging it in order of audio_path", exc)
            ordered = False
            continue
        # Replaced (or removed) by another run since it was found: while it was read, or
        # before this run's could replace it (or a journal merged and removed meanwhile).
        except (storage.VersionConflict, storage.ChangedWhileReadingError,
                FileNotFoundError) as exc:
            tries += 1
            if own is None:
                own = journal.add(results, params, annot_format, listed)
            wait = random.uniform(0.05, 0.2 * tries)
            logger.info("manifest replaced by another run while merging (%s); this run's rows "
                        "are in %s; merging again in %.2f s", exc, own.url, wait)
            time.sleep(wait)
            continue
        journal.remove(merging)
        if own is None or own.url in {m.url for m in merging}:
            break
        tries += 1
    else:
        assert own is not None  # a conflict, or a journal, wrote it
        logger.warning("%s was replaced by other runs, or its journal held more files than "
                       "%d merges take, while this run merged: its rows wait in %s, which the "
                       "next run merges (spectroflow.manifest.read and spectroflow prep "
                       "include them meanwhile)", where.url, ATTEMPTS, own.url)
    write_metadata(destination, params, audio_format, annot_format)
    logger.info("manifest updated: %s", where.url)
    return where.url


def _merge(where: storage.Location, found: storage.FileInfo | None, stages: list[_Stage],
           ordered: bool) -> None:
    """Write ``where`` anew: the manifest as ``found``, with each stage's results merged in
    turn, if no other run replaced it since it was ``found``."""
    version = found.version if found is not None else None

    def write(fh: BinaryIO) -> None:
        text = io.TextIOWrapper(fh, encoding="utf-8", errors=names.TEXT_ERRORS, newline="")
        with _previous_rows(where, found, ordered) as (columns, previous):
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows(_merged(previous, stages, columns))
        text.detach()  # flushed; write_with closes the file

    where.write_with(write, if_version=version, if_absent=version is None)


def _merged(previous: Iterator[Record], stages: list[_Stage],
            columns: list[str]) -> Iterator[Record]:
    """``previous`` with each stage's results merged in turn, the later stages' rows winning:
    the rows the stages would make one after the other, in one pass over ``previous``."""
    return (record for _, record in _merged_pairs(previous, stages, columns))


def _merged_pairs(previous: Iterator[Record], stages: list[_Stage],
                  columns: list[str]) -> Iterator[tuple[Record | None, Record]]:
    """:func:`_merged`'s rows, each with the previous row of its recording (None for a new
    one)."""
    listing = [stage for stage in stages if stage.rows.lists]
    results = heapq.merge(*(_tagged(i, stage) for i, stage in enumerate(stages)),
                          key=lambda tagged: (tagged[0], tagged[1]))
    old = next(previous, None)
    for source, group in itertools.groupby(results, key=lambda tagged: tagged[0]):
        while old is not None and old[_PATH] < source:
            yield old, _unchanged(old, listing, columns) if listing else old
            old = next(previous, None)
        before = None
        if old is not None and old[_PATH] == source:
            before, old = old, next(previous, None)
        by_stage: dict[int, list[FileResult]] = {}
        for _, i, result in group:
            by_stage.setdefault(i, []).append(result)
        record = before
        for i, stage in enumerate(stages):
            for result in by_stage.get(i, ()):
                record = stage.rows.of(result, record, columns)
            if i not in by_stage and record is not None and stage.rows.lists:
                record = stage.rows.of(None, record, columns)
        assert record is not None
        yield before, record
    while old is not None:
        yield old, _unchanged(old, listing, columns)
        old = next(previous, None)


def _tagged(i: int, stage: _Stage) -> Iterator[tuple[str, int, FileResult]]:
    """A stage's results that have a row, each with its source and the stage's place."""
    last = ""
    for result in filter(has_row, stage.results()):
        if result.source < last:  # merged out of order, rows would be lost or doubled
            raise ValueError(f"results out of order of source: {result.source!r} after {last!r}")
        last = result.source
        yield result.source, i, result


def _unchanged(record: Record, listing: list[_Stage], columns: list[str]) -> Record:
    """A row no stage has a result for, as the stages that listed a folder leave it."""
    for stage in listing:
        record = stage.rows.of(None, record, columns)
    return record


def _changes(where: storage.Location, run: _Stage) -> bool:
    """Whether merging ``run``'s results would change ``where``'s manifest (which is read, and
    not written)."""
    found = _found(where)
    if found is None:
        return any(has_row(r) for r in run.results())
    try:
        with _previous_rows(where, found) as (columns, previous):
            return any(old != new for old, new in _merged_pairs(previous, [run], columns))
    except UnorderedError:  # to be merged in order again
        return True


def write_metadata(
    destination: str | storage.Location,
    params: SpectParams,
    audio_format: str,
    annot_format: str | None,
) -> str:
    """Write ``spectroflow-manifest.json``: the manifest's name and columns, the last run's
    parameters, their fingerprint, and spectroflow's version; return its URL."""
    from . import __version__

    where = storage.as_location(destination).join(METADATA_NAME)
    metadata = {
        "manifest": MANIFEST_NAME,
        "columns": list(COLUMNS),
        "audio_format": audio_format,
        "annot_format": annot_format,
        "spect_params": params.model_dump(mode="json"),
        "fingerprint": params.fingerprint(),
        "spectroflow_version": __version__,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    where.write_bytes(json.dumps(metadata, indent=2).encode() + b"\n")
    return where.url


def read(destination: str | storage.Location) -> list[Row]:
    """Every row of ``destination``'s manifest (empty if there is none yet), with the rows
    that runs left in its journal merged in (see the module's description)."""
    where = location(destination)
    journal = _Journal(storage.as_location(destination))
    for attempt in range(1, ATTEMPTS + 1):
        found = _found(where)
        pending = journal.pending()
        try:
            if not pending:
                with _previous_rows(where, found, ordered=False, check=False) as (columns, rows):
                    return [dict(zip(columns, record, strict=True)) for record in rows]
            stages = [journal.stage(p, where) for p in pending]
            try:
                with _previous_rows(where, found) as (columns, rows):
                    return [dict(zip(columns, r, strict=True))
                            for r in _merged(rows, stages, columns)]
            except UnorderedError:
                with _previous_rows(where, found, ordered=False) as (columns, rows):
                    return [dict(zip(columns, r, strict=True))
                            for r in _merged(rows, stages, columns)]
        # A run replaced the manifest, or merged and removed a journal, while this read.
        except (storage.ChangedWhileReadingError, FileNotFoundError):
            if attempt == ATTEMPTS:
                raise
            time.sleep(random.uniform(0.05, 0.2 * attempt))
    raise AssertionError("unreachable")


def _found(where: storage.Location) -> storage.FileInfo | None:
    """The manifest's size and version, or None if there is none yet."""
    try:
        return where.info()
    except FileNotFoundError:
        return None


@contextmanager
def _previous_rows(
    where: storage.Location, found: storage.FileInfo | None, ordered: bool = True,
    check: bool = True,
) -> Iterator[tuple[list[str], Iterator[Record]]]:
    """The columns to write (:data:`COLUMNS`, then any a person added) and the rows of the
    manifest as ``found`` (none when absent), each a record of those columns' values (empty for a
    column the file lacks), read as a stream; a manifest of another size by now raises
    :class:`~spectroflow.storage.ChangedWhileReadingError`.

    ``ordered``: the rows are taken to be in order of ``audio_path``, each once; the first that
    is not raises :class:`UnorderedError`. Else they are sorted (on local disk, not in memory),
    and of a path's duplicates the last is kept. Without ``check``, rows come as they are.
    """
    if found is None:
        yield list(COLUMNS), iter(())
        return
    with where.open_input(found.size) as fh:
        # utf-8-sig: a spreadsheet saves the file with a byte order mark.
        reader = csv.reader(io.TextIOWrapper(fh, encoding="utf-8-sig",
                                             errors=names.TEXT_ERRORS, newline=""))
        header = next(reader, [])
        if header and "audio_path" not in header:
            raise ValueError(f"{where.url} has no audio_path column (its header: "
                             f"{','.join(header)}): restore the header, or delete the file "
                             "to have the next run write a new one")
        columns = [*COLUMNS, *(c for c in dict.fromkeys(header) if c not in COLUMNS and c)]
        records = _as_records(reader, header, columns)
        if not check:
            yield columns, records
        elif ordered:
            yield columns, _in_order(records, where)
        else:
            with _sorted(records, where) as rows:
                yield columns, rows


def _as_records(reader: Iterable[list[str]], header: list[str],
                columns: list[str]) -> Iterator[Record]:
    """The file's rows (``header`` their columns) as records of ``columns``, blank lines left
    out. A row of as many values as ``columns``, in their order (the manifests spectroflow
    writes), is taken as it is: a merge copies most rows untouched."""
    n = len(columns)
    if header == columns:
        for values in reader:
            if len(values) == n:
                yield values
            elif values:
                yield [*values[:n], *[""] * (n - len(values))]
        return
    at = {name: i for i, name in enumerate(header)}  # of a column named twice, the last
    where = [at.get(name) for name in columns]
    for values in reader:
        if values:
            yield [values[i] if i is not None and i < len(values) else "" for i in where]


def _in_order(rows: Iterable[Record], where: storage.Location) -> Iterator[Record]:
    last = None
    for row in rows:
        path = row[_PATH]
        if last is not None and path <= last:
            raise UnorderedError(
                f"{where.url} is not in order of audio_path (sorted or edited by hand?): "
                f"{path!r} {'twice' if path == last else f'after {last!r}'}")
        last = path
        yield row


@contextmanager
def _sorted(rows: Iterable[Record], where: storage.Location) -> Iterator[Iterator[Record]]:
    """``rows`` in order of ``audio_path``, the last of each path's duplicates, sorted in a
    temporary SQLite file."""
    with tempfile.TemporaryDirectory(prefix="spectroflow-manifest-") as folder:
        db = sqlite3.connect(Path(folder) / "rows.sqlite")
        try:
            db.execute("CREATE TABLE rows (path BLOB, row TEXT)")
            db.executemany("INSERT INTO rows VALUES (?, ?)",
                           ((names.sortable_bytes(row[_PATH]), json.dumps(row)) for row in rows))
            total = db.execute("SELECT count(*) FROM rows").fetchone()[0]
            # The last row of each path: the one with the largest rowid.
            cursor = db.execute("SELECT row FROM rows WHERE rowid IN "
                                "(SELECT max(rowid) FROM rows GROUP BY path) ORDER BY path")
            kept = db.execute("SELECT count(DISTINCT path) FROM rows").fetchone()[0]
            if kept < total:
                logger.warning("%s named %d recordings more than once: kept the last row of "
                               "each, %d dropped", where.url, total - kept, total - kept)
            yield (json.loads(text) for (text,) in cursor)
        finally:
            db.close()


@dataclass(frozen=True)
class _Stage:
    """A run's results (``results()``, in order of source) and what makes their rows."""

    results: Callable[[], Iterable[FileResult]]
    rows: _Rows


class _Journal:
    """The results of runs not merged yet: a JSON-lines file per run under
    ``<destination>/`` :data:`JOURNAL_DIR`, named by the time it was written (its first line
    what makes the rows, then a result a line), merged in order of their names."""

    def __init__(self, destination: storage.Location):
        self._folder = destination.join(JOURNAL_DIR)

    def pending(self) -> list[storage.FileInfo]:
        if self._folder.kind() != "folder":
            return []
        return self._folder.list_files((_JOURNAL_SUFFIX,))

    def add(self, results: Callable[[], Iterable[FileResult]], params: SpectParams,
            annot_format: str | None, listed: Listed | None) -> storage.FileInfo:
        """Write a run's results to a journal file of their own (a name no other run takes);
        return it."""
        name = (f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}-{uuid.uuid4().hex[:8]}"
                f"{_JOURNAL_SUFFIX}")
        where = self._folder.join(name)
        head = {"spect_params": params.model_dump(mode="json"), "annot_format": annot_format,
                "listed": [listed.root, listed.suffix] if listed else None}
        size = 0

        def write(fh: BinaryIO) -> None:
            nonlocal size
            for record in itertools.chain([head], map(asdict, filter(has_row, results()))):
                line = json.dumps(record).encode() + b"\n"
                fh.write(line)
                size += len(line)

        version = where.write_with(write)
        return storage.FileInfo(where.url, name, size, version)

    def stage(self, entry: storage.FileInfo, manifest: storage.Location) -> _Stage:
        """The results a journal file holds, as a stage of a merge into ``manifest``: read
        whole if small, else read as the merge goes."""
        at = self._folder.at(entry.url)
        with at.open_input() as fh:
            head = json.loads(fh.readline())
            kept = (list(_journal_results(fh))
                    if (entry.size or 0) <= _JOURNAL_IN_MEMORY_BYTES else None)
        listed = Listed(*head["listed"]) if head["listed"] else None
        rows = _Rows(manifest, SpectParams.model_validate(head["spect_params"]),
                     head["annot_format"], listed)

        def results() -> Iterator[FileResult]:
            if kept is not None:
                yield from kept
                return
            with at.open_input() as fh:
                fh.readline()
                yield from _journal_results(fh)
        return _Stage(results, rows)

    def remove(self, merged: list[storage.FileInfo]) -> None:
        """Remove journal files once merged, in order: a run that finds some left merges
        those, all later than any that went, again."""
        for entry in merged:
            try:
                self._folder.at(entry.url).remove()
            except FileNotFoundError:
                pass  # removed by another run that merged it too
            except Exception as exc:  # noqa: BLE001 - merged: a later run merges it again
                logger.warning("could not remove %s, which is merged: %s: %s", entry.url,
                               type(exc).__name__, exc)
                return


def _journal_results(lines: Iterable[bytes]) -> Iterator[FileResult]:
    """The results of a journal file's lines (after its first): each a result's fields by name;
    fields this version does not know are left out, and those it added take their defaults."""
    for line in lines:
        values = {k: v for k, v in json.loads(line).items() if k in _RESULT_FIELDS}
        if values.get("shape") is not None:
            values["shape"] = tuple(values["shape"])
        yield FileResult(**values)


class _Rows:
    """Makes a result's row."""

    def __init__(self, where: storage.Location, params: SpectParams, annot_format: str | None,
                 listed: Listed | None = None):
        self._where, self._params, self._listed = where, params, listed
        self._fingerprint, self._annot_format = params.fingerprint(), annot_format

    @property
    def lists(self) -> bool:
        """Whether rows without a result may change: the run listed a folder whole."""
        return self._listed is not None

    def of(self, result: FileResult | None, previous: Record | None,
           columns: list[str]) -> Record:
        """The record of ``columns`` to write for a result, its previous record, or both."""
        if result is None:
            assert previous is not None
            if (self._listed is not None and previous[_STATUS] != "gone"
                    and self._listed.covers(previous[_PATH])
                    and not self._still_there(previous[_PATH])):
                return self._gone(previous)
            return previous
        row = self._row(result, dict(zip(columns, previous, strict=True)) if previous else None)
        return [row.get(name) or "" for name in columns]

    def _row(self, result: FileResult, previous: Row | None) -> Row:
        # Columns a person added keep their values.
        row: Row = {**(previous or {}), **dict.fromkeys(COLUMNS, "")}
        row.update(audio_path=result.source, status=result.status, reason=result.reason,
                   fingerprint=self._fingerprint)
        if result.annot_path:
            row.update(annot_path=result.annot_path, annot_format=self._annot_format or "")
        if result.status not in ("written", "up_to_date") or not result.output:
            return row
        row.update(status="ok", reason="", spect_path=result.output)
        if result.status == "written" and result.shape and result.samplerate:
            p = self._params
            times = frame_times(0, result.shape[1], result.samplerate, p.fft_size, p.step_size)
            return {**row, **_durations(times)}
        if (previous is not None and previous["status"] == "ok" and previous["duration"]
                and previous["spect_path"] == result.output
                and previous["fingerprint"] == self._fingerprint
                and _as_vak_records(previous["timebin_dur"])):
            return {**row, "duration": previous["duration"],
                    "timebin_dur": previous["timebin_dur"]}
        return {**row, **self._read_durations(result.output)}

    def _still_there(self, audio_path: str) -> bool:
        """Whether the recording of a row the run's listing missed exists now: written after
        the listing, and computed by another run (an event's) meanwhile, it is not gone."""
        try:
            return self._where.at(audio_path).exists()
        except Exception:  # noqa: BLE001 - unknown: the listing's word stands
            return False

    def _gone(self, previous: Record) -> Record:
        """``previous``, whose recording the run did not find under the folder it listed."""
        output = previous[_SPECT]
        reason = "the recording is no longer at the source"
        try:
            remains = bool(output) and self._where.at(output).exists()
        except Exception as exc:  # noqa: BLE001 - the row says what is known
            remains = False
            reason += f"; whether its output remains is unknown ({type(exc).__name__}: {exc})"
        else:
            reason += f"; its output remains: {output}" if remains else ""
        logger.warning("%s: %s", previous[_PATH], reason)
        gone = list(previous)
        gone[_STATUS], gone[_REASON], gone[_SPECT] = "gone", reason, output if remains else ""
        return gone

    def _read_durations(self, output: str) -> dict[str, str]:
        """An output's durations from its time bins (an output the manifest did not list)."""
        try:
            times = outputs.read_times(self._where.at(output), self._params)
        except Exception as exc:  # noqa: BLE001 - the row stays, without durations
            logger.warning("the time bins of %s could not be read for the manifest: %s: %s",
                           output, type(exc).__name__, exc)
            return {}
        return _durations(times)


def _durations(times: np.ndarray) -> dict[str, str]:
    """vak's columns for a spectrogram with these time bins, as vak computes them."""
    dur = timebin_dur(times)
    return {"duration": repr(len(times) * dur), "timebin_dur": repr(dur)}


def _as_vak_records(timebin_dur: str) -> bool:
    """Whether a row's ``timebin_dur`` is in vak's form, a whole number of 1e-5 s; rows of
    older manifests hold ``step_size / samplerate`` at full precision, and are read again."""
    try:
        value = float(timebin_dur)
    except ValueError:
        return False
    return round(value, 5) == value
