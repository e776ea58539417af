"""Hostile streams, each attack through real sockets: the service stays up and responsive, a
legitimate call beside the attack is processed whole, memory stays bounded, every slot is
released, and no hostile string is kept at full length.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.live.call import Call
from bridge.providers.events import (
    MAX_ID_CHARS,
    Dtmf,
    Mark,
    Media,
    MediaFormat,
    StreamEvent,
    StreamStart,
    StreamStop,
    Unknown,
)
from bridge.providers.twilio.simulator import TwilioCall, plan_messages, replay
from tests.harness import Harness, assert_processed_whole, running
from tests.live.test_call import ulaw_call


def _coverage_running() -> bool:
    coverage = sys.modules.get("coverage")
    return coverage is not None and coverage.Coverage.current() is not None


pytestmark = pytest.mark.anyio
QUICK_FLUSH = {"flush_delay_s": 0.05}
#: /healthz must answer within this while an attack runs. The budget is 100 ms on a quiet
#: machine; here the attacker, the bridge and the emulator share one event loop, and the suite
#: runs four workers on two cores, so the test allows that noise; under coverage's tracing
#: (the PostgreSQL pass of `make test`) every Python line costs about twice as much.
HEALTH_BOUND_S = 0.5 * (2 if sys.gettrace() is not None or _coverage_running() else 1)
#: Resident memory one attack may add to the test process (bridge and emulator together).
RSS_BOUND_KB = 64 * 1024


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class HealthProbe:
    """Asks /healthz every 25 ms while an attack runs; keeps the slowest answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.slowest_s = 0.0
        self.answers = 0

    @asynccontextmanager
    async def running(self) -> AsyncIterator[HealthProbe]:
        task = asyncio.create_task(self._probe())
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _probe(self) -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                began = time.monotonic()
                response = await http.get(self.url + "/healthz")
                assert response.status_code == 200
                self.slowest_s = max(self.slowest_s, time.monotonic() - began)
                self.answers += 1
                await asyncio.sleep(0.025)


def twilio_messages(call: TwilioCall, seconds: float = 1.0) -> list[dict[str, Any]]:
    return [m for _, m in plan_messages(call, ulaw_call(seconds))]


async def under_attack(h: Harness, attack: Callable[[], Any]) -> tuple[HealthProbe, dict[str, Any], int]:
    """Run ``attack`` beside a legitimate 3 s call; returns the probe, that call's summary and
    the RSS growth. The legitimate call must be processed whole."""
    legit = TwilioCall()
    rss_before = rss_kb()
    async with HealthProbe(h.bridge_url).running() as probe:
        honest = asyncio.create_task(replay(h.twilio_url, plan_messages(legit, ulaw_call(3.0)), pace=2))
        await attack()
        await asyncio.wait_for(honest, 20)
        await h.bridge.calls.wait_idle(20)
    grown = rss_kb() - rss_before
    summary = next(s for s in h.bridge.calls.summaries if s["call_sid"] == legit.call_sid)
    session = next(s for s in h.emulator.sessions.values() if s.additional_data.get("call_sid") == legit.call_sid)
    assert summary["end_status"] == "ended"
    assert len(session.audio) == 4 * 8000 * 3
    assert_processed_whole(session)
    assert probe.answers > 0 and probe.slowest_s < HEALTH_BOUND_S, probe.slowest_s
    assert len(h.bridge.calls.active) == 0
    return probe, summary, grown


async def test_an_unsupported_rate_is_refused_with_a_close_code_and_releases_its_slot(tmp_path: Path) -> None:
    async with running(tmp_path, emulator_options=QUICK_FLUSH, max_calls=20) as h:

        async def attack() -> None:
            for rate in [44100] * 30 + [-8000, 12345, 10**12]:
                call = TwilioCall()
                messages = twilio_messages(call)
                messages[1]["start"]["mediaFormat"] = {"encoding": "audio/x-l16", "sampleRate": rate}
                messages = [m for m in messages if m["event"] != "stop"]  # wait for the server's refusal
                result = await replay(
                    h.twilio_url, [(0.0, m) for m in messages], pace=1000, close_after=False, server_close_timeout=5
                )
                assert result.close_code == 1003 and result.closed_by == "server"

        _, _, grown = await under_attack(h, attack)
        refused = [s for s in h.bridge.calls.summaries if s["end_reason"] == "refused"]
        counts = dict(h.bridge.rejections)

    assert len(refused) == 33 and all(s["end_status"] == "no_start" for s in refused)
    assert counts["stream:unsupported_format"] == 33 and "message:internal_error" not in counts
    assert len(h.emulator.sessions) == 1  # only the legitimate call's
    assert grown < RSS_BOUND_KB


