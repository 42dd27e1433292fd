"""Batching: every file in exactly one task, few tasks, small ones last."""

from __future__ import annotations

import math
import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from spectroflow.plan import MAX_BATCH, MIN_BATCH, WorkItem, batch_sizes, batches, discover
from spectroflow.request import Files, RunRequest


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


def test_listed_files_mirror_below_their_common_folder_however_spelt(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def relpaths(files, root=None):
        request = RunRequest(source=Files(files=files, root=root), destination="out")
        return [f.relpath for f in discover(request)]  # in order of relative path

    assert relpaths(["./a.wav", "b.wav"]) == ["a.wav", "b.wav"]
    assert relpaths([str(tmp_path / "d" / "a.wav"), "d/./sub//b.wav"]) == ["a.wav", "sub/b.wav"]
    assert relpaths(["./d/a.wav", "d/12:30:00.wav"], root="./d/") == ["12:30:00.wav", "a.wav"]


def _planned_peak(root, n_files: int) -> tuple[int, dict]:
    """Peak memory traced while planning a dry run over ``n_files`` recordings under ``root``,
    half of them with an up-to-date output (planning reads listings only, so empty files do), 50
    to a folder and 50 folders to a folder (a local listing holds a folder's entries at a time)."""
    from spectroflow import provenance
    from spectroflow.params import SpectParams
    from spectroflow.plan import prepare
    from spectroflow.request import Folder

    src, out = root / f"src{n_files}", root / f"out{n_files}"
    for i in range(n_files):
        folder = src / f"day{i // 2500}" / f"hour{i // 50 % 50:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rec{i:05d}.wav").touch()
    request = RunRequest(source=Folder(folder=str(src)), destination=str(out))
    for info in list(discover(request))[::2]:
        output = out / (info.relpath + ".spect.npz")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.touch()
        written = request.output.join(info.relpath + ".spect.npz").info().version
        provenance.mark(request.output, info.relpath + ".spect.npz",
                        provenance.key(info.url, info.version, "wav", SpectParams(), written))
    tracemalloc.start()
    try:
        plan = prepare(request, dry_run=True)
        counts = plan.counts()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, counts


def test_planning_holds_no_more_for_more_recordings(tmp_path):
    # More than the plan's files hold in memory at once (a chunk of 1 024 items each), so both
    # peak with full chunks.
    small, counts = _planned_peak(tmp_path, 3_000)
    assert counts == {"to_compute": 1_500, "up_to_date": 1_500}
    large, counts = _planned_peak(tmp_path, 12_000)
    assert counts == {"to_compute": 6_000, "up_to_date": 6_000}
    # A plan held in memory grows by about 1 KB a recording: 9 MB more here. What remains
    # (0.2-0.4 MB) does not grow with more recordings.
    assert large < small + 1_000_000, (small, large)
