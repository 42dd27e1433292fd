"""Pictures of spectrogram files, with the labeled segments of an annotation over them.

Figures use matplotlib's object-oriented API with the Agg canvas (no pyplot, no display, safe in
worker threads). The small preview a flow run attaches to its summary is drawn with Pillow:
importing matplotlib in the flow process takes CPU from the workers while they compute (figures:
"Flow overhead" in docs/performance.md).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from . import annotations as annot_mod
from . import outputs, storage
from .params import SpectParams
from .spectrogram import Spectrogram

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def segments(
    annot: str | storage.Location, annot_format: str, audio_path: str | None
) -> list[tuple[float, float, str]]:
    """``(onset s, offset s, label)`` of the annotation of ``audio_path`` in an annotation file.

    A file that annotates many recordings is searched for the one whose name matches
    ``audio_path``; a file with one annotation is taken as it is.
    """
    annot_url = str(annot)
    found = annot_mod.read(annot, annot_format)
    if len(found) > 1 and audio_path is not None:
        stem = annot_mod.audio_stem(audio_path)
        found = [(a, n) for a, n in found if annot_mod.audio_stem(n or annot_url) == stem]
    if not found:
        raise annot_mod.AnnotationError(f"{annot_url} has no annotation for {audio_path}")
    first = found[0][0]
    seq = first.seq[0] if isinstance(first.seq, list) else first.seq
    if seq is None or seq.onsets_s is None:
        raise annot_mod.AnnotationError(f"{annot_url} gives no segment times in seconds")
    return [(float(on), float(off), str(lab))
            for on, off, lab in zip(seq.onsets_s, seq.offsets_s, seq.labels, strict=True)]


def _levels(s: np.ndarray) -> tuple[np.ndarray, float | None, bool]:
    """What a picture shows of spectrogram ``s``: power spectra (no log transform, all values
    >= 0) in dB, log-transformed ones as they are; the 5th percentile as the lowest level
    (quieter bins are drawn as it); and whether ``s`` is a power spectrum."""
    is_power = bool(np.all(s >= 0))
    image = 10 * np.log10(s + np.finfo(float).tiny) if is_power else s
    finite = image[np.isfinite(image)]
    vmin = float(np.percentile(finite, 5)) if finite.size else None
    return image, vmin, is_power


def figure(
    spect: Spectrogram,
    segs: list[tuple[float, float, str]] | None = None,
    title: str | None = None,
    size: tuple[float, float] | None = None,
) -> Figure:
    """A spectrogram figure: time (s) across, frequency (kHz) up, and segments above it.

    Power spectra (no log transform, all values >= 0) are drawn in dB; log-transformed ones as
    they are. ``size`` in inches; by default 2 in per second of audio, 6 to 16 in wide.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    f, t = spect.frequencies, spect.times
    image, vmin, is_power = _levels(spect.data)
    fig = Figure(figsize=size or (max(6.0, min(16.0, t[-1] * 2 + 2)), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    if segs:
        seg_ax, ax = fig.subplots(2, 1, sharex=True, height_ratios=[1, 6])
    else:
        ax = fig.subplots()
    dt = (t[1] - t[0]) if t.size > 1 else 0.0
    df = (f[1] - f[0]) if f.size > 1 else 0.0
    mesh = ax.imshow(
        image, origin="lower", aspect="auto", cmap="magma", vmin=vmin, interpolation="nearest",
        extent=(t[0] - dt / 2, t[-1] + dt / 2, (f[0] - df / 2) / 1000, (f[-1] + df / 2) / 1000),
    )
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (kHz)")
    fig.colorbar(mesh, ax=ax, label="power (dB)" if is_power else "log power", pad=0.01)
    if segs:
        for onset, offset, label in segs:
            seg_ax.axvspan(onset, offset, color="tab:cyan", alpha=0.6)
            ax.axvline(onset, color="white", lw=0.5, alpha=0.5)
            ax.axvline(offset, color="white", lw=0.5, alpha=0.5)
            seg_ax.text((onset + offset) / 2, 0.5, label, ha="center", va="center", fontsize=8)
        seg_ax.set_yticks([])
        seg_ax.set_ylabel("labels", rotation=0, ha="right", va="center")
        top = seg_ax
    else:
        top = ax
    top.set_title(title or spect.audio_path, fontsize=9, loc="left")
    return fig


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def max_pool_time(s: np.ndarray, t: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """``s`` (frequency x time) with its time bins grouped into at most ``columns``, keeping each
    group's maximum (short, loud sounds stay visible), and the mean time of each group.

    Examples
    --------
    >>> s = np.array([[0.0, 5.0, 1.0, 0.0, 2.0]])
    >>> pooled, times = max_pool_time(s, np.arange(5.0), 3)
    >>> pooled.tolist(), times.tolist()
    ([[5.0, 1.0, 2.0]], [0.5, 2.5, 4.0])
    """
    step = -(-s.shape[1] // columns)
    if step <= 1:
        return s, t
    starts = np.arange(0, s.shape[1], step)
    counts = np.diff(np.append(starts, s.shape[1]))
    return np.maximum.reduceat(s, starts, axis=1), np.add.reduceat(t, starts) / counts


#: matplotlib's magma colour map at 0, 1/4, 1/2, 3/4 and 1, interpolated to 256 levels.
_MAGMA = np.stack([
    np.interp(np.arange(256), [0, 64, 128, 191, 255], channel).round().astype(np.uint8)
    for channel in zip((0, 0, 4), (81, 18, 124), (183, 55, 121), (252, 137, 97), (252, 253, 191), strict=True)
], axis=1)


def preview_png(spect: Spectrogram, size: tuple[int, int] = (480, 180)) -> bytes:
    """A small picture of a spectrogram for a run's summary, ``size`` pixels (width, height):
    frequency up, time across, levels as in :func:`figure` in matplotlib's magma colours (from
    black, quiet, to pale yellow, loud). No axes or labels; drawn in milliseconds.

    Time bins are max-pooled to the width (short, loud sounds stay visible); frequency bins
    are resampled to the height.
    """
    pooled, _ = max_pool_time(spect.data, spect.times, size[0])
    image, vmin, _ = _levels(pooled)
    finite = np.isfinite(image)
    vmax = float(image[finite].max()) if finite.any() else None
    gray = np.zeros(image.shape, dtype=np.uint8)
    if vmin is not None and vmax is not None and vmax > vmin:
        scaled = (np.clip(image, vmin, vmax) - vmin) / (vmax - vmin)
        gray[finite] = np.rint(255 * scaled[finite]).astype(np.uint8)
    resized = Image.fromarray(gray[::-1]).resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    Image.fromarray(_MAGMA[np.asarray(resized)]).save(buf, format="png")
    return buf.getvalue()


def plot_file(
    spect_file: str | storage.Location,
    out: str | storage.Location,
    annot: str | storage.Location | None = None,
    annot_format: str | None = None,
    params: SpectParams | None = None,
) -> str:
    """Draw an output file (and its annotation's segments) to the PNG ``out``; return ``out``.

    ``params`` names the arrays to read (vak's names by default).
    """
    spect = outputs.read(storage.as_location(spect_file), params)
    segs = None
    if annot is not None:
        if annot_format is None:
            raise ValueError("annot_format is needed to read the annotation")
        segs = segments(annot, annot_format, spect.audio_path or None)
    storage.as_location(out).write_bytes(png_bytes(figure(spect, segs)))
    return str(out)
