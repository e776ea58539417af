"""Per-track timelines and the mono mix that EkaScribe hears.

Each track (caller, clinician) gets its own resampler and a position on the
call's shared clock (``media.timestamp``). Frames are placed by timestamp, not
by arrival order: a frame that arrives early waits (bounded) for the ones
before it; a hole is filled with silence once ``max_wait_ms`` of audio is
waiting behind it, or once the other track is that far ahead; a frame that
arrives after its slot was filled, or repeats one already placed, is dropped.
All of it is counted.

Filling happens on the 8 kHz input side, so each resampler sees one continuous
signal and every track's 16 kHz output stays sample-aligned with the others.

Resampling and mixing can run per block rather than per frame (``render_samples``):
placed samples wait, decoded, until a block's worth is in, then one FIR pass and one mix
cover the block. The call sets the block to its upstream batch, so numpy is called a
few times per batch instead of a few times per 20 ms frame, and no batch waits longer.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from bridge.audio.resample import Upsampler2x, to_int16

OUTPUT_RATE = 16000
#: Timestamp jitter smaller than this is absorbed (frames are appended as they come).
JITTER_TOLERANCE_MS = 10
END_OF_TIME = 1 << 62
#: A frame this far from where its track stands, either way, is a clock discontinuity (or
#: hostile input), not a hole: the track's clock is re-anchored instead of filling hours of
#: silence (or dropping every later frame as late). Real holes are far shorter.
MAX_JUMP_MS = 60_000
#: Mixed peaks above this level are bent by a soft knee instead of clipping.
LIMITER_KNEE = 0.85 * 32767


_NOTHING = np.zeros(0, dtype=np.int16)
_NOTHING.flags.writeable = False
_NO_OUTPUT = np.zeros(0, dtype=np.float32)
_NO_OUTPUT.flags.writeable = False


class _Passthrough:
    """For input already at 16 kHz: nothing to resample, nothing held."""

    delay_samples = 0

    def process(self, frame: np.ndarray) -> np.ndarray:
        return frame.astype(np.float32)

    def flush(self) -> np.ndarray:
        return np.zeros(0, dtype=np.float32)


@dataclass
class TrackStats:
    frames: int = 0
    samples_in: int = 0  # input-rate samples received (before any fill or trim)
    gap_filled_samples: int = 0  # input-rate samples of silence inserted
    trimmed_samples: int = 0  # input-rate samples dropped as overlapping or late
    late_frames: int = 0  # whole frames dropped: their slot was already played or filled
    duplicate_frames: int = 0  # whole frames dropped: a frame for that slot was already waiting
    reordered_frames: int = 0  # frames that arrived before an earlier one and were put back in order
    jumps: int = 0  # holes in the timeline that were filled
    discontinuities: int = 0  # timestamps beyond MAX_JUMP_MS: the track's clock was re-anchored


class Track:
    """One party's audio: timeline position, frames waiting their turn, resampler, pending output."""

    def __init__(self, name: str, input_rate: int, start_position: int, max_wait: int) -> None:
        if input_rate not in (8000, 16000):
            raise ValueError(f"unsupported input rate {input_rate}")
        self.name = name
        self.input_rate = input_rate
        self.resampler: Upsampler2x | _Passthrough = (
            Upsampler2x() if input_rate == 8000 else _Passthrough()
        )
        self.position = start_position  # next input sample index to be played on the call timeline
        self.max_wait = max_wait  # input samples of audio a hole may hold up
        self.tolerance = input_rate * JITTER_TOLERANCE_MS // 1000
        self.pending = _NO_OUTPUT  # 16 kHz output not yet mixed
        self._unrendered: list[np.ndarray] = []  # placed input samples not yet resampled
        self.stats = TrackStats()
        self.flushed = False
        self._waiting: list[tuple[int, int, np.ndarray]] = []  # heap of (start, arrival, samples)
        self._waiting_starts: set[int] = set()
        self._waiting_samples = 0
        self._next_start = start_position  # where a frame without a timestamp goes
        self._arrivals = 0
        self._max_jump = input_rate * MAX_JUMP_MS // 1000
        self._offset = 0  # input samples subtracted from timestamps since the last re-anchoring

    def place(self, timestamp_ms: int | None, samples: np.ndarray) -> None:
        """Put one frame on the timeline at its timestamp (or right after the previous one)."""
        self.stats.frames += 1
        self.stats.samples_in += len(samples)
        if not len(samples):
            return
        if timestamp_ms is None:
            start = self._next_start
        else:
            start = timestamp_ms * self.input_rate // 1000 - self._offset
        if abs(start - self.position) > self._max_jump:
            self.stats.discontinuities += 1
            self._offset += start - self.position
            start = self.position
        self._next_start = start + len(samples)
        if start + len(samples) <= self.position + self.tolerance // 2:
            self.stats.late_frames += 1
            self.stats.trimmed_samples += len(samples)
            return
        if not self._waiting and -self.tolerance <= start - self.position <= self.tolerance:
            self._feed(samples)  # the usual case: in order, nothing waiting; no heap round trip
            return
        if start in self._waiting_starts:
            self.stats.duplicate_frames += 1
            return
        if self._waiting and start < self._waiting[0][0]:
            self.stats.reordered_frames += 1
        self._arrivals += 1
        heapq.heappush(self._waiting, (start, self._arrivals, samples))
        self._waiting_starts.add(start)
        self._waiting_samples += len(samples)
        self._play()

    def fill_to(self, position: int) -> None:
        """Bring the track up to ``position``: waiting frames before it are played, holes silenced."""
        self._play(force_until=position)
        missing = position - self.position
        if missing > 0:
            self.stats.gap_filled_samples += missing
            self._feed(np.zeros(missing, dtype=np.int16))
        self._play()

    def settle(self) -> None:
        """End of stream: play everything still waiting, filling the holes between."""
        self._play(force_until=END_OF_TIME)

    def flush(self) -> None:
        """Drain the resampler (after ``settle``); nothing may be placed afterwards."""
        if not self.flushed:
            self.render()
            self.flushed = True
            self._append(self.resampler.flush())

    def render(self) -> None:
        """Resample everything placed so far, in one pass, onto ``pending``."""
        if self._unrendered:
            parts, self._unrendered = self._unrendered, []
            self._append(self.resampler.process(parts[0] if len(parts) == 1 else np.concatenate(parts)))

    def _play(self, *, force_until: int | None = None) -> None:
        """Feed waiting frames in timeline order while they are contiguous, or the wait is over,
        or the hole lies before ``force_until``."""
        while self._waiting:
            start, _, samples = self._waiting[0]
            gap = start - self.position
            if gap > self.tolerance:
                forced = force_until is not None and start < force_until
                if not forced and self._waiting_samples < self.max_wait:
                    return  # the frames for this hole may still arrive
                self.stats.jumps += 1
                self.stats.gap_filled_samples += gap
                self._feed(np.zeros(gap, dtype=np.int16))
                continue
            heapq.heappop(self._waiting)
            self._waiting_starts.discard(start)
            self._waiting_samples -= len(samples)
            overlap = max(self.position - start, 0) if gap < -self.tolerance else 0
            if overlap >= len(samples):
                self.stats.late_frames += 1
                self.stats.trimmed_samples += len(samples)
                continue
            self.stats.trimmed_samples += overlap
            self._feed(samples[overlap:])

    def _feed(self, samples: np.ndarray) -> None:
        self.position += len(samples)
        self._unrendered.append(samples)

    def take(self, n: int) -> None:
        """Drop the first ``n`` pending samples (mixed). The rest is copied, not viewed, so a
        long call does not keep each block's whole buffer alive for a few leftover samples."""
        self.pending = self.pending[n:].copy() if n < len(self.pending) else _NO_OUTPUT

    def _append(self, out: np.ndarray) -> None:
        if len(out):
            self.pending = np.concatenate((self.pending, out)) if len(self.pending) else out

    @property
    def gap_filled_ms(self) -> int:
        return self.stats.gap_filled_samples * 1000 // self.input_rate


