"""Telnyx units: the Ed25519 webhook check against RFC 8032's published vector and against
Telnyx's own SDK verifier (a test-only dependency, run on PyNaCl: another Ed25519 than ours),
the media-streaming parser on the documented frames and under a fuzzer, the simulator."""

from __future__ import annotations

import base64
import importlib.util
import json
import time
from pathlib import Path
from types import ModuleType

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.providers.events import Connected, Media, MediaFormat, StreamStart, StreamStop, Unknown
from bridge.providers.telnyx import stream as telnyx
from bridge.providers.telnyx.signature import public_key, signed_message, valid_signature, verify
from bridge.providers.telnyx.simulator import TelnyxCall, plan_messages
from tests.providers.fuzzing import assert_total, messages


def telnyx_verifier() -> ModuleType:
    """Telnyx's ``telnyx/lib/webhook_verification.py``, loaded alone: it needs only PyNaCl, and
    importing the whole generated SDK would cost seconds."""
    spec = importlib.util.find_spec("telnyx")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "lib" / "webhook_verification.py"
    module_spec = importlib.util.spec_from_file_location("telnyx_webhook_verification", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


SDK = telnyx_verifier()


def b64_public(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def sign(key: Ed25519PrivateKey, timestamp: str, body: bytes) -> str:
    return base64.b64encode(key.sign(signed_message(timestamp, body))).decode()


def test_rfc_8032_test_2() -> None:
    key = Ed25519PublicKey.from_public_bytes(
        bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
    )
    signature = bytes.fromhex(
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
    )
    assert valid_signature(key, signature, b"\x72")
    assert not valid_signature(key, signature, b"\x73")
    assert not valid_signature(key, signature[:-1] + b"\x01", b"\x72")


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300).filter(lambda b: b.decode("utf-8", "replace").encode() == b), st.integers(-250, 250))
def test_our_verdict_is_telnyx_sdks(body: bytes, skew: int) -> None:
    key = Ed25519PrivateKey.generate()
    now = int(time.time())
    timestamp = str(now + skew)
    signature = sign(key, timestamp, body)
    headers = {"telnyx-signature-ed25519": signature, "telnyx-timestamp": timestamp}
    SDK.verify_webhook_signature(body, headers, b64_public(key))  # raises unless valid
    assert verify(public_key(b64_public(key)), body, signature, timestamp, now) is None
    tampered = body + b" "
    with pytest.raises(SDK.WebhookVerificationError):
        SDK.verify_webhook_signature(tampered, headers, b64_public(key))
    assert verify(public_key(b64_public(key)), tampered, signature, timestamp, now) == "signature_invalid"


def test_refusals() -> None:
    key = Ed25519PrivateKey.generate()
    ours = public_key(b64_public(key))
    now = 1_760_000_000
    body = b'{"data":{"event_type":"streaming.started"}}'
    good = sign(key, str(now), body)
    assert verify(ours, body, good, str(now), now) is None
    assert verify(ours, body, good, str(now), now + 301) == "signature_stale"
    assert verify(ours, body, good, str(now + 1), now) == "signature_invalid"  # the timestamp is signed
    assert verify(ours, body, sign(Ed25519PrivateKey.generate(), str(now), body), str(now), now) == "signature_invalid"
    assert verify(ours, body, None, str(now), now) == verify(ours, body, good, None, now) == "signature_missing"
    assert (
        verify(ours, body, "!!", str(now), now) == verify(ours, body, good[:-8], str(now), now) == "signature_malformed"
    )
    assert verify(ours, body, good, "soon", now) == "signature_malformed"
    with pytest.raises(ValueError):
        public_key("c2hvcnQ=")


# --- the parser ----------------------------------------------------------------------------------

START = {
    "event": "start",
    "sequence_number": "1",
    "stream_id": "32DE0DEA-53CB-4B21-89A4-9E1819C043BC",
    "start": {
        "user_id": "3E6F995F-85F7-4705-9741-53B116D28237",
        "call_control_id": "v2:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ",
        "call_session_id": "ff55a038-6f5d-11ef-9692-02420aeffb1f",
        "from": "+13122010094",
        "to": "+13122123456",
        "tags": ["TAG1", "TAG2"],
        "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
        "custom_parameters": {"customer_id": "customer_123"},
        "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
    },
}


