"""The front door, end to end on real sockets: call webhooks and TwiML, per-number routing,
signatures on webhooks and on the stream upgrade, and the limits (calls, idle, duration, size).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from bridge.providers.twilio.signature import body_sha256, compute_signature
from bridge.providers.twilio.simulator import TwilioCall, plan_messages, replay
from bridge.routing import RoutingTable, load_routes
from tests.harness import CLIENT_SECRET, Harness, assert_processed_whole, running
from tests.live.test_call import ulaw_call

pytestmark = pytest.mark.anyio

TOKEN = "twilio-auth-token-never-logged"
PUBLIC = "https://bridge.example.com"
CLINIC = "+15550001111"
DICTATION = "+15550003333"
CLINICIAN = "+15550002222"
CALLER = "+14155550123"
LIMIT_S = 20.0

ROUTES = f"""
[default]
forward_to = "+15550009999"
consent_text = "Default clinic: this call is transcribed."

[numbers."{CLINIC}"]
forward_to = "{CLINICIAN}"
templates = ["clinical_notes_template", "eka_soap"]
language_hint = ["en", "hi"]
consent_voice = "Polly.Aditi"
consent_language = "en-IN"
clinic_id = "clinic-7"
doctor_id = "dr-42"

[numbers."{DICTATION}"]
mode = "dictation"
consent_text = "Dictation: speak after the tone."
doctor_id = "dr-dictating"
"""


def routes(tmp_path: Path, text: str = ROUTES) -> RoutingTable:
    path = tmp_path / "routes.toml"
    path.write_text(text)
    table, problems = load_routes(str(path))
    assert problems == [] and table is not None
    return table


def voice_params(to: str = CLINIC, caller: str = CALLER) -> dict[str, str]:
    """The form fields of a Twilio voice webhook (a representative subset)."""
    return {
        "AccountSid": "AC" + "a" * 32,
        "ApiVersion": "2010-04-01",
        "CallSid": "CA" + "b" * 32,
        "CallStatus": "ringing",
        "Called": to,
        "Caller": caller,
        "Direction": "inbound",
        "From": caller,
        "To": to,
        "FromCity": "",
    }


async def post(
    h: Harness,
    path: str,
    params: dict[str, str],
    *,
    token: str | None = TOKEN,
    signed_url: str | None = None,
) -> httpx.Response:
    """POST a form webhook; signed over ``signed_url`` (default: the URL posted to) unless no token."""
    url = h.bridge_url + path
    headers = {}
    if token is not None:
        headers["X-Twilio-Signature"] = compute_signature(token, signed_url or url, params)
    async with httpx.AsyncClient(timeout=LIMIT_S) as http:
        return await http.post(url, data=params, headers=headers)


def parse_twiml(response: httpx.Response) -> ET.Element:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    assert response.content.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(response.content)
    assert root.tag == "Response"
    return root


async def finished(h: Harness, count: int = 1) -> dict[str, Any]:
    return (await h.bridge.calls.wait_finished(count, timeout=LIMIT_S))[-1]


def assert_no_secrets(h: Harness, *also: str) -> None:
    text = repr(h.logs.events)
    for secret in (TOKEN, CLIENT_SECRET, *also):
        assert secret not in text


# --- TwiML -----------------------------------------------------------------------------------


async def test_forward_twiml_announces_forks_both_tracks_and_dials_the_clinician(tmp_path: Path) -> None:
    async with running(tmp_path, twilio_auth_token=TOKEN, public_url=PUBLIC, routes=routes(tmp_path)) as h:
        # Behind a proxy: the bridge is reached on loopback, but Twilio signed the public URL.
        response = await post(h, "/twilio/voice", voice_params(), signed_url=f"{PUBLIC}/twilio/voice")
        routed = h.logs.named("twilio_call_routed")

    root = parse_twiml(response)
    assert [child.tag for child in root] == ["Say", "Start", "Dial"]
    say, start, dial = root
    assert say.text == "Default clinic: this call is transcribed."  # inherited from [default]
    assert say.attrib == {"voice": "Polly.Aditi", "language": "en-IN"}
    (stream,) = start
    assert stream.tag == "Stream"
    assert stream.get("url") == "wss://bridge.example.com/twilio/stream"
    assert "?" not in stream.get("url", "?")  # Twilio refuses query strings on stream URLs
    assert stream.get("track") == "both_tracks"
    assert stream.get("statusCallback") == "https://bridge.example.com/twilio/stream-status"
    assert [(p.tag, p.attrib) for p in stream] == [("Parameter", {"name": "route", "value": CLINIC})]
    assert dial.get("callerId") == CALLER
    assert [(n.tag, n.text) for n in dial] == [("Number", CLINICIAN)]
    assert routed and routed[0]["mode"] == "forward" and routed[0]["route"] == CLINIC
    assert_no_secrets(h, CALLER)  # the caller's number is not logged either


async def test_dictation_twiml_connects_an_inbound_only_stream(tmp_path: Path) -> None:
    async with running(tmp_path, twilio_auth_token=TOKEN, public_url=PUBLIC, routes=routes(tmp_path)) as h:
        signed_url = PUBLIC + "/twilio/voice"
        response = await post(h, "/twilio/voice", voice_params(DICTATION), signed_url=signed_url)

    root = parse_twiml(response)
    assert [child.tag for child in root] == ["Say", "Connect"]
    assert root[0].text == "Dictation: speak after the tone."
    (stream,) = root[1]
    assert stream.tag == "Stream" and stream.get("url") == "wss://bridge.example.com/twilio/stream"
    assert stream.get("track") in (None, "inbound_track")  # bidirectional streams carry inbound only
    assert [p.attrib for p in stream] == [{"name": "route", "value": DICTATION}]
    assert root.find("Dial") is None


async def test_unknown_number_gets_the_default_section_and_dev_urls_from_the_request(tmp_path: Path) -> None:
    async with running(tmp_path, routes=routes(tmp_path)) as h:  # development mode, no public URL
        response = await post(h, "/twilio/voice", voice_params("+15557770000"), token=None)

    root = parse_twiml(response)
    assert root[0].text == "Default clinic: this call is transcribed."
    assert "voice" not in root[0].attrib
    stream = root.find("Start/Stream")
    assert stream is not None
    assert stream.get("url") == h.twilio_url  # ws://127.0.0.1:<port>/twilio/stream
    assert stream.get("statusCallback") == h.bridge_url + "/twilio/stream-status"
    assert root.find("Dial/Number").text == "+15550009999"  # type: ignore[union-attr]


async def test_hostile_consent_text_and_fields_are_escaped(tmp_path: Path) -> None:
    hostile = 'Hi </Say><Dial>+19005550000</Dial><Say x="\'"> & "quotes" \x01\x0b end\n]]>'
    async with running(tmp_path, consent_text=hostile, consent_voice='a"b', forward_number=CLINICIAN) as h:
        params = voice_params(to='+1555"><Hangup/>', caller='"><Redirect>http://evil</Redirect>')
        response = await post(h, "/twilio/voice", params, token=None)

    root = parse_twiml(response)
    assert [child.tag for child in root] == ["Say", "Start", "Dial"]  # nothing injected
    assert root[0].text == hostile.replace("\x01", "").replace("\x0b", "")  # XML-invalid characters dropped
    assert root[0].get("voice") == 'a"b'
    assert root.find("Start/Stream/Parameter") is None  # not an E.164 number: no route parameter
    assert root.find("Dial").get("callerId") is None  # type: ignore[union-attr]
    assert root.find("Redirect") is None and root.find("Hangup") is None


async def test_consent_can_be_switched_off(tmp_path: Path) -> None:
    async with running(tmp_path, consent=False, forward_number=CLINICIAN) as h:
        root = parse_twiml(await post(h, "/twilio/voice", voice_params(), token=None))
    assert [child.tag for child in root] == ["Start", "Dial"]


async def test_forward_without_a_number_apologises_and_hangs_up(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        root = parse_twiml(await post(h, "/twilio/voice", voice_params(), token=None))
        errors = h.logs.named("call_not_routable")
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert "Sorry" in (root[0].text or "")
    assert len(errors) == 1 and errors[0]["log_level"] == "error"


# --- webhook signatures ------------------------------------------------------------------------


async def test_webhook_signature_good_bad_missing(tmp_path: Path) -> None:
    async with running(tmp_path, twilio_auth_token=TOKEN, forward_number=CLINICIAN, development=False) as h:
        good = await post(h, "/twilio/voice", voice_params())
        bad = await post(h, "/twilio/voice", voice_params(), token="not-the-token")
        missing = await post(h, "/twilio/voice", voice_params(), token=None)
        voice_url = h.bridge_url + "/twilio/voice"
        tampered_url = await post(h, "/twilio/voice", voice_params(), signed_url=voice_url + "?x=1")
        # Twilio signs the URL as configured: a trailing slash is served, and must be the one signed.
        slash = await post(h, "/twilio/voice/", voice_params())
        slash_mismatch = await post(h, "/twilio/voice/", voice_params(), signed_url=voice_url)
        rejected = h.logs.named("twilio_rejected")
        counts = dict(h.bridge.rejections)

    assert good.status_code == 200 and slash.status_code == 200
    assert (bad.status_code, missing.status_code, tampered_url.status_code, slash_mismatch.status_code) == (
        403,
        403,
        403,
        403,
    )
    assert counts == {"voice:signature_invalid": 3, "voice:signature_missing": 1}
    invalid, missing = "signature_invalid", "signature_missing"
    assert [r["reason"] for r in rejected] == [invalid, missing, invalid, invalid]
    assert all(r["endpoint"] == "voice" and r["status"] == 403 for r in rejected)
    assert_no_secrets(h, compute_signature(TOKEN, h.bridge_url + "/twilio/voice", voice_params()))


async def test_public_url_port_variants_are_accepted(tmp_path: Path) -> None:
    async with running(tmp_path, twilio_auth_token=TOKEN, public_url=PUBLIC, forward_number=CLINICIAN) as h:
        with_port = await post(h, "/twilio/voice", voice_params(), signed_url=f"{PUBLIC}:443/twilio/voice")
        loopback = await post(h, "/twilio/voice", voice_params())  # signed over the Host we were sent
    assert with_port.status_code == 200
    assert loopback.status_code == 403  # behind the proxy only the public URL counts


async def test_stream_status_events_are_logged(tmp_path: Path) -> None:
    status = {
        "AccountSid": "AC1",
        "CallSid": "CA9",
        "StreamSid": "MZ9",
        "StreamName": "MZ9",
        "Timestamp": "2026-01-01T00:00:00Z",
    }
    async with running(tmp_path, twilio_auth_token=TOKEN) as h:
        started = await post(h, "/twilio/stream-status", {**status, "StreamEvent": "stream-started"})
        error = await post(
            h,
            "/twilio/stream-status",
            {**status, "StreamEvent": "stream-error", "StreamError": "31920 handshake got 403"},
        )
        stopped = {**status, "StreamEvent": "stream-stopped"}
        forged = await post(h, "/twilio/stream-status", stopped, token="x")
        # A JSON body is signed through bodySHA256 in the URL.
        body = json.dumps(stopped).encode()
        url = f"{h.bridge_url}/twilio/stream-status?bodySHA256={body_sha256(body)}"
        headers = {"X-Twilio-Signature": compute_signature(TOKEN, url), "Content-Type": "application/json"}
        async with httpx.AsyncClient(timeout=LIMIT_S) as http:
            json_ok = await http.post(url, content=body, headers=headers)
            json_tampered = await http.post(url, content=body.replace(b"MZ9", b"MZ8"), headers=headers)
        lines = h.logs.named("twilio_stream_status")

    assert (started.status_code, error.status_code, json_ok.status_code) == (204, 204, 204)
    assert (forged.status_code, json_tampered.status_code) == (403, 403)
    assert [(e["stream_event"], e["log_level"]) for e in lines] == [
        ("stream-started", "info"),
        ("stream-error", "error"),
        ("stream-stopped", "info"),
    ]
    assert lines[1]["stream_error"] == "31920 handshake got 403" and lines[1]["call_sid"] == "CA9"


async def test_without_a_token_outside_development_twilio_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path, development=False, forward_number=CLINICIAN) as h:
        voice = await post(h, "/twilio/voice", voice_params(), token="anything")
        with pytest.raises(InvalidStatus) as refused:
            await replay(h.twilio_url, plan_messages(TwilioCall(), ulaw_call(0.2)), auth_token="anything")
        warnings = h.logs.named("twilio_traffic_refused")
        sessions, creates = len(h.emulator.sessions), h.emulator.count("create")

    assert voice.status_code == 403 and refused.value.response.status_code == 403
    assert (sessions, creates) == (0, 0)
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert dict(h.bridge.rejections) == {"voice:no_auth_token": 1, "stream:no_auth_token": 1}


async def test_development_without_a_token_accepts_and_says_so(tmp_path: Path) -> None:
    async with running(tmp_path, forward_number=CLINICIAN) as h:
        voice = await post(h, "/twilio/voice", voice_params(), token=None)
        warnings = h.logs.named("twilio_signatures_not_checked")
    assert voice.status_code == 200 and len(warnings) == 1


# --- the stream upgrade ---------------------------------------------------------------------------


async def test_stream_upgrade_signature_good_bad_missing(tmp_path: Path) -> None:
    audio = ulaw_call(0.5)
    async with running(tmp_path, twilio_auth_token=TOKEN, development=False) as h:
        for token, headers in (("wrong-token", None), (None, None), (None, {"X-Twilio-Signature": ""})):
            with pytest.raises(InvalidStatus) as refused:
                plan = plan_messages(TwilioCall(), audio)
                await replay(h.twilio_url, plan, auth_token=token, extra_headers=headers)
            assert refused.value.response.status_code == 403
        assert h.emulator.sessions == {} and h.emulator.count("create") == 0  # refused before any Eka call
        assert len(h.bridge.calls.active) == 0 and h.bridge.calls.finished_count == 0

        result = await replay(h.twilio_url, plan_messages(TwilioCall(), audio), pace=25, auth_token=TOKEN)
        # Twilio's docs: the stream URL may be signed with a trailing slash.
        slash = {"X-Twilio-Signature": compute_signature(TOKEN, h.twilio_url + "/")}
        slashed = await replay(h.twilio_url, plan_messages(TwilioCall(), audio), pace=25, extra_headers=slash)
        await finished(h, 2)
        counts = dict(h.bridge.rejections)

    assert result.completed and result.close_code == 1000 and slashed.completed
    assert len(h.emulator.sessions) == 2
    assert all(s.end_calls == 1 for s in h.emulator.sessions.values())
    assert counts == {"stream:signature_invalid": 1, "stream:signature_missing": 2}
    assert_no_secrets(h, compute_signature(TOKEN, h.twilio_url))


async def test_behind_a_proxy_the_stream_is_checked_against_the_public_wss_url(tmp_path: Path) -> None:
    audio = ulaw_call(0.5)
    signed = {"X-Twilio-Signature": compute_signature(TOKEN, "wss://bridge.example.com/twilio/stream")}
    async with running(tmp_path, twilio_auth_token=TOKEN, public_url=PUBLIC) as h:
        # The simulator connects to ws://127.0.0.1:<port>, as a TLS-terminating proxy would.
        result = await replay(h.twilio_url, plan_messages(TwilioCall(), audio), pace=25, extra_headers=signed)
        with pytest.raises(InvalidStatus) as refused:  # signed over the Host the proxy sent: not it
            await replay(h.twilio_url, plan_messages(TwilioCall(), audio), auth_token=TOKEN)
        await finished(h)
        session = h.only_session()

    assert result.completed and refused.value.response.status_code == 403
    assert session.end_calls == 1


async def test_calls_beyond_the_maximum_are_refused_at_the_handshake(tmp_path: Path) -> None:
    call = TwilioCall()
    opening = plan_messages(call, ulaw_call(0.1), send_stop=False)
    async with running(tmp_path, max_calls=1) as h:
        async with connect(h.twilio_url) as first:
            for _, message in opening:
                await first.send(json.dumps(message))
            await h.emulator.wait_for(lambda: h.emulator.count("create") == 1, LIMIT_S)
            with pytest.raises(InvalidStatus) as refused:
                await replay(h.twilio_url, plan_messages(TwilioCall(), ulaw_call(0.1)))
        await finished(h)
        # Once the first call is over there is room again.
        again = await replay(h.twilio_url, plan_messages(TwilioCall(), ulaw_call(0.1)), pace=25)
        await finished(h, 2)
        counts = dict(h.bridge.rejections)
        rejected = h.logs.named("twilio_rejected")

    assert refused.value.response.status_code == 503
    assert again.completed
    assert counts == {"stream:too_many_calls": 1}
    assert rejected[0]["reason"] == "too_many_calls" and rejected[0]["status"] == 503
    assert len(h.emulator.sessions) == 2 and all(s.end_calls == 1 for s in h.emulator.sessions.values())


async def test_no_media_for_the_idle_time_ends_the_call_once(tmp_path: Path) -> None:
    audio = ulaw_call(0.4)
    async with running(tmp_path, media_idle_s=0.5) as h:
        # Media, then silence on the wire (no stop, no close): the bridge must end it.
        plan = plan_messages(TwilioCall(), audio, send_stop=False)
        result = await replay(h.twilio_url, plan, pace=4, close_after=False, server_close_timeout=LIMIT_S)
        summary = await finished(h)
        session = h.only_session()
        limit_lines = h.logs.named("call_limit_reached")

    assert result.closed_by == "server" and result.close_code == 1000
    assert result.elapsed_s >= 0.5
    assert summary["end_reason"] == "idle_timeout" and summary["end_status"] == "ended"
    assert summary["frames"] == len(audio) // 160
    assert session.end_calls == 1 and h.emulator.count("end") == 1
    assert len(session.audio) == 2 * 2 * len(audio)  # all of it arrived: 16 kHz, 16-bit
    assert_processed_whole(session)  # and all of it was processed: End waited for the flush
    assert [line["reason"] for line in limit_lines] == ["idle_timeout"]


async def test_a_call_longer_than_the_maximum_is_ended_once(tmp_path: Path) -> None:
    audio = ulaw_call(4.0)
    async with running(tmp_path, max_call_s=0.6, media_idle_s=5) as h:
        result = await replay(h.twilio_url, plan_messages(TwilioCall(), audio), pace=2)
        summary = await finished(h)
        session = h.only_session()

    assert not result.completed and result.closed_by == "server" and result.close_code == 1000
    assert summary["end_reason"] == "max_duration" and summary["end_status"] == "ended"
    assert 0 < summary["frames"] < len(audio) // 160
    assert session.end_calls == 1
    assert len(session.audio) == 2 * 2 * summary["bytes_in"]
    assert_processed_whole(session)


async def test_a_message_over_the_size_cap_closes_the_socket_and_the_call_ends_once(tmp_path: Path) -> None:
    call = TwilioCall()
    plan: list[tuple[float, Any]] = plan_messages(call, ulaw_call(0.4), send_stop=False)
    plan.append((0.4, json.dumps({"event": "media", "pad": "x" * 5000})))  # 5 kB > the 4 KiB cap
    plan.append((0.4, json.dumps({"event": "stop"})))
    async with running(tmp_path, ws_max_bytes=4096) as h:
        result = await replay(h.twilio_url, plan, pace=10, close_after=False, server_close_timeout=LIMIT_S)
        summary = await finished(h)
        session = h.only_session()
        counts = dict(h.bridge.rejections)

    assert result.close_code == 1009 and result.closed_by == "server"
    assert summary["end_reason"] == "socket_closed" and summary["end_status"] == "ended"
    assert session.end_calls == 1
    assert counts == {"stream:message_too_big": 1}
    assert len(session.audio) == 2 * 2 * summary["bytes_in"] > 0
    assert_processed_whole(session)
    assert_no_secrets(h, "x" * 100)


# --- routes reaching the Eka session -----------------------------------------------------------------


async def test_route_options_reach_the_eka_session(tmp_path: Path) -> None:
    audio = ulaw_call(0.4)
    table = routes(tmp_path)
    clinic = TwilioCall(custom_parameters={"route": CLINIC, "templates": "evil", "clinic_id": "forged"})
    dictation = TwilioCall(custom_parameters={"route": DICTATION})
    unknown = TwilioCall(custom_parameters={"route": "+15557770000"})
    bare = TwilioCall()
    async with running(tmp_path, routes=table, templates=("env_template",)) as h:
        for call in (clinic, dictation, unknown, bare):
            await replay(h.twilio_url, plan_messages(call, audio), pace=25)
            await finished(h, h.bridge.calls.finished_count + 1)
        bodies = {s.request["additional_data"]["call_sid"]: s.request for s in h.emulator.sessions.values()}
        ended = [s.end_calls for s in h.emulator.sessions.values()]

    assert ended == [1, 1, 1, 1]
    body = bodies[clinic.call_sid]
    assert body["templates"] == ["clinical_notes_template", "eka_soap"]
    assert body["language_hint"] == ["en", "hi"]
    assert body["session_mode"] == "consultation"
    extra = body["additional_data"]
    assert (extra["clinic_id"], extra["doctor_id"], extra["route"]) == ("clinic-7", "dr-42", CLINIC)
    assert extra["call_sid"] == clinic.call_sid and extra["stream_sid"] == clinic.stream_sid
    assert "evil" not in json.dumps(body) and "forged" not in json.dumps(body)  # parameters are not trusted

    body = bodies[dictation.call_sid]
    assert body["session_mode"] == "dictation"  # a dictation route is Eka's dictation mode
    assert body["templates"] == ["env_template"]  # inherited from the environment
    extra = body["additional_data"]
    assert extra["doctor_id"] == "dr-dictating" and "clinic_id" not in extra

    for call in (unknown, bare):  # the [default] section, which sets no session options
        body = bodies[call.call_sid]
        assert body["templates"] == ["env_template"] and body["session_mode"] == "consultation"
        assert "route" not in body["additional_data"] and "language_hint" not in body


async def test_healthz_still_answers_after_refusals(tmp_path: Path) -> None:
    async with running(tmp_path, twilio_auth_token=TOKEN) as h:
        for _ in range(3):
            with pytest.raises(InvalidStatus):
                await replay(h.twilio_url, [], auth_token="wrong")
        async with httpx.AsyncClient(timeout=LIMIT_S) as http:
            health = await http.get(h.bridge_url + "/healthz")
    assert health.status_code == 200
    assert h.bridge.rejections["stream:signature_invalid"] == 3
