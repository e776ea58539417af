"""End to end: call simulator → bridge → EkaScribe emulator, all real servers on loopback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import soxr

from bridge.audio.codec import pcm16_to_ulaw, ulaw_to_pcm16
from bridge.providers.twilio.simulator import TwilioCall, plan_messages, replay
from tests.harness import CLIENT_SECRET, Harness, assert_processed_whole, running

pytestmark = pytest.mark.anyio

PACE = 25.0  # 25× real time: a 2 s call takes 80 ms
CALL_TIMEOUT = 20.0


def speech_like(seconds: float, seed: int = 3) -> np.ndarray:
    """Voiced-speech stand-in: a gliding harmonic series under a syllable envelope, band-limited."""
    rate = 8000
    t = np.arange(int(rate * seconds)) / rate
    f0 = 130 + 30 * np.sin(2 * np.pi * 0.9 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum((1 / k) * np.sin(k * phase) * (k * 160 < 3300) for k in range(1, 21))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 3.1 * t + seed) ** 2
    x = x * envelope
    return np.rint(x / np.max(np.abs(x)) * 14000).astype(np.int16)


def ulaw_call(seconds: float, seed: int = 3) -> bytes:
    return pcm16_to_ulaw(speech_like(seconds, seed))


def reference_16k(ulaw: bytes) -> np.ndarray:
    """What an ideal resampler makes of exactly what was sent."""
    return soxr.resample(ulaw_to_pcm16(ulaw).astype(np.float64), 8000, 16000, quality="VHQ")


def si_snr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    n = min(len(estimate), len(reference))
    est, ref = estimate[:n].astype(np.float64), reference[:n].astype(np.float64)
    scale = np.dot(est, ref) / np.dot(ref, ref)
    noise = est - scale * ref
    return float(10 * np.log10(np.sum((scale * ref) ** 2) / np.sum(noise**2)))


def received_pcm(session) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.frombuffer(bytes(session.audio), dtype="<i2")


async def finished(h: Harness, count: int = 1) -> dict:
    summaries = await h.bridge.calls.wait_finished(count, timeout=CALL_TIMEOUT)
    return summaries[-1]


async def test_full_call_reaches_eka_intact_and_is_ended_once(tmp_path: Path) -> None:
    audio = ulaw_call(3.0)
    call = TwilioCall(custom_parameters={"patient_oid": "PAT-42", "not_allowed": "x"})
    async with running(tmp_path, templates=("clinical_notes_template",)) as h:
        result = await replay(h.twilio_url, plan_messages(call, audio), pace=PACE)
        summary = await finished(h)
        session = h.only_session()

    assert result.completed and result.close_code == 1000
    pcm = received_pcm(session)
    # Duration matches within 40 ms (it is in fact exact), content matches an ideal resampler.
    assert abs(len(pcm) / 16000 - len(audio) / 8000) <= 0.040
    assert len(pcm) == 2 * len(audio)
    assert si_snr_db(pcm, reference_16k(audio)) > 45
    # End Session exactly once, and only after the stream socket had closed.
    assert session.end_calls == 1
    assert h.emulator.count("end") == 1
    assert session.stream_closed_at is not None and session.ended_at is not None
    assert session.stream_closed_at <= session.ended_at
    assert_processed_whole(session)  # and all of it was processed: End came after the server's flush
    assert session.audio_files_sent == 0
    # The session carries the call's identity and only allow-listed parameters.
    body = session.request
    assert body["upload_type"] == "stream" and body["communication_protocol"] == "websocket"
    assert body["session_mode"] == "consultation"
    assert body["templates"] == ["clinical_notes_template"]
    assert body["additional_data"]["call_sid"] == call.call_sid
    assert body["additional_data"]["stream_sid"] == call.stream_sid
    assert body["patient_details"] == {"oid": "PAT-42"}
    assert "not_allowed" not in json.dumps(body)
    # A WAV a person can listen to.
    assert session.wav_path is not None and session.wav_path.exists()
    # The summary line.
    assert summary["end_status"] == "ended" and summary["end_reason"] == "stop"
    assert summary["frames"] == len(audio) // 160
    assert summary["bytes_relayed"] == 2 * len(pcm)
    assert summary["gap_filled_ms"] == {"inbound": 0}
    assert summary["end_latency_ms"] is not None


async def test_every_log_line_of_a_call_carries_its_ids_and_no_secrets(tmp_path: Path) -> None:
    audio = ulaw_call(1.0)
    call = TwilioCall()
    async with running(tmp_path) as h:
        await replay(h.twilio_url, plan_messages(call, audio), pace=PACE)
        await finished(h)
        session = h.only_session()
        events = h.logs.events

    call_lines = [e for e in events if e.get("call_sid") == call.call_sid]
    assert {e["event"] for e in call_lines} >= {
        "call_started",
        "eka_session_created",
        "upstream_connected",
        "upstream_flushed",
        "eka_session_ended",
        "call_summary",
    }
    for line in call_lines:
        assert "session_id" in line
        if line["event"] == "eka_result":  # the result poller: off the stream, after the call
            assert line["stream_sid"] is None and line["session_id"] == session.session_id
        else:
            assert line["stream_sid"] == call.stream_sid
    after_create = call_lines[[e["event"] for e in call_lines].index("eka_session_created") :]
    assert all(e["session_id"] == session.session_id for e in after_create)
    (summary,) = [e for e in call_lines if e["event"] == "call_summary"]
    for field in ("duration_s", "frames", "bytes_relayed", "gap_filled_ms", "end_status", "end_latency_ms"):
        assert field in summary
    text = repr(events)
    assert CLIENT_SECRET not in text
    assert "payload" not in text


async def test_socket_dropped_without_stop_still_ends_the_session_once(tmp_path: Path) -> None:
    audio = ulaw_call(3.0)
    async with running(tmp_path) as h:
        result = await replay(h.twilio_url, plan_messages(TwilioCall(), audio), pace=PACE, drop_after_s=1.0)
        summary = await finished(h)
        session = h.only_session()

    assert result.closed_by == "abort"
    assert summary["end_reason"] == "socket_closed" and summary["end_status"] == "ended"
    assert session.end_calls == 1
    # Everything the bridge received before the drop, and nothing more, reached Eka.
    received_bytes = summary["bytes_in"]
    assert 0.8 * result.bytes_sent["inbound"] <= received_bytes <= result.bytes_sent["inbound"]
    pcm = received_pcm(session)
    assert len(pcm) == 2 * received_bytes
    assert si_snr_db(pcm, reference_16k(audio[:received_bytes])) > 45
    assert_processed_whole(session)


async def test_create_failing_then_succeeding_is_retried(tmp_path: Path) -> None:
    audio = ulaw_call(1.0)
    async with running(tmp_path) as h:
        h.emulator.faults.fail("create", 503, count=2)
        await replay(h.twilio_url, plan_messages(TwilioCall(), audio), pace=PACE)
        summary = await finished(h)
        session = h.only_session()
        creates_503 = h.emulator.count("create", 503)
        creates_201 = h.emulator.count("create", 201)

    assert (creates_503, creates_201) == (2, 1)
    assert summary["end_status"] == "ended"
    # Audio that arrived while the session was being created was buffered, not dropped.
    assert len(received_pcm(session)) == 2 * len(audio)
    assert session.end_calls == 1


async def test_rate_limited_create_honours_retry_after(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        h.emulator.faults.fail("create", 429, count=1, retry_after=0.3)
        await replay(h.twilio_url, plan_messages(TwilioCall(), ulaw_call(0.5)), pace=PACE)
        await finished(h)
        creates = [r for r in h.emulator.requests if r.op == "create"]
        retries = h.logs.named("eka_retry")

    assert [r.status for r in creates] == [429, 201]
    assert creates[1].at - creates[0].at >= 0.3
    assert retries and retries[0]["reason"] == "http_429"


async def test_end_failing_then_succeeding_is_retried(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        h.emulator.faults.fail("end", 500, count=1)
        await replay(h.twilio_url, plan_messages(TwilioCall(), ulaw_call(1.0)), pace=PACE)
        summary = await finished(h)
        session = h.only_session()
        ends = [(r.status) for r in h.emulator.requests if r.op == "end"]

    assert ends == [500, 202]
    assert session.end_calls == 1 and session.status in ("processing", "completed")
    assert summary["end_status"] == "ended"


async def test_a_401_mid_call_renews_the_token_and_tries_once_more(tmp_path: Path) -> None:
    audio = ulaw_call(2.0)
    async with running(tmp_path) as h:
        calling = asyncio.create_task(replay(h.twilio_url, plan_messages(TwilioCall(), audio), pace=5.0))
        await h.emulator.wait_for(lambda: any(s.stream_connections for s in h.emulator.sessions.values()), 10)
        h.emulator.revoke_tokens()  # the token in the bridge's cache is now refused
        await calling
        summary = await finished(h)
        session = h.only_session()
        ends = [r.status for r in h.emulator.requests if r.op == "end"]
        renewals = h.emulator.count("refresh") + h.emulator.count("login")

    assert ends == [401, 202]
    assert renewals == 2  # the first login, then one renewal after the 401
    assert summary["end_status"] == "ended" and session.end_calls == 1
    assert len(received_pcm(session)) == 2 * len(audio)


async def test_malformed_input_is_counted_and_the_call_goes_on(tmp_path: Path) -> None:
    audio = ulaw_call(1.0)
    call = TwilioCall()
    plan = plan_messages(call, audio)
    connected, start, *media, stop = plan
    hostile: list = [
        connected,
        (0.0, {"event": "media", "media": {"track": "inbound", "payload": "//8="}}),  # before start
        start,
        (0.0, "{not json"),
        (0.0, '["a", "list"]'),
        (0.0, {"event": "media", "media": {"track": "inbound", "payload": "@@not base64@@"}}),
        (0.0, {"event": "someFutureEvent", "data": {}}),
        (0.0, {"event": "mark", "mark": {"name": "m1"}}),
        (0.0, {"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "5"}}),
        (0.0, b"\x00\x01binary"),
        *media,
        stop,
    ]
    async with running(tmp_path) as h:
        result = await replay(h.twilio_url, hostile, pace=PACE)
        summary = await finished(h)
        session = h.only_session()
        warnings = h.logs.named("bad_stream_message")
        ignored = h.logs.named("stream_event_ignored")

    assert result.completed and result.close_code == 1000
    assert summary["bad_messages"] == {
        "media_before_start": 1,
        "bad_json": 1,
        "bad_message": 1,
        "bad_base64": 1,
        "binary_frame": 1,
    }
    assert {w["reason"] for w in warnings} == set(summary["bad_messages"])
    assert [i["stream_event"] for i in ignored] == ["someFutureEvent"]
    assert summary["end_status"] == "ended"
    assert len(received_pcm(session)) == 2 * len(audio)


async def test_a_call_whose_session_cannot_be_created_is_read_to_its_end(tmp_path: Path) -> None:
    audio = ulaw_call(1.0)
    async with running(tmp_path, create_budget_s=0.5) as h:
        h.emulator.faults.fail("create", 503, count=1000)
        result = await replay(h.twilio_url, plan_messages(TwilioCall(), audio), pace=PACE)
        summary = await finished(h)
        failures = h.logs.named("call_failed")

    assert result.completed and result.close_code == 1000  # Twilio saw a healthy socket
    assert summary["end_status"] == "not_created"
    assert summary["failure"].startswith("create_session: http_503")
    assert summary["frames"] == len(audio) // 160
    assert failures[0]["stage"] == "create_session"


async def test_json_wire_mode_sends_start_and_stop(tmp_path: Path) -> None:
    audio = ulaw_call(1.0)
    async with running(tmp_path) as h:  # the default
        await replay(h.twilio_url, plan_messages(TwilioCall(), audio), pace=PACE)
        await finished(h)
        session = h.only_session()

    assert session.wire_mode == "json" and session.stop_received
    assert session.sample_rate == 16000
    assert len(received_pcm(session)) == 2 * len(audio)
    assert session.end_calls == 1