async def test_thousands_of_track_names_cost_nothing_and_make_no_party(tmp_path: Path) -> None:
    async with running(tmp_path, emulator_options=QUICK_FLUSH) as h:
        call = TwilioCall()

        async def attack() -> None:
            messages = twilio_messages(call, 2.0)
            messages[1]["start"]["tracks"] = [f"t{i}" for i in range(5000)]
            for i, m in enumerate(messages):
                if m["event"] == "media":
                    m["media"]["track"] = f"party-{i}-" + "x" * 200  # a new name every frame
            await replay(h.twilio_url, [(0.0, m) for m in messages], pace=1000)

        _, _, grown = await under_attack(h, attack)
        summary = next(s for s in h.bridge.calls.summaries if s["call_sid"] == call.call_sid)

    assert summary["ignored_track_frames"] == 100 and summary["end_status"] == "no_audio"
    assert summary["gap_filled_ms"] == {}  # no party was ever made: none of the names is one
    assert grown < RSS_BOUND_KB


async def test_timestamps_far_ahead_are_discontinuities_not_minutes_of_silence(tmp_path: Path) -> None:
    async with running(tmp_path, emulator_options=QUICK_FLUSH) as h:
        call = TwilioCall(tracks=["inbound", "outbound"])

        async def attack() -> None:
            messages = twilio_messages(call, 2.0)
            media = [m for m in messages if m["event"] == "media"]
            for i, m in enumerate(media):  # each frame 59 s after the one before
                m["media"]["timestamp"] = str(59_000 * i)
                m["media"]["track"] = "inbound" if i % 2 else "outbound"  # and a late party, too
            await replay(h.twilio_url, [(0.0, m) for m in messages], pace=1000)

        _, _, grown = await under_attack(h, attack)
        summary = next(s for s in h.bridge.calls.summaries if s["call_sid"] == call.call_sid)
        session = next(s for s in h.emulator.sessions.values() if s.additional_data["call_sid"] == call.call_sid)

    assert summary["clock_discontinuities"] >= 90
    assert sum(summary["gap_filled_ms"].values()) < 1000
    # 100 frames of 20 ms on two tracks: about 1 s of mixed audio, never 97 minutes.
    assert session.audio_seconds < 3
    assert grown < RSS_BOUND_KB


async def test_ids_and_names_from_the_wire_are_cut_everywhere_they_go(tmp_path: Path) -> None:
    huge = "C" * 40_000
    async with running(tmp_path, emulator_options=QUICK_FLUSH, ws_max_bytes=256 * 1024, api_key="k" * 32) as h:
        call = TwilioCall(call_sid=huge, stream_sid="M" * 40_000, tracks=["inbound"] + ["n" * 40_000] * 3)
        await replay(h.twilio_url, [(0.0, m) for m in twilio_messages(call)], pace=1000)
        (summary,) = await h.bridge.calls.wait_finished(1, 20)
        session = h.only_session()
        async with httpx.AsyncClient(base_url=h.bridge_url, headers={"Authorization": "Bearer " + "k" * 32}) as http:
            listing = await http.get("/calls", params={"limit": 500})
        lines = [json.dumps(e, default=str) for e in h.logs.events]

    assert session.additional_data["call_sid"] == huge[:MAX_ID_CHARS]
    assert len(session.additional_data["stream_sid"]) == MAX_ID_CHARS
    assert summary["call_sid"] == huge[:MAX_ID_CHARS]
    assert max(len(line) for line in lines) < 8 * 1024  # no log line carries a hostile string whole
    assert listing.status_code == 200 and len(listing.content) < 16 * 1024


async def test_ids_with_nul_characters_are_recorded_without_them(tmp_path: Path) -> None:
    """JSON may carry ``\u0000``; a PostgreSQL text column cannot: the id is kept without it."""
    async with running(tmp_path, emulator_options=QUICK_FLUSH) as h:
        call = TwilioCall(call_sid="CA\x00" + "f" * 32)
        await replay(h.twilio_url, plan_messages(call, ulaw_call(0.5)), pace=25)
        (summary,) = await h.bridge.calls.wait_finished(1, 20)
        records = await h.bridge.ledger.call_records(call_sid="CA" + "f" * 32)

    assert summary["call_sid"] == "CA" + "f" * 32 and summary["end_status"] == "ended"
    assert len(records) == 1 and len(records[0]["sessions"]) == 1
    assert_processed_whole(h.only_session())


