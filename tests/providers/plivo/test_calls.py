"""Plivo calls end to end on real sockets: the signed answer callback and its XML, a two-party
call processed whole, a dropped socket, refused upgrades and callbacks, the hang-up callback,
start-up's word on missing credentials, and ``bridge simulate plivo``."""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus

from bridge.providers.plivo.signature import (
    NONCE_V3_HEADER,
    SIGNATURE_MA_V3_HEADER,
    SIGNATURE_V3_HEADER,
    compute_v3,
    stream_token,
)
from bridge.providers.plivo.simulator import PlivoCall, plan_connections, plan_messages, simulate_plivo
from bridge.providers.twilio.simulator import replay
from bridge.routing import load_routes
from bridge.simulator import cli
from bridge.simulator.audio import load_ulaw
from tests import SAMPLES
from tests.harness import Harness, assert_processed_whole, running
from tests.live.test_call import finished, received_pcm

pytestmark = pytest.mark.anyio

CALLER = SAMPLES / "caller.wav"
CLINICIAN = SAMPLES / "clinician.wav"
AUTH = "plivo-auth-token-0123456789"
CLINIC = "+918000000001"
DOCTOR = "+918000000002"
PACE = 25.0
LIMIT_S = 20.0


def ws(h: Harness, path: str = "/plivo/stream") -> str:
    return h.bridge_url.replace("http://", "ws://") + path


def nonce(n: int) -> str:
    return f"{n:020d}"


async def callback(
    h: Harness, path: str, form: dict[str, str], *, token: str | None = AUTH, n: int = 1, header: str = ""
) -> httpx.Response:
    """POST a Plivo callback, signed with ``token`` (none when None) and nonce ``n``."""
    url = h.bridge_url + path
    headers = {}
    if token is not None:
        headers = {
            NONCE_V3_HEADER: nonce(n),
            header or SIGNATURE_V3_HEADER: compute_v3(token, url, nonce(n), params=form),
        }
    async with httpx.AsyncClient(timeout=LIMIT_S) as http:
        return await http.post(url, data=form, headers=headers)


def routes_file(tmp_path: Path) -> object:
    path = tmp_path / "routes.toml"
    path.write_text(f'[numbers."{CLINIC}"]\nforward_to = "{DOCTOR}"\ntemplates = ["eka_soap"]\nclinic_id = "c-9"\n')
    table, problems = load_routes(str(path))
    assert not problems
    return table


async def test_an_answered_two_party_call_is_processed_whole(tmp_path: Path) -> None:
    call = PlivoCall(tracks=["inbound", "outbound"])
    caller, clinician = load_ulaw(CALLER), load_ulaw(CLINICIAN)
    form = {"CallUUID": call.call_id, "From": "919876543210", "To": CLINIC.lstrip("+"), "Event": "StartApp"}
    settings = {"plivo_auth_token": AUTH, "development": False, "routes": routes_file(tmp_path)}
    async with running(tmp_path, plivo_reconnect_grace_s=0.1, **settings) as h:
        answered = await callback(h, "/plivo/answer", form)
        root = ET.fromstring(answered.content)
        stream = root.find("Stream")
        assert stream is not None and stream.text
        (connection,) = plan_connections(call, caller, clinician)
        result = await replay(stream.text, connection.plan, pace=PACE)
        summary = await finished(h)
        session = h.only_session()

    assert answered.status_code == 200 and [c.tag for c in root] == ["Speak", "Stream", "Dial"]
    assert stream.text == ws(h, f"/plivo/stream/{stream_token(AUTH)}")
    assert stream.get("audioTrack") == "both" and stream.get("contentType") == "audio/x-mulaw;rate=8000"
    assert stream.get("statusCallbackUrl") == h.bridge_url + "/plivo/stream-status"
    assert root.findtext("Dial/Number") == DOCTOR and root.find("Dial").get("callerId") == "+919876543210"  # type: ignore[union-attr]
    assert result.completed and summary["end_status"] == "ended" and summary["end_reason"] == "socket_closed"
    assert summary["gap_filled_ms"] == {"inbound": 0, "outbound": 0}
    assert len(received_pcm(session)) == 2 * max(len(caller), len(clinician))  # both parties, 16 kHz
    body = session.request
    assert body["additional_data"]["provider"] == "plivo" and body["additional_data"]["call_sid"] == call.call_id
    assert body["templates"] == ["eka_soap"] and body["additional_data"]["clinic_id"] == "c-9"  # routed by To
    assert_processed_whole(session)


async def test_a_dropped_socket_ends_the_call_once_after_the_grace(tmp_path: Path) -> None:
    audio = load_ulaw(CALLER)
    async with running(tmp_path, plivo_reconnect_grace_s=0.1) as h:
        result = await replay(ws(h), plan_messages(PlivoCall(), audio), pace=PACE, drop_after_s=1.0)
        summary = await finished(h)
        session = h.only_session()
    assert result.closed_by == "abort"
    assert summary["end_reason"] == "socket_closed" and summary["end_status"] == "ended"
    assert 0 < summary["bytes_in"] <= result.bytes_sent["inbound"]
    assert len(received_pcm(session)) == 2 * summary["bytes_in"]
    assert_processed_whole(session)


async def test_a_reconnect_within_the_grace_continues_the_same_session(tmp_path: Path) -> None:
    async with running(tmp_path, plivo_reconnect_grace_s=1.0) as h:
        results = await simulate_plivo(ws(h), CALLER, pace=PACE, reconnect_after_s=2.0)
        summary = await finished(h)
        session = h.only_session()
    assert len(results) == 2 and summary["telephony_reconnects"] == 1
    assert len(received_pcm(session)) == 2 * len(load_ulaw(CALLER))
    assert_processed_whole(session)


