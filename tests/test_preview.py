from __future__ import annotations

import contextlib
import threading

import psutil
import pytest

from conftest import REFERENCE
from spectroflow import plot, preview
from spectroflow.params import SpectParams

WRITTEN = REFERENCE / "default/birdsongrec/Bird0/3.wav.spect.npz"


def test_the_child_draws_what_the_flow_process_would_at_the_lowest_priority():
    npz = WRITTEN.read_bytes()
    params = SpectParams()
    niceness, drawn = set(), threading.Event()

    def watch() -> None:
        me = psutil.Process()
        while not drawn.wait(0.005):
            for child in me.children():
                with contextlib.suppress(psutil.Error):
                    niceness.add(child.nice())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        png = preview.Drawer(params).draw(npz)
    finally:
        drawn.set()
        watcher.join()
    assert png == plot.png_bytes(plot.figure(plot.npz_arrays(npz), params), dpi=60)
    assert 19 in niceness, f"the child ran at niceness {sorted(niceness)}"


def test_a_child_that_cannot_draw_says_why():
    failed = r"drawing the preview failed \(exit code 1\): ValueError: "
    with pytest.raises(RuntimeError, match=failed):
        preview.Drawer(SpectParams()).draw(b"not an npz")
