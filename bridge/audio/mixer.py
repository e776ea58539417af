"""Per-track timelines and the mono mix that EkaScribe hears.

Each track (caller, clinician) gets its own resampler and a position on the
call's shared clock (``media.timestamp``). Frames are placed by timestamp, not
by arrival order: a jump forward is filled with silence, a frame that goes
backwards or repeats is trimmed or dropped, and a track that falls more than
``max_lead_ms`` behind the other is filled with silence up to that bound (its
late frames are then dropped as stale). All of it is counted.

Filling happens on the 8 kHz input side, so each resampler sees one continuous
signal and every track's 16 kHz output stays sample-aligned with the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from bridge.audio.resample import Upsampler2x, to_int16

OUTPUT_RATE = 16000
#: Timestamp jitter smaller than this is absorbed (samples are appended as they come).
JITTER_TOLERANCE_MS = 10
#: Mixed peaks above this level are bent by a soft knee instead of clipping.
LIMITER_KNEE = 0.85 * 32767


class _Passthrough:
    """For input already at 16 kHz: nothing to resample, nothing held."""

    delay_samples = 0

    def process(self, frame: np.ndarray) -> np.ndarray:
        return frame.astype(np.float64)

    def flush(self) -> np.ndarray:
        return np.zeros(0, dtype=np.float64)


@dataclass
class TrackStats:
    frames: int = 0
    samples_in: int = 0  # input-rate samples received (before any fill or trim)
    gap_filled_samples: int = 0  # input-rate samples of silence inserted
    trimmed_samples: int = 0  # input-rate samples dropped as overlapping/late
    late_frames: int = 0  # whole frames dropped (repeat, backwards or too late)
    jumps: int = 0  # timestamp jumps forward that were filled


class Track:
    """One party's audio: input-rate timeline position, resampler and pending 16 kHz output."""

    def __init__(self, name: str, input_rate: int, start_position: int) -> None:
        if input_rate not in (8000, 16000):
            raise ValueError(f"unsupported input rate {input_rate}")
        self.name = name
        self.input_rate = input_rate
        self.scale = OUTPUT_RATE // input_rate
        self.resampler: Upsampler2x | _Passthrough = (
            Upsampler2x() if input_rate == 8000 else _Passthrough()
        )
        self.position = start_position  # next input sample index on the call timeline
        self.pending = np.zeros(0, dtype=np.float64)  # 16 kHz output not yet mixed
        self.stats = TrackStats()
        self.flushed = False

    def ms_to_position(self, timestamp_ms: int) -> int:
        return timestamp_ms * self.input_rate // 1000

    def place(self, timestamp_ms: int | None, samples: np.ndarray) -> None:
        """Put one frame on the timeline at its timestamp (or right after the last one)."""
        self.stats.frames += 1
        self.stats.samples_in += len(samples)
        if timestamp_ms is not None:
            start = self.ms_to_position(timestamp_ms)
            tolerance = self.input_rate * JITTER_TOLERANCE_MS // 1000
            offset = start - self.position
            if offset > tolerance:
                self.stats.jumps += 1
                self.fill_to(start)
            elif offset < -tolerance:
                overlap = min(-offset, len(samples))
                if overlap == len(samples):
                    self.stats.late_frames += 1
                self.stats.trimmed_samples += overlap
                samples = samples[overlap:]
        if len(samples):
            self._feed(samples)

    def fill_to(self, position: int) -> None:
        """Insert silence up to ``position`` (counted as gap fill)."""
        missing = position - self.position
        if missing > 0:
            self.stats.gap_filled_samples += missing
            self._feed(np.zeros(missing, dtype=np.int16))

    def flush(self) -> None:
        if not self.flushed:
            self.flushed = True
            self._append(self.resampler.flush())

    def _feed(self, samples: np.ndarray) -> None:
        self.position += len(samples)
        self._append(self.resampler.process(samples))

    def _append(self, out: np.ndarray) -> None:
        if len(out):
            self.pending = np.concatenate((self.pending, out)) if len(self.pending) else out

    @property
    def gap_filled_ms(self) -> int:
        return self.stats.gap_filled_samples * 1000 // self.input_rate


class Mixer:
    """Aligns the expected tracks on one clock and mixes them into 16 kHz mono int16.

    ``push`` returns whatever is ready: output for a span is released once every
    track has covered it, or once the laggard is more than ``max_lead_ms`` behind
    (it is then filled with silence). With a single track the samples pass
    through bit-exact; with two, they are summed and bent by a soft limiter.
    """

    def __init__(
        self,
        tracks: Iterable[str],
        input_rate: int,
        decode: Callable[[bytes], np.ndarray],
        *,
        max_lead_ms: int = 200,
    ) -> None:
        self.input_rate = input_rate
        self.decode = decode
        self.max_lead = input_rate * max_lead_ms // 1000
        self._expected = list(dict.fromkeys(tracks)) or ["inbound"]
        self.tracks: dict[str, Track] = {}
        self.unexpected_tracks: list[str] = []
        self._origin: int | None = None
        self.clipped_samples = 0

    def push(self, track: str, timestamp_ms: int | None, payload: bytes) -> np.ndarray:
        """Decode one frame of ``track`` and return the mixed 16 kHz samples now ready."""
        samples = self.decode(payload)
        if self._origin is None:
            self._origin = 0 if timestamp_ms is None else timestamp_ms * self.input_rate // 1000
            for name in self._expected:
                self.tracks[name] = Track(name, self.input_rate, self._origin)
        current = self.tracks.get(track)
        if current is None:
            # A track `start` did not announce: mix it in from here rather than drop it.
            self.unexpected_tracks.append(track)
            current = self.tracks[track] = Track(track, self.input_rate, self._origin)
        current.place(timestamp_ms, samples)
        horizon = current.position - self.max_lead
        for other in self.tracks.values():
            if other is not current and other.position < horizon:
                other.fill_to(horizon)
        return self._emit()

    def flush(self) -> np.ndarray:
        """End of call: bring every track to the same end, drain the resamplers, mix the rest."""
        if not self.tracks:
            return np.zeros(0, dtype=np.int16)
        end = max(t.position for t in self.tracks.values())
        for t in self.tracks.values():
            t.fill_to(end)
            t.flush()
        return self._emit()

    def _emit(self) -> np.ndarray:
        tracks = list(self.tracks.values())
        ready = min(len(t.pending) for t in tracks)
        if ready == 0:
            return np.zeros(0, dtype=np.int16)
        if len(tracks) == 1:
            (only,) = tracks
            out, only.pending = only.pending[:ready], only.pending[ready:]
            return to_int16(out)
        total = np.zeros(ready, dtype=np.float64)
        for t in tracks:
            total += t.pending[:ready]
            t.pending = t.pending[ready:]
        return self._limit(total)

    def _limit(self, total: np.ndarray) -> np.ndarray:
        """Unity-gain sum with a tanh soft knee above ~-1.4 dBFS: no wrap-around, no hard clip edges."""
        peak = np.abs(total)
        over = peak > LIMITER_KNEE
        if over.any():
            self.clipped_samples += int(over.sum())
            room = 32767 - LIMITER_KNEE
            bent = LIMITER_KNEE + room * np.tanh((peak[over] - LIMITER_KNEE) / room)
            total[over] = np.sign(total[over]) * bent
        return to_int16(total)

    def gap_filled_ms(self) -> dict[str, int]:
        return {name: t.gap_filled_ms for name, t in self.tracks.items()}
