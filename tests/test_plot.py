"""Pictures: the small preview a flow run attaches to its summary."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from spectroflow import plot
from spectroflow.spectrogram import Spectrogram

from conftest import fresh_python


def test_preview_puts_low_frequencies_at_the_bottom_and_loud_bins_brightest():
    f = np.linspace(0, 16000, 257)
    t = np.arange(1000) * 0.002
    s = np.full((257, 1000), 1e-6)
    s[200:210, 300:310] = 1.0  # a loud high note, a third of the way in
    s[:, 900] = 1e-3
    png = plot.preview_png(Spectrogram(s, f, t), size=(480, 180))
    picture = Image.open(io.BytesIO(png))
    assert picture.size == (480, 180) and picture.mode == "RGB"
    luminance = np.asarray(picture.convert("L")).astype(int)
    row, col = np.unravel_index(luminance.argmax(), luminance.shape)
    assert abs(row - 180 * (1 - 205 / 257)) <= 4, "high frequencies are near the top"
    assert abs(col - 480 * 305 / 1000) <= 3, "time runs left to right"
    quiet, faint = luminance[150, 50], luminance[150, round(480 * 900 / 1000)]
    assert quiet < faint < luminance[row, col], "levels are ordered by power"


def test_the_preview_does_not_import_matplotlib():
    code = (
        "import sys, numpy as np\n"
        "from spectroflow import plot\n"
        "from spectroflow.spectrogram import Spectrogram\n"
        "s = np.random.default_rng(0).random((257, 100))\n"
        "png = plot.preview_png(Spectrogram(s, np.arange(257.0), np.arange(100.0)))\n"
        "assert png.startswith(b'\\x89PNG')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n"
    )
    assert fresh_python(code) == "[]"
