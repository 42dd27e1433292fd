"""Planning a run: find the recordings (:mod:`spectroflow.discovery`), pair them with their
annotations (:mod:`spectroflow.pairing`), drop finished ones, and decide what is left to do.

Planning touches only listings and annotation files, never audio, and yields small records
(:class:`WorkItem`) that cross process boundaries cheaply; :mod:`spectroflow.batching` splits
them into tasks.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from . import annotations as annot_mod
from . import names, outputs, provenance, storage
from .discovery import discover, found_or_refused
from .pairing import pair_annotations
from .report import RECORDINGS_IN_OUTCOME, FileResult, Status
from .request import AnnotatedFiles, Folder, RunRequest
from .spool import Spool

logger = names.get_logger("spectroflow.plan")


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One recording to turn into one ``.spect.npz``; ``size`` and ``version`` as listed."""

    source: str
    output: str
    out_relpath: str
    size: int | None = None
    version: str | None = None
    annot_path: str | None = None


#: Work items as planned (on disk) or as given.
Work = Spool[WorkItem] | list[WorkItem]


@dataclass
class Plan:
    """The work left to do, the outcomes already decided while planning, and the provenance
    markers of outputs that will be recomputed (none of them applies any more); each kept on
    local disk as it is planned (:class:`~spectroflow.spool.Spool`), in order of path."""

    work: Spool[WorkItem] = field(default_factory=Spool)
    decided: Spool[FileResult] = field(default_factory=Spool)
    stale_markers: Spool[str] = field(default_factory=Spool)

    def counts(self) -> dict[str, int]:
        """Recordings per outcome: ``to_compute``, and the statuses decided while planning."""
        counts = Counter(r.status for r in self.decided)
        return {"to_compute": len(self.work), **dict(sorted(counts.items()))}


def _earlier_output(
    index: provenance.DestinationIndex | provenance.LookedUp | None, info: storage.FileInfo,
    destination: storage.Location,
    suffix: str,
) -> str | None:
    """The URL of an output already under the destination for this recording, if any."""
    if index is None:
        return None
    try:
        out_rel = provenance.output_relpath(info.relpath, suffix)
    except ValueError:
        return None
    return destination.join(out_rel).url if index.has_output(out_rel) else None


#: Most named recordings whose outputs are looked up one by one (:class:`~spectroflow.provenance.LookedUp`)
#: rather than found in the destination's listings: two requests each, against two listings of
#: a thousand names a page.
LOOKED_UP = 1000


def _output_relpaths(files: list[storage.FileInfo], suffix: str) -> Iterator[str]:
    for info in files:
        if info.error is None:
            try:
                yield provenance.output_relpath(info.relpath, suffix)
            except ValueError:  # planned as failed
                continue


def plan_run(
    files: Iterable[storage.FileInfo],
    request: RunRequest,
    annotated: dict[str, annot_mod.Annotated | str] | None = None,
) -> Plan:
    """Decide, for every recording, whether to compute it, skip it, or report it.

    Parameters
    ----------
    files : iterable of FileInfo
        Recordings, with paths relative to the source root (mirrored under the destination), in
        order of those paths (as :func:`~spectroflow.discovery.discover` gives them): the
        destination's listings are read alongside (see
        :class:`~spectroflow.provenance.DestinationIndex`).
    request : RunRequest
        Its ``labelset`` skips recordings whose labels are not all in it, as in vak; with
        ``skip_done``, recordings whose output is up to date are left out (see
        :mod:`spectroflow.provenance`).
    annotated : dict, optional
        Recording URL -> its annotation, or why it has none. When given, annotations are required:
        a recording without one fails.
    """
    labels, destination = request.labelset, request.output
    output_format = outputs.FORMATS[request.spect_params.output_format]
    suffix = output_format.suffix
    index: provenance.DestinationIndex | provenance.LookedUp | None = None
    if request.skip_done and not isinstance(request.source, Folder) and isinstance(files, list) \
            and len(files) <= LOOKED_UP:
        # A few named recordings (an event's): their outputs are asked about one by one, not
        # found in listings of the whole destination.
        index = provenance.LookedUp(destination, _output_relpaths(files, suffix), output_format)
    elif request.skip_done:
        index = provenance.DestinationIndex(destination, output_format)

    def left_out(info: storage.FileInfo, status: Status, reason: str,
                 annot_path: str | None = None) -> FileResult:
        # An output an earlier run made for this recording is not this run's: say it is there,
        # or a dataset made from the destination would take it as this run's.
        earlier = _earlier_output(index, info, destination, suffix)
        if earlier:
            reason = f"{reason}; an output of an earlier run remains: {earlier}"
        logger.log(logging.INFO if status == "skipped" else logging.WARNING,
                   "%s %s: %s", status, info.url, reason)
        return FileResult(info.url, status, reason, annot_path=annot_path)

    local_destination = storage.is_local(destination.url)
    plan = Plan()
    n_files = 0
    for info in files:
        n_files += 1
        annot_path = None
        if info.error is not None:
            plan.decided.append(left_out(info, "failed", info.error))
            continue
        if annotated is not None:
            annot = annotated.get(info.url, "no annotation names this recording")
            if isinstance(annot, str):
                plan.decided.append(left_out(info, "failed", f"annotation required but {annot}"))
                continue
            annot_path = annot.annot_url
            if labels is not None and not annot.labels <= labels:
                extra = sorted(annot.labels - labels)
                reason = f"labels {extra} are not in the labelset"
                plan.decided.append(left_out(info, "skipped", reason, annot_path))
                continue
        try:
            out_rel = provenance.output_relpath(info.relpath, suffix)
        except ValueError as exc:
            logger.warning("failed %s: %s", info.url, exc)
            plan.decided.append(FileResult(info.url, "failed", str(exc), annot_path=annot_path))
            continue
        if not local_destination and names.printable(out_rel) != out_rel:
            reason = (f"its name is not UTF-8 ({names.printable(info.relpath)}), which "
                      f"{destination.url}'s keys must be: rename it (convmv -f latin1 -t utf8)")
            plan.decided.append(left_out(info, "failed", reason, annot_path))
            continue
        output = destination.join(out_rel).url
        if index is not None:
            if index.is_up_to_date(out_rel, info.url, info.version, request.audio_format,
                                   request.spect_params):
                plan.decided.append(FileResult(
                    info.url, "up_to_date", "output made from this version exists", output,
                    annot_path=annot_path,
                ))
                continue
            plan.stale_markers.extend(index.stale_markers(out_rel))
        plan.work.append(WorkItem(info.url, output, out_rel, info.size, info.version,
                                  annot_path))
    counts = plan.counts()
    logger.info(
        "discovered %d .%s recordings: %d to compute, %d up to date, %d skipped, %d failed",
        n_files, request.audio_format, counts["to_compute"], counts.get("up_to_date", 0), counts.get("skipped", 0),
        counts.get("failed", 0),
    )
    return plan


