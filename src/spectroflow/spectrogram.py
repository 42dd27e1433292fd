"""Spectrograms as vak 1.1.0 computes them, as a pure function (arrays in, arrays out).

vak calls ``matplotlib.mlab.specgram(x, NFFT=fft_size, Fs=samplerate, noverlap=fft_size - step_size)``
after an optional order-5 Butterworth band-pass (``scipy.signal.butter`` + ``lfilter``). That is a
one-sided power spectral density of Hanning-windowed frames. mlab gets it from a complex FFT of
every frame; here a real-input FFT over blocks of frames gives the same numbers (to rounding) with
about half the work and bounded temporary memory.

Non-finite values vak would write are refused (:class:`SpectrogramError`) instead, except the one
kind that is a faithful result: ``-inf`` under ``log_spect`` without a threshold, the log of a
power that is zero (or underflows to zero) relative to the peak. See :func:`spectrogram`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .params import SpectParams

#: Frames transformed at once: temporaries of about 1 MiB stay in cache (measured twice as fast as
#: 2048) and memory stays bounded whatever the recording length.
BLOCK_FRAMES = 256


@dataclass(frozen=True, eq=False)
class Spectrogram:
    """A spectrogram and its axes, as vak writes them: what an output file holds.

    ``data`` is frequency x time; ``frequencies`` (Hz) label its rows and ``times`` (s) its
    columns; ``audio_path`` is the recording it was made from. Output formats write and read
    it (:mod:`spectroflow.outputs`).
    """

    data: np.ndarray
    frequencies: np.ndarray
    times: np.ndarray
    audio_path: str = ""


class SpectrogramError(ValueError):
    """The audio cannot give a spectrogram with these parameters (a property of the file)."""


def check_audio(data: np.ndarray, samplerate: float, params: SpectParams) -> None:
    """Raise :class:`SpectrogramError` when ``data`` cannot give a meaningful spectrogram.

    vak would write one zero-padded frame for audio shorter than a window, crash the whole run on
    cutoffs above Nyquist, and write NaN for silent audio under ``log_spect``; these are reported
    per file instead.
    """
    if data.ndim != 1:
        raise SpectrogramError(f"expected 1-d audio, got an array of shape {data.shape}")
    if data.size < params.fft_size:
        raise SpectrogramError(
            f"audio has {data.size} samples, fewer than one FFT window (fft_size={params.fft_size})"
        )
    if samplerate <= 0:
        raise SpectrogramError(f"sampling rate must be positive, got {samplerate}")
    if params.freq_cutoffs is not None and params.freq_cutoffs[1] >= samplerate / 2:
        raise SpectrogramError(
            f"freq_cutoffs {list(params.freq_cutoffs)} reach the Nyquist frequency "
            f"{samplerate / 2:g} Hz of this {samplerate:g} Hz recording"
        )
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise SpectrogramError("audio holds NaN or infinite samples")


def bandpass(data: np.ndarray, samplerate: float, low: float, high: float) -> np.ndarray:
    """Order-5 Butterworth band-pass applied with ``lfilter``, exactly as vak does."""
    from scipy.signal import butter, lfilter  # here: 0.6 s to import, needed only with freq_cutoffs

    nyquist = 0.5 * samplerate
    b, a = butter(5, [low / nyquist, high / nyquist], btype="band")
    return lfilter(b, a, data)


def power_spectrum(
    data: np.ndarray, samplerate: float, fft_size: int, step_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-sided PSD of Hanning-windowed frames: ``mlab.specgram``'s ``(spectrum, freqs, t)``.

    Parameters
    ----------
    data : numpy.ndarray
        1-d audio, at least ``fft_size`` samples.
    samplerate : float
        Sampling rate in Hz.
    fft_size, step_size : int
        Window length and hop in samples (mlab's ``NFFT`` and ``NFFT - noverlap``).

    Returns
    -------
    spectrum : numpy.ndarray
        float64, shape (fft_size // 2 + 1, n_frames), power per Hz.
    freqs : numpy.ndarray
        float64 centre frequency of each row, in Hz.
    times : numpy.ndarray
        float64 centre time of each column, in seconds.

    Examples
    --------
    >>> s, f, t = power_spectrum(np.ones(1024), 1000.0, 512, 64)
    >>> s.shape, float(f[-1]), float(t[0])
    ((257, 9), 500.0, 0.256)
    """
    frames = sliding_window_view(data, fft_size)[::step_size]
    n_frames, n_freqs = frames.shape[0], fft_size // 2 + 1
    window = np.hanning(fft_size)
    scale = np.full(n_freqs, 2.0)
    scale[0] = 1.0
    if fft_size % 2 == 0:
        scale[-1] = 1.0
    scale /= samplerate * (window**2).sum()

    # Buffers reused across blocks: no per-block allocation (each would be fresh pages to fault in).
    out = np.empty((n_frames, n_freqs))
    rows = min(BLOCK_FRAMES, n_frames)
    windowed = np.empty((rows, fft_size))
    spec = np.empty((rows, n_freqs), dtype=complex)
    imag2 = np.empty((rows, n_freqs))
    for start in range(0, n_frames, BLOCK_FRAMES):
        block = frames[start : start + BLOCK_FRAMES]
        k = block.shape[0]
        np.multiply(block, window, out=windowed[:k])
        np.fft.rfft(windowed[:k], axis=1, out=spec[:k])
        dest = out[start : start + k]
        np.multiply(spec[:k].real, spec[:k].real, out=dest)
        np.multiply(spec[:k].imag, spec[:k].imag, out=imag2[:k])
        dest += imag2[:k]
        dest *= scale

    freqs = np.fft.fftfreq(fft_size, 1 / samplerate)[:n_freqs]
    if fft_size % 2 == 0:
        freqs[-1] *= -1
    times = np.arange(fft_size / 2, len(data) - fft_size / 2 + 1, step_size) / samplerate
    return out.T, freqs, times


