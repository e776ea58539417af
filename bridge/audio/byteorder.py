"""Which byte order an L16 stream really uses, judged from its audio.

Vobiz does not settle it: its own guide says inbound L16 is big-endian (as RFC 3551
has it), its docs pages say nothing. Reading 16-bit samples in the wrong order swaps
each sample's high and low byte, and that leaves a tell in any real recording:

- **Smoothness.** Speech has most of its energy at low frequencies, so neighbouring
  samples are alike: lag-1 autocorrelation is 0.65-0.85 at 8 kHz and 0.88-0.95 at
  16 kHz on the sample call. Swapped, the sample's noisy low byte becomes the high byte
  and the signal turns into white noise (lag-1 autocorrelation -0.03 to 0.1).
- **Level.** The wrong order's level is set by the true low byte, which is roughly
  uniform, so it sounds like noise at about -5 dBFS RMS whatever the real level; the
  right order is speech at a sane level. The quieter reading is the right one.

Smoothness decides alone when it is clear. It fails for very quiet audio (samples
within +-128 have a sign-extension high byte, so swapping only scales them by 256 and
both readings are smooth); there the level, 256 times apart, decides. When the two
contradict (possible with heavily companded audio, whose low bytes are not uniform)
the detector keeps listening rather than guess.

One detector can serve a whole stream: the statistics are summed per frame, so
interleaving the tracks is harmless, and one talking party then settles it for the
other (a callee's track is silent while it rings).

The caller holds every frame until the decision, so the wait is bounded whatever the
frames are: every byte fed counts as time (a frame too short to judge included), and a
stream of many tiny frames is cut off by their count. Either bound ends in the documented
order, "big".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bridge.audio.codec import l16_to_pcm16

ORDERS = ("big", "little")
#: The vendor's documented order, used when the audio never says otherwise.
DEFAULT_ORDER = "big"
#: A frame whose quieter reading varies less than this (AC RMS, about -60 dBFS) is silence:
#: idle codes, line noise, A-law's constant +-8. It says nothing about speech shape.
SILENCE_RMS = 32.0
#: Lag-1 autocorrelation gap that decides on its own. Measured at the decision, starting
#: anywhere in the sample call (8/16 kHz; linear, μ-law, A-law; 0 to -30 dB): at least
#: 0.54 at 8 kHz and 0.80 at 16 kHz at full level, 0.40 at -30 dB; for speech that
#: stays within +-128 (around -50 dBFS) it is ~0 and the level decides.
SMOOTHNESS_MARGIN = 0.25
#: The winner must look like speech, not merely less like noise than the other reading.
MIN_SPEECH_LAG1 = 0.4
#: Level gap (factor of RMS, 24 dB) that decides when smoothness cannot (very quiet audio).
LEVEL_RATIO = 16.0
#: Frames fed before it settles on the documented order whatever they held: each one is
#: held by the caller (a few hundred bytes of overhead apiece, ~0.5 MB in all). The audio
#: bound (``give_up_s``, 10 s) comes first for any frame of 5 ms or more, both tracks summed.
MAX_HELD_FRAMES = 2000


def decode_l16(payload: bytes, order: str) -> np.ndarray:
    """16-bit linear PCM in ``order`` ("big" or "little") as int16 samples."""
    if order not in ORDERS:
        raise ValueError(f"byte order must be 'big' or 'little', got {order!r}")
    return l16_to_pcm16(payload, order)


class _Stats:
    """Running sums for one reading of the bytes: energy, lag-1 product (mean removed per frame)."""

    __slots__ = ("energy", "lag1", "count")

    def __init__(self) -> None:
        self.energy = 0.0
        self.lag1 = 0.0
        self.count = 0

    def add(self, centred: np.ndarray) -> None:
        self.energy += float(np.dot(centred, centred))
        self.lag1 += float(np.dot(centred[1:], centred[:-1]))
        self.count += len(centred)

    @property
    def autocorrelation(self) -> float:
        return self.lag1 / self.energy if self.energy > 0 else 0.0

    @property
    def rms(self) -> float:
        return math.sqrt(self.energy / self.count) if self.count else 0.0


class ByteOrderDetector:
    """Feed L16 payloads as they arrive; after about ``voiced_s`` of non-silent audio it says
    "big" or "little". Pure: no I/O, no clock; time is counted in samples fed.

    ``decision`` is None until decided, then fixed. ``evidence`` holds the figures behind it
    (for one log line). With no usable audio after ``give_up_s`` of audio fed (silent frames
    included, all tracks summed), it settles on the vendor's documented order, "big", and
    says so. The bound is generous because silence decodes the same either way: deciding
    blind is only needed to stop waiting, and the sample call's patient starts at 2.7 s.
    It settles the same way after ``max_frames`` frames, however short.

    ``held_bytes`` and ``held_frames`` count what was fed while undecided: what the caller
    holds. They stay under ``2 * give_up_samples + max_frames`` bytes plus the last frame,
    and ``max_frames`` frames.
    """

    def __init__(
        self,
        sample_rate: int,
        *,
        voiced_s: float = 1.0,
        give_up_s: float = 10.0,
        max_frames: int = MAX_HELD_FRAMES,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        if max_frames <= 0:
            raise ValueError(f"max_frames must be > 0, got {max_frames}")
        self.sample_rate = sample_rate
        self.voiced_samples_needed = max(1, round(voiced_s * sample_rate))
        self.give_up_samples = max(self.voiced_samples_needed, round(give_up_s * sample_rate))
        self.max_frames = max_frames
        self.decision: str | None = None
        self.evidence: dict[str, Any] = {}
        self.held_bytes = 0
        self.held_frames = 0
        self._stats = {order: _Stats() for order in ORDERS}
        self._fed_samples = 0
        self._voiced_samples = 0
        self._silent_frames = 0
        self._next_check = self.voiced_samples_needed

    def feed(self, payload: bytes) -> str | None:
        """Take one frame's payload; return the decision once made (and on every call after)."""
        if self.decision is not None:
            return self.decision
        self.held_frames += 1
        self.held_bytes += len(payload)
        usable = payload[: len(payload) - len(payload) % 2]
        self._fed_samples += len(usable) // 2  # time passes for a frame too short to judge too
        if len(usable) >= 4:
            readings = {order: l16_to_pcm16(usable, order).astype(np.float64) for order in ORDERS}
            centred = {order: x - x.mean() for order, x in readings.items()}
            quietest = min(float(np.sqrt(np.mean(c * c))) for c in centred.values())
            if quietest < SILENCE_RMS:
                self._silent_frames += 1
            else:
                self._voiced_samples += len(usable) // 2
                for order, c in centred.items():
                    self._stats[order].add(c)
        if self._voiced_samples >= self._next_check:
            verdict = self._judge()
            if verdict is not None:
                return self._decide(*verdict)
            # Not conclusive yet: look again after another half of the required audio.
            self._next_check = self._voiced_samples + max(1, self.voiced_samples_needed // 2)
        if self._fed_samples >= self.give_up_samples:
            reason = "no_speech" if self._voiced_samples == 0 else "inconclusive"
            return self._decide(DEFAULT_ORDER, f"fallback_{reason}")
        if self.held_frames >= self.max_frames:
            return self._decide(DEFAULT_ORDER, "fallback_frame_cap")
        return None

    def _judge(self) -> tuple[str, str] | None:
        """(order, rule) if the audio so far is conclusive, else None."""
        big, little = self._stats["big"], self._stats["little"]
        smoother = "big" if big.autocorrelation >= little.autocorrelation else "little"
        rough = "little" if smoother == "big" else "big"
        gap = self._stats[smoother].autocorrelation - self._stats[rough].autocorrelation
        quieter = "big" if big.rms <= little.rms else "little"
        louder = "little" if quieter == "big" else "big"
        ratio = self._stats[louder].rms / max(self._stats[quieter].rms, 1e-9)
        if gap >= SMOOTHNESS_MARGIN and self._stats[smoother].autocorrelation >= MIN_SPEECH_LAG1:
            # A smoother reading that is also far louder is the companded-audio corner: wait.
            if smoother == quieter or ratio < LEVEL_RATIO:
                return smoother, "smoothness"
            return None
        if gap < SMOOTHNESS_MARGIN and ratio >= LEVEL_RATIO:
            return quieter, "level"
        return None

    def _decide(self, order: str, rule: str) -> str:
        self.decision = order
        self.evidence = {"rule": rule, **self.figures()}
        return order

    def figures(self) -> dict[str, Any]:
        """The current measurements, rounded for a log line."""
        out: dict[str, Any] = {
            "voiced_s": round(self._voiced_samples / self.sample_rate, 2),
            "fed_s": round(self._fed_samples / self.sample_rate, 2),
            "silent_frames": self._silent_frames,
            "frames": self.held_frames,
        }
        for order, stats in self._stats.items():
            out[f"lag1_{order}"] = round(stats.autocorrelation, 3)
            out[f"rms_dbfs_{order}"] = round(20 * math.log10(stats.rms / 32768), 1) if stats.rms > 0 else None
        return out
