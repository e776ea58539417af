"""The EkaScribe emulator, exercised as a real server on loopback: HTTP via httpx, streams via websockets."""

from __future__ import annotations

import argparse
import base64
import json
import time
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge.emulator import EmulatedSession, Emulator, EmulatorOptions
from bridge.emulator.cli import add_arguments, apply_faults, options_from
from bridge.emulator.faults import Faults
from tests.servers import serve

pytestmark = pytest.mark.anyio

WAIT = 5.0  # every wait is bounded by this


@asynccontextmanager
async def running(emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(emulator.app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=WAIT) as client:
        yield client


def make(tmp_path: Path, **options: object) -> Emulator:
    """An emulator writing WAVs under ``tmp_path``; streams flush in 50 ms unless a test says otherwise."""
    options.setdefault("flush_delay_s", 0.05)
    return Emulator(EmulatorOptions(audio_dir=tmp_path / "audio", **options))  # type: ignore[arg-type]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.post("/connect-auth/v1/account/login", json={"client_id": "cid", "client_secret": "sec"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def create_stream(client: httpx.AsyncClient, token: str, **fields: object) -> dict[str, Any]:
    request = {"upload_type": "stream", "templates": ["clinical_notes_template"], **fields}
    response = await client.post("/voice/v1/sessions", json=request, headers=bearer(token))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def tone(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()


async def close_code(ws: ClientConnection) -> tuple[int, str]:
    """Wait (bounded) for the server to close; the server never sends messages, so any recv ends in a close."""
    with pytest.raises(ConnectionClosed) as closed:
        await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


def only(emulator: Emulator) -> EmulatedSession:
    (session,) = emulator.sessions.values()
    return session


# Auth ---------------------------------------------------------------------------


async def test_login_refresh_revoke(tmp_path: Path) -> None:
    emulator = make(tmp_path)
    async with running(emulator) as client:
        grant = await login(client)
        assert set(grant) == {"access_token", "expires_in", "refresh_expires_in", "refresh_token"}
        assert grant["expires_in"] == 1800 and grant["refresh_expires_in"] == 86400
        await create_stream(client, grant["access_token"])

        emulator.revoke_tokens()
        denied = await client.post(
            "/voice/v1/sessions", json={"upload_type": "stream"}, headers=bearer(grant["access_token"])
        )
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "unauthorized"

        refreshed = await client.post(
            "/connect-auth/v1/account/refresh-token",
            json={"refresh_token": grant["refresh_token"], "access_token": grant["access_token"]},
            headers={**bearer(grant["access_token"]), "Client-Id": "cid"},
        )
        assert refreshed.status_code == 200, refreshed.text
        new_token = refreshed.json()["access_token"]
        assert new_token != grant["access_token"]
        await create_stream(client, new_token)

        no_client_id = await client.post(
            "/connect-auth/v1/account/refresh-token",
            json={"refresh_token": grant["refresh_token"]},
            headers=bearer(grant["access_token"]),
        )
        assert no_client_id.status_code == 400 and no_client_id.json()["code"] == 400

        legacy = await client.post("/connect-auth/v1/account/refresh", json={"refresh_token": grant["refresh_token"]})
        assert legacy.status_code == 200
        bad = await client.post("/connect-auth/v1/account/refresh", json={"refresh_token": "nope"})
        assert bad.status_code == 401 and set(bad.json()) == {"code", "error"}

    assert emulator.count("login", 200) == 1
    assert emulator.count("refresh") == 4 and emulator.count("refresh", 200) == 2
    assert emulator.count("create", 401) == 1


async def test_login_credentials_expiry_and_static_tokens(tmp_path: Path) -> None:
    emulator = make(
        tmp_path, client_id="cid", client_secret="sec", token_ttl_s=0, static_tokens=frozenset({"long-lived"})
    )
    async with running(emulator) as client:
        wrong = await client.post("/connect-auth/v1/account/login", json={"client_id": "cid", "client_secret": "x"})
        assert wrong.status_code == 401 and wrong.json()["code"] == 401
        missing = await client.post("/connect-auth/v1/account/login", json={"client_id": "cid"})
        assert missing.status_code == 400

        grant = await login(client)
        assert grant["expires_in"] == 0
        expired = await client.get("/voice/v1/sessions/whatever", headers=bearer(grant["access_token"]))
        assert expired.status_code == 401
        await create_stream(client, "long-lived")


# Create -------------------------------------------------------------------------


async def test_create_session_and_validation(tmp_path: Path) -> None:
    emulator = make(tmp_path)
    async with running(emulator) as client:
        token = (await login(client))["access_token"]

        async def create(body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
            return await client.post(
                "/voice/v1/sessions", json=body, headers=bearer(token) if headers is None else headers
            )

        no_type = await create({"templates": ["clinical_notes_template"]})
        assert no_type.status_code == 400
        assert no_type.json()["error"]["code"] == "invalid_request"
        assert "upload_type" in no_type.json()["error"]["message"]
        assert (await create({"upload_type": "stream", "templates": ["a", "b", "c"]})).status_code == 400
        assert (await create({"upload_type": "stream", "session_id": "short"})).status_code == 400
        assert (await create({"upload_type": "stream", "model": "huge"})).status_code == 400
        assert (await create({"upload_type": "stream"}, headers={})).status_code == 401

        created = await create_stream(
            client,
            token,
            session_id="call-0123456789abcdef",
            patient_details={"oid": "PAT-1"},
            additional_data={"source": "phone"},
        )
        assert created["session_id"] == "call-0123456789abcdef"
        assert created["status"] == "created"
        assert created["patient_details"] == {"oid": "PAT-1"}
        assert created["upload_url"].startswith(
            f"ws://{client.base_url.host}:{client.base_url.port}/voice/v1/stream/sessions/str_"
        )
        assert (await create({"upload_type": "stream", "session_id": "call-0123456789abcdef"})).status_code == 409

        session = emulator.sessions["call-0123456789abcdef"]
        assert session.additional_data["source"] == "phone"
        assert session.additional_data["_protocol"]["communication_protocol"] == "websocket"
        assert session.request["additional_data"] == {"source": "phone"}

        generated = await create_stream(client, token)
        assert generated["session_id"].startswith("ses_") and len(generated["session_id"]) == 24
        assert "patient_details" not in generated


# Streaming ----------------------------------------------------------------------


async def test_binary_stream_lands_in_session_and_wav(tmp_path: Path) -> None:
    emulator = make(tmp_path)
    pcm = tone(1.0)
    async with running(emulator) as client:
        created = await create_stream(client, (await login(client))["access_token"])
        async with connect(created["upload_url"]) as ws:  # no Authorization header: accepted
            for start in range(0, len(pcm), 640):
                await ws.send(pcm[start : start + 640])
        session = emulator.sessions[created["session_id"]]
        await emulator.wait_for(lambda: session.flushed_at is not None, timeout=WAIT)

    assert bytes(session.audio) == pcm
    assert bytes(session.stored) == pcm and session.stored_chunk_sizes == [len(pcm)]  # 1 s < chunk_s: one flush
    assert session.wire_mode == "binary" and session.sample_rate == 16000
    assert session.audio_seconds == pytest.approx(1.0) and session.stored_seconds == pytest.approx(1.0)
    assert session.processed_audio == b"" and session.processed_seconds == 0  # nothing is processed before End
    assert session.stream_connections == 1 and not session.stop_received
    assert session.server_closed_at is None  # the client closed: the server had no close to send
    assert session.wav_path == tmp_path / "audio" / f"{session.session_id}.wav"
    with wave.open(str(session.wav_path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        assert wav.getnframes() == 16000
        assert wav.readframes(wav.getnframes()) == pcm


async def test_json_stream_at_8k_then_reconnect_and_unknown_are_refused(tmp_path: Path) -> None:
    emulator = make(tmp_path)
    pcm = tone(0.5, rate=8000)
    async with running(emulator) as client:
        created = await create_stream(client, (await login(client))["access_token"])
        url = created["upload_url"]
        async with connect(url) as ws:
            await ws.send(
                json.dumps(
                    {"event": "start", "start": {"mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 8000}}}
                )
            )
            await ws.send("not json")
            await ws.send(json.dumps({"event": "mark", "mark": {"name": "x"}}))
            await ws.send(json.dumps({"event": "media", "media": {"payload": ""}}))
            for start in range(0, len(pcm), 320):
                payload = base64.b64encode(pcm[start : start + 320]).decode()
                await ws.send(json.dumps({"event": "media", "media": {"payload": payload}}))
            await ws.send(json.dumps({"event": "stop", "reason": "hangup"}))
            assert await close_code(ws) == (1000, "")

        session = emulator.sessions[created["session_id"]]
        assert session.stream_closed_at is not None  # finalized before the close was sent
        assert session.flushed_at is not None and session.server_closed_at is not None
        assert session.server_closed_at >= session.flushed_at
        assert bytes(session.audio) == pcm and bytes(session.stored) == pcm
        assert (session.wire_mode, session.sample_rate) == ("json", 8000)
        assert session.audio_seconds == pytest.approx(0.5)
        assert session.stop_received and session.stop_reason == "hangup"
        assert session.ignored_frames == 3
        assert session.wav_path is not None
        with wave.open(str(session.wav_path), "rb") as wav:
            assert (wav.getframerate(), wav.getnframes()) == (8000, 4000)

        async with connect(url) as ws:  # finalized: the registration is gone, as in Eka's OSS server
            assert await close_code(ws) == (4000, "unknown stream_id")
        async with connect(url.replace(created["upload_url"].split("/")[-2], "str_unknown")) as ws:
            assert await close_code(ws) == (4000, "unknown stream_id")
    assert session.stream_connections == 1
    assert emulator.count("stream", 1000) == 1 and emulator.count("stream", 4000) == 2


# End and Get --------------------------------------------------------------------


async def test_end_then_repeat_and_unknown(tmp_path: Path) -> None:
    emulator = make(tmp_path, processing_s=60)
    async with running(emulator) as client:
        token = (await login(client))["access_token"]
        created = await create_stream(client, token)
        sid = created["session_id"]
        async with connect(created["upload_url"]) as ws:
            await ws.send(tone(21.0))
        session = emulator.sessions[sid]
        await emulator.wait_for(lambda: session.stream_closed_at is not None, timeout=WAIT)
        assert session.stored_chunk_sizes == [20 * 32000, 32000]  # one full 20 s chunk, then the 1 s flush

        before = await client.get(f"/voice/v1/sessions/{sid}", headers=bearer(token))
        assert before.status_code == 202 and before.json()["status"] == "initialized"

        ended = await client.post(f"/voice/v1/sessions/{sid}/end", json={"audio_files_sent": 0}, headers=bearer(token))
        assert ended.status_code == 202
        assert ended.json() == {
            "session_id": sid,
            "status": "processing",
            "message": "Session ended. Processing started.",
            "audio_files_received": 2,
            "audio_files": ["0.m4a", "1.m4a"],
        }
        processing = await client.get(f"/voice/v1/sessions/{sid}", headers=bearer(token))
        assert processing.status_code == 202 and processing.json()["status"] == "processing"

        again = await client.post(f"/voice/v1/sessions/{sid}/end", headers=bearer(token))
        assert again.status_code == 400 and again.json()["error"]["code"] == "session_already_ended"
        bad_body = await client.post(
            f"/voice/v1/sessions/{sid}/end", json={"audio_files_sent": -1}, headers=bearer(token)
        )
        assert bad_body.status_code == 400
        unknown = await client.post("/voice/v1/sessions/ses_unknown/end", headers=bearer(token))
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "session_not_found"
        assert (await client.get("/voice/v1/sessions/ses_unknown", headers=bearer(token))).status_code == 404

    assert session.status == "processing" and session.end_calls == 3 and session.audio_files_sent == 0
    assert session.processed_audio == bytes(session.audio) and session.processed_seconds == pytest.approx(21.0)


async def test_get_completes_with_emulator_transcript(tmp_path: Path) -> None:
    emulator = make(tmp_path, processing_s=0.05)
    async with running(emulator) as client:
        token = (await login(client))["access_token"]
        created = await create_stream(
            client, token, templates=["eka_emr_template", "clinical_notes_template"], language_hint=["hi"]
        )
        sid = created["session_id"]
        async with connect(created["upload_url"]) as ws:
            await ws.send(tone(1.5))
        session = emulator.sessions[sid]
        await emulator.wait_for(lambda: session.stream_closed_at is not None, timeout=WAIT)
        assert (await client.post(f"/voice/v1/sessions/{sid}/end", headers=bearer(token))).status_code == 202
        await emulator.wait_for(lambda: session.status == "completed", timeout=WAIT)

        done = await client.get(f"/voice/v1/sessions/{sid}", headers=bearer(token))
        assert done.status_code == 200
        body = done.json()
        assert body["status"] == "completed" and body["language_detected"] == "hi" and body["model_used"] == "lite"
        assert body["transcript"] == (
            "EkaScribe emulator: no speech recognition was performed. "
            "Processed 1.50 s of audio at 16000 Hz in 1 stream connection(s)."
        )
        assert [list(t) for t in body["templates"]] == [["eka_emr_template"], ["clinical_notes_template"]]
        document = body["templates"][0]["eka_emr_template"]
        assert document["status"] == "success" and document["document_id"].startswith("doc_")
        assert document["data"]["emulated"] is True and document["data"]["audio_seconds"] == 1.5
        assert body["audio_files"] == ["0.m4a"]

        one = await client.get(
            f"/voice/v1/sessions/{sid}", params={"template_id": "clinical_notes_template"}, headers=bearer(token)
        )
        assert [list(t) for t in one.json()["templates"]] == [["clinical_notes_template"]]
        missing = await client.get(f"/voice/v1/sessions/{sid}", params={"template_id": "nope"}, headers=bearer(token))
        assert missing.status_code == 404


async def test_outcomes_and_the_signed_completion_webhook(tmp_path: Path) -> None:
    """``outcome`` makes processing end partial (206) or failed (200); each completion POSTs a
    signed v2rx.completed to ``webhook_url`` (spec §7), here a small receiver."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from bridge.signing import check

    key = "emulator-test-signing-key-000000"
    notes: list[tuple[bytes, str | None]] = []

    async def hook(request: Request) -> Response:
        notes.append((await request.body(), request.headers.get("eka-webhook-signature")))
        return Response(status_code=204)

    emulator = make(tmp_path, processing_s=3600, outcome="partial", webhook_signing_key=key)
    async with (
        running(emulator) as client,
        serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as hook_url,
    ):
        emulator.options.webhook_url = hook_url + "/hook"
        token = (await login(client))["access_token"]
        ids = []
        for outcome in ("partial", "failed"):
            emulator.options.outcome = outcome
            sid = (await create_stream(client, token, templates=["eka_emr_template", "clinical_notes_template"]))[
                "session_id"
            ]
            assert (await client.post(f"/voice/v1/sessions/{sid}/end", headers=bearer(token))).status_code == 202
            assert (await client.get(f"/voice/v1/sessions/{sid}", headers=bearer(token))).status_code == 202
            assert emulator.complete_processing() == 1
            ids.append(sid)
        partial, failed = [await client.get(f"/voice/v1/sessions/{sid}", headers=bearer(token)) for sid in ids]
        await emulator.wait_for(lambda: len(emulator.webhooks_sent) == 2, timeout=WAIT)

    assert partial.status_code == 206 and partial.json()["status"] == "partial"
    body = partial.json()
    assert [doc[name]["status"] for doc in body["templates"] for name in doc] == ["success", "failure"]
    assert body["audio_files_processed"] == 0 and len(body["processing_errors"]) == 1 and body["transcript"]
    assert failed.status_code == 200 and failed.json()["status"] == "failed" and failed.json()["transcript"] == ""
    assert [w.status for w in emulator.webhooks_sent] == [204, 204]
    for (raw, signature), sid, status in zip(notes, ids, ("partial", "failed"), strict=True):
        assert check(key, signature, raw, time.time()) is None
        assert json.loads(raw)["data"] == {"transaction_id": sid, "session_id": sid, "status": status}
        assert json.loads(raw)["event"] == "v2rx.completed"


async def test_repeat_end_can_reprocess(tmp_path: Path) -> None:
    emulator = make(tmp_path, processing_s=0, repeat_end="reprocess")
    async with running(emulator) as client:
        token = (await login(client))["access_token"]
        sid = (await create_stream(client, token))["session_id"]
        for _ in range(2):
            assert (await client.post(f"/voice/v1/sessions/{sid}/end", headers=bearer(token))).status_code == 202
    assert emulator.sessions[sid].end_calls == 2


# Faults and admin ---------------------------------------------------------------


async def test_faults_answer_then_recover(tmp_path: Path) -> None:
    emulator = make(tmp_path)
    emulator.faults.fail("create", 503, count=2)
    emulator.faults.fail("login", 429, retry_after=2)
    async with running(emulator) as client:
        limited = await client.post("/connect-auth/v1/account/login", json={"client_id": "a", "client_secret": "b"})
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "2"
        assert limited.json()["code"] == 429
        token = (await login(client))["access_token"]

        statuses = []
        for _ in range(3):
            response = await client.post("/voice/v1/sessions", json={"upload_type": "stream"}, headers=bearer(token))
            statuses.append(response.status_code)
            if response.status_code == 503:
                assert response.json()["error"]["code"] == "service_unavailable"
        assert statuses == [503, 503, 201]
    assert emulator.count("create", 503) == 2 and emulator.count("create", 201) == 1
    assert emulator.count("login", 429) == 1
    assert len(emulator.sessions) == 1


async def test_stream_faults(tmp_path: Path) -> None:
    emulator = make(tmp_path)
    emulator.faults.fail("stream", 503)  # handshake refused with HTTP 503
    emulator.faults.fail("stream", 4000)  # accepted, then closed with 4000
    emulator.faults.drop_stream_after(1000)
    async with running(emulator) as client:
        created = await create_stream(client, (await login(client))["access_token"])
        with pytest.raises(InvalidStatus) as refused:
            async with connect(created["upload_url"]):
                pass
        assert refused.value.response.status_code == 503
        async with connect(created["upload_url"]) as ws:
            assert (await close_code(ws))[0] == 4000
        async with connect(created["upload_url"]) as ws:
            await ws.send(b"\0" * 640)
            await ws.send(b"\0" * 640)
            assert (await close_code(ws))[0] == 1011
        async with connect(created["upload_url"]) as ws:  # refused at once, though the flush is still to come
            assert (await close_code(ws))[0] == 4000
        await emulator.wait_for(lambda: only(emulator).flushed_at is not None, timeout=WAIT)
    assert len(only(emulator).audio) == 1280 and only(emulator).stream_connections == 1
    assert len(only(emulator).stored) == 1280
    # The dropped socket is recorded when its handler returns, after its flush.
    assert [r.status for r in emulator.requests if r.op == "stream"] == [503, 4000, 4000, 1011]


async def test_admin_api_and_health(tmp_path: Path) -> None:
    emulator = make(tmp_path)
    async with running(emulator) as client:
        assert (await client.get("/healthz")).status_code == 200
        token = (await login(client))["access_token"]
        sid = (await create_stream(client, token))["session_id"]
        listed = (await client.get("/_emulator/sessions")).json()["sessions"]
        assert [s["session_id"] for s in listed] == [sid] and listed[0]["audio_seconds"] == 0
        assert listed[0]["processed_seconds"] == 0 and listed[0]["processed_bytes"] is None

        added = await client.post("/_emulator/faults", json={"op": "get", "status": 500, "count": 1})
        assert added.status_code == 200
        assert (await client.get(f"/voice/v1/sessions/{sid}", headers=bearer(token))).status_code == 500
        assert (await client.get(f"/voice/v1/sessions/{sid}", headers=bearer(token))).status_code == 202
        assert (await client.post("/_emulator/faults", json={"op": "get"})).status_code == 400
    assert emulator.count("admin") == 3 and emulator.count("health") == 1


async def test_wait_for_times_out(tmp_path: Path) -> None:
    emulator = make(tmp_path)
    with pytest.raises(TimeoutError):
        await emulator.wait_for(lambda: False, timeout=0.01)


def test_cli_arguments_build_options() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--port", "0", "--static-token", "a", "--static-token", "b", "--processing-s", "0.5"])
    assert (args.host, args.port) == ("127.0.0.1", 0)
    options = options_from(args)
    assert options.static_tokens == frozenset({"a", "b"}) and options.processing_s == 0.5
    assert options.audio_dir == Path("emulator-audio")
    assert (options.chunk_s, options.flush_delay_s, options.session_ttl_s, options.expires_format) == (
        20.0,
        1.0,
        3600.0,
        "iso",
    )
    strict = options_from(
        parser.parse_args(
            ["--chunk-s", "10", "--flush-delay-s", "2.5", "--session-ttl-s", "60", "--expires-format", "unix"]
        )
    )
    assert (strict.chunk_s, strict.flush_delay_s, strict.session_ttl_s, strict.expires_format) == (10, 2.5, 60, "unix")
    with pytest.raises(ValueError, match="chunk_s"):
        options_from(parser.parse_args(["--chunk-s", "0"]))
    with pytest.raises(ValueError, match="flush_delay_s"):
        options_from(parser.parse_args(["--flush-delay-s", "-1"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--expires-format", "rfc2822"])


def test_cli_fault_knobs_queue_faults() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--fail", "create:503:5", "--fail", "end:429:2:1.5", "--delay", "login:0.2", "--drop-stream-after", "64000"]
    )
    faults = Faults()
    apply_faults(faults, args)
    pending = faults.pending()
    assert pending["failures"]["create"] == [{"status": 503, "remaining": 5, "retry_after": None}]
    assert pending["failures"]["end"] == [{"status": 429, "remaining": 2, "retry_after": 1.5}]
    assert pending["delays"] == {"login": 0.2}
    assert pending["stream_drops"] == [{"after_bytes": 64000, "remaining": 1, "keep_registration": False}]
    with pytest.raises(ValueError, match="--fail 'create'"):
        apply_faults(Faults(), parser.parse_args(["--fail", "create"]))


def test_a_stream_stall_is_queued_shown_and_validated() -> None:
    faults = Faults()
    faults.stall_stream_after(64000, 2.5)
    assert faults.pending()["stream_stalls"] == [{"after_bytes": 64000, "seconds": 2.5}]
    with pytest.raises(ValueError):
        faults.stall_stream_after(64000, 0)
    faults.clear()
    assert faults.pending()["stream_stalls"] == [] and faults.take_stall() is None


def test_the_cli_flags_become_options_and_bad_ones_are_refused(tmp_path: Path) -> None:
    import argparse

    from bridge.emulator import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(
        ["--chunk-s", "5", "--flush-delay-s", "0.2", "--session-ttl-s", "60", "--expires-format", "unix",
         "--audio-dir", str(tmp_path), "--processing-s", "0"]
    )  # fmt: skip
    options = cli.options_from(args)
    assert (options.chunk_s, options.flush_delay_s, options.session_ttl_s) == (5, 0.2, 60)
    assert options.expires_format == "unix" and options.audio_dir == tmp_path
    defaults = cli.options_from(parser.parse_args([]))
    assert (defaults.chunk_s, defaults.flush_delay_s, defaults.expires_format) == (20.0, 1.0, "iso")
    assert cli.run(parser.parse_args(["--chunk-s", "0"])) == 2  # refused before it listens


async def test_the_fault_admin_api_adds_lists_and_clears_and_refuses_bad_bodies(tmp_path: Path) -> None:
    emulator = make(tmp_path)
    async with running(emulator) as client:
        added = [
            await client.post("/_emulator/faults", json={"op": "create", "status": 503, "count": 2, "retry_after": 1}),
            await client.post("/_emulator/faults", json={"op": "end", "delay_s": 0.5}),
            await client.post("/_emulator/faults", json={"drop_stream_after_bytes": 640, "keep_registration": True}),
        ]
        bad = [
            await client.post("/_emulator/faults", content=b"not json"),
            await client.post("/_emulator/faults", json=[1]),
            await client.post("/_emulator/faults", json={"status": 503}),
            await client.post("/_emulator/faults", json={"op": "end", "status": True}),
            await client.post("/_emulator/faults", json={"op": "end", "delay_s": "soon"}),
        ]
        listed = (await client.get("/_emulator/faults")).json()
        cleared = (await client.delete("/_emulator/faults")).json()
        revoked = await client.post("/_emulator/revoke-tokens")

    assert all(r.status_code == 200 for r in added)
    assert [r.status_code for r in bad] == [400] * 5
    assert listed and listed != cleared
    assert revoked.status_code == 200 and revoked.json() == {"revoked": True}
