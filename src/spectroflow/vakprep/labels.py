"""vak 1.1.0's label algorithms for frame classification, as pure functions.

Ported from ``vak.common.labels.to_map``, ``vak.common.annotation.has_unlabeled``,
``vak.transforms.frame_labels.functional.from_segments`` and
``vak.prep.frame_classification.make_splits.argsort_by_label_freq``; each keeps vak's results
exactly, quirks included (noted where they matter). vak's ``timebin_dur`` is
:func:`spectroflow.spectrogram.timebin_dur`, which the manifest records too.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The label of frames no segment covers (vak's ``DEFAULT_BACKGROUND_LABEL``).
BACKGROUND = "background"


@dataclass(frozen=True)
class Segments:
    """The labeled segments of one recording: labels, onsets and offsets in seconds."""

    labels: tuple[str, ...]
    onsets_s: np.ndarray
    offsets_s: np.ndarray


def labelmap(labelset: set[str] | frozenset[str], map_background: bool) -> dict[str, int]:
    """vak's labelmap: ``background`` first (when mapped), then the labels in sorted order.

    Examples
    --------
    >>> labelmap({"b", "a"}, map_background=True)
    {'background': 0, 'a': 1, 'b': 2}
    """
    names = [BACKGROUND] if map_background else []
    names.extend(sorted(labelset))
    return {name: i for i, name in enumerate(names)}


def has_unlabeled(segments: Segments, duration: float) -> bool:
    """Whether a recording of ``duration`` seconds has periods no segment covers: before the
    first, between two, after the last, or no segments at all."""
    if duration <= 0:
        raise ValueError(f"duration must be positive, got {duration}")
    if len(segments.labels) < 1:
        return True
    return bool(
        np.any((segments.onsets_s[1:] - segments.offsets_s[:-1]) > 0.0)
        or segments.onsets_s[0] > 0.0
        or duration - segments.offsets_s[-1] > 0.0
    )


def frame_labels(labels_int: Sequence[int], onsets_s: np.ndarray, offsets_s: np.ndarray,
                 times: np.ndarray, background: int = 0) -> np.ndarray:
    """One class per time bin: each segment covers the bins nearest its onset and its offset
    and those between; other bins are ``background``.

    Returns
    -------
    numpy.ndarray
        int8 vector, one element per entry of ``times`` (vak's dtype: at most 127 classes).
    """
    vec = np.ones((times.shape[-1],), dtype="int8") * background
    onset_inds = [np.argmin(np.abs(times - onset)) for onset in onsets_s]
    offset_inds = [np.argmin(np.abs(times - offset)) for offset in offsets_s]
    for label, onset, offset in zip(labels_int, onset_inds, offset_inds, strict=True):
        vec[onset:offset + 1] = label  # the offset's bin still belongs to the segment
    return vec


def order_by_label_frequency(labels: Sequence[Sequence[str]]) -> list[int]:
    """The order vak 1.1.0 gives the rows of a split: row ``i`` of the result is the index of
    the recording that goes there.

    vak collects recordings by their rarest labels first (``argsort_by_label_freq``), then stores
    that list as a sort key (``split_df["sort_inds"] = sort_inds``), so the order it writes is the
    inverse of that permutation; this returns the order vak writes.
    """
    counts = collections.Counter(label for seq in labels for label in seq)
    sort_inds: list[int] = []
    remaining = list(range(len(labels)))
    for label, _ in reversed(counts.most_common()):
        for ind in remaining[:]:
            if label in list(labels[ind]):
                sort_inds.append(ind)
                remaining.remove(ind)
    sort_inds.extend(remaining)
    return sorted(range(len(labels)), key=lambda i: sort_inds[i])
