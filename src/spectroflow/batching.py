"""Batching: how many files each task computes, so that few tasks still leave the workers
finishing together.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from typing import TypeVar

from .spool import Spool

T = TypeVar("T")

#: Largest automatic batch: Prefect's cost per task is a few percent of its work, and a retried
#: batch repeats at most this many files' checks.
MAX_BATCH = 256
#: Smallest automatic batch (unless there are fewer files than that per worker): a task's fixed
#: cost stays a small part of its batch's work.
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

    Small equal batches keep the end even: the local schedulers run :func:`batch_sizes`'s large
    first batches last, and a worker idles while another finishes a large last one.

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


def chunked(work: Iterable[T], sizes: list[int]) -> Iterator[list[T]]:
    """``work`` as lists of ``sizes`` items, read as they are needed.

    >>> [len(c) for c in chunked(range(5), [3, 2])]
    [3, 2]
    """
    items = iter(work)
    for size in sizes:
        yield list(itertools.islice(items, size))


def batches(work: Spool[T] | list[T], n_workers: int, batch_size: int | None = None
            ) -> list[list[T]]:
    """Split ``work`` into tasks (see :func:`sizes_for`)."""
    return list(chunked(work, sizes_for(len(work), n_workers, batch_size)))