# An overflow or invalid operation leaves inf or NaN, which _check_finite refuses with its cause:
# numpy's warnings would only repeat it without saying why.
@np.errstate(over="ignore", invalid="ignore")
def spectrogram(
    data: np.ndarray, samplerate: float, params: SpectParams | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spectrogram of ``data`` with vak's semantics: band-pass, PSD, transform, threshold, crop.

    Parameters
    ----------
    data : numpy.ndarray
        1-d audio samples (any real dtype; int16 from ``.cbin`` is used as is, as vak does).
    samplerate : float
        Sampling rate in Hz.
    params : SpectParams
        ``fft_size``, ``step_size``, ``freq_cutoffs``, ``thresh``, ``transform_type``.

    Returns
    -------
    s, f, t : numpy.ndarray
        float64 spectrogram (frequency x time), frequency bins in Hz, time bins in s.

    Raises
    ------
    SpectrogramError
        For audio these parameters cannot handle (see :func:`check_audio`), for silent audio
        under ``log_spect``, whose log of ``S / max S`` is undefined, and for a result holding a
        non-finite value that is a fault: NaN anywhere, ``+inf`` anywhere, ``-inf`` except under
        ``log_spect`` without a threshold (0 is none). There ``-inf`` is ``log10(0)`` where a
        frame's power is zero relative to the peak (digital silence): vak writes it, and so does
        this. Faults come from a band-pass that is numerically unstable at the sampling rate
        (low cutoffs) or from power that overflows float64 (samples around 1e150 and larger);
        the message says which, with the counts of NaN, ``+inf`` and ``-inf``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> s, f, t = spectrogram(rng.standard_normal(32000), 32000.0, SpectParams(
    ...     freq_cutoffs=(500, 10000), thresh=6.25, transform_type="log_spect"))
    >>> s.shape, bool(s.max() == 0.0), bool(s.min() >= -6.25)
    ((152, 493), True, True)
    """
    params = params or SpectParams()
    check_audio(data, samplerate, params)
    if params.freq_cutoffs is not None:
        data = bandpass(data, samplerate, *params.freq_cutoffs)
    s, f, t = power_spectrum(data, samplerate, params.fft_size, params.step_size)

    # vak tests `if thresh:`, so a threshold of 0 means none.
    if params.transform_type == "log_spect":
        peak = s.max()
        # S >= 0, so a peak that is not > 0 is 0 or NaN; NaN is left to _check_finite.
        if peak == 0:
            raise SpectrogramError("audio is silent: log_spect (log10 of S / max S) is undefined")
        s /= peak
        with np.errstate(divide="ignore"):
            np.log10(s, out=s)
        if params.thresh:
            np.maximum(s, -params.thresh, out=s)
    elif params.transform_type == "log_spect_plus_one":
        s += 1
        np.log10(s, out=s)
        if params.thresh:
            np.maximum(s, params.thresh, out=s)
    elif params.thresh:
        np.maximum(s, params.thresh, out=s)

    if params.freq_cutoffs is not None:
        low, high = params.freq_cutoffs
        rows = np.nonzero((f >= low) & (f < high))[0]
        s, f = s[rows], f[rows]
    _check_finite(s, data, samplerate, params)
    return s, f, t


def _check_finite(s: np.ndarray, data: np.ndarray, samplerate: float, params: SpectParams) -> None:
    """Raise :class:`SpectrogramError` when ``s`` holds a non-finite value vak would not mean.

    ``data`` is the audio the power spectrum was taken of (band-passed if it was), to say why.
    """
    if not s.size:
        return
    # max and min propagate NaN: two reductions instead of a boolean mask as large as s.
    top = s.max()
    neginf_allowed = params.transform_type == "log_spect" and not params.thresh
    if not (np.isnan(top) or top == np.inf or (not neginf_allowed and s.min() == -np.inf)):
        return
    nan, posinf, neginf = (int(check(s).sum()) for check in (np.isnan, np.isposinf, np.isneginf))
    counts = (
        f"spectrogram holds {nan + posinf + neginf} non-finite values of {s.size} "
        f"({nan} NaN, {posinf} +inf, {neginf} -inf)"
    )
    amplitude = float(np.abs(data).max())
    if params.freq_cutoffs is not None:
        from scipy.signal import butter

        low, high = params.freq_cutoffs
        nyquist = 0.5 * samplerate
        _, a = butter(5, [low / nyquist, high / nyquist], btype="band")
        radius = float(np.abs(np.roots(a)).max())
        # The input was finite (check_audio), so a non-finite output is the filter's doing.
        if radius >= 1 or not np.isfinite(amplitude):
            raise SpectrogramError(
                f"{counts}: the order-5 Butterworth band-pass [{low:g}, {high:g}] Hz is "
                f"numerically unstable at {samplerate:g} Hz (largest pole at |z| = {radius:.4f}), "
                "so its output diverges; raise the low cutoff"
            )
    raise SpectrogramError(
        f"{counts}: the power of samples up to {amplitude:.3g} in magnitude overflows float64 "
        f"(largest {np.finfo(np.float64).max:.3g}); scale the audio down"
    )
