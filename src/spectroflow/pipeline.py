"""The per-file work and the single-machine pipeline (vak's function, storage-aware).

:func:`process_file` is the unit every runner maps: read, compute, write atomically, mark the
provenance, and return a :class:`~spectroflow.report.FileResult` whatever happens.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import annotations as annot_mod
from . import batching, executor, manifest, names, outputs, progress, provenance, report, storage
from . import plan as plan_mod
from .audio import AudioError, AudioStream, open_audio
from .interrupt import Stop
from .params import SpectParams
from .report import FileResult
from .request import BatchSpec, Folder, RunRequest
from .spectrogram import Spectrogram, SpectrogramError, SpectrogramStream, fits_whole, spectrogram

logger = names.get_logger("spectroflow.pipeline")


def process_file(item: plan_mod.WorkItem, spec: BatchSpec) -> FileResult:
    """Make one output; never raises for a problem of this file or of storage.

    Faults of the file (not audio, too short, silent under ``log_spect``, cutoffs above Nyquist)
    fail at once; transient storage faults were already retried by :mod:`spectroflow.storage`, so
    a storage error here means retries ran out.
    """
    start = time.perf_counter()
    stage = f"reading {item.source}"
    params = spec.spect_params
    output = spec.locate(item.output)
    try:
        with open_audio(spec.locate(item.source), spec.audio_format, item.size) as sound:
            spect = _spectrogram_of(sound, params, str(item.source))
            stage = f"writing {item.output}"
            written = outputs.write(output, spect, params)
        stage = f"recording the provenance of {item.output}"
        prov_key = provenance.key(item.source, item.version, spec.audio_format, params, written)
        provenance.mark(spec.destination, item.out_relpath, prov_key)
    except (AudioError, SpectrogramError, annot_mod.AnnotationError) as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - one file's failure must not stop the run
        retried = " (retries exhausted)" if storage.is_transient(exc) else ""
        reason = f"{stage} failed{retried}: {type(exc).__name__}: {exc}"
    else:
        channels = f"kept channel 1 of {sound.channels}" if sound.channels > 1 else ""
        notes = "; ".join(note for note in (sound.note, channels) if note)
        logger.debug("wrote %s", item.output)
        return FileResult(
            item.source,
            "written",
            notes,
            item.output,
            duration=round(sound.duration, 6),
            samplerate=sound.samplerate,
            shape=tuple(spect.shape),
            seconds=round(time.perf_counter() - start, 4),
            annot_path=item.annot_path,
        )
    try:
        if stage.startswith("recording"):  # the output is this run's, whole, not yet marked
            reason += "; the output was written and is computed again by the next run"
        elif outputs.FORMATS[params.output_format].listed_file(output).exists():
            reason += f"; an output of an earlier run remains: {item.output}"
    except Exception:  # noqa: BLE001 - the file's own failure is what matters here
        pass
    logger.warning("failed %s: %s", item.source, reason)
    return FileResult(item.source, "failed", reason, seconds=round(time.perf_counter() - start, 4),
                      annot_path=item.annot_path)


def _spectrogram_of(
    sound: AudioStream, params: SpectParams, audio_path: str
) -> Spectrogram | SpectrogramStream:
    """``sound``'s spectrogram: computed here if it is held whole (:func:`fits_whole`), else a
    stream computed as written, in memory that does not grow with the recording."""
    stream = SpectrogramStream(sound.chunks, sound.frames, sound.samplerate, params, audio_path)
    if not fits_whole(stream.shape):
        return stream
    (data,) = sound.chunks(None)
    s, f, t = spectrogram(data, sound.samplerate, params)
    return Spectrogram(s, f, t, audio_path)


def is_finished(item: plan_mod.WorkItem, spec: BatchSpec) -> bool:
    """Whether ``item``'s output is whole and marked as made from this version of its source
    with these parameters (see :func:`spectroflow.provenance.is_done`)."""
    return provenance.is_done(spec.destination, item.out_relpath, item.source, item.version,
                              spec.audio_format, spec.spect_params)


#: Items checked at once by :func:`finished_files`: two metadata requests each, mostly spent
#: waiting on the store.
FINISHED_CHECKS = 16


def finished_files(items: list[plan_mod.WorkItem], spec: BatchSpec) -> tuple[set[str], int]:
    """The sources of ``items`` that are finished (:func:`is_finished`), and how many could
    not be checked (counted as not finished: the next run sees to them)."""
    def finished(item: plan_mod.WorkItem) -> bool | None:
        try:
            return is_finished(item, spec)
        except Exception:  # noqa: BLE001 - not known to be finished
            return None

    with ThreadPoolExecutor(FINISHED_CHECKS, thread_name_prefix="spectroflow-finished") as pool:
        found = list(pool.map(finished, items))
    return {item.source for item, ok in zip(items, found, strict=True) if ok}, found.count(None)


def process_batch(
    items: Iterable[plan_mod.WorkItem],
    spec: BatchSpec,
    on_progress: Callable[[int], None] | None = None,
) -> list[FileResult]:
    """Process ``items`` in turn.

    ``on_progress(n)`` is called after each item with the number of items handled so far. The
    outputs written are logged in one record at the end, a line each (failures are logged as
    they happen): a record per file cost a flow run about 1 s in 25 on 1 350 files, sending each
    to the Prefect API and storing it there.
    """
    results = []
    for item in items:
        results.append(process_file(item, spec))
        if on_progress is not None:
            on_progress(len(results))
    written = [r.output for r in results if r.status == "written" and r.output]
    if written:
        logger.info("wrote %d files:\n%s", len(written), "\n".join(written))
    return results


def run_request(
    request: RunRequest,
    num_workers: int | None = None,
    batch_size: int | None = None,
    scheduler: str = "processes",
    stop: Stop | None = None,
) -> report.RunSummary:
    """Plan and run ``request`` on this machine, write the report and the manifest, return the
    summary. Local paths are taken against the current folder (see :meth:`RunRequest.anchored`).

    ``num_workers`` worker processes (``scheduler="processes"``, one per core by default),
    threads (``"threads"``) or this thread (``"synchronous"``) compute ``batch_size`` files at a
    time (automatic by default); see :func:`spectroflow.executor.compute`. The listeners of
    :mod:`spectroflow.progress` hear the files done as batches finish. Once ``stop`` is
    requested (see :func:`spectroflow.interrupt.stop_on_signals`), no more batches start, the
    running ones end after their current file, and the summary says how many files are not done.
    """
    stop = stop or Stop()
    request = request.anchored()
    plan = plan_mod.prepare(request)
    workers = num_workers or os.cpu_count() or 1
    size = batch_size or batching.even_batch_size(len(plan.work), workers)
    results = list(plan.decided)
    total, computed = len(plan.work), 0
    report_progress = progress.reporter()
    report_progress(0, total)

    def finished(batch: list[FileResult]) -> None:
        nonlocal computed
        computed += len(batch)
        report_progress(computed, total)

    if plan.work:
        results += executor.compute(batching.batches(plan.work, workers, size),
                                    request.batch_spec(), workers, scheduler, stop, finished)
    not_done = total - computed
    # Nothing new (a poll for new recordings): no report, the manifest rewritten only if a row
    # changes.
    nothing_new = not plan.work and all(r.status == "up_to_date" for r in results)
    url, report_error = None, None
    try:
        if not nothing_new:
            url = report.write_report(results, request.output)
    except Exception as exc:  # noqa: BLE001 - the summary must reach the caller all the same
        report_error = f"{type(exc).__name__}: {exc}"
        logger.error("the report could not be written under %s: %s", request.destination,
                     report_error)
    results.sort(key=lambda r: r.source)
    manifest_url = update_manifest(request, lambda: results, not_done == 0, nothing_new)
    summary = report.summarize(results, url, report_error, manifest_url)
    if not_done:
        summary = dataclasses.replace(summary, stopped=stop.reason, stop_signal=stop.signal,
                                      not_done=not_done)
        logger.warning("run stopped (%s) with %d of %d files not done: %s", stop.reason,
                       not_done, total, summary)
    else:
        logger.info("run finished: %s", summary)
    return summary


def update_manifest(
    request: RunRequest, results: Callable[[], Iterable[FileResult]], complete: bool,
    skip_unchanged: bool = False,
) -> str | None:
    """Merge a run's ``results()`` (in order of source) into the destination's manifest (see
    :mod:`spectroflow.manifest`); its URL, or None when it could not be written (logged: the
    outputs and the report stand).

    ``complete``: every recording the run planned has a result (it was not stopped early), so
    a run over a whole folder marks the rows of recordings no longer there ``gone``. With
    ``skip_unchanged``, a manifest that the run would not change is left as it is.
    """
    listed = None
    if complete and isinstance(request.source, Folder):
        listed = manifest.Listed(request.locate(request.source.folder).url,
                                 f".{request.audio_format}")
    try:
        return manifest.update(request.output, results, request.spect_params,
                               request.audio_format, request.annot_format, listed,
                               skip_unchanged, defer=request.defer_manifest)
    except Exception as exc:  # noqa: BLE001 - the outputs are made; say what is missing
        logger.error("the manifest under %s could not be updated: %s: %s", request.destination,
                     type(exc).__name__, exc)
        return None


def run(
    audio_format: str,
    spect_params: SpectParams | dict | None,
    output_dir: str,
    audio_dir: str | None = None,
    audio_files: list | None = None,
    annot_list: list | None = None,
    audio_annot_map: dict | None = None,
    annot_format: str | None = None,
    labelset: Any = None,
    storage_options: dict | None = None,
    *,
    num_workers: int | None = None,
    batch_size: int | None = None,
    skip_done: bool = True,
    scheduler: str = "processes",
) -> report.RunSummary:
    """Make one ``.spect.npz`` per recording, as :func:`make_spectrogram_files` does (the same
    arguments, in vak's order), and return the run's summary instead of the outputs' URLs.

    ``spectroflow run SOURCE DESTINATION`` is ``run(audio_format, spect_params, DESTINATION,
    audio_dir=SOURCE)`` (or ``audio_files=[SOURCE]`` for one file).

    Parameters
    ----------
    audio_format, spect_params, output_dir, audio_dir, audio_files, annot_list, \
audio_annot_map, annot_format, labelset, storage_options
        See :func:`make_spectrogram_files`.
    num_workers : int, optional
        Worker processes (or threads); default: one per core.
    batch_size : int, optional
        Files a worker takes at a time; default: chosen from the files and workers.
    skip_done : bool
        Leave outputs that are up to date (same source version and parameters) alone.
    scheduler : str
        ``processes`` (default), ``threads``, or ``synchronous`` (in this thread).

    Returns
    -------
    RunSummary
        Counts per status, the failures with their reasons, the outputs' URLs, and the URLs of
        the report and the manifest written under ``output_dir``.
    """
    request = RunRequest.from_vak(
        audio_format, spect_params, output_dir, audio_dir, audio_files, annot_list,
        audio_annot_map, annot_format, labelset, storage_options, skip_done=skip_done)
    return run_request(request, num_workers, batch_size, scheduler)


def make_spectrogram_files(
    audio_format: str,
    spect_params: SpectParams | dict | None,
    output_dir: str,
    audio_dir: str | None = None,
    audio_files: list | None = None,
    annot_list: list | None = None,
    audio_annot_map: dict | None = None,
    annot_format: str | None = None,
    labelset: Any = None,
    storage_options: dict | None = None,
    **run_kwargs: Any,
) -> list[str]:
    """Make one ``.spect.npz`` per audio file, as vak 1.1.0's
    ``make_spectrogram_files_from_audio_files``, on local disk or any fsspec storage.

    Parameters
    ----------
    audio_format : str
        ``wav``, ``flac``, ``ogg`` or ``cbin``.
    spect_params : SpectParams or dict
        vak's spectrogram parameters (dict keys as in ``[vak.prep.spect_params]``).
    output_dir : str
        Folder or prefix for the outputs; the source tree is mirrored below it, so recordings that
        share a name in different folders do not collide.
    audio_dir : str, optional
        Folder or prefix searched recursively for ``*.{audio_format}`` (case-insensitive).
    audio_files : list of str, optional
        Explicit recordings; their common parent folder is the mirrored root.
    annot_list : list, optional
        ``crowsetta.Annotation`` objects, annotation file URLs, or folders of them (searched
        recursively for ``annot_format``'s files), read with ``annot_format``; one file may
        annotate many recordings.
    audio_annot_map : dict, optional
        Recording URL -> ``crowsetta.Annotation`` or annotation file URL.
    annot_format : str, optional
        A crowsetta format name, needed to read annotation files.
    labelset : str or list, optional
        vak's labelset (``"abc"``, ``["en", "ab"]``, ``"range: 1-3, 5"``, ints). Recordings whose
        annotations hold other labels are skipped and logged.
    storage_options : dict, optional
        Passed to fsspec for every URL (e.g. ``{"client_kwargs": {"endpoint_url": ...}}``).

    Returns
    -------
    list of str
        Sorted URLs of the ``.spect.npz`` files, each holding ``s`` (float64 spectrogram,
        frequency x time), ``f`` (frequencies, Hz), ``t`` (times, s) and ``audio_path`` (the
        source URL), under the keys named in ``spect_params`` (``.spect.zarr`` groups of the
        same arrays with ``output_format="zarr"``). Recordings that failed are not listed; the
        report written under ``output_dir`` says why, and its manifest lists every recording.
        ``run_kwargs`` are :func:`run`'s own (``num_workers``, ...).

    Raises
    ------
    NothingWrittenError
        When recordings were found but none has an output: every one failed (the first reasons
        are in the message), as vak would have stopped on the first.
    """
    summary = run(
        audio_format, spect_params, output_dir, audio_dir, audio_files, annot_list,
        audio_annot_map, annot_format, labelset, storage_options, **run_kwargs,
    )
    if summary.failed and not summary.outputs:
        reasons = "; ".join(f"{source}: {reason}" for source, reason in summary.failed[:3])
        more = f" (and {len(summary.failed) - 3} more)" if len(summary.failed) > 3 else ""
        raise NothingWrittenError(
            f"no spectrogram file was written: {len(summary.failed)} recordings failed, e.g. "
            f"{reasons}{more}; report: {summary.report}")
    return summary.outputs or []


class NothingWrittenError(RuntimeError):
    """:func:`make_spectrogram_files` found recordings and wrote an output for none of them."""
