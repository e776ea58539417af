"""The end of a stream, as strict and as slow as Eka's server (spec §3.6): the flush race.

Audio reaches storage in ``chunk_s`` chunks; a connection's last partial chunk only
``flush_delay_s`` after its receive loop ends. After ``stop`` the server closes only once
that flush is done; a client that closes first is answered at once and never told about
the flush. End processes what storage holds when it arrives; later chunks are lost.
Real servers on loopback, short chunks and delays; every wait bounded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import wave
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from websockets.asyncio.client import ClientConnection, connect

from bridge.emulator import EmulatedSession, Emulator
from tests.emulator.test_emulator import WAIT, bearer, close_code, create_stream, login, make, running, tone

pytestmark = pytest.mark.anyio

CHUNK_S = 0.5
FRAME_S = 0.02


def wav_frames(path: Path | None) -> tuple[int, bytes]:
    assert path is not None
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        return wav.getframerate(), wav.readframes(wav.getnframes())


async def send_audio(ws: ClientConnection, pcm: bytes, wire: str, rate: int) -> None:
    """Binary frames, or the JSON envelope with ``start`` declaring the rate; 20 ms a frame."""
    step = int(FRAME_S * rate) * 2
    if wire == "json":
        await ws.send(
            json.dumps({"event": "start", "start": {"mediaFormat": {"encoding": "audio/x-l16", "sampleRate": rate}}})
        )
    for start in range(0, len(pcm), step):
        frame = pcm[start : start + step]
        if wire == "json":
            await ws.send(json.dumps({"event": "media", "media": {"payload": base64.b64encode(frame).decode()}}))
        else:
            await ws.send(frame)


async def open_stream_session(
    emulator: Emulator, client: httpx.AsyncClient
) -> tuple[str, dict[str, Any], str, EmulatedSession]:
    """Log in and create a stream session: (token, Create's body, session id, the emulator's record)."""
    token = (await login(client))["access_token"]
    created = await create_stream(client, token)
    return token, created, created["session_id"], emulator.sessions[created["session_id"]]


async def send_stop(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"event": "stop", "reason": "hangup"}))


async def received(emulator: Emulator, session: EmulatedSession, n_bytes: int) -> None:
    await emulator.wait_for(lambda: len(session.audio) == n_bytes, timeout=WAIT)


async def test_stop_then_close_only_after_the_flush_and_end_processes_everything(tmp_path: Path) -> None:
    """Eka's SDK way: stop, wait for the server's close, then End: nothing is lost."""
    emulator = make(tmp_path, chunk_s=CHUNK_S, flush_delay_s=0.4, processing_s=0)
    pcm = tone(1.2)
    async with running(emulator) as client:
        token, created, sid, session = await open_stream_session(emulator, client)
        async with connect(created["upload_url"]) as ws:
            await send_audio(ws, pcm, "binary", 16000)
            await received(emulator, session, len(pcm))
            assert session.stored_chunk_sizes == [16000, 16000]  # two whole 0.5 s chunks; 0.2 s still pending
            stopped = time.monotonic()
            await send_stop(ws)
            await emulator.wait_for(lambda: session.stop_received, timeout=WAIT)
            assert session.flushed_at is None and len(session.stored) == 32000  # the flush takes 0.4 s
            assert await close_code(ws) == (1000, "")
            waited = time.monotonic() - stopped
        assert waited >= 0.4 - 0.01, waited
        assert session.flushed_at is not None and session.server_closed_at is not None
        assert session.flushed_at >= stopped + 0.4 - 0.01 and session.server_closed_at >= session.flushed_at

        ended = await client.post(f"/voice/v1/sessions/{sid}/end", json={"audio_files_sent": 0}, headers=bearer(token))
        assert ended.status_code == 202
        assert ended.json()["audio_files"] == ["0.m4a", "1.m4a", "2.m4a"] and ended.json()["audio_files_received"] == 3
        await emulator.wait_for(lambda: session.status == "completed", timeout=WAIT)
        body = (await client.get(f"/voice/v1/sessions/{sid}", headers=bearer(token))).json()

    assert session.stored_chunk_sizes == [16000, 16000, 6400]
    assert session.processed_audio == pcm and session.audio_bytes_at_end == len(pcm)
    assert session.processed_seconds == pytest.approx(1.2) and session.lost_after_end_bytes == 0
    assert "Processed 1.20 s of audio at 16000 Hz" in body["transcript"]
    assert body["templates"][0]["clinical_notes_template"]["data"]["audio_seconds"] == 1.2
    assert wav_frames(session.wav_path) == (16000, pcm)


async def test_client_closes_first_answered_at_once_and_end_loses_the_tail(tmp_path: Path) -> None:
    """The race: the close is answered before the flush, End lists only whole chunks, the tail is lost."""
    emulator = make(tmp_path, chunk_s=CHUNK_S, flush_delay_s=1.0, processing_s=0)
    pcm = tone(1.2)
    with structlog.testing.capture_logs() as logs:
        async with running(emulator) as client:
            token = (await login(client))["access_token"]
            created = await create_stream(client, token)
            sid = created["session_id"]
            session = emulator.sessions[sid]
            async with connect(created["upload_url"]) as ws:
                await send_audio(ws, pcm, "binary", 16000)
                await received(emulator, session, len(pcm))
                closing = time.monotonic()
                await ws.close()  # returns once the server's close frame is in
                answered = time.monotonic() - closing
            assert answered < 0.5, answered  # the WebSocket layer answers; the flush takes 1.0 s

            ended = await client.post(
                f"/voice/v1/sessions/{sid}/end", json={"audio_files_sent": 0}, headers=bearer(token)
            )
            assert ended.status_code == 202
            assert ended.json()["audio_files"] == ["0.m4a", "1.m4a"]
            assert session.flushed_at is None and session.server_closed_at is None
            assert session.processed_audio == pcm[:32000] and session.processed_seconds == pytest.approx(1.0)

            await emulator.wait_for(lambda: session.flushed_at is not None, timeout=WAIT)  # no signal to the client
            await emulator.wait_for(lambda: session.status == "completed", timeout=WAIT)
            body = (await client.get(f"/voice/v1/sessions/{sid}", headers=bearer(token))).json()

    assert session.flushed_at is not None and session.flushed_at - closing >= 1.0 - 0.01
    assert session.server_closed_at is None  # no stop: the server never closes
    assert bytes(session.stored) == pcm and session.stored_chunk_sizes == [16000, 16000, 6400]  # storage has it ...
    assert session.processed_audio == pcm[:32000]  # ... processing never will
    assert session.lost_after_end_bytes == 6400 and session.lost_after_end_seconds == pytest.approx(0.2)
    lost = [entry for entry in logs if entry["event"] == "audio_lost_after_end"]
    assert len(lost) == 1 and lost[0]["log_level"] == "warning"
    assert lost[0]["session_id"] == sid and lost[0]["seconds"] == pytest.approx(0.2)
    assert body["audio_files"] == ["0.m4a", "1.m4a"] and body["audio_files_received"] == 2
    assert "Processed 1.00 s of audio" in body["transcript"]
    assert wav_frames(session.wav_path) == (16000, session.processed_audio)  # the WAV is what was processed


async def test_stop_then_the_client_closes_before_the_flush(tmp_path: Path) -> None:
    """A client that gives up waiting: its close is answered at once, the server sends none; the
    flush still lands, and an End after it (the client's settle time) processes everything."""
    emulator = make(tmp_path, chunk_s=CHUNK_S, flush_delay_s=0.6, processing_s=3600)
    pcm = tone(0.7)
    async with running(emulator) as client:
        token, created, sid, session = await open_stream_session(emulator, client)
        async with connect(created["upload_url"]) as ws:
            await send_audio(ws, pcm, "binary", 16000)
            await send_stop(ws)
            await ws.send(b"\0" * 640)  # after stop: never read as audio
            await emulator.wait_for(lambda: session.frames_after_stop == 1, timeout=WAIT)
            closing = time.monotonic()
            await ws.close(4001, "gave up waiting")
            answered = time.monotonic() - closing
        assert answered < 0.3, answered
        assert session.flushed_at is None
        await emulator.wait_for(lambda: session.flushed_at is not None, timeout=WAIT)
        assert (await client.post(f"/voice/v1/sessions/{sid}/end", headers=bearer(token))).status_code == 202

    assert session.stop_received and session.server_closed_at is None
    assert bytes(session.audio) == pcm and session.processed_audio == pcm and session.lost_after_end_bytes == 0
    assert [r.status for r in emulator.requests if r.op == "stream"] == [4001]  # the client's close, not ours


@pytest.mark.parametrize("wire", ["binary", "json"])
@pytest.mark.parametrize("seconds", [0.3, 0.55], ids=["under-one-chunk", "just-over-one-chunk"])
@pytest.mark.parametrize("ending", ["stop", "client-close"])
async def test_short_calls_by_how_they_end(tmp_path: Path, wire: str, seconds: float, ending: str) -> None:
    """Shorter than one chunk, all of a call is in the flush; just over one, only the tail is.

    JSON mode at 8 kHz: chunks are ``chunk_s`` at the session's rate.
    """
    rate = 16000 if wire == "binary" else 8000
    chunk_bytes = int(CHUNK_S * rate) * 2
    emulator = make(tmp_path, chunk_s=CHUNK_S, flush_delay_s=0.3, processing_s=3600)
    pcm = tone(seconds, rate)
    async with running(emulator) as client:
        token, created, sid, session = await open_stream_session(emulator, client)
        async with connect(created["upload_url"]) as ws:
            await send_audio(ws, pcm, wire, rate)
            await received(emulator, session, len(pcm))
            if ending == "stop":
                await send_stop(ws)
                assert (await close_code(ws))[0] == 1000
        ended = await client.post(f"/voice/v1/sessions/{sid}/end", headers=bearer(token))
        assert ended.status_code == 202
        await emulator.wait_for(lambda: session.flushed_at is not None, timeout=WAIT)

    whole = len(pcm) // chunk_bytes * chunk_bytes
    expected = pcm if ending == "stop" else pcm[:whole]
    assert (session.wire_mode, session.sample_rate) == (wire, rate)
    assert session.processed_audio == expected
    assert ended.json()["audio_files_received"] == (
        len(session.stored_chunk_sizes) if ending == "stop" else whole // chunk_bytes
    )
    assert session.lost_after_end_bytes == len(pcm) - len(expected)
    assert bytes(session.stored) == pcm
    if expected:
        assert wav_frames(session.wav_path) == (rate, expected)
    else:
        assert session.wav_path is None  # nothing processed, nothing written


async def test_drop_closes_first_then_flushes_and_reconnections_flush_their_own(tmp_path: Path) -> None:
    """The injected drop: 1011 at once, the flush later; a reconnect (keep_registration) has its own buffer."""
    emulator = make(tmp_path, chunk_s=CHUNK_S, flush_delay_s=0.5, processing_s=3600)
    first, second = tone(0.7), tone(0.6)
    emulator.faults.drop_stream_after(len(first), keep_registration=True)
    async with running(emulator) as client:
        token, created, sid, session = await open_stream_session(emulator, client)
        async with connect(created["upload_url"]) as ws:
            await send_audio(ws, first, "binary", 16000)
            assert (await close_code(ws))[0] == 1011
            assert session.flushed_at is None and session.stored_chunk_sizes == [16000]  # 0.2 s still pending
        async with connect(created["upload_url"]) as ws:  # accepted: the registration was kept
            await send_audio(ws, second, "binary", 16000)
            await send_stop(ws)
            assert (await close_code(ws))[0] == 1000
        ended = await client.post(f"/voice/v1/sessions/{sid}/end", headers=bearer(token))
        assert ended.status_code == 202

    assert session.stream_connections == 2 and session.open_streams == 0
    assert sorted(session.stored_chunk_sizes) == [3200, 6400, 16000, 16000]  # each connection flushed its own
    assert len(session.processed_audio) == len(first) + len(second) and session.lost_after_end_bytes == 0
    assert ended.json()["audio_files_received"] == 4


async def test_reprocessing_end_lists_storage_again(tmp_path: Path) -> None:
    """With ``repeat_end="reprocess"`` (OSS), a second End picks up what the flush stored late; so does the WAV."""
    emulator = make(tmp_path, chunk_s=CHUNK_S, flush_delay_s=0.3, processing_s=3600, repeat_end="reprocess")
    pcm = tone(1.2)
    async with running(emulator) as client:
        token, created, sid, session = await open_stream_session(emulator, client)
        async with connect(created["upload_url"]) as ws:
            await send_audio(ws, pcm, "binary", 16000)
            await received(emulator, session, len(pcm))
        first = await client.post(f"/voice/v1/sessions/{sid}/end", headers=bearer(token))
        assert first.json()["audio_files_received"] == 2 and session.processed_audio == pcm[:32000]
        assert wav_frames(session.wav_path) == (16000, pcm[:32000])
        await emulator.wait_for(lambda: session.flushed_at is not None, timeout=WAIT)
        assert session.lost_after_end_bytes == 6400 and wav_frames(session.wav_path) == (16000, pcm[:32000])
        again = await client.post(f"/voice/v1/sessions/{sid}/end", headers=bearer(token))
        assert again.status_code == 202 and again.json()["audio_files_received"] == 3

    assert session.processed_audio == pcm
    assert session.lost_after_end_bytes == 6400  # it reached storage after the first End all the same
    assert wav_frames(session.wav_path) == (16000, pcm)


@pytest.mark.parametrize("expires_format", ["iso", "unix"])
async def test_expires_at_format(tmp_path: Path, expires_format: str) -> None:
    """Create Session writes expires_at as documented (ISO 8601) or as OSS does (Unix seconds); Get stays ISO."""
    emulator = make(tmp_path, session_ttl_s=120, expires_format=expires_format)
    async with running(emulator) as client:
        token = (await login(client))["access_token"]
        created = await create_stream(client, token)
        session = emulator.sessions[created["session_id"]]
        got = (await client.get(f"/voice/v1/sessions/{session.session_id}", headers=bearer(token))).json()

    expected = session.created_at.timestamp() + 120
    if expires_format == "unix":
        assert type(created["expires_at"]) is int
        assert created["expires_at"] == int(expected)
    else:
        assert isinstance(created["expires_at"], str) and created["expires_at"].endswith("Z")
        assert datetime.fromisoformat(created["expires_at"]).timestamp() == int(expected)
    assert isinstance(created["created_at"], str)
    assert datetime.fromisoformat(got["expires_at"]).timestamp() == int(expected)


async def test_end_after_expiry_is_410_and_processes_nothing(tmp_path: Path) -> None:
    emulator = make(tmp_path, session_ttl_s=0.5, flush_delay_s=0, processing_s=0)
    pcm = tone(0.2)
    async with running(emulator) as client:
        token = (await login(client))["access_token"]
        created = await create_stream(client, token)
        unused = await create_stream(client, token)  # connected to only once it has expired
        sid = created["session_id"]
        session = emulator.sessions[sid]
        async with connect(created["upload_url"]) as ws:
            await send_audio(ws, pcm, "binary", 16000)
            await send_stop(ws)
            assert (await close_code(ws))[0] == 1000
        assert bytes(session.stored) == pcm

        # Time itself is the event here: wait out both sessions' lifetime.
        last = emulator.sessions[unused["session_id"]].expires_at
        await asyncio.sleep(max(0.0, (last - datetime.now(UTC)).total_seconds()) + 0.01)
        late = await client.post(f"/voice/v1/sessions/{sid}/end", json={"audio_files_sent": 0}, headers=bearer(token))
        assert late.status_code == 410 and late.json()["error"]["code"] == "session_expired"
        got = await client.get(f"/voice/v1/sessions/{sid}", headers=bearer(token))
        assert got.status_code == 410 and got.json()["status"] == "expired"
        async with connect(unused["upload_url"]) as ws:
            assert await close_code(ws) == (4000, "unknown stream_id")

    assert session.status == "created" and session.ended_at is None and session.end_calls == 1
    assert session.processed_audio == b"" and session.audio_bytes_at_end is None and session.processed_seconds == 0


async def test_admin_reports_received_and_processed(tmp_path: Path) -> None:
    emulator = make(tmp_path, chunk_s=CHUNK_S, flush_delay_s=0.3, processing_s=3600)
    pcm = tone(0.7)
    async with running(emulator) as client:
        token, created, sid, session = await open_stream_session(emulator, client)
        async with connect(created["upload_url"]) as ws:
            await send_audio(ws, pcm, "binary", 16000)
            await received(emulator, session, len(pcm))
        assert (await client.post(f"/voice/v1/sessions/{sid}/end", headers=bearer(token))).status_code == 202
        await emulator.wait_for(lambda: session.flushed_at is not None, timeout=WAIT)
        (summary,) = (await client.get("/_emulator/sessions")).json()["sessions"]
        (arrivals,) = (await client.get("/_emulator/arrivals")).json()["sessions"]

    assert summary["audio_seconds"] == pytest.approx(0.7) and summary["stored_seconds"] == pytest.approx(0.7)
    assert summary["processed_seconds"] == pytest.approx(0.5) and summary["processed_bytes"] == 16000
    assert summary["lost_after_end_seconds"] == pytest.approx(0.2) and summary["stored_chunks"] == 2
    assert arrivals["audio_bytes"] == len(pcm) and arrivals["processed_bytes"] == 16000
    assert arrivals["lost_after_end_bytes"] == 6400 and arrivals["flushed_at"] == session.flushed_at
    assert arrivals["server_closed_at"] is None
