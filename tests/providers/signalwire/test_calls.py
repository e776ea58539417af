"""SignalWire calls end to end on real sockets: the signed voice webhook and its cXML, a
two-party call processed whole, a dropped socket, refused upgrades and webhooks, start-up's
word on missing credentials, and ``bridge simulate signalwire``."""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.exceptions import InvalidStatus

from bridge.providers.signalwire.signature import compute_hex, compute_signature
from bridge.providers.signalwire.simulator import SignalWireCall, bearer, plan_messages, replay
from bridge.simulator import cli
from bridge.simulator.audio import load_ulaw
from tests import SAMPLES
from tests.harness import Harness, assert_processed_whole, running
from tests.live.test_call import finished, received_pcm

pytestmark = pytest.mark.anyio

CALLER = SAMPLES / "caller.wav"
CLINICIAN = SAMPLES / "clinician.wav"
KEY = "PSK_signing_key_for_tests_0123"
TOKEN = "SwStreamToken0123456789"
CLINIC = "+15550001111"
DOCTOR = "+15550002222"
PACE = 25.0
LIMIT_S = 20.0
CREDENTIALS = {"signalwire_signing_key": KEY, "signalwire_stream_token": TOKEN, "development": False}


def ws(h: Harness) -> str:
    return h.bridge_url.replace("http://", "ws://") + "/signalwire/stream"


async def post(
    h: Harness, path: str, form: dict[str, str], *, key: str | None = KEY, header: str = "X-SignalWire-Signature"
) -> httpx.Response:
    url = h.bridge_url + path
    headers = {header: compute_signature(key, url, form)} if key is not None else {}
    async with httpx.AsyncClient(timeout=LIMIT_S) as http:
        return await http.post(url, data=form, headers=headers)


async def test_a_routed_two_party_call_is_processed_whole(tmp_path: Path) -> None:
    caller, clinician = load_ulaw(CALLER), load_ulaw(CLINICIAN)
    form = {"CallSid": "c-1", "AccountSid": "a-1", "From": "+14155550123", "To": CLINIC}
    async with running(tmp_path, forward_number=DOCTOR, **CREDENTIALS) as h:
        answered = await post(h, "/signalwire/voice", form)
        root = ET.fromstring(answered.content)
        stream = root.find("Start/Stream")
        assert stream is not None
        parameters = {p.get("name"): p.get("value") for p in stream}
        call = SignalWireCall(tracks=["inbound", "outbound"], custom_parameters=parameters)  # type: ignore[arg-type]
        headers = bearer(stream.get("authBearerToken"))
        result = await replay(
            stream.get("url", ""), plan_messages(call, caller, clinician), pace=PACE, extra_headers=headers
        )
        summary = await finished(h)
        session = h.only_session()

    assert answered.status_code == 200 and [c.tag for c in root] == ["Say", "Start", "Dial"]
    assert stream.get("url") == ws(h) and stream.get("track") == "both_tracks"
    assert stream.get("authBearerToken") == TOKEN and parameters == {"route": CLINIC}
    assert stream.get("statusCallback") == h.bridge_url + "/signalwire/stream-status"
    assert root.findtext("Dial/Number") == DOCTOR
    assert result.completed and result.close_code == 1000
    assert summary["end_reason"] == "stop" and summary["gap_filled_ms"] == {"inbound": 0, "outbound": 0}
    assert len(received_pcm(session)) == 2 * max(len(caller), len(clinician))
    extra = session.request["additional_data"]
    assert extra["provider"] == "signalwire" and extra["call_sid"] == call.call_sid
    assert_processed_whole(session)
    assert TOKEN not in repr(h.logs.events) and KEY not in repr(h.logs.events)


async def test_a_dropped_socket_ends_the_call_once(tmp_path: Path) -> None:
    audio = load_ulaw(CALLER)
    async with running(tmp_path, **CREDENTIALS) as h:
        plan = plan_messages(SignalWireCall(), audio)
        result = await replay(ws(h), plan, pace=PACE, drop_after_s=1.0, extra_headers=bearer(TOKEN))
        summary = await finished(h)
        session = h.only_session()
    assert result.closed_by == "abort" and summary["end_reason"] == "socket_closed"
    assert len(received_pcm(session)) == 2 * summary["bytes_in"] > 0
    assert_processed_whole(session)


