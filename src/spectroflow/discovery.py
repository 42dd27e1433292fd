"""Finding a run's recordings: under a folder (as the listing arrives) or as a request lists
them, each with the path below the source that its output mirrors.

Discovery touches only listings and file metadata, never audio.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from . import names, provenance, storage
from .audio import READERS
from .request import AnnotatedFiles, Files, Folder, RunRequest

logger = names.get_logger("spectroflow.discovery")


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


class NoRecordingsError(ValueError):
    """A folder holds no recording of the run's audio format but recordings of another: most
    likely the audio format was forgotten. Nothing is written."""


def found_or_refused(files: Iterable[storage.FileInfo],
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
