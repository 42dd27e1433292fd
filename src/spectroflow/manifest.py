"""The dataset manifest: one CSV row per recording at the destination, vak's dataset columns.

Each run updates ``<destination>/spectroflow-manifest.csv`` (:data:`COLUMNS`: vak's
``audio_path``, ``spect_path``, ``annot_path``, ``annot_format``, ``duration``,
``timebin_dur``, then ``status``, ``reason`` and the parameters' ``fingerprint``) and writes
``spectroflow-manifest.json`` beside it (the last run's parameters and spectroflow's version),
so a dataset is loaded without listing the destination::

    pandas.read_csv("spect/spectroflow-manifest.csv").query("status == 'ok'")

A row's ``status`` is ``ok`` (its output is in place: written or up to date), ``skipped``
(labels outside the labelset) or ``failed`` (``reason`` says why). Rows of recordings a run did
not see are kept as they were. ``duration`` is the spectrogram's, as vak computes it (time bins
x ``timebin_dur``); ``timebin_dur`` is ``step_size / samplerate`` at full precision (vak rounds
its own to 5 decimals).

Runs may finish at once (ingest runs): each merges its rows into the manifest as it finds it
and replaces it only if no other run replaced it meanwhile (a conditional write, see
:func:`spectroflow.storage.write_with`; locally it takes a lock on the hidden file
``.spectroflow-manifest.csv.lock`` beside it), else merges again, so no run's rows are lost. The merge
streams both sides in order of ``audio_path``: memory does not grow with the manifest.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import BinaryIO

import numpy as np

from . import outputs, storage
from .params import SpectParams
from .report import FileResult

logger = logging.getLogger("spectroflow.manifest")

#: The manifest's file name under the destination, and its metadata's.
MANIFEST_NAME = "spectroflow-manifest.csv"
METADATA_NAME = "spectroflow-manifest.json"
#: vak's dataset columns, then spectroflow's.
COLUMNS = ("audio_path", "spect_path", "annot_path", "annot_format", "duration", "timebin_dur",
           "status", "reason", "fingerprint")
#: Merges tried before giving up when other runs keep replacing the manifest.
ATTEMPTS = 10

Row = dict[str, str]


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
) -> str:
    """Merge a run's ``results`` into ``destination``'s manifest and write its metadata; return
    the manifest's URL.

    ``results()`` gives the run's results in order of source (as
    :meth:`spectroflow.report.ResultLog.rows` does); it is called again if another run replaced
    the manifest while this one merged.
    """
    where = location(destination)
    rows = _Rows(where, params, annot_format)
    for attempt in range(1, ATTEMPTS + 1):
        found = _found(where)
        version = found.version if found is not None else None

        def write(fh: BinaryIO, found: storage.FileInfo | None = found) -> None:
            text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
            writer.writeheader()
            with _previous_rows(where, found) as previous:
                writer.writerows(rows.of(r, old) for r, old in _paired(results(), previous))
            text.detach()  # flushed; write_with closes the file

        try:
            where.write_with(write, if_version=version, if_absent=version is None)
            break
        # Replaced (or removed) by another run since it was found: while it was read, or
        # before this run's could replace it.
        except (storage.VersionConflict, storage.ChangedWhileReadingError,
                FileNotFoundError) as exc:
            if attempt == ATTEMPTS:
                raise
            wait = random.uniform(0.05, 0.2 * attempt)
            logger.info("manifest replaced by another run while merging (%s); merging again in "
                        "%.2f s", exc, wait)
            time.sleep(wait)
    write_metadata(destination, params, audio_format, annot_format)
    logger.info("manifest updated: %s", where.url)
    return where.url


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
    """Every row of ``destination``'s manifest (empty if there is none yet)."""
    where = location(destination)
    with _previous_rows(where, _found(where)) as rows:
        return list(rows)


def _found(where: storage.Location) -> storage.FileInfo | None:
    """The manifest's size and version, or None if there is none yet."""
    try:
        return where.info()
    except FileNotFoundError:
        return None


@contextmanager
def _previous_rows(
    where: storage.Location, found: storage.FileInfo | None
) -> Iterator[Iterator[Row]]:
    """The rows of the manifest as ``found`` (none when absent), read as a stream; a manifest
    of another size by now raises :class:`~spectroflow.storage.ChangedWhileReadingError`."""
    if found is None:
        yield iter(())
        return
    with where.open_input(found.size) as fh:
        yield csv.DictReader(io.TextIOWrapper(fh, encoding="utf-8", newline=""))


def _paired(
    results: Iterable[FileResult], previous: Iterator[Row]
) -> Iterator[tuple[FileResult | None, Row | None]]:
    """Merge the run's results and the previous rows, both in order of path: each path once,
    with its result (the last, if several) and its previous row."""
    old = next(previous, None)
    last = ""
    for source, group in itertools.groupby(filter(has_row, results), lambda r: r.source):
        if source < last:  # merged out of order, rows would be lost or doubled
            raise ValueError(f"results out of order of source: {source!r} after {last!r}")
        last = source
        *_, result = group
        while old is not None and old["audio_path"] < source:
            yield None, old
            old = next(previous, None)
        same = None
        if old is not None and old["audio_path"] == source:
            same, old = old, next(previous, None)
        yield result, same
    while old is not None:
        yield None, old
        old = next(previous, None)


class _Rows:
    """Makes a result's row."""

    def __init__(self, where: storage.Location, params: SpectParams, annot_format: str | None):
        self._where, self._params = where, params
        self._fingerprint, self._annot_format = params.fingerprint(), annot_format

    def of(self, result: FileResult | None, previous: Row | None) -> Row:
        if result is None:
            assert previous is not None
            return previous
        row: Row = dict.fromkeys(COLUMNS, "")
        row.update(audio_path=result.source, status=result.status, reason=result.reason,
                   fingerprint=self._fingerprint)
        if result.annot_path:
            row.update(annot_path=result.annot_path, annot_format=self._annot_format or "")
        if result.status not in ("written", "up_to_date") or not result.output:
            return row
        row.update(status="ok", reason="", spect_path=result.output)
        if result.status == "written" and result.shape and result.samplerate:
            timebin_dur = self._params.step_size / result.samplerate
            return {**row, **_durations(result.shape[1], timebin_dur)}
        if (previous is not None and previous["status"] == "ok" and previous["duration"]
                and previous["spect_path"] == result.output
                and previous["fingerprint"] == self._fingerprint):
            return {**row, "duration": previous["duration"],
                    "timebin_dur": previous["timebin_dur"]}
        return {**row, **self._read_durations(result.output)}

    def _read_durations(self, output: str) -> dict[str, str]:
        """An output's durations from its time bins (an output the manifest did not list)."""
        try:
            times = outputs.read_times(self._where.at(output), self._params)
        except Exception as exc:  # noqa: BLE001 - the row stays, without durations
            logger.warning("the time bins of %s could not be read for the manifest: %s: %s",
                           output, type(exc).__name__, exc)
            return {}
        timebin_dur = float(np.mean(np.diff(times))) if len(times) > 1 else float("nan")
        return _durations(len(times), timebin_dur)


def _durations(n_timebins: int, timebin_dur: float) -> dict[str, str]:
    return {"duration": repr(n_timebins * timebin_dur), "timebin_dur": repr(timebin_dur)}