async def test_a_socket_that_never_starts_is_closed_and_counted(tmp_path: Path) -> None:
    async with running(tmp_path, emulator_options=QUICK_FLUSH, start_timeout_s=0.3) as h:
        result = await replay(h.twilio_url, [(0.0, {"event": "connected"})], close_after=False, server_close_timeout=5)
        await h.bridge.calls.wait_finished(1, 5)
        counts = dict(h.bridge.rejections)

    assert result.closed_by == "server" and result.close_code == 1008
    assert counts == {"stream:no_start": 1} and not h.emulator.sessions
    assert len(h.bridge.calls.active) == 0


async def test_streams_that_carry_no_audio_open_no_session(tmp_path: Path) -> None:
    async with running(tmp_path, emulator_options=QUICK_FLUSH) as h:
        for _ in range(20):
            messages = [m for m in twilio_messages(TwilioCall()) if m["event"] != "media"]
            await replay(h.twilio_url, [(0.0, m) for m in messages], pace=1000)
        summaries = await h.bridge.calls.wait_finished(20, 10)

    assert not h.emulator.sessions and h.emulator.count("create") == 0
    assert all(s["end_status"] == "no_audio" and s["end_reason"] == "stop" for s in summaries)


async def test_a_second_stream_for_a_live_call_is_refused_never_a_second_session(tmp_path: Path) -> None:
    async with running(tmp_path, emulator_options=QUICK_FLUSH) as h:
        call = TwilioCall()
        first = asyncio.create_task(replay(h.twilio_url, plan_messages(call, ulaw_call(3.0)), pace=1))
        await h.emulator.wait_for(lambda: len(h.emulator.sessions) == 1, 10)
        duplicate = [(0.0, m) for m in twilio_messages(call) if m["event"] != "stop"]
        second = await replay(h.twilio_url, duplicate, pace=1000, close_after=False, server_close_timeout=5)
        await asyncio.wait_for(first, 10)
        await h.bridge.calls.wait_finished(2, 10)
        counts = dict(h.bridge.rejections)
        session = h.only_session()

    assert second.close_code == 1008 and second.closed_by == "server"
    assert counts == {"stream:duplicate_call": 1}
    assert_processed_whole(session)
    assert len(session.audio) == 4 * 8000 * 3  # the first stream's audio only, whole


async def test_a_partial_http_request_is_dropped_after_the_request_timeout(tmp_path: Path) -> None:
    async with running(tmp_path, emulator_options=QUICK_FLUSH, request_timeout_s=0.3) as h:
        host, port = h.bridge_url.removeprefix("http://").split(":")
        began = time.monotonic()
        readers = []
        for _ in range(20):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /twilio/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")  # never finished
            readers.append((reader, writer))
        for reader, _ in readers:
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        elapsed = time.monotonic() - began
        for _, writer in readers:
            writer.close()
        counts = dict(h.bridge.rejections)

    assert 0.3 <= elapsed < 3
    assert counts == {"http:request_timeout": 20}


# --- Call itself, with arbitrary event sequences ---------------------------------------------

TRACKS = st.sampled_from(["inbound", "outbound", "both", "", "x" * 100])
FORMATS = st.builds(
    MediaFormat,
    st.sampled_from(["audio/x-mulaw", "audio/x-l16", "audio/pcmu", "audio/opus", ""]),
    st.sampled_from([8000, 16000, 44100, 0, -8000, 2**40]),
)
STARTS = st.builds(
    StreamStart,
    call_id=st.text(max_size=80),
    stream_id=st.text(max_size=80),
    account_id=st.just("AC"),
    tracks=st.lists(TRACKS, max_size=6).map(tuple),
    media_format=FORMATS,
)
MEDIA = st.builds(
    Media,
    track=TRACKS,
    payload=st.binary(max_size=700),
    timestamp_ms=st.one_of(st.none(), st.integers(-(2**40), 2**40), st.integers(0, 600_000)),
    chunk=st.one_of(st.none(), st.integers(-5, 10**6)),
)
EVENTS: st.SearchStrategy[StreamEvent] = st.one_of(
    MEDIA, MEDIA, MEDIA, STARTS, st.just(StreamStop()), st.builds(Mark, st.text(max_size=5)),
    st.builds(Dtmf, TRACKS, st.text(max_size=2)), st.builds(Unknown, st.text(max_size=200)),
)  # fmt: skip


