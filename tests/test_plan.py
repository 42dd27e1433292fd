"""Planning: a run's decisions held on disk, in memory that does not grow with the recordings."""

from __future__ import annotations

import tracemalloc

from spectroflow.discovery import discover
from spectroflow.plan import prepare
from spectroflow.request import RunRequest


def _planned_peak(root, n_files: int) -> tuple[int, dict]:
    """Peak memory traced while planning a dry run over ``n_files`` recordings under ``root``,
    half of them with an up-to-date output (planning reads listings only, so empty files do), 50
    to a folder and 50 folders to a folder (a local listing holds a folder's entries at a time)."""
    from spectroflow import provenance
    from spectroflow.params import SpectParams
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
