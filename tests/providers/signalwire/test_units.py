"""SignalWire units: X-SignalWire-Signature against the signatures SignalWire's own SDK tests
record (its package pins twilio 6, so it cannot be installed beside ours as a live oracle), the
stream parser (Twilio's, plus the documented ``rawEvent`` wrapper) under a fuzzer, the simulator."""

from __future__ import annotations

import json

from hypothesis import given, settings

from bridge.providers.events import Connected, Media, StreamStart, StreamStop
from bridge.providers.signalwire import stream as signalwire
from bridge.providers.signalwire.signature import compute_hex, compute_signature, validate, validate_json
from bridge.providers.signalwire.simulator import SignalWireCall, bearer, plan_messages
from tests.providers.fuzzing import assert_total, messages

# Vectors from SignalWire's Python SDK (signalwire 2.1.1, signalwire/tests/test_request_validator.py):
# real requests SignalWire signed, with the signing keys of the projects that received them.
RELAY_URL = "https://81f2-2-45-18-191.ngrok-free.app/"
RELAY_KEY = "PSK_7TruNcSNTxp4zNrykMj4EPzF"
RELAY_SIGNATURE = "b18500437ebb010220ddd770cbe6fd531ea0ba0d"
RELAY_BODY = (
    '{"call":{"call_id":"b5d63b2e-f75b-4dc8-b6d4-269b635f96c0","node_id":"fa3570ae-f8bd-42c2-83f4-9950d906c91b@us-west",'
    '"segment_id":"b5d63b2e-f75b-4dc8-b6d4-269b635f96c0","call_state":"created","direction":"inbound","type":"phone",'
    '"from":"+12135877632","to":"+12089806814","from_number":"+12135877632","to_number":"+12089806814",'
    '"project_id":"4b7ae78a-d02e-4889-a63b-08b156d5916e","space_id":"62615f44-2a34-4235-b38b-76b5a1de6ef8"},"vars":{}}'
)
COMPAT_KEY = "PSK_V3bF8oyeRNpJWGoRWHNYQMUU"
HTTP_CALLBACK = {
    "AccountSid": "6bfbbe86-a901-4197-8759-2a0de1fa319d",
    "ApiVersion": "2010-04-01",
    "CallbackSource": "call-progress-events",
    "CallSid": "0703574f-b151-465d-aedb-28972eb513c7",
    "CallStatus": "busy",
    "Direction": "outbound-api",
    "From": "sip:+17063958228@sip.swire.io",
    "HangupBy": "sip:jpsantos@joaosantos-2a0de1fa319d.sip.swire.io",
    "HangupDirection": "inbound",
    "Timestamp": "Thu, 09 Nov 2023 17:05:04 +0000",
    "To": "sip:jpsantos@joaosantos-2a0de1fa319d.sip.swire.io",
    "SipResultCode": "486",
}
HTTPS_CALLBACK = {
    "CallSid": "a97d4e8a-6047-4e2b-be48-fb96b33b5642",
    "AccountSid": "6bfbbe86-a901-4197-8759-2a0de1fa319d",
    "ApiVersion": "2010-04-01",
    "Direction": "outbound-api",
    "From": "sip:+17063958228@sip.swire.io",
    "To": "sip:jpsantos@joaosantos-2a0de1fa319d.sip.swire.io",
    "Timestamp": "Thu, 09 Nov 2023 14:40:55 +0000",
    "CallStatus": "no-answer",
    "CallbackSource": "call-progress-events",
    "HangupDirection": "outbound",
    "HangupBy": "sip:+17063958228@sip.swire.io",
    "SipResultCode": "487",
}


def test_json_body_vector() -> None:
    assert compute_hex(RELAY_KEY, RELAY_URL, RELAY_BODY.encode()) == RELAY_SIGNATURE
    assert validate_json(RELAY_KEY, RELAY_URL, RELAY_BODY.encode(), RELAY_SIGNATURE)
    assert not validate_json(RELAY_KEY, RELAY_URL, RELAY_BODY.encode() + b" ", RELAY_SIGNATURE)
    assert not validate_json("PSK_other", RELAY_URL, RELAY_BODY.encode(), RELAY_SIGNATURE)


def test_compatibility_form_vectors() -> None:
    doc = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234", "From": "+14158675309"}
    doc_url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert validate("12345", doc_url, {**doc, "To": "+18005551212"}, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    http_url = "http://0aac-189-71-169-171.ngrok-free.app/voice"
    assert validate(COMPAT_KEY, http_url, HTTP_CALLBACK, "lf3nWPmUr2y6jSeeoMW4mg58vgI=")
    https_url = "https://675d-189-71-169-171.ngrok-free.app/voice"
    assert compute_signature(COMPAT_KEY, https_url, HTTPS_CALLBACK) == "muUMpldcBHlzuXGZ5gbw1ETZCYA="
    # The same callback as a JSON body: SignalWire's SDK accepts the Compatibility form over its fields.
    body = json.dumps(HTTPS_CALLBACK, indent=4).encode()
    assert validate_json(COMPAT_KEY, https_url, body, "muUMpldcBHlzuXGZ5gbw1ETZCYA=")
    assert not validate(
        COMPAT_KEY, https_url, {**HTTPS_CALLBACK, "CallStatus": "completed"}, "muUMpldcBHlzuXGZ5gbw1ETZCYA="
    )


def test_the_wire_format_is_twilios_and_the_wrapper_is_unwrapped() -> None:
    call = SignalWireCall(tracks=["inbound", "outbound"], custom_parameters={"route": "+15550001111"})
    plan = plan_messages(call, b"\xff" * 320, b"\x7f" * 160)
    events = [signalwire.parse(json.dumps(message)) for _, message in plan]
    assert isinstance(events[0], Connected) and isinstance(events[-1], StreamStop)
    start = events[1]
    assert isinstance(start, StreamStart) and start.call_id == call.call_sid and len(call.call_sid) == 36
    assert start.custom_parameters == {"route": "+15550001111"} and start.tracks == ("inbound", "outbound")
    assert [e.track for e in events if isinstance(e, Media)] == ["outbound", "inbound", "inbound"]
    wrapped = {"timestamp": 1, "direction": "inbound", "eventType": "media", "rawEvent": plan[2][1]}
    assert signalwire.parse(json.dumps(wrapped)) == events[2]
    assert bearer("tok") == {"Authorization": "Bearer tok"} and bearer(None) == {}


@settings(max_examples=300, deadline=None)
@given(
    messages(
        ["connected", "start", "media", "dtmf", "mark", "stop"],
        [
            "start",
            "media",
            "stop",
            "mark",
            "dtmf",
            "rawEvent",
            "streamSid",
            "callSid",
            "accountSid",
            "tracks",
            "mediaFormat",
            "customParameters",
            "track",
            "chunk",
            "timestamp",
            "payload",
            "digit",
            "name",
        ],
    )  # fmt: skip
)
def test_the_parser_returns_an_event_or_a_protocol_error(text: str) -> None:
    assert_total(signalwire.parse, text)
    assert_total(signalwire.parse, json.dumps({"eventType": "x", "rawEvent": _loads_or_text(text)}))


def _loads_or_text(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text
