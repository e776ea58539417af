"""Nothing lost: upstream drops, storms, expiring tokens, a stalled upstream, End that cannot land.

Each test ends with the same two checks: every Eka session the call opened was ended exactly
once, and the audio EkaScribe holds covers the call with no gap (overlap at a seam is allowed).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from bridge.audio.codec import ULAW
from bridge.audio.mixer import Mixer
from bridge.providers.twilio.simulator import TwilioCall, plan_messages, replay
from tests.harness import Harness, assert_processed_whole, running
from tests.live.test_call import finished, received_pcm, ulaw_call

pytestmark = pytest.mark.anyio
PACE = 10.0


def expected_stream(ulaw: bytes, outbound: bytes | None = None) -> np.ndarray:
    """Exactly what the bridge sends for a call of ``ulaw`` (and ``outbound``, the other party,
    of the same length): the mixer is deterministic, whatever its blocks."""
    parties = {"inbound": ulaw} if outbound is None else {"inbound": ulaw, "outbound": outbound}
    mixer = Mixer(list(parties), 8000, ULAW)
    out = [
        mixer.push(track, i // 8, audio[i : i + 160])
        for i in range(0, len(ulaw), 160)
        for track, audio in parties.items()
    ]
    return np.concatenate([*out, mixer.flush()])


def assert_every_session_ended_once(h: Harness) -> None:
    assert h.emulator.sessions, "no session was created"
    for session in h.emulator.sessions.values():
        assert session.end_calls == 1, (session.session_id, session.end_calls)


def assert_covers_without_gap(parts: list[np.ndarray], full: np.ndarray) -> None:
    """Each part is a contiguous slice of ``full``; each starts no later than the previous ended;
    the first starts at 0 and the last ends at the end."""
    covered = 0
    for part in parts:
        start = find_slice(full, part, latest_start=covered)
        assert start <= covered, f"gap of {covered - start} samples"
        covered = start + len(part)
    assert covered == len(full)


def find_slice(full: np.ndarray, part: np.ndarray, latest_start: int) -> int:
    probe = part[:64]
    for start in range(latest_start, -1, -1):
        if np.array_equal(full[start : start + len(probe)], probe):
            assert np.array_equal(full[start : start + len(part)], part), "part is not a slice of the stream"
            return start
    raise AssertionError("part not found at or before the covered position")


async def test_upstream_drop_with_reconnect_refused_continues_in_a_new_session(tmp_path: Path) -> None:
    audio = ulaw_call(4.0)
    call = TwilioCall()
    async with running(tmp_path) as h:
        h.emulator.faults.drop_stream_after(2 * 32000)  # 2 s in; the reconnect then gets 4000
        await replay(h.twilio_url, plan_messages(call, audio), pace=PACE)
        summary = await finished(h)
        sessions = sorted(h.emulator.sessions.values(), key=lambda s: s.created_at)
        drops = h.logs.named("upstream_dropped")
        assert_every_session_ended_once(h)

    assert len(sessions) == 2
    first, second = sessions
    assert second.request["additional_data"]["call_sid"] == call.call_sid
    assert second.request["additional_data"]["part"] == 2
    assert second.request["additional_data"]["continues_session"] == first.session_id
    assert [s["session_id"] for s in summary["sessions"]] == [first.session_id, second.session_id]
    assert all(s["end_status"] == "ended" for s in summary["sessions"])
    assert summary["end_status"] == "ended" and summary["upstream_drops"] >= 1
    assert drops and drops[0]["reason"] == "close_1011"
    assert_covers_without_gap([received_pcm(first), received_pcm(second)], expected_stream(audio))
    # The lost socket gave no signal: its session was Ended only after the server's silent flush.
    assert_processed_whole(first, flushed_on_stop=False)
    assert_processed_whole(second)
    assert [s["finish"] for s in summary["sessions"]] == ["lost", "flushed"]
    assert [s["opened_because"] for s in summary["sessions"]] == ["call_start", "upstream_lost"]


@pytest.mark.parametrize("parties", [1, 2])
async def test_upstream_drop_with_reconnect_accepted_keeps_one_session(tmp_path: Path, parties: int) -> None:
    """The replay re-sends the last second bit for bit (made again from the wire audio it was
    mixed from), for one party and for two."""
    audio = ulaw_call(4.0)
    other = ulaw_call(4.0, seed=11) if parties == 2 else None
    call = TwilioCall(tracks=["inbound", "outbound"]) if other else TwilioCall()
    async with running(tmp_path) as h:
        h.emulator.faults.drop_stream_after(2 * 32000, keep_registration=True)
        await replay(h.twilio_url, plan_messages(call, audio, *([other] if other else [])), pace=PACE)
        summary = await finished(h)
        session = h.only_session()
        assert_every_session_ended_once(h)

    assert session.stream_connections == 2
    assert summary["replayed_bytes"] >= 32000
    assert_processed_whole(session)  # both connections' flushes, the lost one's included
    full = expected_stream(audio, other)
    got = received_pcm(session)
    seam = next(i for i in range(min(len(got), len(full))) if got[i] != full[i])  # where the replay begins
    assert_covers_without_gap([got[:seam], got[seam:]], full)


async def test_storms_of_5xx_and_429_on_create_and_end_are_weathered(tmp_path: Path) -> None:
    audio = ulaw_call(1.0)
    async with running(tmp_path) as h:
        faults = h.emulator.faults
        faults.fail("create", 503, count=4)
        faults.fail("create", 429, count=2, retry_after=0.05)
        faults.fail("create", 502, count=2)
        faults.fail("end", 500, count=4)
        faults.fail("end", 429, count=2, retry_after=0.05)
        await replay(h.twilio_url, plan_messages(TwilioCall(), audio), pace=PACE)
        summary = await finished(h)
        session = h.only_session()
        creates = [r.status for r in h.emulator.requests if r.op == "create"]
        ends = [r.status for r in h.emulator.requests if r.op == "end"]
        assert_every_session_ended_once(h)

    assert creates == [503] * 4 + [429] * 2 + [502] * 2 + [201]
    assert ends == [500] * 4 + [429] * 2 + [202]
    assert summary["end_status"] == "ended"
    assert_covers_without_gap([received_pcm(session)], expected_stream(audio))


async def test_an_end_that_runs_out_of_budget_is_recorded_and_swept_later(tmp_path: Path) -> None:
    audio = ulaw_call(1.0)
    async with running(tmp_path, end_budget_s=0.3, sweep_grace_s=0.0, sweep_interval_s=3600) as h:
        h.emulator.faults.fail("end", 503, count=10_000)
        await replay(h.twilio_url, plan_messages(TwilioCall(), audio), pace=PACE)
        summary = await finished(h)
        session = h.only_session()
        pending = await h.bridge.ledger.session(session.session_id)
        assert summary["end_status"] == "end_pending" and session.ended_at is None
        assert pending is not None and pending["state"] == "end_pending"

        h.emulator.faults.clear()  # Eka recovers; the sweeper finishes the job
        assert await asyncio.wait_for(h.bridge.sweeper.sweep_once(), 10) == 1
        assert await asyncio.wait_for(h.bridge.sweeper.sweep_once(), 10) == 0  # settled for good
        settled = await h.bridge.ledger.session(session.session_id)
        assert_every_session_ended_once(h)

    assert settled is not None and settled["state"] == "ended" and settled["end_status"] == "ended"


async def test_a_token_expiring_mid_call_is_renewed_without_losing_anything(tmp_path: Path) -> None:
    audio = ulaw_call(1.5)
    async with running(tmp_path, emulator_options={"token_ttl_s": 0.4}) as h:
        await replay(h.twilio_url, plan_messages(TwilioCall(), audio), pace=1.5)  # 1 s long
        summary = await finished(h)
        session = h.only_session()
        renewals = h.emulator.count("refresh", 200) + h.emulator.count("login", 200)
        assert_every_session_ended_once(h)

    assert renewals >= 2  # the first login, then at least one renewal before End
    assert summary["end_status"] == "ended"
    assert_covers_without_gap([received_pcm(session)], expected_stream(audio))


async def test_a_stalled_upstream_keeps_memory_bounded_and_counts_what_it_drops(tmp_path: Path) -> None:
    audio = ulaw_call(3.0)
    async with running(tmp_path, buffer_max_s=0.5) as h:
        h.emulator.faults.delay("stream", 1.5)  # the stream socket takes 1.5 s to answer
        await replay(h.twilio_url, plan_messages(TwilioCall(), audio), pace=1.5)  # 2 s long
        summary = await finished(h)
        session = h.only_session()
        warnings = h.logs.named("audio_dropped")
        assert_every_session_ended_once(h)
        call_outbox_bound = int(0.5 * 32000)

    assert summary["dropped_bytes"] > 0
    assert len(warnings) == 1  # one warning per episode, the total in the summary
    received = len(received_pcm(session)) * 2
    assert received + summary["dropped_bytes"] == 2 * 2 * len(audio)  # every byte delivered or counted
    assert summary["outbox_high_water_bytes"] <= call_outbox_bound


async def test_an_upstream_that_stops_reading_backs_up_and_loses_nothing(tmp_path: Path) -> None:
    """The media path writes full batches itself while the socket keeps up; once Eka stops
    reading and the socket backs up, the relay takes over and waits for the drain, the audio
    waiting in the call's buffer, and hands back when the socket has caught up."""
    audio = ulaw_call(120.0)  # ~5 MB of JSON upstream: more than loopback's send buffer takes
    async with running(tmp_path, emulator_rcvbuf=4096, buffer_max_s=300) as h:
        h.emulator.faults.stall_stream_after(64_000, 3.0)
        await replay(h.twilio_url, plan_messages(TwilioCall(), audio), pace=60)
        summary = await finished(h)
        session = h.only_session()
        assert_every_session_ended_once(h)

    assert summary["upstream_backed_up"] >= 1
    assert summary["dropped_bytes"] == 0 and summary["upstream_drops"] == 0
    assert_processed_whole(session)
    assert_covers_without_gap([received_pcm(session)], expected_stream(audio))


