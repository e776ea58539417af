"""Plivo units: X-Plivo-Signature-V3 against Plivo's own SDK, the derived stream token, the
parser (shared with Vobiz) under a fuzzer, and the exact shapes the simulator sends."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plivo.utils.signature_v3 import get_signature_v3, validate_v3_signature

from bridge.providers.events import Dtmf, Media, MediaFormat, StreamStart, Unknown
from bridge.providers.plivo import stream as plivo
from bridge.providers.plivo.signature import compute_v3, stream_token, verify_v3
from bridge.providers.plivo.simulator import PlivoCall, plan_connections, plan_messages, stream_url
from bridge.providers.schemes.v3_nonce import NonceCache, plivo_signed_string
from tests.providers.fuzzing import assert_total, messages

TOKEN = "MjQ5ZTJhNGE0ZDI3NzYxMzRhNTc1ZjM0"
NONCE = "05429567804466091622"

# --- the signature, against Plivo's SDK (plivo.utils.signature_v3, a test-only dependency) ------


def test_signed_strings_as_plivo_builds_them() -> None:
    url = "https://bridge.example.com/plivo/answer"
    assert plivo_signed_string("POST", url, {}) == url
    assert plivo_signed_string("POST", url + "?b=2&a=1", {}) == url + "?a=1&b=2"
    assert plivo_signed_string("POST", url, {"To": "+91", "CallUUID": "c"}) == url + "?CallUUIDcTo+91"
    assert plivo_signed_string("POST", url + "?q=1", [("b", "2"), ("a", "z"), ("a", "y")]) == url + "?q=1.ayazb2"
    assert plivo_signed_string("GET", url + "?q=1", {"a": "1"}) == url + "?a=1&q=1"
    assert plivo_signed_string("GET", url, {}) == url


def test_v3_matches_plivos_sdk_on_a_callback() -> None:
    url = "https://bridge.example.com/plivo/answer?route=a"
    form = {"CallUUID": "5401fd2e-0000", "From": "919876543210", "To": "918000000000", "Event": "StartApp"}
    ours = compute_v3(TOKEN, url, NONCE, params=form)
    assert validate_v3_signature("POST", url, NONCE, TOKEN, ours, dict(form))
    theirs = get_signature_v3(TOKEN.encode(), plivo_signed_string("POST", url, form), NONCE.encode()).decode()
    assert theirs == ours
    assert verify_v3(TOKEN, url, NONCE, theirs, NonceCache(), params=form) is None


names = st.text(alphabet="abcXYZ019_-", min_size=1, max_size=8)
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
#: Plivo's SDK parses the URL as bytes and cannot take a non-ASCII query value (ours can).
ascii_texts = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str]]:
    method = draw(st.sampled_from(["POST", "GET"]))
    path = "/".join(draw(st.lists(names, max_size=3)))
    query = draw(st.dictionaries(names, ascii_texts.map(lambda t: quote(t, safe="")), max_size=3))
    url = f"https://{draw(st.sampled_from(['h.example', 'bridge.example.com:8443']))}/{path}"
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return method, url, draw(st.dictionaries(names, texts, max_size=5))


@settings(max_examples=200, deadline=None)
@given(requests(), st.text(alphabet="0123456789", min_size=1, max_size=20))
def test_v3_agrees_with_plivos_sdk_on_generated_requests(request: tuple[str, str, dict[str, str]], nonce: str) -> None:
    method, url, params = request
    ours = compute_v3(TOKEN, url, nonce, method=method, params=params)
    assert validate_v3_signature(method, url, nonce, TOKEN, ours, dict(params))
    assert verify_v3(TOKEN, url, nonce, ours, NonceCache(), method=method, params=params) is None
    assert not validate_v3_signature(method, url, nonce, TOKEN + "x", ours, dict(params))


def test_verify_refuses_forged_tampered_replayed() -> None:
    url, form = "https://h.example/plivo/hangup", {"CallUUID": "c1"}
    good = compute_v3(TOKEN, url, NONCE, params=form)
    nonces = NonceCache()
    assert verify_v3(TOKEN, url, NONCE, good, nonces, params=form) is None
    assert verify_v3(TOKEN, url, NONCE, good, nonces, params=form) == "replayed_nonce"
    other = "11111111111111111111"
    assert verify_v3(TOKEN, url, other, good, nonces, params=form) == "bad_signature"
    signed = compute_v3(TOKEN, url, other, params=form)
    assert verify_v3(TOKEN, url, other, signed, nonces, params={"CallUUID": "c2"}) == "bad_signature"
    assert verify_v3(TOKEN, url, other, compute_v3("forged", url, other, params=form), nonces, params=form) == (
        "bad_signature"
    )
    assert verify_v3(TOKEN, url, other, "bm9wZQ==," + signed, nonces, params=form) is None  # Ma-V3 beside V3
    assert verify_v3(TOKEN, url, None, good, NonceCache()) == "missing_signature"
    assert verify_v3("", url, NONCE, good, NonceCache()) == "no_auth_token"


def test_stream_token_is_derived_and_path_safe() -> None:
    token = stream_token(TOKEN)
    assert token == stream_token(TOKEN) != stream_token(TOKEN + "x")
    assert len(token) == 32 and token.isalnum() and TOKEN not in token
    assert stream_url("ws://h/plivo/stream", TOKEN) == f"ws://h/plivo/stream/{token}"
    assert stream_url("ws://h/plivo/stream/", None) == "ws://h/plivo/stream/"


# --- the parser ------------------------------------------------------------------------------

START = {
    "event": "start",
    "sequenceNumber": 1,
    "start": {
        "callId": "12345678-1234-1234-1234-123456789abc",
        "streamId": "87654321-4321-4321-4321-cba987654321",
        "accountId": "MAXXXXXXXXXXXXXXXXXX",
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
    },
    "extra_headers": "userId=12345;sessionId=abc-xyz",
}
MEDIA = {
    "event": "media",
    "sequenceNumber": 42,
    "streamId": "87654321-4321-4321-4321-cba987654321",
    "media": {"track": "inbound", "timestamp": "1705312200000", "chunk": 41, "payload": "AAEC/w=="},
    "extra_headers": "userId=12345;sessionId=abc-xyz",
}


def test_the_documented_examples() -> None:
    assert plivo.parse(json.dumps(START)) == StreamStart(
        call_id="12345678-1234-1234-1234-123456789abc",
        stream_id="87654321-4321-4321-4321-cba987654321",
        account_id="MAXXXXXXXXXXXXXXXXXX",
        tracks=("inbound",),
        media_format=MediaFormat("audio/x-mulaw", 8000, 1),
        custom_parameters={"userId": "12345", "sessionId": "abc-xyz"},
    )
    assert plivo.parse(json.dumps(MEDIA)) == Media("inbound", b"\x00\x01\x02\xff", 1705312200000, 41)
    assert plivo.parse('{"event": "dtmf", "dtmf": {"digit": "5"}}') == Dtmf("inbound", "5")
    assert plivo.parse('{"event": "playedStream", "streamId": "s", "name": "n"}') == Unknown("playedStream")
    assert plivo.parse('{"event": "stop"}') == Unknown("stop")  # the socket closing is the end


@settings(max_examples=400, deadline=None)
@given(
    messages(
        ["start", "media", "dtmf", "playedStream", "clearedAudio", "stop"],
        [
            "start",
            "media",
            "dtmf",
            "callId",
            "streamId",
            "accountId",
            "tracks",
            "mediaFormat",
            "encoding",
            "sampleRate",
            "track",
            "timestamp",
            "chunk",
            "payload",
            "digit",
            "extra_headers",
            "sequenceNumber",
        ],
    )  # fmt: skip
)
def test_the_parser_returns_an_event_or_a_protocol_error(text: str) -> None:
    assert_total(plivo.parse, text)


# --- the simulator's shapes ------------------------------------------------------------------


def test_the_simulator_speaks_plivos_shapes() -> None:
    call = PlivoCall(tracks=["inbound", "outbound"])
    plan = plan_messages(call, b"\x01" * 200, b"\x02" * 160, start_epoch_ms=1705312200000)
    (_, start), *media = plan
    assert start == {
        "sequenceNumber": 1,
        "event": "start",
        "start": {
            "callId": call.call_id,
            "streamId": call.stream_id,
            "accountId": call.account_id,
            "tracks": ["inbound", "outbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
        },
        "extra_headers": "",
    }
    assert call.account_id.startswith("MA") and len(call.account_id) == 20
    assert [m["sequenceNumber"] for _, m in media] == [2, 3, 4]
    assert [(m["media"]["track"], m["media"]["timestamp"]) for _, m in media] == [
        ("outbound", "1705312200000"),
        ("inbound", "1705312200000"),
        ("inbound", "1705312200020"),
    ]
    first, second = plan_connections(call, b"\x01" * 800, reconnect_after_s=0.04)
    assert first.plan[0][1]["sequenceNumber"] == second.plan[0][1]["sequenceNumber"] == 1
    assert first.call.call_id == second.call.call_id and first.call.stream_id != second.call.stream_id
    assert isinstance(plivo.parse(json.dumps(media[0][1])), Media)


@pytest.mark.parametrize("content_type", ["audio/x-l16;rate=8000", "audio/x-l16;rate=16000"])
def test_l16_start_parses_to_its_format(content_type: str) -> None:
    call = PlivoCall()
    (_, start), *_ = plan_messages(call, b"\x00\x01" * 400, content_type=content_type)
    fmt = plivo.parse(json.dumps(start)).media_format  # type: ignore[union-attr]
    assert (fmt.encoding, fmt.sample_rate) == ("audio/x-l16", int(content_type.rpartition("=")[2]))
