"""Spectrograms as vak 1.1.0 computes them, as a pure function (arrays in, arrays out).

vak calls ``matplotlib.mlab.specgram(x, NFFT=fft_size, Fs=samplerate, noverlap=fft_size - step_size)``
after an optional order-5 Butterworth band-pass (``scipy.signal.butter`` + ``lfilter``). That is a
one-sided power spectral density of Hanning-windowed frames. mlab gets it from a complex FFT of
every frame; here a real-input FFT over blocks of frames gives the same numbers (to rounding) with
about half the work and bounded temporary memory.

Non-finite values vak would write are refused (:class:`SpectrogramError`) instead, except the one
kind that is a faithful result: ``-inf`` under ``log_spect`` without a threshold, the log of a
power that is zero (or underflows to zero) relative to the peak. See :func:`spectrogram`.

Recordings of any length: :class:`SpectrogramStream` gives the same numbers as
:func:`spectrogram` a block of frames at a time, from audio that arrives in chunks, so that
neither the audio nor the spectrogram is ever held whole:

- frames span chunk boundaries: the last ``fft_size - step_size`` samples of a block are kept
  for the next one;
- the band-pass carries ``lfilter``'s state (``zi``) from one chunk to the next, which gives the
  very numbers of one call over the whole recording (starting from zeros, as that call does);
- ``log_spect`` divides by the peak of the whole spectrogram before any block can be written.
  The peak comes from a first pass over the audio that computes the power spectrum and keeps
  only its maximum, then a second pass computes it again and writes it. Computing it twice
  costs less than the alternatives (spooling the raw spectrogram to disk and transforming it on
  a second pass, or rewriting the output in place), which write and read it once more and
  cannot rewrite what was already uploaded to an object store. A spectrogram of up to
  :data:`WHOLE_BYTES` keeps its first pass in memory instead;
- ``thresh``, the transform and the crop to ``freq_cutoffs`` apply to each value alone, so they
  apply to each block as they do to the whole array; faults (non-finite values) are counted
  block by block and reported, with the same message, once the last block is made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .params import SpectParams

#: Frames transformed at once: temporaries of about 1 MiB stay in cache (faster than larger
#: blocks) and memory stays bounded whatever the recording length.
BLOCK_FRAMES = 256
#: Largest spectrogram, in bytes of float64, held in memory whole: a larger one is computed a
#: block of frames at a time as it is written (:class:`SpectrogramStream`, its first pass under
#: ``log_spect`` not kept), and a run's preview passes it over. 64 MiB is about a minute of audio
#: at 32 kHz with vak's defaults; below it computing it whole is as fast and reads the audio once.
WHOLE_BYTES = 64 << 20


def fits_whole(shape: tuple[int, ...]) -> bool:
    """Whether a spectrogram of ``shape`` (frequency x time) is held in memory whole
    (:data:`WHOLE_BYTES`).

    Examples
    --------
    >>> fits_whole((257, 1_000)), fits_whole((257, 100_000))
    (True, False)
    """
    return 8 * shape[0] * shape[1] <= WHOLE_BYTES


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

    @property
    def shape(self) -> tuple[int, ...]:
        """``(n_freqs, n_frames)``, as :attr:`SpectrogramStream.shape`."""
        return self.data.shape


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
    _check_layout(data.size, samplerate, params)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise SpectrogramError("audio holds NaN or infinite samples")


def bandpass(data: np.ndarray, samplerate: float, low: float, high: float) -> np.ndarray:
    """Order-5 Butterworth band-pass applied with ``lfilter``, exactly as vak does."""
    from scipy.signal import lfilter

    return lfilter(*_butter(samplerate, low, high), data)


def frequencies(samplerate: float, fft_size: int) -> np.ndarray:
    """Centre frequency (Hz) of each row of the power spectrum, as ``mlab.specgram`` gives them.

    Examples
    --------
    >>> frequencies(1000.0, 8)
    array([  0., 125., 250., 375., 500.])
    """
    freqs = np.fft.fftfreq(fft_size, 1 / samplerate)[: fft_size // 2 + 1]
    if fft_size % 2 == 0:
        freqs[-1] *= -1
    return freqs


def frame_count(n_samples: int, fft_size: int, step_size: int) -> int:
    """Windows ``mlab.specgram`` takes from ``n_samples`` samples (at least one window's worth).

    Examples
    --------
    >>> frame_count(1024, 512, 64), frame_count(1087, 512, 64), frame_count(1088, 512, 64)
    (9, 9, 10)
    """
    return (n_samples - fft_size) // step_size + 1


def frame_times(
    start: int, stop: int, samplerate: float, fft_size: int, step_size: int
) -> np.ndarray:
    """Centre time (s) of frames ``start`` to ``stop`` (excluded), as ``mlab.specgram`` gives them.

    Each is ``(fft_size / 2 + i * step_size) / samplerate``, an integer number of samples divided
    once, so any slice equals the same slice of the whole recording's times.

    Examples
    --------
    >>> frame_times(0, 3, 1000.0, 512, 64)
    array([0.256, 0.32 , 0.384])
    """
    return (fft_size / 2 + step_size * np.arange(start, stop, dtype=np.float64)) / samplerate


def timebin_dur(times: np.ndarray, n_decimals_trunc: int = 5) -> float:
    """The duration of a time bin as vak 1.1.0 records it in a dataset's CSV
    (``vak.common.timebins.timebin_dur_from_vec``): the mean step of ``times``, rounded, then
    truncated, to ``n_decimals_trunc`` decimals; NaN for fewer than two times, as vak gets.

    Not ``step_size / samplerate``: 0.00145 s at 44.1 kHz (0.09 % less), and truncating after
    rounding can take one more unit off (0.00207 s at 48 kHz with a step of 100, 0.0020833...).

    Examples
    --------
    >>> timebin_dur(frame_times(0, 4, 44100.0, 512, 64)), timebin_dur(np.array([0.1]))
    (0.00145, nan)
    """
    if len(times) < 2:
        return float("nan")
    dur = np.around(np.mean(np.diff(times)), decimals=n_decimals_trunc)
    decade = 10**n_decimals_trunc
    return float(np.trunc(dur * decade) / decade)


class _Power:
    """The one-sided PSD of blocks of frames, in buffers reused from block to block (each new
    allocation would be fresh pages to fault in).

    ``columns`` selects the frequency rows computed, as a slice of all of them.
    """

    def __init__(self, samplerate: float, fft_size: int, columns: slice = slice(None)):
        n_freqs = fft_size // 2 + 1
        self.window = np.hanning(fft_size)
        scale = np.full(n_freqs, 2.0)
        scale[0] = 1.0
        if fft_size % 2 == 0:
            scale[-1] = 1.0
        scale /= samplerate * (self.window**2).sum()
        self.columns = columns
        self.scale = scale[columns]
        width = self.scale.shape[0]
        self.windowed = np.empty((BLOCK_FRAMES, fft_size))
        self.spec = np.empty((BLOCK_FRAMES, n_freqs), dtype=complex)
        self.imag2 = np.empty((BLOCK_FRAMES, width))

    def __call__(self, frames: np.ndarray, out: np.ndarray) -> None:
        """Power of ``frames`` (at most BLOCK_FRAMES rows of one window each) into ``out``."""
        k = frames.shape[0]
        np.multiply(frames, self.window, out=self.windowed[:k])
        np.fft.rfft(self.windowed[:k], axis=1, out=self.spec[:k])
        spec = self.spec[:k, self.columns]
        np.multiply(spec.real, spec.real, out=out)
        np.multiply(spec.imag, spec.imag, out=self.imag2[:k])
        out += self.imag2[:k]
        out *= self.scale


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
    n_frames = frames.shape[0]
    out = np.empty((n_frames, fft_size // 2 + 1))
    power = _Power(samplerate, fft_size)
    for start in range(0, n_frames, BLOCK_FRAMES):
        power(frames[start : start + BLOCK_FRAMES], out[start : start + BLOCK_FRAMES])
    times = np.arange(fft_size / 2, len(data) - fft_size / 2 + 1, step_size) / samplerate
    return out.T, frequencies(samplerate, fft_size), times


# An overflow or invalid operation leaves inf or NaN, which _Faults refuses with its cause:
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

    peak = None
    if params.transform_type == "log_spect":
        peak = s.max()
        _check_peak(peak)
    _transform(s, params, peak)
    rows = _kept_rows(f, params)
    s, f = s[rows], f[rows]
    faults = _Faults(params)
    faults.count(s)
    if faults:
        raise faults.error(float(np.abs(data).max()), samplerate)
    return s, f, t


class SpectrogramStream:
    """:func:`spectrogram` of audio that arrives in chunks, made a block of frames at a time.

    The numbers are :func:`spectrogram`'s (see the module's docstring for how); memory holds a
    few blocks, whatever the recording's length.

    Parameters
    ----------
    chunks : callable
        ``chunks()`` gives the recording's samples from its start, as consecutive 1-d arrays of
        any lengths; each call reads it again (``log_spect`` reads it twice).
    n_samples : int
        Samples in the recording: what ``chunks()`` gives in all.
    samplerate : float
        Sampling rate in Hz.
    params : SpectParams
        As for :func:`spectrogram`.
    audio_path : str
        The recording the spectrogram is made from, stored with it.

    Attributes
    ----------
    shape : tuple of int
        ``(n_freqs, n_frames)`` of the spectrogram (frequency x time), as :func:`spectrogram`'s.
    frequencies : numpy.ndarray
        Frequency (Hz) of each row.

    Raises
    ------
    SpectrogramError
        At once for audio these parameters cannot handle (length, rate, cutoffs: see
        :func:`check_audio`); while blocks are made for non-finite samples, silent audio under
        ``log_spect``, audio that ends early; after the last block for a spectrogram holding
        faults (as :func:`spectrogram`).

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal(32000)
    >>> params = SpectParams(freq_cutoffs=(500, 10000), thresh=6.25, transform_type="log_spect")
    >>> stream = SpectrogramStream(lambda: np.array_split(x, 7), x.size, 32000.0, params)
    >>> s = np.concatenate([block.copy() for block in stream.blocks()]).T
    >>> stream.shape, bool(np.array_equal(s, spectrogram(x, 32000.0, params)[0]))
    ((152, 493), True)
    """

    def __init__(
        self,
        chunks: Callable[[], Iterable[np.ndarray]],
        n_samples: int,
        samplerate: float,
        params: SpectParams | None = None,
        audio_path: str = "",
    ):
        self.params = params = params or SpectParams()
        _check_layout(n_samples, samplerate, params)
        self._chunks = chunks
        self.n_samples = n_samples
        self.samplerate = samplerate
        self.audio_path = audio_path
        f = frequencies(samplerate, params.fft_size)
        self._rows = _kept_rows(f, params)
        self.frequencies = f[self._rows]
        self.n_frames = frame_count(n_samples, params.fft_size, params.step_size)
        self.shape = (self.frequencies.shape[0], self.n_frames)

    def times(self, size: int = 1 << 16) -> Iterator[np.ndarray]:
        """The time (s) of each column, ``size`` at a time."""
        for start in range(0, self.n_frames, size):
            yield frame_times(start, min(start + size, self.n_frames), self.samplerate,
                              self.params.fft_size, self.params.step_size)

    def blocks(self) -> Iterator[np.ndarray]:
        """The spectrogram's columns, in order: C-contiguous float64 blocks of shape
        ``(k, n_freqs)``, each the transpose of ``k`` consecutive columns.

        A block's buffer is reused for the next one: copy a block to keep it.
        """
        faults = _Faults(self.params)
        peak = held = None
        if self.params.transform_type == "log_spect":
            peak, held = self._first_pass(faults)
            _check_peak(peak)
        if held is not None:
            for block in held:
                self._finish(block, peak, faults)
                yield block
        else:
            power = _Power(self.samplerate, self.params.fft_size, self._rows)
            out = np.empty((BLOCK_FRAMES, self.shape[0]))
            for frames in self._frames(faults):
                block = out[: frames.shape[0]]
                power(frames, block)
                self._finish(block, peak, faults)
                yield block
        if faults:
            raise faults.error(faults.amplitude, self.samplerate)

    def _first_pass(self, faults: _Faults) -> tuple[np.floating, list[np.ndarray] | None]:
        """The peak of the whole power spectrum (NaN if any value is) and, for a spectrogram held
        whole (:func:`fits_whole`), its blocks, cropped, so that a second pass need not make
        them."""
        power = _Power(self.samplerate, self.params.fft_size)
        full = np.empty((BLOCK_FRAMES, self.params.fft_size // 2 + 1))
        held: list[np.ndarray] | None = [] if fits_whole(self.shape) else None
        peak = np.float64(0.0)
        for frames in self._frames(faults):
            block = full[: frames.shape[0]]
            power(frames, block)
            if block.size:
                peak = np.maximum(peak, block.max())  # np.maximum keeps a NaN
            if held is not None:
                held.append(block[:, self._rows].copy())
        return peak, held

    @np.errstate(over="ignore", invalid="ignore")
    def _finish(self, block: np.ndarray, peak: np.floating | None, faults: _Faults) -> None:
        _transform(block, self.params, peak)
        faults.count(block)

    def _frames(self, faults: _Faults) -> Iterator[np.ndarray]:
        """Consecutive blocks of up to BLOCK_FRAMES frames (windows of ``fft_size`` samples, one
        every ``step_size``), band-passed if asked, from the audio's chunks. Each is a view of a
        buffer the next one reuses."""
        fft_size, step = self.params.fft_size, self.params.step_size
        span = (BLOCK_FRAMES - 1) * step + fft_size  # the samples of BLOCK_FRAMES frames
        advance = BLOCK_FRAMES * step
        band = _Bandpass(self.samplerate, *self.params.freq_cutoffs) if self.params.freq_cutoffs else None
        buf: np.ndarray | None = None
        filled = total = 0
        for chunk in self._chunks():
            chunk = np.asarray(chunk)
            if chunk.ndim != 1:
                raise SpectrogramError(f"expected 1-d audio, got a chunk of shape {chunk.shape}")
            if not chunk.size:
                continue
            total += chunk.size
            # min and max propagate NaN: two reductions instead of a boolean mask.
            if chunk.dtype.kind == "f" and not np.isfinite([chunk.min(), chunk.max()]).all():
                raise SpectrogramError("audio holds NaN or infinite samples")
            if band is not None:
                chunk = band(chunk)
            faults.track(chunk)
            if buf is None:
                buf = np.empty(span, dtype=chunk.dtype)
            pos = 0
            while pos < chunk.size:
                take = min(span - filled, chunk.size - pos)
                buf[filled : filled + take] = chunk[pos : pos + take]
                filled += take
                pos += take
                if filled == span:
                    yield sliding_window_view(buf, fft_size)[::step]
                    buf[: span - advance] = buf[advance:]
                    filled = span - advance
        if total != self.n_samples:
            raise SpectrogramError(f"audio ended after {total} of its {self.n_samples} samples")
        if buf is not None and filled >= fft_size:
            yield sliding_window_view(buf[:filled], fft_size)[::step]


def _check_layout(n_samples: int, samplerate: float, params: SpectParams) -> None:
    """The checks of :func:`check_audio` that need only the audio's length and rate."""
    if n_samples < params.fft_size:
        raise SpectrogramError(
            f"audio has {n_samples} samples, fewer than one FFT window (fft_size={params.fft_size})"
        )
    if samplerate <= 0:
        raise SpectrogramError(f"sampling rate must be positive, got {samplerate}")
    if params.freq_cutoffs is not None and params.freq_cutoffs[1] >= samplerate / 2:
        raise SpectrogramError(
            f"freq_cutoffs {list(params.freq_cutoffs)} reach the Nyquist frequency "
            f"{samplerate / 2:g} Hz of this {samplerate:g} Hz recording"
        )