async def test_unsigned_and_forged_upgrades_are_refused_before_any_session(tmp_path: Path) -> None:
    plan = plan_messages(PlivoCall(), load_ulaw(CALLER)[:8000])
    async with running(tmp_path, plivo_auth_token=AUTH, development=False, plivo_reconnect_grace_s=0.1) as h:
        for url in (ws(h), ws(h, f"/plivo/stream/{stream_token('not-the-token')}"), ws(h, "/plivo/stream/x")):
            with pytest.raises(InvalidStatus) as refused:
                await replay(url, plan, pace=PACE)
            assert refused.value.response.status_code == 403
        assert h.emulator.count("create") == 0 and not h.emulator.sessions
        await replay(ws(h, f"/plivo/stream/{stream_token(AUTH)}"), plan, pace=PACE)
        await finished(h)
        counts = dict(h.bridge.rejections)
    assert h.only_session().end_calls == 1
    assert counts == {"plivo_stream:token_missing": 1, "plivo_stream:token_invalid": 2}


async def test_callbacks_need_a_valid_fresh_signature(tmp_path: Path) -> None:
    form = {"CallUUID": "c0ffee", "To": "918000000009", "From": "919876543210"}
    async with running(tmp_path, plivo_auth_token=AUTH, development=False, forward_number=DOCTOR) as h:
        missing = await callback(h, "/plivo/answer", form, token=None)
        forged = await callback(h, "/plivo/answer", form, token="not-the-token", n=2)
        good = await callback(h, "/plivo/answer", form, n=3)
        replayed = await callback(h, "/plivo/answer", form, n=3)
        main_account = await callback(h, "/plivo/answer", form, n=4, header=SIGNATURE_MA_V3_HEADER)
        url = h.bridge_url + "/plivo/answer"
        headers = {NONCE_V3_HEADER: nonce(5), SIGNATURE_V3_HEADER: compute_v3(AUTH, url, nonce(5), params=form)}
        async with httpx.AsyncClient() as http:  # the form is signed too: a changed field breaks it
            tampered = await http.post(url, data={**form, "To": "918000000008"}, headers=headers)
        status = await callback(h, "/plivo/stream-status", {"CallUUID": "c1", "Event": "DroppedStream"}, n=6)
        lines = h.logs.named("plivo_stream_status")
        counts = dict(h.bridge.rejections)
    assert (missing.status_code, forged.status_code, replayed.status_code, tampered.status_code) == (403,) * 4
    assert good.status_code == main_account.status_code == 200 and status.status_code == 204
    assert counts == {
        "plivo_answer:missing_signature": 1,
        "plivo_answer:bad_signature": 2,
        "plivo_answer:replayed_nonce": 1,
    }
    assert [(line["log_level"], line["stream_event"]) for line in lines] == [("warning", "DroppedStream")]


async def test_a_hangup_callback_ends_a_live_call_at_once(tmp_path: Path) -> None:
    call = PlivoCall()
    async with running(tmp_path, plivo_reconnect_grace_s=600.0) as h:
        await replay(ws(h), plan_messages(call, load_ulaw(CALLER)[:16000]), pace=PACE)
        await h.emulator.wait_for(
            lambda: any(len(s.audio) >= 51200 for s in h.emulator.sessions.values()), 10
        )  # all but a batch and the resampler's hold
        response = await callback(h, "/plivo/hangup", {"CallUUID": call.call_id, "HangupCause": "NORMAL_CLEARING"})
        summary = await finished(h)  # well inside the 10-minute grace
        session = h.only_session()
    assert response.status_code == 204 and summary["end_reason"] == "hangup"
    assert_processed_whole(session)


async def test_without_a_token_plivo_is_refused_and_start_up_says_so(tmp_path: Path) -> None:
    plan = plan_messages(PlivoCall(), load_ulaw(CALLER)[:8000])
    async with running(tmp_path, development=False) as h:
        answered = await callback(h, "/plivo/answer", {"CallUUID": "c"}, token=None)
        with pytest.raises(InvalidStatus) as refused:
            await replay(ws(h), plan, pace=PACE)
        warnings = h.logs.named("plivo_traffic_refused")
        creates = h.emulator.count("create")
    assert answered.status_code == 403 and refused.value.response.status_code == 403 and creates == 0
    assert len(warnings) == 1 and "PLIVO_AUTH_TOKEN" in warnings[0]["detail"]
    (tmp_path / "dev").mkdir()
    async with running(tmp_path / "dev") as h:  # development mode: accepted, and said so
        answered = await callback(h, "/plivo/answer", {"CallUUID": "c"}, token=None)
        assert answered.status_code == 200 and len(h.logs.named("plivo_signatures_not_checked")) == 1


async def test_bridge_simulate_plivo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="bridge")
    cli.add_arguments(parser.add_subparsers(dest="command").add_parser("simulate"))
    async with running(tmp_path, plivo_auth_token=AUTH, development=False, plivo_reconnect_grace_s=0.1) as h:
        args = parser.parse_args(
            ["simulate", "plivo", "--url", ws(h), "--audio", str(CALLER), "--second-track", str(CLINICIAN),
             "--pace", "25", "--plivo-auth-token", AUTH]
        )  # fmt: skip
        with anyio.fail_after(LIMIT_S):
            code = await anyio.to_thread.run_sync(cli.run, args)
        await finished(h)
        session = h.only_session()
    (line,) = [out for out in capsys.readouterr().out.splitlines() if out.startswith("call ")]
    assert code == 0 and "inbound " in line and "outbound " in line
    assert np.any(received_pcm(session)) and session.request["additional_data"]["provider"] == "plivo"
    assert_processed_whole(session)
