"""Batching: every file in exactly one task, few tasks, small ones last."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from spectroflow.batching import MAX_BATCH, MIN_BATCH, batch_sizes, batches
from spectroflow.plan import WorkItem


@given(n=st.integers(0, 300_000), workers=st.integers(1, 64))
def test_batch_sizes_cover_every_file_largest_first(n, workers):
    sizes = batch_sizes(n, workers)
    assert sum(sizes) == n and all(size >= 1 for size in sizes)
    assert sizes == sorted(sizes, reverse=True)
    assert max(sizes, default=0) <= max(MAX_BATCH, math.ceil(n / 900))
    if n:
        # The last batch is small (under twice the smallest batch), so no worker waits long for
        # the others at the end.
        assert sizes[-1] < 2 * max(min(MIN_BATCH, n // workers), 1)


@given(n=st.integers(1, 5_000), workers=st.integers(1, 16))
def test_every_worker_gets_a_batch_when_there_are_enough_files(n, workers):
    assert len(batch_sizes(n, workers)) >= min(n, workers)


def test_far_fewer_tasks_than_fixed_batches_for_a_large_run():
    # Prefect costs about 0.2 s per task on a Dask worker: 100 000 files on two workers take
    # about 400 tasks (fixed batches of 64 would take 1 563).
    assert len(batch_sizes(100_000, 2)) < 450


@given(n=st.integers(0, 500), size=st.integers(1, 50), workers=st.integers(1, 8))
def test_batches_keep_order_and_honour_an_explicit_size(n, size, workers):
    work = [WorkItem(f"a/{i}.wav", f"o/{i}.wav.spect.npz", f"{i}.wav.spect.npz") for i in range(n)]
    fixed = batches(work, workers, size)
    assert [item for chunk in fixed for item in chunk] == work
    assert all(len(chunk) == size for chunk in fixed[:-1]) and all(0 < len(c) <= size for c in fixed)
    automatic = batches(work, workers)
    assert [item for chunk in automatic for item in chunk] == work
    assert [len(chunk) for chunk in automatic] == batch_sizes(n, workers)