class Mixer:
    """Aligns the tracks on one clock and mixes them into 16 kHz mono int16.

    ``push`` returns whatever is ready: output for a span is released once every
    track has covered it, or once the laggard is more than ``max_wait_ms`` behind
    the leader (it is then filled with silence). With a single track the samples
    pass through bit-exact; with two, they are summed and bent by a soft limiter.

    With ``render_samples`` > 0, output is released in blocks: ``push`` returns nothing
    until every track has advanced a block (plus the resampler's delay, the first time)
    since the last release, so every release holds about a block of output.
    """

    def __init__(
        self,
        tracks: Iterable[str],
        input_rate: int,
        decode: Callable[[bytes], np.ndarray],
        *,
        max_wait_ms: int = 200,
        render_samples: int = 0,
    ) -> None:
        if input_rate not in (8000, 16000):  # refused at `start`, not on every frame after it
            raise ValueError(f"unsupported input rate {input_rate}")
        self.input_rate = input_rate
        self.decode = decode
        self.max_wait = input_rate * max_wait_ms // 1000
        self._expected = list(dict.fromkeys(tracks)) or ["inbound"]
        self.tracks: dict[str, Track] = {}
        self.unexpected_tracks: list[str] = []
        self._origin: int | None = None
        self.limited_samples = 0
        self.render_samples = max(render_samples, 0)
        self._next_release = 0  # input position at which the next block is due

    def push(self, track: str, timestamp_ms: int | None, payload: bytes) -> np.ndarray:
        """Decode one frame of ``track`` and return the mixed 16 kHz samples now ready."""
        samples = self.decode(payload)
        if self._origin is None:
            self._origin = 0 if timestamp_ms is None else timestamp_ms * self.input_rate // 1000
            for name in self._expected:
                self.tracks[name] = self._new_track(name)
            delay = self.tracks[self._expected[0]].resampler.delay_samples
            self._next_release = self._origin + delay + self.render_samples
        current = self.tracks.get(track)
        if current is None:
            # A track `start` did not announce: mix it in from here rather than drop it.
            self.unexpected_tracks.append(track)
            current = self.tracks[track] = self._new_track(track)
        current.place(timestamp_ms, samples)
        horizon = current.position - self.max_wait
        for other in self.tracks.values():
            if other is not current and other.position < horizon:
                other.fill_to(horizon)
        if self.render_samples:
            # Only what every track covers can be mixed, so the laggard says when a block is due.
            reach = current.position if len(self.tracks) == 1 else min(t.position for t in self.tracks.values())
            if reach < self._next_release:
                return _NOTHING
            behind = (reach - self._next_release) // self.render_samples + 1
            self._next_release += behind * self.render_samples
        return self.pull()

    def pull(self) -> np.ndarray:
        """Resample what every track has placed and return the mix that is ready."""
        for t in self.tracks.values():
            t.render()
        return self._emit()

    def flush(self) -> np.ndarray:
        """End of call: bring every track to the same end, drain the resamplers, mix the rest."""
        if not self.tracks:
            return _NOTHING
        for t in self.tracks.values():
            t.settle()
        end = max(t.position for t in self.tracks.values())
        for t in self.tracks.values():
            t.fill_to(end)  # a track that stopped early: silence to the common end
            t.flush()
        return self._emit()

    def _new_track(self, name: str) -> Track:
        assert self._origin is not None
        return Track(name, self.input_rate, self._origin, self.max_wait)

    def _emit(self) -> np.ndarray:
        tracks = list(self.tracks.values())
        ready = min(len(t.pending) for t in tracks)
        if ready == 0:
            return _NOTHING
        if len(tracks) == 1:
            (only,) = tracks
            out = to_int16(only.pending[:ready])
            only.take(ready)
            return out
        total = np.zeros(ready, dtype=np.float64)
        for t in tracks:
            total += t.pending[:ready]
            t.take(ready)
        return self._limit(total)

    def _limit(self, total: np.ndarray) -> np.ndarray:
        """Unity-gain sum with a tanh soft knee above ~-1.4 dBFS: no wrap-around, no hard clip edges."""
        peak = np.abs(total)
        over = peak > LIMITER_KNEE
        if over.any():
            self.limited_samples += int(over.sum())
            room = 32767 - LIMITER_KNEE
            bent = LIMITER_KNEE + room * np.tanh((peak[over] - LIMITER_KNEE) / room)
            total[over] = np.sign(total[over]) * bent
        return to_int16(total)

    def gap_filled_ms(self) -> dict[str, int]:
        return {name: t.gap_filled_ms for name, t in self.tracks.items()}
