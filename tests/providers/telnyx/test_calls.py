"""Telnyx calls end to end on real sockets: the signed TeXML webhook and its answer, a two-party
call whose frames arrive out of order processed whole, L16, a dropped socket, refused upgrades
and webhooks, start-up's word on missing credentials, and ``bridge simulate telnyx``."""

from __future__ import annotations

import argparse
import base64
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlencode

import anyio
import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from websockets.exceptions import InvalidStatus

from bridge.providers.telnyx.signature import signed_message
from bridge.providers.telnyx.simulator import TelnyxCall, auth_header, plan_messages, simulate_telnyx
from bridge.providers.twilio.simulator import replay
from bridge.simulator import cli
from bridge.simulator.audio import load_pcm16
from tests import SAMPLES
from tests.harness import Harness, assert_processed_whole, running
from tests.live.test_call import finished, received_pcm

pytestmark = pytest.mark.anyio

CALLER = SAMPLES / "caller.wav"
CLINICIAN = SAMPLES / "clinician.wav"
KEY = Ed25519PrivateKey.generate()
PUBLIC = base64.b64encode(KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
TOKEN = "TelnyxStreamToken0123456789"
CLINIC = "+13122123456"
DOCTOR = "+13125550100"
PACE = 25.0
LIMIT_S = 20.0
CREDENTIALS = {"telnyx_public_key": PUBLIC, "telnyx_stream_auth_token": TOKEN, "development": False}


def ws(h: Harness, path: str = "/telnyx/stream") -> str:
    return h.bridge_url.replace("http://", "ws://") + path


async def webhook(
    h: Harness, path: str, body: bytes, *, key: Ed25519PrivateKey | None = KEY, age_s: int = 0, json: bool = False
) -> httpx.Response:
    timestamp = str(int(time.time()) - age_s)
    headers = {"Content-Type": "application/json" if json else "application/x-www-form-urlencoded"}
    if key is not None:
        signature = base64.b64encode(key.sign(signed_message(timestamp, body))).decode()
        headers |= {"telnyx-signature-ed25519": signature, "telnyx-timestamp": timestamp}
    async with httpx.AsyncClient(timeout=LIMIT_S) as http:
        return await http.post(h.bridge_url + path, content=body, headers=headers)


async def test_an_answered_call_with_frames_out_of_order_is_processed_whole(tmp_path: Path) -> None:
    caller, clinician = load_pcm16(CALLER, 8000), load_pcm16(CLINICIAN, 8000)
    form = urlencode({"CallSid": "v3:abc", "AccountSid": "u-1", "From": "+13122010094", "To": CLINIC}).encode()
    async with running(tmp_path, forward_number=DOCTOR, **CREDENTIALS) as h:
        answered = await webhook(h, "/telnyx/voice", form)
        root = ET.fromstring(answered.content)
        stream = root.find("Start/Stream")
        assert stream is not None
        call = TelnyxCall(
            tracks=["inbound", "outbound"], custom_parameters={p.get("name", ""): p.get("value", "") for p in stream}
        )
        plan = plan_messages(call, caller, clinician, reorder=20)
        result = await replay(stream.get("url", ""), plan, pace=PACE)  # the token is in the URL's path
        summary = await finished(h)
        session = h.only_session()

    assert answered.status_code == 200 and [c.tag for c in root] == ["Say", "Start", "Dial"]
    assert stream.get("url") == ws(h, f"/telnyx/stream/{TOKEN}") and stream.get("codec") == "PCMU"
    assert (
        stream.get("track") == "both_tracks" and stream.get("statusCallback") == h.bridge_url + "/telnyx/stream-status"
    )
    assert root.findtext("Dial/Number") == DOCTOR
    assert result.completed and result.close_code == 1000 and summary["end_reason"] == "stop"
    assert summary["reordered_frames"] > 0 and summary["late_frames"] == 0  # every frame put back in its place
    assert summary["gap_filled_ms"] == {"inbound": 0, "outbound": 0}
    assert len(received_pcm(session)) == 2 * max(len(caller), len(clinician))
    extra = session.request["additional_data"]
    assert extra["provider"] == "telnyx" and extra["call_sid"] == call.call_control_id
    assert extra["stream_sid"] == call.stream_id  # stream_id comes from the top level of start
    assert_processed_whole(session)
    assert TOKEN not in repr(h.logs.events)


async def test_l16_16k_arrives_bit_exact_with_the_header_token(tmp_path: Path) -> None:
    source = load_pcm16(CALLER, 16000)
    async with running(tmp_path, **CREDENTIALS) as h:
        result = await simulate_telnyx(
            ws(h), CALLER, encoding="L16", sample_rate=16000, pace=PACE, reorder=5, stream_token=TOKEN
        )
        await finished(h)
        session = h.only_session()
    assert result.completed and np.array_equal(received_pcm(session), source)  # big-endian, reordered, exact
    assert_processed_whole(session)


async def test_a_dropped_socket_ends_the_call_once(tmp_path: Path) -> None:
    audio = load_pcm16(CALLER, 8000)
    async with running(tmp_path, **CREDENTIALS) as h:
        result = await replay(
            ws(h), plan_messages(TelnyxCall(), audio), pace=PACE, drop_after_s=1.0, extra_headers=auth_header(TOKEN)
        )
        summary = await finished(h)
        session = h.only_session()
    assert result.closed_by == "abort" and summary["end_reason"] == "socket_closed"
    assert len(received_pcm(session)) == 2 * summary["bytes_in"] > 0
    assert_processed_whole(session)


async def test_unauthenticated_and_forged_upgrades_are_refused_before_any_session(tmp_path: Path) -> None:
    plan = plan_messages(TelnyxCall(), load_pcm16(CALLER, 8000)[:4000])
    async with running(tmp_path, **CREDENTIALS) as h:
        attempts = [
            (ws(h), {}),
            (ws(h), auth_header("NotTheToken000000000000")),
            (ws(h, "/telnyx/stream/NotTheToken000000000000"), {}),
        ]
        for url, headers in attempts:
            with pytest.raises(InvalidStatus) as refused:
                await replay(url, plan, pace=PACE, extra_headers=headers)
            assert refused.value.response.status_code == 403
        assert h.emulator.count("create") == 0 and not h.emulator.sessions
        await replay(ws(h), plan, pace=PACE, extra_headers=auth_header(TOKEN))
        await finished(h)
        counts = dict(h.bridge.rejections)
    assert h.only_session().end_calls == 1
    assert counts == {"telnyx_stream:token_missing": 1, "telnyx_stream:token_invalid": 2}


async def test_webhooks_need_a_fresh_ed25519_signature(tmp_path: Path) -> None:
    form = urlencode({"CallSid": "v3:x", "To": "+13125557777"}).encode()
    status = (
        b'{"CallSid": "v3:x", "StreamSid": "s-1", "StreamEvent": "stream-started", "Timestamp": "2026-01-01T00:00:00Z"}'
    )
    async with running(tmp_path, forward_number=DOCTOR, **CREDENTIALS) as h:
        good = await webhook(h, "/telnyx/voice", form)
        missing = await webhook(h, "/telnyx/voice", form, key=None)
        forged = await webhook(h, "/telnyx/voice", form, key=Ed25519PrivateKey.generate())
        stale = await webhook(h, "/telnyx/voice", form, age_s=600)
        json_ok = await webhook(h, "/telnyx/stream-status", status, json=True)
        lines = h.logs.named("telnyx_stream_status")
        counts = dict(h.bridge.rejections)
    assert good.status_code == 200 and json_ok.status_code == 204
    assert (missing.status_code, forged.status_code, stale.status_code) == (403, 403, 403)
    assert counts == {
        "telnyx_voice:signature_missing": 1,
        "telnyx_voice:signature_invalid": 1,
        "telnyx_voice:signature_stale": 1,
    }
    assert [(line["stream_event"], line["stream_sid"]) for line in lines] == [("stream-started", "s-1")]


async def test_without_credentials_telnyx_is_refused_and_start_up_says_so(tmp_path: Path) -> None:
    plan = plan_messages(TelnyxCall(), load_pcm16(CALLER, 8000)[:4000])
    async with running(tmp_path, development=False, forward_number=DOCTOR) as h:
        voice = await webhook(h, "/telnyx/voice", b"To=%2B13122123456")
        with pytest.raises(InvalidStatus) as refused:
            await replay(ws(h), plan, pace=PACE, extra_headers=auth_header(TOKEN))
        warnings = h.logs.named("telnyx_traffic_refused")
        counts = dict(h.bridge.rejections)
    assert voice.status_code == 403 and refused.value.response.status_code == 403
    assert counts == {"telnyx_voice:no_public_key": 1, "telnyx_stream:no_stream_token": 1}
    assert len(warnings) == 1 and "TELNYX_PUBLIC_KEY" in warnings[0]["detail"]
    assert h.emulator.count("create") == 0


async def test_bridge_simulate_telnyx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="bridge")
    cli.add_arguments(parser.add_subparsers(dest="command").add_parser("simulate"))
    async with running(tmp_path, **CREDENTIALS) as h:
        args = parser.parse_args(
            ["simulate", "telnyx", "--url", ws(h), "--audio", str(CALLER), "--second-track", str(CLINICIAN),
             "--pace", "25", "--reorder", "10", "--telnyx-stream-auth-token", TOKEN]
        )  # fmt: skip
        with anyio.fail_after(LIMIT_S):
            code = await anyio.to_thread.run_sync(cli.run, args)
        await finished(h)
        session = h.only_session()
    (line,) = [out for out in capsys.readouterr().out.splitlines() if out.startswith("call ")]
    assert code == 0 and "inbound " in line and "outbound " in line and "server answered 1000" in line
    assert session.request["additional_data"]["provider"] == "telnyx"
    assert_processed_whole(session)
