"""Planning a run: find the recordings, filter them by annotations, drop finished ones, batch.

Planning touches only listings and annotation files, never audio, and yields small records
(:class:`WorkItem`) that cross process boundaries cheaply.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import annotations as annot_mod
from . import names, outputs, provenance, storage
from .audio import READERS
from .report import FileResult, Status
from .request import AnnotatedFiles, Files, Folder, RunRequest
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


def _tree_path(url: str) -> str:
    """``url`` spelt as its place in a tree: a local path absolute, without ``.`` or empty parts
    (so ``./a.wav`` and ``b.wav`` share a folder); a URL as written, its keys being literal.

    ``..`` is kept: through a link, ``link/..`` is not the folder that holds ``link``. Below the
    mirrored root it makes the output path unsafe, which fails that file (see
    :func:`spectroflow.storage.safe_relpath`).

    Examples
    --------
    >>> _tree_path("./a.wav") == os.path.join(os.getcwd(), "a.wav").replace("\\\\", "/")
    True
    >>> _tree_path("/data//x/./12:30:00.wav"), _tree_path("s3://b/./a.wav")
    ('/data/x/12:30:00.wav', 's3://b/./a.wav')
    """
    if "://" in url:
        return url.replace("\\", "/")
    path = os.path.expanduser(url)
    if not os.path.isabs(path):
        path = os.path.join(os.getcwd(), path)
    head, *parts = path.replace("\\", "/").split("/")
    return "/".join([head, *(p for p in parts if p not in ("", "."))])


def _common_root(urls: list[str]) -> str:
    """The deepest folder holding every URL (as :func:`_tree_path` spells it), so outputs mirror
    the inputs below it.

    Examples
    --------
    >>> _common_root(["/data/./day1/a.wav", "/data/day2/b.wav"])
    '/data'
    >>> _common_root(["s3://b/rec/a.wav", "s3://b/rec/x/b.wav"])
    's3://b/rec'
    """
    prefixes = {u.split("://", 1)[0] if "://" in u else "" for u in urls}
    if len(prefixes) > 1:
        raise ValueError(f"audio files must share one storage backend, got {sorted(prefixes)}")
    return common_folder([_tree_path(u) for u in urls])


def common_folder(paths: list[str]) -> str:
    """The deepest folder that holds every one of ``paths``, as they are spelt (``""`` when they
    share none).

    Examples
    --------
    >>> common_folder(["s3://lab/audio/a/1.wav", "s3://lab/audio/b/2.wav"])
    's3://lab/audio'
    >>> common_folder(["/data/bird/1.wav"]), common_folder(["a.wav", "b/c.wav"])
    ('/data/bird', '')
    """
    common: list[str] = []
    for parts in zip(*(path.split("/")[:-1] for path in paths), strict=False):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return "/".join(common)


def discover(request: RunRequest) -> Iterable[storage.FileInfo]:
    """The recordings of ``request``'s source, in order of their paths below it: found under its
    folder (recursively, extension case-insensitive; as the listing arrives) or as listed.

    Listed files are mirrored below their ``root`` when given, else below their deepest common
    folder; a listed file outside the root, or missing, comes back with its ``error`` (it fails
    alone).
    """
    source, audio_format = request.source, request.audio_format
    if isinstance(source, Folder):
        folder = request.locate(source.folder)
        if audio_format == "cbin":
            return _with_rec_versions(folder.list_files((".cbin", ".rec")), request.locate)
        return folder.iter_files((f".{audio_format}",))
    return sorted(_listed(source, request), key=lambda f: f.relpath)


def _listed(source: Files | AnnotatedFiles, request: RunRequest) -> list[storage.FileInfo]:
    """The files a request lists (see :func:`discover`), in the order given."""
    audio_format = request.audio_format
    if isinstance(source, Files):
        urls, root = source.files, source.root
    else:
        urls, root = list(source.audio_annot_map), None
    if not urls:
        return []
    trees = [_tree_path(u) for u in urls]
    root = _common_root(urls) if root is None else _tree_path(str(root)).rstrip("/")
    named, seen = [], set()
    for url, tree in zip(urls, trees, strict=True):
        if tree in seen:  # one recording named twice (a.wav, ./a.wav) makes one output, once
            logger.info("%s is listed more than once: computed once", url)
            continue
        seen.add(tree)
        named.append((url, tree))

    def info(named: tuple[str, str]) -> storage.FileInfo:
        url, tree = named
        if not tree.startswith(root + "/"):
            return storage.FileInfo(url, url, error=f"not under the source {root}")
        rel = tree[len(root) :].lstrip("/")
        try:
            found = request.locate(url).info()
        except FileNotFoundError:
            return storage.FileInfo(url, rel, error="no such file")
        return storage.FileInfo(url, rel, found.size, found.version)

    # One request a file: a few in flight at once (the files an event names, in a bucket).
    with ThreadPoolExecutor(provenance.LOOKUPS_IN_FLIGHT, thread_name_prefix="info") as pool:
        infos = list(pool.map(info, named))
    return _with_rec_versions(infos, request.locate) if audio_format == "cbin" else infos


def _with_rec_versions(
    found: list[storage.FileInfo], locate: Callable[[str], storage.Location] = storage.as_location
) -> list[storage.FileInfo]:
    """The ``.cbin`` recordings of ``found``, each versioned with the ``.rec`` beside it too: the
    ``.rec`` holds the sampling rate, so a corrected ``.rec`` changes the output. ``found`` may
    hold the ``.rec`` files of a listing; a recording without one is asked for it.

    Examples
    --------
    >>> found = [storage.FileInfo("d/a.cbin", "a.cbin", 10, "v1"),
    ...          storage.FileInfo("d/a.rec", "a.rec", 2, "r1")]
    >>> [(f.url, f.version) for f in _with_rec_versions(found)]
    [('d/a.cbin', 'v1|rec r1')]
    """
    recs = {f.url[: -len(".rec")].lower(): f for f in found if f.url.lower().endswith(".rec")}
    out = []
    for info in found:
        if not info.url.lower().endswith(".cbin"):
            continue
        rec = recs.get(info.url[: -len(".cbin")].lower())
        if rec is None and info.error is None:
            try:
                rec = locate(info.url[: -len(".cbin")] + ".rec").info()
            except FileNotFoundError:  # reading it fails, and says so
                pass
        if rec is not None and info.version is not None and rec.version is not None:
            info = dataclasses.replace(info, version=f"{info.version}|rec {rec.version}")
        out.append(info)
    return out


def annotation_files(location: storage.Location, annot_format: str) -> list[storage.Location]:
    """Annotation files at ``location``: the file itself, or every match under a folder."""
    if location.kind() == "folder":
        return [location.at(f.url) for f in location.list_files(annot_mod.suffixes(annot_format))]
    return [location]


def load_annotations(
    annot_list: list, annot_format: str | None, locate: Callable[[str], storage.Location]
) -> tuple[list[annot_mod.Annotated], list[FileResult]]:
    """Annotations from crowsetta objects or annotation files; unreadable files become results.

    ``locate`` gives the location of an annotation file's URL (with the run's storage options).
    """
    loaded: list[annot_mod.Annotated] = []
    failures: list[FileResult] = []
    for item in annot_list:
        if annot_mod.is_crowsetta_annotation(item):
            loaded.append(annot_mod.from_crowsetta(item))
            continue
        where = item if isinstance(item, storage.Location) else locate(str(item))
        if annot_format is None:  # a request's validator rules this out
            raise ValueError("annot_format is required to read annotation files")
        try:
            loaded.extend(annot_mod.load(where, annot_format))
        except annot_mod.AnnotationError as exc:
            logger.warning("failed %s: %s", where, exc)
            # An annotation file's own result: its source is the annotation (no recording's row).
            failures.append(FileResult(str(where), "failed", str(exc), annot_path=str(where)))
    return loaded, failures


#: Largest automatic batch: Prefect costs about 0.2 s of CPU per task (flow process, API server
#: and worker together), a few percent of 256 files' work; a retried batch repeats at most this
#: many files' checks.
MAX_BATCH = 256
#: Smallest automatic batch (unless there are fewer files than that per worker). A task costs
#: about 0.13 s of the worker's time and 0.08 s of CPU elsewhere; 24 files (about 0.9 s of work)
#: keep that to a fifth of the batch, where batches of 8 (0.3 s of work) spent nearly as long on
#: it as on their files.
MIN_BATCH = 24


def batch_sizes(
    n_files: int, n_workers: int, max_tasks: int = 900, cap: int = MAX_BATCH, floor: int = MIN_BATCH
) -> list[int]:
    """Files per task, largest first, so that few tasks still leave the workers finishing together.

    Factoring (Flynn Hummel, Schonberg and Flynn, 1992): every round gives each worker a batch
    of half its fair share of the files left, at most ``cap``. Early batches are large (little
    per-task overhead); the last ones are small, so no worker idles long at the end. Once fewer
    files are left than two more rounds of ``floor`` would take, they are split evenly into one
    last round, at most one batch per worker, each under twice ``floor``. ``cap`` grows when
    needed to keep the number of tasks under ``max_tasks``.

    Examples
    --------
    >>> batch_sizes(1350, 2)
    [256, 256, 210, 210, 105, 105, 52, 52, 26, 26, 26, 26]
    >>> batch_sizes(6, 2), batch_sizes(26, 2), batch_sizes(0, 2), batch_sizes(5, 4)
    ([3, 3], [13, 13], [], [2, 1, 1, 1])
    >>> sizes = batch_sizes(100_000, 2)
    >>> len(sizes), sum(sizes), max(sizes)
    (396, 100000, 256)
    """
    workers = max(n_workers, 1)
    cap = max(cap, math.ceil(n_files / max_tasks))
    floor = max(min(floor, n_files // workers), 1)
    sizes: list[int] = []
    left = n_files
    while left >= 2 * workers * floor:
        size = min(cap, math.ceil(left / (2 * workers)))
        sizes += [size] * workers
        left -= size * workers
    if left:
        last = min(workers, math.ceil(left / floor))
        even, extra = divmod(left, last)
        sizes += [even + 1] * extra + [even] * (last - extra)
    return sizes


def even_batch_size(n_files: int, n_workers: int, max_tasks: int = 900, cap: int = 16) -> int:
    """Files per task for schedulers whose cost per task is negligible (dask's local ones):
    about four equal batches per worker, at most ``cap`` files, fewer than ``max_tasks`` tasks.

    Measured on 1 350 files and two processes: 23-26 s with these, 28-29 s with
    :func:`batch_sizes`, whose large first batches the local scheduler runs last. Small batches
    keep the end even: with batches of 64, one worker sat idle for up to 2.5 s while the other
    finished the last one (16 instead of 64: 22.5-23.8 s against 23.9-24.5 s, three rounds).

    Examples
    --------
    >>> even_batch_size(26, 2), even_batch_size(1350, 2), even_batch_size(100_000, 2)
    (4, 16, 112)
    """
    size = min(max(math.ceil(n_files / (4 * max(n_workers, 1))), 1), cap)
    return max(size, math.ceil(n_files / max_tasks))


def sizes_for(n_files: int, n_workers: int, batch_size: int | None = None) -> list[int]:
    """Files per task: ``batch_size`` each, or :func:`batch_sizes` for ``n_workers``."""
    if batch_size is None:
        return batch_sizes(n_files, n_workers)
    full, rest = divmod(n_files, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def chunked(work: Iterable[WorkItem], sizes: list[int]) -> Iterator[list[WorkItem]]:
    """``work`` as lists of ``sizes`` items, read as they are needed.

    >>> [len(c) for c in chunked(range(5), [3, 2])]
    [3, 2]
    """
    items = iter(work)
    for size in sizes:
        yield list(itertools.islice(items, size))


def batches(
    work: Work, n_workers: int, batch_size: int | None = None
) -> list[list[WorkItem]]:
    """Split ``work`` into tasks (see :func:`sizes_for`)."""
    return list(chunked(work, sizes_for(len(work), n_workers, batch_size)))


def _earlier_output(
    finished: provenance.Finished | provenance.LookedUp | None, info: storage.FileInfo,
    destination: storage.Location,
    suffix: str,
) -> str | None:
    """The URL of an output already under the destination for this recording, if any."""
    if finished is None:
        return None
    try:
        out_rel = provenance.output_relpath(info.relpath, suffix)
    except ValueError:
        return None
    return destination.join(out_rel).url if finished.has_output(out_rel) else None


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
        order of those paths (as :func:`discover` gives them): the destination's listings are
        read alongside (see :class:`~spectroflow.provenance.Finished`).
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
    finished: provenance.Finished | provenance.LookedUp | None = None
    if request.skip_done and not isinstance(request.source, Folder) and isinstance(files, list) \
            and len(files) <= LOOKED_UP:
        # A few named recordings (an event's): their outputs are asked about one by one, not
        # found in listings of the whole destination.
        finished = provenance.LookedUp(destination, _output_relpaths(files, suffix),
                                       output_format)
    elif request.skip_done:
        finished = provenance.Finished(destination, output_format)

    def left_out(info: storage.FileInfo, status: Status, reason: str,
                 annot_path: str | None = None) -> FileResult:
        # An output an earlier run made for this recording is not this run's: say it is there,
        # or a dataset made from the destination would take it as this run's.
        earlier = _earlier_output(finished, info, destination, suffix)
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
        if finished is not None:
            if finished.is_up_to_date(out_rel, info.url, info.version, request.audio_format,
                                      request.spect_params):
                plan.decided.append(FileResult(
                    info.url, "up_to_date", "output made from this version exists", output,
                    annot_path=annot_path,
                ))
                continue
            plan.stale_markers.extend(finished.stale_markers(out_rel))
        plan.work.append(WorkItem(info.url, output, out_rel, info.size, info.version,
                                  annot_path))
    counts = plan.counts()
    logger.info(
        "discovered %d .%s recordings: %d to compute, %d up to date, %d skipped, %d failed",
        n_files, request.audio_format, counts["to_compute"], counts.get("up_to_date", 0), counts.get("skipped", 0),
        counts.get("failed", 0),
    )
    return plan


def _with_folders_searched(annot_list: list, request: RunRequest) -> list:
    """``annot_list`` with each folder in it replaced by the annotation files found under it
    (:func:`annotation_files`). Only names without the format's suffix are asked about."""
    if request.annot_format is None:  # crowsetta.Annotation objects
        return annot_list
    suffixes = tuple(annot_mod.suffixes(request.annot_format))
    found: list = []
    for entry in annot_list:
        if (isinstance(entry, str) and not entry.lower().endswith(suffixes)
                and request.locate(entry).kind() == "folder"):
            found += annotation_files(request.locate(entry), request.annot_format)
        else:
            found.append(entry)
    return found


def _annotations(
    request: RunRequest, files: Iterable[storage.FileInfo]
) -> tuple[dict[str, annot_mod.Annotated | str] | None, list[FileResult]]:
    """Each recording's annotation (or why it has none), and the annotation files that failed;
    None when the run filters nothing by annotations."""
    source = request.source
    if isinstance(source, AnnotatedFiles):
        pairs = list(source.audio_annot_map.items())
        loaded, decided = load_annotations([v for _, v in pairs], request.annot_format,
                                           request.locate)
        annotated: dict[str, annot_mod.Annotated | str] = {}
        for url, value in pairs:
            if annot_mod.is_crowsetta_annotation(value):
                annotated[url] = annot_mod.from_crowsetta(value)
            else:
                found = [a for a in loaded if a.annot_url == str(value)]
                matched, _ = annot_mod.match([url], found)
                annotated[url] = matched[url]
        return annotated, decided
    if request.annotations is None:
        return None, []
    if isinstance(request.annotations, str):
        assert request.annot_format is not None  # the request's validator sees to it
        annot_list: list = annotation_files(request.locate(request.annotations),
                                            request.annot_format)
    else:
        annot_list = _with_folders_searched(request.annotations, request)
    loaded, decided = load_annotations(annot_list, request.annot_format, request.locate)
    matched, orphans = annot_mod.match([f.url for f in files], loaded)
    for orphan in orphans:
        name = orphan.notated_url or orphan.stem
        decided.append(FileResult(
            name, "missing_audio", f"{orphan.annot_url} annotates {name}, which was not found"
        ))
    if orphans:
        logger.warning("%d annotations name recordings that were not found", len(orphans))
    return dict(matched), decided


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


class NoRecordingsError(ValueError):
    """A folder holds no recording of the run's audio format but recordings of another: most
    likely the audio format was forgotten. Nothing is written."""


def _found_or_refused(files: Iterable[storage.FileInfo],
                      request: RunRequest) -> Iterable[storage.FileInfo]:
    """``files``; when a folder has none, :class:`NoRecordingsError` if it has recordings of
    other formats."""
    if not isinstance(request.source, Folder):
        return files  # a list: files named one by one
    found = iter(files)
    first = next(found, None)
    if first is not None:
        return itertools.chain([first], found)
    folder = request.locate(request.source.folder)
    others = Counter(
        info.url.rsplit(".", 1)[-1].lower()
        for info in folder.iter_files(tuple(f".{f}" for f in READERS if f != request.audio_format)))
    if others:
        likely, _ = others.most_common(1)[0]
        found_text = ", ".join(f"{n} .{suffix} files" for suffix, n in others.most_common())
        raise NoRecordingsError(
            f"no .{request.audio_format} recordings under {folder.url}, but {found_text}: "
            f"is the audio format {likely}? (--audio-format {likely})")
    return ()


@dataclass
class Preview:
    """What a plan would do: recordings per outcome (``to_compute`` and those decided while
    planning), and the first recordings to compute, to skip and to fail (with the reasons)."""

    counts: dict[str, int]
    to_compute: list[str]
    skipped: list[tuple[str, str]]
    failed: list[tuple[str, str]]


def preview(plan: Plan, listed: int = 100) -> Preview:
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
    :class:`NoRecordingsError` before anything is written.

    The temporary files and unfinished uploads that killed runs left in the destination are
    removed once unchanged for an hour (:data:`spectroflow.storage.LEFTOVER_AGE`), and markers of
    outputs that will be recomputed too (none of them applies any more). A ``dry_run`` plans and
    changes nothing: neither the destination's check (a probe file) nor these removals.

    Recordings found under a folder are planned as the listing arrives, the decisions kept on
    local disk; runs filtered by annotations hold the recordings' names and their annotations.
    """
    with storage.backend_retries_logged():
        files = _found_or_refused(discover(request), request)
        if not dry_run:
            request.output.check_writable()
            if isinstance(request.source, Folder):  # a run over named files walks no tree
                _remove_leftovers(request.output)
        if request.annotations is not None or isinstance(request.source, AnnotatedFiles):
            files = list(files)
        annotated, decided = _annotations(request, files)
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