async def test_the_pcm_queue_bound_holds_whatever_arrives() -> None:
    from bridge.live.pcm_queue import PcmQueue

    box = PcmQueue(1000)
    for _ in range(100):
        box.put(b"\x01\x02" * 33)
    assert len(box) <= 1000 and box.high_water_bytes <= 1000
    assert box.dropped_bytes == 100 * 66 - len(box)
    held = len(box)
    box.close()
    sent = b""
    while (batch := await asyncio.wait_for(box.next_batch(300), 1)) is not None:
        sent += batch
    assert len(sent) == held and sent[:2] == b"\x01\x02"  # whole samples, newest audio kept


@pytest.mark.parametrize("status", [404, 410])
async def test_an_end_answered_gone_is_settled_not_retried(tmp_path: Path, status: int) -> None:
    async with running(tmp_path) as h:
        h.emulator.faults.fail("end", status, count=1)
        await replay(h.twilio_url, plan_messages(TwilioCall(), ulaw_call(0.5)), pace=PACE)
        summary = await finished(h)
        session = h.only_session()
        ends = [r.status for r in h.emulator.requests if r.op == "end"]
        row = await h.bridge.ledger.session(session.session_id)

    assert ends == [status]  # one answer that says "gone" ends the matter
    assert summary["sessions"][0]["end_status"] == "gone" and summary["end_status"] == "ended"
    assert row is not None and row["state"] == "ended" and row["end_status"] == "gone"