async def test_unauthenticated_and_forged_upgrades_are_refused_before_any_session(tmp_path: Path) -> None:
    plan = plan_messages(SignalWireCall(), load_ulaw(CALLER)[:8000])
    forged = [{}, {"Authorization": "Bearer NotTheToken0000000000"}, {"Authorization": f"Basic {TOKEN}"}]
    async with running(tmp_path, **CREDENTIALS) as h:
        for headers in forged:
            with pytest.raises(InvalidStatus) as refused:
                await replay(ws(h), plan, pace=PACE, extra_headers=headers)
            assert refused.value.response.status_code == 403
        assert h.emulator.count("create") == 0 and not h.emulator.sessions
        await replay(ws(h), plan, pace=PACE, extra_headers=bearer(TOKEN))
        await finished(h)
        counts = dict(h.bridge.rejections)
    assert h.only_session().end_calls == 1
    assert counts == {"signalwire_stream:token_missing": 2, "signalwire_stream:token_invalid": 1}


async def test_webhooks_need_a_valid_signature(tmp_path: Path) -> None:
    form = {"CallSid": "c-2", "To": "+15557770000"}
    status = {"CallSid": "c-2", "StreamSid": "s-2", "StreamEvent": "stream-error", "StreamError": "handshake 403"}
    async with running(tmp_path, forward_number=DOCTOR, **CREDENTIALS) as h:
        good = await post(h, "/signalwire/voice", form)
        compat = await post(h, "/signalwire/voice", form, header="X-Twilio-Signature")
        forged = await post(h, "/signalwire/voice", form, key="PSK_not_the_key")
        missing = await post(h, "/signalwire/voice", form, key=None)
        # A JSON status callback, signed as SignalWire signs JSON: hex HMAC-SHA1 over URL + body.
        url, body = h.bridge_url + "/signalwire/stream-status", json.dumps(status).encode()
        headers = {"Content-Type": "application/json", "X-SignalWire-Signature": compute_hex(KEY, url, body)}
        async with httpx.AsyncClient(timeout=LIMIT_S) as http:
            json_ok = await http.post(url, content=body, headers=headers)
            json_tampered = await http.post(url, content=body.replace(b"403", b"500"), headers=headers)
        lines = h.logs.named("signalwire_stream_status")
        counts = dict(h.bridge.rejections)
    assert good.status_code == compat.status_code == 200 and json_ok.status_code == 204
    assert (forged.status_code, missing.status_code, json_tampered.status_code) == (403, 403, 403)
    assert counts == {
        "signalwire_voice:signature_invalid": 1,
        "signalwire_voice:signature_missing": 1,
        "signalwire_stream_status:signature_invalid": 1,
    }
    assert [(line["log_level"], line["stream_error"]) for line in lines] == [("error", "handshake 403")]


async def test_without_credentials_signalwire_is_refused_and_start_up_says_so(tmp_path: Path) -> None:
    plan = plan_messages(SignalWireCall(), load_ulaw(CALLER)[:8000])
    async with running(tmp_path, development=False, forward_number=DOCTOR) as h:
        voice = await post(h, "/signalwire/voice", {"To": CLINIC}, key="anything")
        with pytest.raises(InvalidStatus) as refused:
            await replay(ws(h), plan, pace=PACE, extra_headers=bearer(TOKEN))
        warnings = h.logs.named("signalwire_traffic_refused")
        counts = dict(h.bridge.rejections)
    assert voice.status_code == 403 and refused.value.response.status_code == 403
    assert counts == {"signalwire_voice:no_signing_key": 1, "signalwire_stream:no_stream_token": 1}
    assert len(warnings) == 1 and "SIGNALWIRE_STREAM_TOKEN" in warnings[0]["detail"]
    assert h.emulator.count("create") == 0


async def test_bridge_simulate_signalwire(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="bridge")
    cli.add_arguments(parser.add_subparsers(dest="command").add_parser("simulate"))
    async with running(tmp_path, **CREDENTIALS) as h:
        args = parser.parse_args(
            ["simulate", "signalwire", "--url", ws(h), "--audio", str(CALLER), "--second-track", str(CLINICIAN),
             "--pace", "25", "--signalwire-stream-token", TOKEN, "--param", f"route={CLINIC}"]
        )  # fmt: skip
        with anyio.fail_after(LIMIT_S):
            code = await anyio.to_thread.run_sync(cli.run, args)
        await finished(h)
        session = h.only_session()
    (line,) = [out for out in capsys.readouterr().out.splitlines() if out.startswith("call ")]
    assert code == 0 and "inbound " in line and "outbound " in line and "server answered 1000" in line
    assert session.request["additional_data"]["provider"] == "signalwire"
    assert_processed_whole(session)
