"""Annotations through crowsetta: load any format from any storage, match them to recordings.

Matching follows vak: an annotation belongs to the recording whose name, without its audio
extension, equals the name the annotation gives (its ``notated_path``, or failing that its own file
name without the annotation extension). When recordings in different folders share a name, the
annotation whose location is nearest the recording's folder wins.
"""

from __future__ import annotations

import os
import posixpath
import sys
import tempfile
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import storage
from .audio import READERS

# crowsetta (with pandas, pandera and scipy.io) takes 0.4 s to import; it is imported where
# annotations are read, so workers that only compute spectrograms never load it.
if TYPE_CHECKING:
    import crowsetta


class AnnotationError(ValueError):
    """An annotation file cannot be read or matched (a property of the file)."""


@dataclass(frozen=True)
class Annotated:
    """The labels an annotation gives one recording, and where they come from."""

    stem: str
    labels: frozenset[str]
    annot_url: str
    notated_url: str | None = None

    @property
    def location(self) -> str:
        return self.notated_url or self.annot_url


def formats() -> list[str]:
    """Names of the annotation formats crowsetta reads."""
    import crowsetta

    return crowsetta.formats.as_list()


def suffixes(annot_format: str) -> tuple[str, ...]:
    """File name endings of ``annot_format`` (``.not.mat`` for ``notmat``...)."""
    import crowsetta

    try:
        ext = crowsetta.formats.by_name(annot_format).ext
    except Exception as exc:
        raise ValueError(f"unknown annotation format {annot_format!r}; known: {formats()}") from exc
    return (ext,) if isinstance(ext, str) else tuple(ext)


def is_crowsetta_annotation(obj: object) -> bool:
    """Whether ``obj`` is a ``crowsetta.Annotation``; never imports crowsetta to find out (an
    object cannot be one unless crowsetta was imported).

    Examples
    --------
    >>> is_crowsetta_annotation("032312/song.cbin.not.mat")
    False
    """
    module = sys.modules.get("crowsetta")
    return module is not None and isinstance(obj, module.Annotation)


def audio_stem(name: str) -> str:
    """A file name without its audio extension and anything after it, as vak matches names.

    Examples
    --------
    >>> audio_stem("gy6or6_baseline_230312_0808.138.cbin.not.mat")
    'gy6or6_baseline_230312_0808.138'
    >>> audio_stem("Bird0/Wave/0.wav"), audio_stem("song 1.WAV.csv"), audio_stem("x.csv")
    ('0', 'song 1', 'x')
    """
    name = posixpath.basename(name.replace("\\", "/"))
    stem = name
    while True:
        root, ext = os.path.splitext(stem)
        if not ext or root == stem:
            return os.path.splitext(name)[0]
        if ext[1:].lower() in READERS:
            return root
        stem = root


def _labels(annot: crowsetta.Annotation) -> frozenset[str]:
    if getattr(annot, "seq", None) is not None:
        seqs = annot.seq if isinstance(annot.seq, list) else [annot.seq]
        return frozenset(str(label) for seq in seqs for label in seq.labels)
    return frozenset(str(bbox.label) for bbox in annot.bboxes or [])


def _remap(path, local_dir: str, remote_dir: str) -> str | None:
    """Map a path crowsetta saw in a download folder back to the annotation's own location."""
    if path is None:
        return None
    path = str(path)
    rel = os.path.relpath(os.path.abspath(path), local_dir)
    if rel.startswith(".."):
        return path
    return storage.join(remote_dir, rel.replace(os.sep, "/"))


