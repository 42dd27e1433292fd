"""Pairing a run's recordings with their annotations: the annotation files a request names
(or finds under folders) are loaded and matched to the recordings found
(:func:`spectroflow.annotations.match`); a file that cannot be read is a failed result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from . import annotations as annot_mod
from . import names, storage
from .report import FileResult
from .request import AnnotatedFiles, RunRequest

logger = names.get_logger("spectroflow.pairing")


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


def pair_annotations(
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