def _check_peak(peak: np.floating) -> None:
    # S >= 0, so a peak that is not > 0 is 0 or NaN; NaN is left to _Faults.
    if peak == 0:
        raise SpectrogramError("audio is silent: log_spect (log10 of S / max S) is undefined")


def _transform(s: np.ndarray, params: SpectParams, peak: np.floating | None) -> None:
    """vak's transform and threshold, in place; ``peak`` is the whole spectrogram's maximum
    (``log_spect`` divides by it). vak tests ``if thresh:``, so a threshold of 0 means none."""
    if params.transform_type == "log_spect":
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


def _kept_rows(f: np.ndarray, params: SpectParams) -> slice:
    """The rows vak keeps (``low <= f < high``), as a slice: ``f`` increases."""
    if params.freq_cutoffs is None:
        return slice(None)
    low, high = params.freq_cutoffs
    kept = np.nonzero((f >= low) & (f < high))[0]
    return slice(int(kept[0]), int(kept[-1]) + 1) if kept.size else slice(0, 0)


def _butter(samplerate: float, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    from scipy.signal import butter  # here: 0.6 s to import, needed only with freq_cutoffs

    nyquist = 0.5 * samplerate
    return butter(5, [low / nyquist, high / nyquist], btype="band")


class _Bandpass:
    """:func:`bandpass` of consecutive chunks: ``lfilter``'s state carried from one to the next
    gives the numbers of one call over them all."""

    def __init__(self, samplerate: float, low: float, high: float):
        self.b, self.a = _butter(samplerate, low, high)
        self.state = np.zeros(max(len(self.a), len(self.b)) - 1)  # lfilter's own start: at rest

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        from scipy.signal import lfilter

        out, self.state = lfilter(self.b, self.a, chunk, zi=self.state)
        return out


class _Faults:
    """Non-finite values vak would not mean, counted block by block (see :func:`spectrogram`),
    and the largest magnitude of the audio they were computed from, to say why."""

    def __init__(self, params: SpectParams):
        self.params = params
        self.neginf_allowed = params.transform_type == "log_spect" and not params.thresh
        self.nan = self.posinf = self.neginf = self.size = 0
        self.amplitude = np.float64(0.0)

    def __bool__(self) -> bool:
        return bool(self.nan or self.posinf or self.neginf)

    def track(self, audio: np.ndarray) -> None:
        """Note the magnitude of ``audio`` (np.maximum keeps a NaN)."""
        self.amplitude = np.maximum(self.amplitude, np.maximum(abs(audio.max()), abs(audio.min())))

    def count(self, s: np.ndarray) -> None:
        self.size += s.size
        if not s.size:
            return
        # max and min propagate NaN: two reductions instead of a boolean mask as large as s.
        top = s.max()
        if not (np.isnan(top) or top == np.inf or (not self.neginf_allowed and s.min() == -np.inf)):
            return
        self.nan += int(np.isnan(s).sum())
        self.posinf += int(np.isposinf(s).sum())
        self.neginf += int(np.isneginf(s).sum())

    def error(self, amplitude: float, samplerate: float) -> SpectrogramError:
        """What went wrong, given the largest magnitude of the audio the power was taken of."""
        params = self.params
        counts = (
            f"spectrogram holds {self.nan + self.posinf + self.neginf} non-finite values of "
            f"{self.size} ({self.nan} NaN, {self.posinf} +inf, {self.neginf} -inf)"
        )
        amplitude = float(amplitude)
        if params.freq_cutoffs is not None:
            low, high = params.freq_cutoffs
            _, a = _butter(samplerate, low, high)
            radius = float(np.abs(np.roots(a)).max())
            # The input was finite (check_audio), so a non-finite output is the filter's doing.
            if radius >= 1 or not np.isfinite(amplitude):
                return SpectrogramError(
                    f"{counts}: the order-5 Butterworth band-pass [{low:g}, {high:g}] Hz is "
                    f"numerically unstable at {samplerate:g} Hz (largest pole at |z| = "
                    f"{radius:.4f}), so its output diverges; raise the low cutoff"
                )
        return SpectrogramError(
            f"{counts}: the power of samples up to {amplitude:.3g} in magnitude overflows float64 "
            f"(largest {np.finfo(np.float64).max:.3g}); scale the audio down"
        )
