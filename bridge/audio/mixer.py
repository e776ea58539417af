"""Per-track timelines and the mono mix that EkaScribe hears.

Each track (caller, clinician) gets its own resampler and a position on the
call's shared clock (``media.timestamp``). Frames are placed by timestamp, not
by arrival order: a frame that arrives early waits (bounded) for the ones
before it; a hole is filled with silence once ``max_wait_ms`` of audio is
waiting behind it, or once the other track is that far ahead; a frame that
arrives after its slot was filled, or repeats one already placed, is dropped.
All of it is counted.

Nothing on the wire may cost more than its own size. Only the documented track names
become parties (at most two); a forward jump beyond a few seconds is a clock
discontinuity, not a hole; a track's holes may add only so much silence over a call;
a party that joins late joins at the present. Every other way of adding silence
(a laggard brought up to the leader, the common end) follows audio that really arrived.

Filling happens on the 8 kHz input side, so each resampler sees one continuous
signal and every track's 16 kHz output stays sample-aligned with the others.

Frames stay in their wire format (``WireFormat``: μ-law or L16 bytes) until they are rendered;
a hole is filled with the format's own silence. Resampling and mixing can run per block rather
than per frame (``render_samples``): placed frames wait until a block's worth is in, then one
decode, one FIR pass and one mix cover the block. The call sets the block to its upstream
batch, so numpy is called a few times per batch instead of a few times per 20 ms frame, and
no batch waits longer.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from bridge.audio.codec import WireFormat, pcm16_bytes
from bridge.audio.resample import Upsampler2x, to_int16

OUTPUT_RATE = 16000
#: Timestamp jitter smaller than this is absorbed (frames are appended as they come).
JITTER_TOLERANCE_MS = 10
END_OF_TIME = 1 << 62
#: A frame this far ahead of where its track stands is a clock discontinuity (or hostile
#: input), not a hole: the track's clock is re-anchored instead of synthesising silence. Real
#: holes (network hiccups, a Vobiz reconnect within its 3 s grace) are shorter; this is also
#: the most silence one message can make a track add (about 2.6 ms of CPU at 8 kHz).
MAX_FORWARD_JUMP_MS = 5_000
#: A frame this far behind is a clock reset, not a late frame: re-anchored rather than every
#: later frame dropped as late. Dropping is cheap, so this one may be generous.
MAX_BACKWARD_JUMP_MS = 60_000
#: Silence a track's own holes may add over a whole call (24 holes of the largest kind).
#: Beyond it a hole is closed (re-anchored, counted) instead of filled, so no stream of
#: in-bound jumps adds more than ~60 ms of CPU per track. Silence that brings a laggard
#: up to the other party is not counted here: that follows audio that really arrived.
MAX_GAP_FILL_MS = 120_000
#: Parties mixed in one call: the caller and the other end.
MAX_TRACKS = 2
#: ``media.track`` values Twilio (Media Streams) and Vobiz (``<Stream audioTrack>``) document.
#: No other name becomes a party, announced or not: any string would otherwise be mixed.
DOCUMENTED_TRACKS = ("inbound", "outbound")
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


class TrackBlock:
    """What one track's block of output was made from: its input as it came off the wire
    (μ-law: a byte a sample), the inputs before it (the resampler's history), and how many
    output pairs the resampler still dropped at the start."""

    __slots__ = ("history", "block", "skip_pairs")

    def __init__(self, history: bytes, block: bytes, skip_pairs: int) -> None:
        self.history = history
        self.block = block
        self.skip_pairs = skip_pairs

    def upsample(self, decode: Callable[[bytes], np.ndarray]) -> np.ndarray:
        """The block's float32 output again: the same convolutions over the same inputs."""
        upsampler = Upsampler2x(history=decode(self.history), skip_pairs=self.skip_pairs)
        return upsampler.process(decode(self.block))


class BlockSource:
    """What one released block of the mix was made from, when each party's part of it is one
    rendered block, whole (the steady state): enough to make the block again bit for bit
    (``render``) in a quarter of its size per party (μ-law at 8 kHz against PCM16 at 16).
    The replay buffer keeps these instead of the PCM it sent."""

    __slots__ = ("tracks", "decode")

    def __init__(self, tracks: tuple[TrackBlock, ...], decode: Callable[[bytes], np.ndarray]) -> None:
        self.tracks = tracks
        self.decode = decode

    def render(self) -> bytes:
        """The block's PCM16LE, as ``Mixer`` made it."""
        outputs = [track.upsample(self.decode) for track in self.tracks]
        if len(outputs) == 1:
            return pcm16_bytes(to_int16(outputs[0], in_place=True))
        total = np.zeros(len(outputs[0]), dtype=np.float64)
        for output in outputs:
            total += output
        soft_limit(total)
        return pcm16_bytes(to_int16(total))


def soft_limit(total: np.ndarray) -> int:
    """Bend ``total`` in place with a tanh soft knee above ~-1.4 dBFS (no wrap-around, no hard
    clip edges); returns how many samples were bent."""
    peak = np.abs(total)
    over = peak > LIMITER_KNEE
    if not over.any():
        return 0
    room = 32767 - LIMITER_KNEE
    bent = LIMITER_KNEE + room * np.tanh((peak[over] - LIMITER_KNEE) / room)
    total[over] = np.sign(total[over]) * bent
    return int(over.sum())


@dataclass(slots=True)
class TrackStats:
    frames: int = 0
    samples_in: int = 0  # input-rate samples received (before any fill or trim)
    gap_filled_samples: int = 0  # input-rate samples of silence inserted
    trimmed_samples: int = 0  # input-rate samples dropped as overlapping or late
    late_frames: int = 0  # whole frames dropped: their slot was already played or filled
    duplicate_frames: int = 0  # whole frames dropped: a frame for that slot was already waiting
    reordered_frames: int = 0  # frames that arrived before an earlier one and were put back in order
    jumps: int = 0  # holes in the timeline that were filled
    discontinuities: int = 0  # clock re-anchored: a jump beyond the bounds, or a hole past the fill budget


class Track:
    """One party's audio: timeline position, frames waiting their turn (as wire bytes), resampler,
    pending output. Positions and lengths count samples at the input rate.

    Slotted, the fields a frame touches first: hundreds of calls' tracks take turns in the
    cache, and a frame should find its track's state in a line or two."""

    __slots__ = (
        "position",
        "tolerance",
        "_next_start",
        "_frontier",
        "_heard",
        "_waiting",
        "_unrendered",
        "stats",
        "width",
        "input_rate",
        "_offset",
        "_max_ahead",
        "_max_behind",
        "name",
        "silence",
        "resampler",
        "max_wait",
        "pending",
        "flushed",
        "_waiting_starts",
        "_waiting_samples",
        "_arrivals",
        "_fill_left",
        "_tail",
        "source",
    )

    def __init__(
        self, name: str, input_rate: int, start_position: int, max_wait: int, wire: WireFormat, *, offset: int = 0
    ) -> None:
        if input_rate not in (8000, 16000):
            raise ValueError(f"unsupported input rate {input_rate}")
        self.name = name
        self.width = wire.width
        self.silence = wire.silence
        self.input_rate = input_rate
        self.resampler: Upsampler2x | _Passthrough = Upsampler2x() if input_rate == 8000 else _Passthrough()
        self.position = start_position  # next input sample index to be played on the call timeline
        self.max_wait = max_wait  # input samples of audio a hole may hold up
        self.tolerance = input_rate * JITTER_TOLERANCE_MS // 1000
        self.pending = _NO_OUTPUT  # 16 kHz output not yet mixed
        self._unrendered: list[bytes] = []  # placed frames (wire bytes) not yet decoded and resampled
        self.stats = TrackStats()
        self.flushed = False
        self._heard = False  # a frame with samples has been placed
        self._waiting: list[tuple[int, int, bytes]] = []  # heap of (start, arrival, frame)
        self._waiting_starts: set[int] = set()
        self._waiting_samples = 0
        self._next_start = start_position  # where a frame without a timestamp goes
        self._arrivals = 0
        self._max_ahead = input_rate * MAX_FORWARD_JUMP_MS // 1000
        self._max_behind = input_rate * MAX_BACKWARD_JUMP_MS // 1000
        self._fill_left = input_rate * MAX_GAP_FILL_MS // 1000  # silence its own holes may still add
        self._frontier = start_position  # end of the furthest frame placed or waiting
        self._offset = offset  # input samples subtracted from timestamps since the last re-anchoring
        # The resampler's history as wire bytes (silence before the first frame), and what the
        # pending output was made from while it is one rendered block, whole (else None).
        history = self.resampler.history_samples if isinstance(self.resampler, Upsampler2x) else 0
        self._tail = wire.silence * history
        self.source: TrackBlock | None = None

    def place(self, timestamp_ms: int | None, frame: bytes) -> None:
        """Put one frame (wire bytes) on the timeline at its timestamp (or right after the previous one)."""
        n = len(frame) // self.width
        if n * self.width != len(frame):
            frame = frame[: n * self.width]  # whole samples only: a stray byte would shift every later one
        stats = self.stats
        stats.frames += 1
        stats.samples_in += n
        if not n:
            return
        if timestamp_ms is None:
            start = self._next_start
        else:
            start = timestamp_ms * self.input_rate // 1000 - self._offset
        position, tolerance = self.position, self.tolerance
        if (
            -tolerance <= start - position <= tolerance
            and start + n > position + tolerance // 2
            and self._heard
            and not self._waiting
        ):
            # The usual case, first and cheapest: in order, nothing waiting (what ``_feed`` does).
            self._next_start = start + n
            self.position = position = position + n
            if position > self._frontier:
                self._frontier = position
            self._unrendered.append(frame)
            return
        if start - self.position > self._max_ahead or self.position - start > self._max_behind:
            # Carry on right after the furthest audio received: nothing is filled, nothing
            # received is overtaken.
            self.stats.discontinuities += 1
            self._offset += start - self._frontier
            start = self._frontier
        self._next_start = start + n
        if not self._heard:
            self._heard = True
            if 0 < start - self.position <= min(self.tolerance, self._fill_left) and not self._waiting:
                # A track's first frame has no jitter to absorb: the time before it is silence
                # (a party that joins late lands on its timestamp, to the sample).
                self._fill(start - self.position)
        if start + n <= self.position + self.tolerance // 2:
            self.stats.late_frames += 1
            self.stats.trimmed_samples += n
            return
        if not self._waiting and -self.tolerance <= start - self.position <= self.tolerance:
            self._feed(frame)  # in order, nothing waiting (a first frame): no heap round trip
            return
        if start in self._waiting_starts:
            self.stats.duplicate_frames += 1
            return
        if self._waiting and start < self._waiting[0][0]:
            self.stats.reordered_frames += 1
        self._arrivals += 1
        heapq.heappush(self._waiting, (start, self._arrivals, frame))
        self._waiting_starts.add(start)
        self._waiting_samples += n
        self._frontier = max(self._frontier, start + n)
        self._play()

    def fill_to(self, position: int) -> None:
        """Bring the track up to ``position``: waiting frames before it are played, holes silenced."""
        self._play(force_until=position)
        missing = position - self.position
        if missing > 0:
            self.stats.gap_filled_samples += missing
            self._feed(self.silence * missing)
        self._play()

    def settle(self) -> None:
        """End of stream: play everything still waiting, filling the holes between."""
        self._play(force_until=END_OF_TIME)

    def flush(self, decode: Callable[[bytes], np.ndarray]) -> None:
        """Drain the resampler (after ``settle``); nothing may be placed afterwards."""
        if not self.flushed:
            self.render(decode)
            self.flushed = True
            self._append(self.resampler.flush())
            self.source = None  # the tail is not one rendered block

    def render(self, decode: Callable[[bytes], np.ndarray]) -> None:
        """Decode and resample everything placed so far, in one pass each, onto ``pending``."""
        if self._unrendered:
            parts, self._unrendered = self._unrendered, []
            block = parts[0] if len(parts) == 1 else b"".join(parts)
            resampler = self.resampler
            if isinstance(resampler, Upsampler2x):
                history = self._tail
                self.source = None if len(self.pending) else TrackBlock(history, block, resampler.skip_pairs)
                keep = len(history)
                self._tail = block[-keep:] if len(block) >= keep else (history + block)[-keep:]
            self._append(resampler.process(decode(block)))

    def _play(self, *, force_until: int | None = None) -> None:
        """Feed waiting frames in timeline order while they are contiguous, or the wait is over,
        or the hole lies before ``force_until``."""
        while self._waiting:
            start, _, frame = self._waiting[0]
            gap = start - self.position
            if gap > self.tolerance:
                forced = force_until is not None and start < force_until
                if not forced and self._waiting_samples < self.max_wait:
                    return  # the frames for this hole may still arrive
                if gap > self._fill_left:
                    self._close(gap)
                else:
                    self._fill(gap)
                continue
            heapq.heappop(self._waiting)
            self._waiting_starts.discard(start)
            n = len(frame) // self.width
            self._waiting_samples -= n
            overlap = max(self.position - start, 0) if gap < -self.tolerance else 0
            if overlap >= n:
                self.stats.late_frames += 1
                self.stats.trimmed_samples += n
                continue
            self.stats.trimmed_samples += overlap
            self._feed(frame[overlap * self.width :])

    def _fill(self, gap: int) -> None:
        """Silence for a hole in this track's own timeline, charged to the call's fill budget."""
        self._fill_left -= gap
        self.stats.jumps += 1
        self.stats.gap_filled_samples += gap
        self._feed(self.silence * gap)

    def _close(self, gap: int) -> None:
        """The call's fill budget is spent: move every waiting frame ``gap`` earlier (a
        re-anchoring) so the hole closes without silence. A uniform shift keeps the heap a heap."""
        self.stats.discontinuities += 1
        self._offset += gap
        if self._next_start >= self.position + gap:  # the last frame placed is one of those waiting
            self._next_start -= gap
        self._frontier -= gap
        self._waiting = [(start - gap, arrival, frame) for start, arrival, frame in self._waiting]
        self._waiting_starts = {start - gap for start in self._waiting_starts}

    def _feed(self, frame: bytes) -> None:
        self.position += len(frame) // self.width
        self._frontier = max(self._frontier, self.position)
        self._unrendered.append(frame)

    def take(self, n: int) -> None:
        """Drop the first ``n`` pending samples (mixed). The rest is copied, not viewed, so a
        long call does not keep each block's whole buffer alive for a few leftover samples."""
        self.pending = self.pending[n:].copy() if n < len(self.pending) else _NO_OUTPUT
        self.source = None

    def _append(self, out: np.ndarray) -> None:
        if len(out):
            self.pending = np.concatenate((self.pending, out)) if len(self.pending) else out

    @property
    def clock_offset(self) -> int:
        """Input samples this track subtracts from timestamps (its re-anchorings so far)."""
        return self._offset

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

    The parties are the documented names ``tracks`` announces (``inbound`` if none), made at
    the first frame; a documented name that was not announced joins when its first frame
    comes, at the present (where the mix stands), while there is room for a party. A frame
    for any other name is counted (``ignored_track_frames``) and costs nothing more.
    """

    __slots__ = (  # slotted like Track; the fields ``push`` reads first
        "tracks",
        "render_samples",
        "_next_release",
        "max_wait",
        "wire",
        "input_rate",
        "_expected",
        "ignored_announced_tracks",
        "unexpected_tracks",
        "ignored_track_frames",
        "_origin",
        "_mixed",
        "limited_samples",
        "source",
    )

    def __init__(
        self,
        tracks: Iterable[str],
        input_rate: int,
        wire: WireFormat,
        *,
        max_wait_ms: int = 200,
        render_samples: int = 0,
    ) -> None:
        if input_rate not in (8000, 16000):  # refused at `start`, not on every frame after it
            raise ValueError(f"unsupported input rate {input_rate}")
        self.input_rate = input_rate
        self.wire = wire  # the call may set it once more, before any frame (an L16 byte order detected)
        self.max_wait = input_rate * max_wait_ms // 1000
        announced = list(dict.fromkeys(tracks))
        self._expected = [t for t in announced if t in DOCUMENTED_TRACKS][:MAX_TRACKS] or ["inbound"]
        self.ignored_announced_tracks = sum(t not in self._expected for t in announced)  # beyond the parties
        self.tracks: dict[str, Track] = {}
        self.unexpected_tracks: list[str] = []  # documented names that joined unannounced (at most two)
        self.ignored_track_frames = 0  # frames for a name that is not (and cannot become) a party
        self._origin: int | None = None
        self._mixed = 0  # output samples released so far: where the mix stands
        self.limited_samples = 0
        self.render_samples = max(render_samples, 0)
        self._next_release = 0  # input position at which the next block is due
        #: What the last output returned was made from, if a single track's block, whole.
        self.source: BlockSource | None = None

    def accepts(self, track: str) -> bool:
        """Whether a frame of ``track`` would be mixed (a party, or a documented name with room)."""
        if track in self.tracks:
            return True
        if self._origin is None and track in self._expected:
            return True
        parties = len(self.tracks) if self._origin is not None else len(self._expected)
        return track in DOCUMENTED_TRACKS and parties < MAX_TRACKS

    def push(self, track: str, timestamp_ms: int | None, payload: bytes) -> np.ndarray:
        """Place one frame of ``track`` (wire bytes) and return the mixed 16 kHz samples now ready."""
        current = self.tracks.get(track)
        if current is None:
            if not self.accepts(track):
                self.ignored_track_frames += 1  # not decoded, no clock set, no party made
                return _NOTHING
            if self._origin is None:
                self._begin(timestamp_ms)
            current = self.tracks.get(track) or self._join(track)
        current.place(timestamp_ms, payload)
        reach = current.position  # how far every track has come: the laggard's position
        if len(self.tracks) > 1:
            horizon = reach - self.max_wait
            for other in self.tracks.values():
                if other is not current:
                    if other.position < horizon:
                        other.fill_to(horizon)
                    reach = min(reach, other.position)
        if self.render_samples:
            # Only what every track covers can be mixed, so the laggard says when a block is due.
            if reach < self._next_release:
                return _NOTHING
            behind = (reach - self._next_release) // self.render_samples + 1
            self._next_release += behind * self.render_samples
        return self.pull()

    def pull(self) -> np.ndarray:
        """Decode and resample what every track has placed and return the mix that is ready."""
        decode = self.wire.decode
        for t in self.tracks.values():
            t.render(decode)
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
            t.flush(self.wire.decode)
        return self._emit()

    def _begin(self, timestamp_ms: int | None) -> None:
        """The first frame of the call: it fixes the origin; the announced parties start there."""
        origin = 0 if timestamp_ms is None else timestamp_ms * self.input_rate // 1000
        self._origin = origin
        for name in self._expected:
            self.tracks[name] = Track(name, self.input_rate, origin, self.max_wait, self.wire)
        delay = self.tracks[self._expected[0]].resampler.delay_samples
        self._next_release = origin + delay + self.render_samples

    def _join(self, name: str) -> Track:
        """A documented party `start` did not announce: mixed in from the present, the input
        sample the next mixed output sample stands for. Every party's pending output begins
        there, so the newcomer lines up, and only from there is it filled: never from the
        call's origin (hours of silence at once). It reads timestamps on the clock as the
        leading party has it (re-anchorings included): one clock serves every track."""
        present = (self._origin or 0) + self._mixed * self.input_rate // OUTPUT_RATE
        leader = max(self.tracks.values(), key=lambda t: t.position, default=None)
        offset = leader.clock_offset if leader is not None else 0
        self.unexpected_tracks.append(name)
        track = self.tracks[name] = Track(name, self.input_rate, present, self.max_wait, self.wire, offset=offset)
        return track

    def _emit(self) -> np.ndarray:
        tracks = list(self.tracks.values())
        ready = min(len(t.pending) for t in tracks)
        if ready == 0:
            self.source = None
            return _NOTHING
        self._mixed += ready
        # Each party's part of the block is one rendered block, whole: the block can be made again.
        sources = tuple(t.source for t in tracks if t.source is not None and len(t.pending) == ready)
        self.source = BlockSource(sources, self.wire.decode) if len(sources) == len(tracks) else None
        if len(tracks) == 1:
            (only,) = tracks
            out = to_int16(only.pending[:ready], in_place=True)  # pending is the track's own, about to be dropped
            only.take(ready)
            return out
        # Unity gain, summed in float64, then the soft limiter.
        total = np.zeros(ready, dtype=np.float64)
        for t in tracks:
            total += t.pending[:ready]
            t.take(ready)
        self.limited_samples += soft_limit(total)
        return to_int16(total)

    def gap_filled_ms(self) -> dict[str, int]:
        return {name: t.gap_filled_ms for name, t in self.tracks.items()}
