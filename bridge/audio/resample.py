"""Stateful 8 kHz → 16 kHz upsampling with a two-phase polyphase FIR.

Why not ``audioop.ratecv``: it is linear interpolation, droops ~4 dB at 3.4 kHz
and leaves mirror images a few dB down. Why not ``soxr.ResampleStream``: it
holds ~100 ms and releases it in bursts. A polyphase FIR fed 20 ms frames has a
fixed delay of ``HALF_SPAN`` input samples (6 ms), emits every frame at once,
and carries its history across frames so there are no seams.

The filter is a Kaiser-windowed sinc cut at 3.85 kHz: flat to 3.4 kHz, mirror
images of the telephone band more than 80 dB down, and close to an ideal
(soxr VHQ) resampler on real speech, whose μ-law noise reaches 4 kHz.
"""

from __future__ import annotations

import numpy as np

#: Input samples of look-ahead (= added delay) on each side of an output sample.
HALF_SPAN = 48
CUTOFF_HZ = 3850.0
#: Kaiser β: ~80 dB stopband, the narrowest transition that keeps images of 0.3–3.4 kHz below it.
KAISER_BETA = 7.5
OUTPUT_RATE = 16000


def design_phases(
    half_span: int = HALF_SPAN, cutoff_hz: float = CUTOFF_HZ, beta: float = KAISER_BETA
) -> tuple[np.ndarray, np.ndarray]:
    """The even- and odd-output phases of a ×2 interpolation filter of 4·half_span+1 taps."""
    offsets = np.arange(-2 * half_span, 2 * half_span + 1)  # full-rate tap offsets
    band = 2 * cutoff_hz / OUTPUT_RATE
    taps = 2 * band * np.sinc(band * offsets) * np.kaiser(len(offsets), beta)
    even, odd = taps[0::2], taps[1::2]
    return even / even.sum(), odd / odd.sum()  # each phase passes DC at exactly unity


#: The filter every upsampler shares, in the float32 it convolves in (not a copy per call).
_EVEN, _ODD = design_phases()
_PHASES = (_EVEN.astype(np.float32), _ODD.astype(np.float32))


class Upsampler2x:
    """Stream 8 kHz int16 frames in, get exactly twice as many 16 kHz samples out.

    Samples come out as float32, unrounded: the mix rounds once, after summing tracks.
    float32 (24-bit mantissa) holds 16-bit audio and the 97-tap sums to well under 0.1 LSB,
    and convolves about 1.5× as fast as float64; it runs on every sample of every call.

    Output pair ``2p, 2p+1`` needs inputs up to ``p + HALF_SPAN``, so each
    ``process`` call returns the pairs whose window is complete and keeps the
    rest as history. ``flush`` feeds the missing look-ahead as silence so that,
    over a whole stream, ``len(out) == 2 * len(in)`` exactly and output sample
    ``k`` sits at time ``k / 16000`` like input sample ``k / 2``.
    """

    def __init__(
        self,
        phases: tuple[np.ndarray, np.ndarray] = _PHASES,
        *,
        history: np.ndarray | None = None,
        skip_pairs: int | None = None,
    ) -> None:
        """``history`` and ``skip_pairs`` resume a stream where another upsampler stood (the
        last ``history_samples`` inputs it saw, and its ``skip_pairs``): the replay of a block
        re-renders it from its input."""
        self._even, self._odd = (np.asarray(p, dtype=np.float32) for p in phases)
        self._half = (len(self._even) - 1) // 2
        if len(self._odd) != 2 * self._half:
            raise ValueError("phases must have 2h+1 and 2h taps")
        # The last 2h inputs; zeros stand for the silence before the call.
        if history is None:
            self._history = np.zeros(2 * self._half, dtype=np.float32)
        elif len(history) == 2 * self._half:
            self._history = np.asarray(history, dtype=np.float32)
        else:
            raise ValueError(f"history must hold {2 * self._half} samples")
        self._skip_pairs = self._half if skip_pairs is None else skip_pairs  # pairs before sample 0
        self._flushed = False

    @property
    def history_samples(self) -> int:
        """Input samples each output depends on before the newest: what ``history`` holds."""
        return 2 * self._half

    @property
    def skip_pairs(self) -> int:
        """Output pairs still to be dropped at the start (they would stand for time before the call)."""
        return self._skip_pairs

    @property
    def delay_samples(self) -> int:
        """Input samples held inside the resampler (its added latency)."""
        return self._half

    def process(self, frame: np.ndarray) -> np.ndarray:
        """Upsample int16 samples (a frame, or a block of them); returns float32 samples (2 per
        input, delayed)."""
        if self._flushed:
            raise RuntimeError("Upsampler2x used after flush()")
        n = len(frame)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        history = len(self._history)
        ext = np.empty(history + n, dtype=np.float32)
        ext[:history] = self._history
        ext[history:] = frame  # int16 → float32 as it copies
        self._history = ext[n:].copy()  # a view would keep the whole block alive between calls
        out = np.empty(2 * n, dtype=np.float32)
        out[0::2] = np.convolve(ext, self._even, mode="valid")
        out[1::2] = np.convolve(ext[1:], self._odd, mode="valid")
        if self._skip_pairs:
            skip = min(self._skip_pairs, n)
            self._skip_pairs -= skip
            out = out[2 * skip :]
        return out

    def flush(self) -> np.ndarray:
        """Emit the held tail (the last ``delay_samples`` inputs, upsampled); call once at the end."""
        if self._flushed:
            return np.zeros(0, dtype=np.float32)
        tail = self.process(np.zeros(self._half, dtype=np.int16))
        self._flushed = True
        return tail


def to_int16(samples: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """Round and saturate float samples to int16 (``in_place``: using ``samples`` as scratch)."""
    rounded = np.rint(samples, out=samples) if in_place else np.rint(samples)
    np.clip(rounded, -32768, 32767, out=rounded)
    out: np.ndarray = rounded.astype(np.int16)
    return out