def read(
    where: str | storage.Location, annot_format: str
) -> list[tuple[crowsetta.Annotation, str | None]]:
    """Read one annotation file (a local path, or a URL with its options) with crowsetta.

    Returns each annotation with the location of the recording it names (its ``notated_path``
    mapped back to the annotation's own storage), or None when it names none.

    Raises
    ------
    AnnotationError
        The file is missing or crowsetta cannot parse it as ``annot_format``.
    """
    import crowsetta

    location = storage.as_location(where)
    annot_url = location.url
    suffixes(annot_format)
    scribe = crowsetta.Transcriber(format=annot_format)
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            # crowsetta warns for every recording whose audio it cannot open to get a sampling
            # rate (birdsong-recognition-dataset); labels do not depend on it.
            warnings.simplefilter("ignore", UserWarning)
            if location.is_local:
                local, remote_dir, local_dir = annot_url, None, None
            else:
                local_dir, remote_dir = tmp, posixpath.dirname(annot_url)
                local = os.path.join(tmp, posixpath.basename(annot_url))
                with open(local, "wb") as fh:
                    fh.write(location.read_bytes())
            annots = scribe.from_file(local).to_annot()
    except OSError as exc:
        if not isinstance(exc, FileNotFoundError) and storage.is_transient(exc):
            raise
        raise AnnotationError(f"cannot read annotation file {annot_url}: {exc}") from exc
    except Exception as exc:
        raise AnnotationError(
            f"cannot parse {annot_url} as {annot_format!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(annots, crowsetta.Annotation):
        annots = [annots]
    out = []
    for annot in annots:
        notated = str(annot.notated_path) if annot.notated_path is not None else None
        if remote_dir is not None and local_dir is not None:
            notated = _remap(notated, local_dir, remote_dir)
        out.append((annot, notated))
    return out


def load(where: str | storage.Location, annot_format: str) -> list[Annotated]:
    """Read one annotation file into one :class:`Annotated` per recording (see :func:`read`)."""
    annot_url = str(where)
    return [
        Annotated(audio_stem(notated or annot_url), _labels(annot), annot_url, notated)
        for annot, notated in read(where, annot_format)
    ]


def from_crowsetta(annot: crowsetta.Annotation) -> Annotated:
    """Wrap an annotation object a caller loaded with crowsetta; its paths are taken against
    the current folder, where the caller loaded it (see :func:`spectroflow.storage.absolute`)."""
    notated = (storage.absolute(str(annot.notated_path)) if annot.notated_path is not None
               else None)
    annot_url = storage.absolute(str(annot.annot_path))
    return Annotated(audio_stem(notated or annot_url), _labels(annot), annot_url, notated)


def _shared_prefix(a: str, b: str) -> int:
    a_parts = posixpath.dirname(a.replace("\\", "/")).split("/")
    b_parts = posixpath.dirname(b.replace("\\", "/")).split("/")
    n = 0
    for x, y in zip(a_parts, b_parts, strict=False):
        if x != y:
            break
        n += 1
    return n


def match(
    audio_urls: list[str], annotations: list[Annotated]
) -> tuple[dict[str, Annotated | str], list[Annotated]]:
    """Pair each recording with its annotation.

    Returns
    -------
    matched : dict
        Recording URL -> its :class:`Annotated`, or a string saying why none could be chosen.
    orphans : list
        Annotations that name no recording in ``audio_urls``.
    """
    by_stem: dict[str, list[Annotated]] = {}
    for annot in annotations:
        by_stem.setdefault(annot.stem, []).append(annot)
    matched: dict[str, Annotated | str] = {}
    used: set[int] = set()
    for url in audio_urls:
        candidates = by_stem.get(audio_stem(url), [])
        if not candidates:
            matched[url] = "no annotation names this recording"
            continue
        best = max(_shared_prefix(url, c.location) for c in candidates)
        nearest = [c for c in candidates if _shared_prefix(url, c.location) == best]
        if len(nearest) > 1:
            matched[url] = "ambiguous: several annotations name it: " + ", ".join(
                sorted({c.annot_url for c in nearest})
            )
            continue
        matched[url] = nearest[0]
        used.add(id(nearest[0]))
    orphans = [a for a in annotations if id(a) not in used]
    return matched, orphans