async def test_any_sequence_of_events_finishes_releases_and_stays_bounded(tmp_path: Path) -> None:
    """Whatever arrives, in whatever order: ``finish()`` returns a summary, the slot is released,
    no per-call structure outgrows its bound, and every session opened is ended once."""
    async with running(tmp_path, emulator_options=QUICK_FLUSH, vobiz_l16_byte_order="auto") as h:
        bridge = h.bridge
        provider = bridge.provider("vobiz")  # L16 with byte-order detection: the path with the most state

        @settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.lists(EVENTS, max_size=60), st.sampled_from(["stop", "socket_closed", "idle_timeout"]))
        def property_(events: list[StreamEvent], reason: str) -> None:
            import anyio.from_thread

            anyio.from_thread.run(one, copy.deepcopy(events), reason)

        async def one(events: list[StreamEvent], reason: str) -> None:
            call: Call = bridge._new_call(provider)
            await bridge.calls.add(call)
            for event in events:
                bridge._apply(call, event)
                check_bounds(call)
            await bridge._finish(call, reason)
            assert call not in bridge.calls.active
            summary = bridge.calls.summaries[-1]
            assert summary["end_status"] in ("ended", "no_start", "no_audio"), summary
            assert "internal_error" not in summary.get("bad_messages", {}), summary
            assert len(json.dumps(summary, default=str)) < 4096

        def check_bounds(call: Call) -> None:
            mixer = call.mixer
            if mixer is not None:
                assert len(mixer.tracks) <= 2
                assert all(len(t.pending) < 16000 * 120 for t in mixer.tracks.values())
            assert len(call.queue) <= call.queue.max_bytes
            assert len(call._held) <= 2001
            assert len(call.ignored_events) <= 17

        import anyio.to_thread

        await anyio.to_thread.run_sync(property_)
        await bridge.calls.wait_idle(10)

    for session in h.emulator.sessions.values():
        assert session.end_calls == 1


async def test_a_start_in_the_same_read_as_an_oversized_message_is_not_lost(tmp_path: Path) -> None:
    async with running(tmp_path, emulator_options=QUICK_FLUSH, ws_max_bytes=4096) as h:
        call = TwilioCall()
        connected, start = twilio_messages(call)[:2]
        oversized = json.dumps({"event": "media", "pad": "x" * 5000})
        plan = [(0.0, connected), (0.0, start), (0.0, oversized)]
        result = await replay(h.twilio_url, plan, pace=1000, close_after=False, server_close_timeout=5)
        (summary,) = await h.bridge.calls.wait_finished(1, 10)
        counts = dict(h.bridge.rejections)
        started = h.logs.named("call_started")

    assert result.close_code == 1009
    assert counts == {"stream:message_too_big": 1}
    assert len(started) == 1 and started[0]["call_sid"] == call.call_sid  # the start was applied
    assert summary["call_sid"] == call.call_sid and summary["end_status"] == "no_audio"


async def test_tiny_l16_frames_cannot_hold_the_byte_order_decision_open(tmp_path: Path) -> None:
    """Vobiz L16 with byte-order detection, fed 2-byte frames: every frame counts towards the
    decision, which falls back to the documented order at the frame cap; nothing piles up."""
    from bridge.audio.byteorder import MAX_HELD_FRAMES
    from bridge.providers.vobiz.simulator import VobizCall
    from bridge.providers.vobiz.simulator import plan_messages as vobiz_plan

    async with running(tmp_path, emulator_options=QUICK_FLUSH, vobiz_l16_byte_order="auto") as h:
        url = h.bridge_url.replace("http://", "ws://") + "/vobiz/stream"

        async def attack() -> None:
            plan = vobiz_plan(VobizCall(), np.zeros(8000, dtype=np.int16), content_type="audio/x-l16;rate=8000")
            start, media = plan[0][1], plan[1][1]
            tiny = []
            for i in range(MAX_HELD_FRAMES + 500):
                message = copy.deepcopy(media)
                message["media"]["payload"] = "AAE="  # two bytes
                message["media"]["timestamp"] = str(int(message["media"]["timestamp"]) + i // 8)
                tiny.append((0.0, message))
            await replay(url, [(0.0, start), *tiny], pace=1000)

        _, _, grown = await under_attack(h, attack)
        decided = h.logs.named("l16_byte_order_detected")

    assert len(decided) == 1 and decided[0]["byte_order"] == "big"
    assert decided[0]["evidence"]["rule"] == "fallback_frame_cap"
    assert grown < RSS_BOUND_KB
