"""Hostile input costs the audio path no more than its own size (issue 15): which names become
parties, clock jumps, silence synthesis per message and per call, a party that joins late,
and the audio the byte-order detector makes its caller hold. Pure units: no sockets, no clock
but a loose wall-time bound on the attacks."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from bridge.audio.byteorder import DEFAULT_ORDER, MAX_HELD_FRAMES, ByteOrderDetector
from bridge.audio.codec import ULAW, pcm16_to_ulaw
from bridge.audio.mixer import (
    MAX_BACKWARD_JUMP_MS,
    MAX_FORWARD_JUMP_MS,
    MAX_GAP_FILL_MS,
    Mixer,
)
from bridge.audio.resample import HALF_SPAN
from tests.providers.vobiz.test_units import frames as l16_frames
from tests.providers.vobiz.test_units import harmonic, run_detector

RATE = 8000
FRAME = 160  # 20 ms
PER_MS = RATE // 1000
Frame = tuple[str, int | None, bytes]  # (track, timestamp ms, μ-law payload)
#: Loose on purpose: each attack below costs a few ms here; before the bounds, seconds.
WALL_S = 1.0


def noise(n: int, seed: int) -> np.ndarray:
    return np.rint(np.random.default_rng(seed).normal(0, 2000, n)).astype(np.int16)


def framed(track: str, x: np.ndarray, *, start_ms: int = 0) -> list[Frame]:
    return [(track, start_ms + i // PER_MS, pcm16_to_ulaw(x[i : i + FRAME])) for i in range(0, len(x), FRAME)]


def interleave(*tracks: list[Frame]) -> list[Frame]:
    return sorted((f for t in tracks for f in t), key=lambda f: (f[1] or 0, f[0] != "outbound"))


def run(mixer: Mixer, frames: list[Frame]) -> np.ndarray:
    out = [mixer.push(track, ts, payload) for track, ts, payload in frames]
    out.append(mixer.flush())
    return np.concatenate(out)


def synthesised(mixer: Mixer) -> int:
    """Input samples of silence the mixer made up, all tracks."""
    return sum(t.stats.gap_filled_samples for t in mixer.tracks.values())


def discontinuities(mixer: Mixer) -> int:
    return sum(t.stats.discontinuities for t in mixer.tracks.values())


def mixer(tracks: list[str], **options: int) -> Mixer:
    return Mixer(tracks, RATE, ULAW, **options)


# --- parties: documented names only, at most two ----------------------------------------------


def test_thousands_of_track_names_make_no_party_and_change_no_sample() -> None:
    clean = interleave(framed("inbound", noise(16000, 1)), framed("outbound", noise(16000, 2)))
    expected = run(mixer(["inbound", "outbound"]), clean)
    junk = ["", "INBOUND", "both", "inbound ", "x" * 60_000] + [f"track-{i}" for i in range(4995)]
    hostile: list[Frame] = []
    for i, frame in enumerate(clean):
        hostile.append(frame)
        # 25 strangers after every real frame, stamped anywhere on the clock.
        hostile += [(name, 10**12 - 7 * j, frame[2]) for j, name in enumerate(junk[25 * i : 25 * i + 25])]
    assert len(hostile) == len(clean) + 5000

    m = mixer(["inbound", "outbound"])
    began = time.perf_counter()
    got = run(m, hostile)
    elapsed = time.perf_counter() - began

    assert np.array_equal(got, expected)
    assert list(m.tracks) == ["inbound", "outbound"] and m.unexpected_tracks == []
    assert m.ignored_track_frames == 5000 and discontinuities(m) == 0
    assert elapsed < WALL_S


@pytest.mark.parametrize(
    ("announced", "parties", "ignored"),
    [
        ([f"track-{i}" for i in range(5000)] + ["outbound"], ["outbound"], 5000),
        (["x" * 60_000, "caller"], ["inbound"], 2),  # nothing documented: the default party
        ([], ["inbound"], 0),
        (["outbound", "inbound", "outbound", "inbound"], ["outbound", "inbound"], 0),
    ],
)
def test_only_documented_names_announced_become_parties(announced: list[str], parties: list[str], ignored: int) -> None:
    m = mixer(announced)
    assert m.ignored_announced_tracks == ignored
    assert all(m.accepts(name) for name in parties) and not m.accepts("track-1")
    m.push(parties[0], 0, pcm16_to_ulaw(noise(FRAME, 3)))
    assert list(m.tracks) == parties


def test_a_documented_party_may_join_unannounced_but_a_third_never() -> None:
    m = mixer(["inbound"])  # Vobiz's older flat `start` names no tracks, yet sends both
    assert m.accepts("outbound") and not m.accepts("dialer")
    m.push("inbound", 0, pcm16_to_ulaw(noise(FRAME, 4)))
    m.push("outbound", 0, pcm16_to_ulaw(noise(FRAME, 5)))
    assert list(m.tracks) == ["inbound", "outbound"] and m.unexpected_tracks == ["outbound"]
    for name in ("dialer", "inbound2", "outbound\x00"):
        assert not m.accepts(name)
        assert len(m.push(name, 20, pcm16_to_ulaw(noise(FRAME, 6)))) == 0
    assert len(m.tracks) == 2 and m.ignored_track_frames == 3


def test_a_stranger_first_sets_no_clock() -> None:
    m = mixer(["inbound"])
    assert len(m.push("intruder", 10**12, b"\xff" * FRAME)) == 0
    assert m.tracks == {}  # nothing started: the call's origin is still open
    y = run(m, framed("inbound", noise(8 * FRAME, 7)))
    assert len(y) == 2 * 8 * FRAME and discontinuities(m) == 0 and synthesised(m) == 0


# --- forward jumps: a discontinuity beyond the bound, never minutes of silence ----------------


@pytest.mark.parametrize("tracks", [["inbound"], ["inbound", "outbound"]])
def test_a_thousand_frames_each_59_s_ahead_synthesise_nothing(tracks: list[str]) -> None:
    payload = pcm16_to_ulaw(noise(FRAME, 8))
    m = mixer(tracks)
    began = time.perf_counter()
    out = 0
    for k in range(1000):
        for name in tracks:
            out += len(m.push(name, 59_000 * k, payload))
    out += len(m.flush())
    elapsed = time.perf_counter() - began

    assert synthesised(m) == 0
    assert discontinuities(m) == 999 * len(tracks)
    assert out == 2 * 1000 * FRAME  # every frame's own audio, back to back, nothing added
    assert elapsed < WALL_S  # was ~31 ms per message


def test_the_forward_bound_is_exact_and_backward_keeps_its_own() -> None:
    first, second = pcm16_to_ulaw(noise(FRAME, 9)), pcm16_to_ulaw(noise(FRAME, 10))
    at_bound = mixer(["inbound"])
    y = run(at_bound, [("inbound", 0, first), ("inbound", 20 + MAX_FORWARD_JUMP_MS, second)])
    assert synthesised(at_bound) == MAX_FORWARD_JUMP_MS * PER_MS and discontinuities(at_bound) == 0
    assert len(y) == 2 * (2 * FRAME + MAX_FORWARD_JUMP_MS * PER_MS)

    beyond = mixer(["inbound"])
    y = run(beyond, [("inbound", 0, first), ("inbound", 21 + MAX_FORWARD_JUMP_MS, second)])
    assert synthesised(beyond) == 0 and discontinuities(beyond) == 1 and len(y) == 2 * 2 * FRAME

    # Backward: within MAX_BACKWARD_JUMP_MS a frame is late (dropped, counted); beyond, re-anchored.
    back = framed("inbound", noise(RATE * 70, 11))
    m = mixer(["inbound"])
    run(m, [*back, ("inbound", 70_000 - MAX_BACKWARD_JUMP_MS + 100, first)])
    assert m.tracks["inbound"].stats.late_frames == 1 and discontinuities(m) == 0
    m = mixer(["inbound"])
    y = run(m, [*back, ("inbound", 70_000 - MAX_BACKWARD_JUMP_MS - 100, first)])
    assert discontinuities(m) == 1 and len(y) == 2 * (RATE * 70 + FRAME)


def test_jumps_within_the_bound_fill_at_most_the_call_budget() -> None:
    """Each message 4.9 s after the last and big enough to play at once: a hole per message
    until the budget is spent, then each hole is closed instead (counted); no audio is lost."""
    hole_ms, size = MAX_FORWARD_JUMP_MS - 100, 1600  # 200 ms frames: past the 200 ms wait at once
    payload = pcm16_to_ulaw(noise(size, 12))
    m = mixer(["inbound"])
    began = time.perf_counter()
    out, worst = 0, 0
    for k in range(1000):
        before = synthesised(m)
        out += len(m.push("inbound", k * (hole_ms + size // PER_MS), payload))
        worst = max(worst, synthesised(m) - before)
    out += len(m.flush())
    elapsed = time.perf_counter() - began

    budget = MAX_GAP_FILL_MS * PER_MS
    holes = budget // (hole_ms * PER_MS)
    assert synthesised(m) == holes * hole_ms * PER_MS <= budget
    assert m.tracks["inbound"].stats.jumps == holes and discontinuities(m) == 999 - holes
    assert worst == hole_ms * PER_MS  # per message: one hole at most, within the bound
    assert out == 2 * (1000 * size + synthesised(m))
    assert elapsed < WALL_S


def test_two_parties_synthesise_in_proportion_to_what_arrived() -> None:
    """One party jumps within the bound on every message; the other is brought up behind it.
    Per message and per call the made-up silence stays bounded, whatever the jumps."""
    hole_ms, size = MAX_FORWARD_JUMP_MS - 100, 1600
    payload = pcm16_to_ulaw(noise(size, 13))
    m = mixer(["inbound", "outbound"])
    worst = 0
    for k in range(500):
        for name in ("inbound", "outbound") if k % 2 else ("outbound", "inbound"):
            before = synthesised(m)
            m.push(name, k * (hole_ms + size // PER_MS), payload)
            worst = max(worst, synthesised(m) - before)
    m.flush()
    received = 2 * 500 * size
    per_message = 2 * (MAX_FORWARD_JUMP_MS * PER_MS + size)
    assert worst <= per_message
    assert synthesised(m) <= 2 * (MAX_GAP_FILL_MS * PER_MS + received)


# --- a party that joins late joins at the present ----------------------------------------------


@pytest.mark.parametrize("render_samples", [0, 800])
def test_an_unannounced_party_joins_on_its_timestamps_to_the_sample(render_samples: int) -> None:
    inbound = noise(3 * RATE, 14)
    outbound = noise(RATE + RATE // 2, 15)
    frames = interleave(framed("inbound", inbound), framed("outbound", outbound, start_ms=1220))
    announced = mixer(["inbound", "outbound"], render_samples=render_samples)
    expected = run(announced, frames)
    joined = mixer(["inbound"], render_samples=render_samples)
    got = run(joined, frames)
    assert np.array_equal(got, expected) and len(got) == 2 * len(inbound)
    assert joined.unexpected_tracks == ["outbound"]
    # Its silence: from where the mix stood (at most a block and the FIR's delay back), then
    # after its last frame; announced, it is silence from the call's origin.
    tail = (3000 - 2720) * PER_MS
    assert announced.tracks["outbound"].stats.gap_filled_samples == 1220 * PER_MS + tail
    assert joined.tracks["outbound"].stats.gap_filled_samples - tail <= HALF_SPAN + render_samples


def join_after(seconds: int) -> tuple[int, int, int]:
    """``seconds`` of one party in 1 s frames, then the other joins: (its silence, the bytes
    allocated at the peak of the join, discontinuities)."""
    second = pcm16_to_ulaw(noise(RATE, 16))
    m = mixer(["inbound"], render_samples=800)
    for k in range(seconds):
        m.push("inbound", 1000 * k, second)
    tracemalloc.start()
    try:
        m.push("outbound", 1000 * seconds, pcm16_to_ulaw(noise(FRAME, 17)))
        m.push("inbound", 1000 * seconds, second)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return m.tracks["outbound"].stats.gap_filled_samples, peak, discontinuities(m)


def test_a_late_party_allocates_the_same_small_amount_however_long_the_call() -> None:
    short, long_ = join_after(5), join_after(120)
    assert short[0] == long_[0] < RATE  # its silence does not grow with the timeline
    assert long_[1] < 1_000_000  # ~1 s of audio in flight; the old origin join: the whole call
    assert short[2] == long_[2] == 0


def test_a_late_party_after_a_cheaply_jumped_clock_lands_at_the_present() -> None:
    """4 h of clock skipped in one step (re-anchored, nothing filled), then the other party
    joins on that clock: it takes the clock as it stands, no silence back to the origin."""
    hours = 4 * 3600 * 1000
    click = np.zeros(RATE, dtype=np.int16)
    click[700 * PER_MS] = 24000
    inbound = [*framed("inbound", noise(RATE, 18)), *framed("inbound", np.zeros(RATE, np.int16), start_ms=hours)]
    outbound = framed("outbound", click[500 * PER_MS :], start_ms=hours + 500)
    m = mixer(["inbound"])
    tracemalloc.start()
    try:
        y = run(m, interleave(inbound, outbound))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(y) == 2 * 2 * RATE and peak < 1_000_000
    assert [t.stats.discontinuities for t in m.tracks.values()] == [1, 0]
    assert synthesised(m) < RATE // 10
    assert abs(int(np.argmax(np.abs(y.astype(np.int32)))) / 16 - 1700) <= 1.0  # on its timestamp


# --- the byte-order detector: what its caller holds is bounded --------------------------------


def hold(detector: ByteOrderDetector, payloads: list[bytes]) -> tuple[str | None, int, int]:
    """Feed as ``Call`` does (hold each frame, release all on the decision); returns the
    decision and the most frames and bytes ever held."""
    frames = nbytes = 0
    for payload in payloads:
        frames, nbytes = frames + 1, nbytes + len(payload)
        decision = detector.feed(payload)
        if decision is not None:
            return decision, frames, nbytes  # the caller decodes what it held and holds no more
    return None, frames, nbytes


@pytest.mark.parametrize("size", [1, 2, 3])
def test_a_hundred_thousand_tiny_frames_are_not_held_forever(size: int) -> None:
    detector = ByteOrderDetector(RATE)
    decision, frames, nbytes = hold(detector, [b"\x01\x02\x03"[:size]] * 100_000)
    assert decision == DEFAULT_ORDER and detector.evidence["rule"] == "fallback_frame_cap"
    assert frames == MAX_HELD_FRAMES and nbytes == size * MAX_HELD_FRAMES
    assert detector.held_frames == MAX_HELD_FRAMES


def test_frames_too_short_to_judge_still_count_as_time() -> None:
    detector = ByteOrderDetector(RATE, give_up_s=1, max_frames=10**9)
    decision, frames, _ = hold(detector, [b"\x00\x01"] * 100_000)  # one sample each
    assert (decision, frames) == (DEFAULT_ORDER, RATE)
    assert detector.evidence["rule"] == "fallback_no_speech" and detector.evidence["fed_s"] == 1.0


def test_held_bytes_are_bounded_by_the_audio_bound() -> None:
    detector = ByteOrderDetector(16000)  # 10 s of 16 kHz silence in 20 ms frames: 320 kB
    decision, frames, nbytes = hold(detector, [b"\x00" * 640] * 5000)
    assert decision == DEFAULT_ORDER and detector.evidence["rule"] == "fallback_no_speech"
    assert frames == 500 and nbytes == detector.held_bytes == 2 * detector.give_up_samples
    assert detector.held_bytes <= 2 * detector.give_up_samples + detector.max_frames


@pytest.mark.parametrize("order", ["big", "little"])
def test_tiny_frames_between_speech_frames_do_not_spoil_the_decision(order: str) -> None:
    speech = l16_frames(harmonic(RATE, 3, peak=3000), RATE, order)
    mixed = [piece for frame in speech for piece in (frame, b"\x7f", b"\x00\x00")]
    decision, _ = run_detector(ByteOrderDetector(RATE), mixed)
    assert decision == order


def test_detector_bounds_are_validated() -> None:
    with pytest.raises(ValueError):
        ByteOrderDetector(RATE, max_frames=0)