def _remove_leftovers(destination: storage.Location) -> None:
    """Remove the temporary files and unfinished uploads that killed runs left in the
    destination (see :func:`spectroflow.storage.remove_leftovers`); a failure is logged."""
    try:
        # Markers are made empty, with no temporary file: their folders, one per output and
        # most of the destination's, are left unwalked.
        removed = destination.remove_leftovers(skip=(provenance.MARKERS_DIR,))
    except Exception as exc:  # noqa: BLE001 - tidying up must not stop the run
        logger.warning("what killed runs left under %s was not removed: %s: %s", destination,
                       type(exc).__name__, exc)
        return
    if removed:
        logger.info("removed %d temporary files or unfinished uploads that killed runs left "
                    "(unchanged for %.0f min), such as %s", len(removed),
                    storage.LEFTOVER_AGE / 60, removed[0])


@dataclass
class Preview:
    """What a plan would do: recordings per outcome (``to_compute`` and those decided while
    planning), and the first recordings to compute, to skip and to fail (with the reasons)."""

    counts: dict[str, int]
    to_compute: list[str]
    skipped: list[tuple[str, str]]
    failed: list[tuple[str, str]]


def preview(plan: Plan, listed: int = RECORDINGS_IN_OUTCOME) -> Preview:
    """``plan``'s :class:`Preview`, ``listed`` recordings at most of each kind; names printable."""
    def first(status: str) -> list[tuple[str, str]]:
        return [(names.printable(r.source), names.printable(r.reason))
                for r in itertools.islice((r for r in plan.decided if r.status == status), listed)]

    return Preview(plan.counts(),
                   [names.printable(item.source) for item in itertools.islice(plan.work, listed)],
                   first("skipped"), first("failed"))


def prepare(request: RunRequest, dry_run: bool = False) -> Plan:
    """Find the recordings, check the destination, read annotations, and plan the run.

    A folder with no recording of the run's audio format but recordings of another raises
    :class:`~spectroflow.discovery.NoRecordingsError` before anything is written.

    The temporary files and unfinished uploads that killed runs left in the destination are
    removed once unchanged for an hour (:data:`spectroflow.storage.LEFTOVER_AGE`), and markers of
    outputs that will be recomputed too (none of them applies any more). A ``dry_run`` plans and
    changes nothing: neither the destination's check (a probe file) nor these removals.

    Recordings found under a folder are planned as the listing arrives, the decisions kept on
    local disk; runs filtered by annotations hold the recordings' names and their annotations.
    """
    files = found_or_refused(discover(request), request)
    if not dry_run:
        request.output.check_writable()
        if isinstance(request.source, Folder):  # a run over named files walks no tree
            _remove_leftovers(request.output)
    if request.annotations is not None or isinstance(request.source, AnnotatedFiles):
        files = list(files)
    annotated, decided = pair_annotations(request, files)
    plan = plan_run(files, request, annotated)
    if decided:  # the annotation files' outcomes come first
        plan.decided = Spool(itertools.chain(decided, plan.decided))
    if plan.stale_markers and not dry_run:
        logger.info("removing %d provenance markers that no longer apply",
                    len(plan.stale_markers))
        for chunk in plan.stale_markers.chunks():
            request.output.remove_many(chunk)
        plan.stale_markers = Spool()
    return plan