def test_the_documented_frames() -> None:
    assert telnyx.parse('{"event": "connected", "version": "1.0.0"}') == Connected()
    assert telnyx.parse(json.dumps(START)) == StreamStart(
        call_id=START["start"]["call_control_id"],  # type: ignore[index]
        stream_id="32DE0DEA-53CB-4B21-89A4-9E1819C043BC",
        account_id="3E6F995F-85F7-4705-9741-53B116D28237",
        tracks=("inbound",),
        media_format=MediaFormat("audio/x-mulaw", 8000, 1),
        custom_parameters={"customer_id": "customer_123"},
    )
    media = {
        "event": "media",
        "sequence_number": "4",
        "media": {"track": "outbound", "chunk": "2", "timestamp": "5", "payload": "AAEC/w=="},
        "stream_id": "s",
    }
    assert telnyx.parse(json.dumps(media)) == Media("outbound", b"\x00\x01\x02\xff", 5, 2)
    assert telnyx.parse('{"event": "stop", "stop": {"call_control_id": "c"}, "stream_id": "s"}') == StreamStop("stop")
    assert telnyx.parse('{"event": "error", "payload": {"code": 100003}}') == Unknown("error")
    l16 = {**START, "start": {**START["start"], "media_format": {"encoding": "L16", "sample_rate": 16000}}}  # type: ignore[dict-item]
    assert telnyx.parse(json.dumps(l16)).media_format == MediaFormat("audio/x-l16", 16000, 1)  # type: ignore[union-attr]
    pcma = {**START, "start": {**START["start"], "media_format": {"encoding": "PCMA", "sample_rate": 8000}}}  # type: ignore[dict-item]
    assert telnyx.parse(json.dumps(pcma)).media_format.encoding == "PCMA"  # type: ignore[union-attr]  # refused later
    no_stream = {**START, "stream_id": None}
    with pytest.raises(telnyx.ProtocolError):
        telnyx.parse(json.dumps(no_stream))


@settings(max_examples=400, deadline=None)
@given(
    messages(
        ["connected", "start", "media", "dtmf", "mark", "error", "stop"],
        [
            "start",
            "media",
            "stop",
            "dtmf",
            "mark",
            "stream_id",
            "call_control_id",
            "user_id",
            "media_format",
            "encoding",
            "sample_rate",
            "channels",
            "custom_parameters",
            "tracks",
            "track",
            "chunk",
            "timestamp",
            "payload",
            "digit",
            "name",
            "sequence_number",
        ],
    )  # fmt: skip
)
def test_the_parser_returns_an_event_or_a_protocol_error(text: str) -> None:
    assert_total(telnyx.parse, text)


# --- the simulator -------------------------------------------------------------------------------


def test_frames_may_be_delivered_out_of_order() -> None:
    call = TelnyxCall(tracks=["inbound", "outbound"])
    in_order = plan_messages(call, b"\x01" * 1600, b"\x02" * 1600)
    shuffled = plan_messages(call, b"\x01" * 1600, b"\x02" * 1600, reorder=2)
    assert [t for t, _ in shuffled] == [t for t, _ in in_order]  # the same send times
    assert sorted(json.dumps(m) for _, m in shuffled) == sorted(json.dumps(m) for _, m in in_order)
    timestamps = [
        int(m["media"]["timestamp"]) for _, m in shuffled if m["event"] == "media" and m["media"]["track"] == "inbound"
    ]
    assert timestamps != sorted(timestamps) and sorted(timestamps) == list(range(0, 200, 20))
    (_, connected), (_, start), *_, (_, stop) = shuffled
    assert connected == {"event": "connected", "version": "1.0.0"} and stop["event"] == "stop"
    assert start["stream_id"] == call.stream_id and start["start"]["call_control_id"] == call.call_control_id
    with pytest.raises(ValueError):
        plan_messages(TelnyxCall(encoding="PCMU", sample_rate=16000), b"\x00")
