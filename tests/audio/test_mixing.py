"""Two parties on one clock: alignment by timestamp, holes, late/early/duplicate frames, the mix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soxr

from bridge.audio.codec import ULAW, l16, pcm16_bytes, pcm16_to_ulaw, ulaw_to_pcm16
from bridge.audio.mixer import Mixer
from bridge.providers.twilio.simulator import TwilioCall, plan_messages, replay
from bridge.simulator.audio import load_ulaw
from tests import SAMPLES
from tests.harness import running
from tests.live.test_call import finished, received_pcm, si_snr_db

Frame = tuple[str, int, bytes]  # (track, timestamp ms, μ-law payload)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(8000 * seconds), dtype=np.int16)


def with_click(x: np.ndarray, at_ms: int) -> np.ndarray:
    x = x.copy()
    i = at_ms * 8
    x[i - 1 : i + 2] = [12000, 24000, 12000]
    return x


def framed(track: str, x: np.ndarray, *, start_ms: int = 0, frame_ms: int = 20) -> list[Frame]:
    n = 8 * frame_ms
    return [(track, start_ms + i // 8, pcm16_to_ulaw(x[i : i + n])) for i in range(0, len(x), n)]


def interleave(*tracks: list[Frame]) -> list[Frame]:
    """Arrival order: by timestamp, outbound before inbound on a tie (as in Twilio's example)."""
    return sorted((f for t in tracks for f in t), key=lambda f: (f[1], f[0] != "outbound"))


def mix(
    frames: list[Frame], tracks: list[str], *, wait_ms: int = 200, render_samples: int = 0
) -> tuple[np.ndarray, Mixer]:
    mixer = Mixer(tracks, 8000, ULAW, max_wait_ms=wait_ms, render_samples=render_samples)
    out = [mixer.push(track, ts, payload) for track, ts, payload in frames]
    out.append(mixer.flush())
    return np.concatenate(out), mixer


def click_positions_ms(y: np.ndarray, expected_ms: list[int]) -> list[float]:
    """Where the loudest sample near each expected click is, in ms (16 kHz output)."""
    found = []
    for ms in expected_ms:
        lo = max(0, (ms - 50) * 16)
        window = np.abs(y[lo : (ms + 50) * 16].astype(np.int32))
        found.append((lo + int(np.argmax(window))) / 16)
    return found


def test_clicks_on_both_tracks_land_at_their_timestamps() -> None:
    inbound = with_click(silence(4.0), 1234)
    outbound = with_click(silence(4.0), 2500)
    frames = interleave(framed("inbound", inbound), framed("outbound", outbound))
    # The outbound track arrives in bursts 5 frames late: arrival order must not matter.
    out_frames = [f for f in frames if f[0] == "outbound"]
    in_frames = [f for f in frames if f[0] == "inbound"]
    arrival = []
    for i, f in enumerate(in_frames):
        arrival.append(f)
        if i >= 5 and i % 5 == 0:
            arrival += out_frames[i - 5 : i]
    arrival += out_frames[len(in_frames) - 5 - (len(in_frames) - 5) % 5 :]
    assert sorted(arrival, key=id) == sorted(frames, key=id)

    y, mixer = mix(arrival, ["inbound", "outbound"])
    assert len(y) == 2 * len(inbound)
    for found, expected in zip(click_positions_ms(y, [1234, 2500]), [1234, 2500], strict=True):
        assert abs(found - expected) <= 1.0
    assert mixer.gap_filled_ms() == {"inbound": 0, "outbound": 0}


def test_a_two_second_hole_is_filled_and_counted_without_shifting_anything() -> None:
    inbound = with_click(silence(5.0), 3500)
    outbound = with_click(silence(5.0), 2000)
    in_frames = [f for f in framed("inbound", inbound) if not 1000 <= f[1] < 3000]
    y, mixer = mix(interleave(in_frames, framed("outbound", outbound)), ["inbound", "outbound"])
    assert len(y) == 2 * len(inbound)
    assert mixer.gap_filled_ms() == {"inbound": 2000, "outbound": 0}
    found = click_positions_ms(y, [2000, 3500])
    assert all(abs(f - e) <= 1.0 for f, e in zip(found, [2000, 3500], strict=True))


def test_a_late_starting_track_and_one_that_stops_early() -> None:
    inbound = with_click(silence(4.0), 500)
    outbound = with_click(silence(1.5), 1000)  # starts at 1.5 s, stops at 3.0 s
    frames = interleave(framed("inbound", inbound), framed("outbound", outbound, start_ms=1500))
    y, mixer = mix(frames, ["inbound", "outbound"])
    assert len(y) == 2 * len(inbound)
    assert mixer.gap_filled_ms() == {"inbound": 0, "outbound": 2500}
    found = click_positions_ms(y, [500, 2500])
    assert all(abs(f - e) <= 1.0 for f, e in zip(found, [500, 2500], strict=True))


def test_an_announced_track_that_never_appears_leaves_the_other_untouched() -> None:
    rng = np.random.default_rng(1)
    inbound = rng.normal(0, 2000, 16000).astype(np.int16)
    alone, _ = mix(framed("inbound", inbound), ["inbound"])
    y, mixer = mix(framed("inbound", inbound), ["inbound", "outbound"])
    assert np.array_equal(y, alone)
    assert mixer.gap_filled_ms()["outbound"] == 2000


def test_out_of_order_and_duplicate_frames_change_nothing() -> None:
    rng = np.random.default_rng(2)
    inbound = rng.normal(0, 3000, 24000).astype(np.int16)
    outbound = rng.normal(0, 3000, 24000).astype(np.int16)
    clean = interleave(framed("inbound", inbound), framed("outbound", outbound))
    expected, _ = mix(clean, ["inbound", "outbound"])

    messy = list(clean)
    for i in range(10, len(messy) - 6, 17):  # swap neighbours, move some 3 places on
        messy[i], messy[i + 1] = messy[i + 1], messy[i]
        messy.insert(i + 5, messy.pop(i + 2))
    duplicates = [messy[40], messy[41], messy[200]]
    messy[60:60] = duplicates  # repeats of frames already placed
    messy[45:45] = [messy[50]]  # a repeat of a frame still waiting
    y, mixer = mix(messy, ["inbound", "outbound"])

    assert np.array_equal(y, expected)
    stats = [t.stats for t in mixer.tracks.values()]
    assert sum(s.late_frames + s.duplicate_frames for s in stats) == 4
    assert sum(s.reordered_frames for s in stats) > 0
    assert mixer.gap_filled_ms() == {"inbound": 0, "outbound": 0}


def test_rendering_in_blocks_changes_no_sample_and_releases_whole_blocks() -> None:
    """The call resamples and mixes once per upstream batch: same output, released in blocks
    that are due as soon as per-frame rendering would have filled them (no added wait)."""
    rng = np.random.default_rng(5)
    inbound = rng.normal(0, 3000, 24000).astype(np.int16)
    outbound = rng.normal(0, 3000, 20000).astype(np.int16)
    clean = interleave(framed("inbound", inbound), framed("outbound", outbound, start_ms=300))
    messy = list(clean)
    for i in range(10, len(messy) - 6, 13):
        messy[i], messy[i + 2] = messy[i + 2], messy[i]
    del messy[70:74]  # a hole
    for frames, tracks in (
        (framed("inbound", inbound), ["inbound"]),
        (clean, ["inbound", "outbound"]),
        (messy, ["inbound", "outbound"]),
    ):
        per_frame, _ = mix(frames, tracks)
        blocks, _ = mix(frames, tracks, render_samples=800)
        assert np.array_equal(blocks, per_frame)

    mixer = Mixer(["inbound"], 8000, ULAW, render_samples=800)
    sizes = [len(mixer.push(*frame)) for frame in framed("inbound", inbound)]
    released = [(i, n) for i, n in enumerate(sizes) if n]
    # 100 ms blocks of 20 ms frames: the first once 100 ms + the FIR's 6 ms delay are in.
    assert released[0] == (5, 2 * (6 * 160 - 48))
    assert all(n == 1600 for _, n in released[1:])
    assert [i for i, _ in released[1:4]] == [10, 15, 20]

    # Two parties: a block is due once both have covered it, never a frame short of it.
    mixer = Mixer(["inbound", "outbound"], 8000, ULAW, render_samples=800)
    both = interleave(framed("inbound", inbound[:16000]), framed("outbound", outbound[:16000]))
    sizes = [len(mixer.push(*frame)) for frame in both]
    released = [(i, n) for i, n in enumerate(sizes) if n]
    assert released[0] == (11, 2 * (6 * 160 - 48))  # the inbound frame that completes 120 ms
    assert all(n == 1600 for _, n in released[1:])


def test_frames_wait_in_their_wire_format_and_decode_exactly_at_the_block() -> None:
    """Frames are kept as wire bytes until their block is rendered: a hole is the format's own
    silence (exact zeros), and an L16 frame with a stray odd byte shifts no later sample."""
    x = with_click(silence(1.0), 700)
    frames = framed("inbound", x)
    del frames[10:15]  # a 100 ms hole, filled at the next frame
    y, mixer = mix(frames, ["inbound"], render_samples=800)
    assert mixer.tracks["inbound"].stats.gap_filled_samples == 800
    assert not np.any(y[2 * 200 * 8 + 200 : 2 * 300 * 8 - 200])  # the hole, away from the FIR's reach
    assert abs(click_positions_ms(y, [700])[0] - 700) <= 1.0

    pcm = with_click(silence(0.5), 300)
    odd = [pcm[i : i + 160].astype(">i2").tobytes() + b"\x7f" for i in range(0, len(pcm), 160)]
    even = [payload[:-1] for payload in odd]
    out = {}
    for name, payloads in (("odd", odd), ("even", even)):
        mixer = Mixer(["inbound"], 8000, l16("big"), render_samples=800)
        got = [mixer.push("inbound", 20 * i, payload) for i, payload in enumerate(payloads)]
        out[name] = np.concatenate([*got, mixer.flush()])
    assert np.array_equal(out["odd"], out["even"]) and len(out["odd"]) == 2 * len(pcm)
    assert abs(click_positions_ms(out["odd"], [300])[0] - 300) <= 1.0


def test_a_released_block_is_made_again_bit_for_bit_from_its_source() -> None:
    """What the replay buffer keeps instead of the PCM it sent: each block comes with its source
    (each party's wire input, the inputs before it, the pairs still skipped), and rendering the
    source again gives the very same bytes: the first block, holes, reordering, L16, and two
    loud parties through the limiter included."""
    rng = np.random.default_rng(19)
    speech = rng.normal(0, 9000, 8000 * 30).clip(-32768, 32767).astype(np.int16)
    frames = framed("inbound", speech)
    for i in range(40, len(frames) - 20, 37):
        frames[i], frames[i + 1] = frames[i + 1], frames[i]  # reordered
    del frames[300:306]  # a 120 ms hole, filled with silence
    as_l16 = [(t, ts, ulaw_to_pcm16(p).astype(">i2").tobytes()) for t, ts, p in frames]
    both = interleave(framed("inbound", speech[:80000]), framed("outbound", speech[80000:160000]))
    for wire, stream, tracks in (
        (ULAW, frames, ["inbound"]),
        (l16("big"), as_l16, ["inbound"]),
        (ULAW, both, ["inbound", "outbound"]),
    ):
        mixer = Mixer(tracks, 8000, wire, render_samples=1600)
        blocks = sourced = kept = sent = 0
        for frame in stream:
            out = mixer.push(*frame)
            if len(out):
                blocks += 1
                source = mixer.source
                if source is not None:
                    sourced += 1
                    assert source.render() == pcm16_bytes(out)
                    kept += sum(len(t.history) + len(t.block) for t in source.tracks)
                    sent += 2 * len(out)
        assert blocks >= 45 and sourced >= blocks - 1  # the steady state: every block, or all but the first
        assert kept < sent * wire.width * len(tracks) / 4 * 1.1  # μ-law: a quarter of the PCM per party
        assert len(mixer.flush()) and mixer.source is None  # the tail is not one block
    assert mixer.limited_samples > 0  # the limiter was remade too


def test_timestamps_jumping_and_going_far_back_are_counted_not_fatal() -> None:
    x = with_click(silence(2.0), 1500)
    frames = framed("inbound", x)
    frames.insert(30, ("inbound", 10, frames[0][2]))  # far back: dropped
    frames.append(("inbound", 6_000, frames[5][2]))  # a jump of 4 s: filled
    frames.append(("inbound", 66_000, frames[6][2]))  # then one of 60 s: re-anchored, not filled
    y, mixer = mix(frames, ["inbound"])
    track = mixer.tracks["inbound"]
    assert track.stats.late_frames == 1
    assert track.stats.jumps == 1 and track.stats.discontinuities == 1
    assert len(y) == 2 * (6_000 * 8 + 2 * 160)
    assert abs(click_positions_ms(y, [1500])[0] - 1500) <= 1.0


def test_frames_of_any_size_and_jittered_timestamps_do_not_drift_over_an_hour() -> None:
    """60 minutes in 100 ms frames with ±3 ms timestamp jitter: clicks at the end are still exact."""
    n = 8000 * 60 * 60
    frame = 800
    clicks = {"inbound": (n - 6000) // 8, "outbound": (n - 3000) // 8}  # ms, in the last second
    rng = np.random.default_rng(3)
    mixer = Mixer(["inbound", "outbound"], 8000, ULAW)
    quiet = pcm16_to_ulaw(np.zeros(frame, dtype=np.int16))
    produced, kept = 0, []
    for i in range(0, n, frame):
        for track in ("outbound", "inbound"):
            payload = quiet
            if i <= clicks[track] * 8 < i + frame:
                x = np.zeros(frame, dtype=np.int16)
                x[clicks[track] * 8 - i] = 24000
                payload = pcm16_to_ulaw(x)
            jitter = int(rng.integers(-3, 4)) if i else 0
            out = mixer.push(track, i // 8 + jitter, payload)
            if produced + len(out) > 2 * n - 32000:
                kept.append((produced, out))
            produced += len(out)
    kept.append((produced, mixer.flush()))
    assert kept[-1][0] + len(kept[-1][1]) == 2 * n
    assert sum(mixer.gap_filled_ms().values()) == 0
    first = kept[0][0]
    tail = np.concatenate([chunk for _, chunk in kept])
    for ms in clicks.values():
        window = np.abs(tail[(ms - 20) * 16 - first : (ms + 20) * 16 - first].astype(np.int32))
        found_ms = ((ms - 20) * 16 + int(np.argmax(window))) / 16
        assert abs(found_ms - ms) <= 1.0


def test_loud_overlapping_parties_are_limited_not_wrapped() -> None:
    t = np.arange(8000) / 8000
    loud = np.rint(30000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    y, mixer = mix(interleave(framed("inbound", loud), framed("outbound", loud)), ["inbound", "outbound"])
    assert mixer.limited_samples > 0
    reference = soxr.resample(2 * ulaw_to_pcm16(pcm16_to_ulaw(loud)).astype(np.float64), 8000, 16000)
    core = slice(800, -800)
    # Same sign everywhere (no wrap-around), and a monotonic bend: louder in, louder out.
    assert np.all((np.sign(y[core]) == np.sign(np.rint(reference[core]))) | (np.abs(y[core]) < 50))
    order = np.argsort(np.abs(reference[core]))
    assert np.all(np.diff(np.abs(y[core].astype(int))[order]) >= -64)


@pytest.mark.anyio
async def test_a_two_track_call_reaches_eka_as_one_mono_mix(tmp_path: Path) -> None:
    inbound = load_ulaw(SAMPLES / "caller.wav")
    outbound = load_ulaw(SAMPLES / "clinician.wav")
    call = TwilioCall(tracks=["inbound", "outbound"])
    async with running(tmp_path) as h:
        await replay(h.twilio_url, plan_messages(call, inbound, outbound), pace=25.0)
        summary = await finished(h)
        session = h.only_session()

    pcm = received_pcm(session)
    assert len(pcm) == 2 * max(len(inbound), len(outbound))
    reference = sum(
        soxr.resample(ulaw_to_pcm16(x).astype(np.float64), 8000, 16000, quality="VHQ") for x in (inbound, outbound)
    )
    assert si_snr_db(pcm, reference) > 45
    assert summary["gap_filled_ms"] == {"inbound": 0, "outbound": 0}
    assert session.end_calls == 1


@pytest.mark.anyio
async def test_repeated_and_reordered_frames_on_the_wire_are_counted_and_change_nothing(tmp_path: Path) -> None:
    """Twilio messages out of order and repeated (chunk and timestamp): the audio is unchanged."""
    ulaw = load_ulaw(SAMPLES / "clinician.wav")[:16000]
    call = TwilioCall()
    connected, start, *media, stop = plan_messages(call, ulaw)
    messy = list(media)
    messy[10], messy[11] = messy[11], messy[10]  # one swap
    messy[40:40] = [messy[30], messy[31]]  # two repeats, long after their slot
    async with running(tmp_path) as h:
        await replay(h.twilio_url, [connected, start, *messy, stop], pace=25.0)
        summary = await finished(h)
        session = h.only_session()

    assert summary["chunk_regressions"] == 3  # the swapped-back frame and the two repeats
    assert summary["late_frames"] == 2 and summary["reordered_frames"] == 1
    assert summary["gap_filled_ms"] == {"inbound": 0}
    reference = soxr.resample(ulaw_to_pcm16(ulaw).astype(np.float64), 8000, 16000, quality="VHQ")
    pcm = received_pcm(session)
    assert len(pcm) == 2 * len(ulaw) and si_snr_db(pcm, reference) > 45
