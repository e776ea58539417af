"""Exotel units: the AgentStream parser on the documented examples and under a fuzzer, the
Basic credentials (against RFC 7617's published example) and the IP allowlist, the simulator."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings

from bridge.providers.events import Connected, Dtmf, Mark, Media, MediaFormat, StreamStart, StreamStop, Unknown
from bridge.providers.exotel import stream as exotel
from bridge.providers.exotel.auth import allowed, basic_header, check_basic, networks
from bridge.providers.exotel.simulator import ExotelCall, plan_messages
from tests.providers.fuzzing import assert_total, messages

# Exotel's WebSocket protocol page, as written there (ids shortened).
START = {
    "event": "start",
    "sequence_number": "1",
    "stream_sid": "MZxxxx",
    "start": {
        "stream_sid": "MZxxxx",
        "call_sid": "CAxxxx",
        "account_sid": "ACxxxx",
        "from": "+919876543210",
        "to": "+918047491899",
        "custom_parameters": {"key1": "value1"},
        "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"},
    },
}
MEDIA = {
    "event": "media",
    "sequence_number": "3",
    "stream_sid": "MZxxxx",
    "media": {"chunk": "2", "timestamp": "200", "payload": "AAEC/w=="},
}


def parse(message: object) -> object:
    return exotel.parse(json.dumps(message))


def test_the_documented_examples() -> None:
    assert parse({"event": "connected"}) == Connected()
    assert parse(START) == StreamStart(
        call_id="CAxxxx",
        stream_id="MZxxxx",
        account_id="ACxxxx",
        tracks=("inbound",),
        media_format=MediaFormat("audio/x-l16", 8000, 1),
        custom_parameters={"key1": "value1", "to": "+918047491899"},  # the caller's number is not kept
    )
    assert parse(MEDIA) == Media("inbound", b"\x00\x01\x02\xff", 200, 2)
    assert parse({"event": "dtmf", "stream_sid": "MZ", "dtmf": {"digit": "5", "duration": "100"}}) == Dtmf(
        "inbound", "5"
    )
    assert parse({"event": "mark", "mark": {"name": "played"}}) == Mark("played")
    stop = {"event": "stop", "stream_sid": "MZ", "stop": {"call_sid": "CA", "account_sid": "AC", "reason": "callended"}}
    assert parse(stop) == StreamStop("callended")
    assert parse({"event": "stop"}) == StreamStop("stop")
    assert parse({"event": "clear"}) == Unknown("clear")


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ({"encoding": "audio/x-raw", "sample_rate": "16000", "bit_rate": "16"}, MediaFormat("audio/x-l16", 16000)),
        ({"encoding": "audio/L16;rate=16000"}, MediaFormat("audio/x-l16", 16000)),
        ({"encoding": "audio/x-mulaw;rate=8000"}, MediaFormat("audio/x-mulaw", 8000)),
        ({"encoding": "audio/x-raw", "sample_rate": "24000"}, MediaFormat("audio/x-l16", 24000)),  # refused later
        ({"encoding": "audio/x-raw", "bit_rate": "8"}, MediaFormat("audio/x-raw;bits=8", 8000)),  # refused later
        ({"encoding": "audio/opus"}, MediaFormat("audio/opus", 8000)),
        ({}, MediaFormat("audio/x-l16", 8000)),
        ("nonsense", MediaFormat("audio/x-l16", 8000)),
    ],
)
def test_media_formats(fmt: object, expected: MediaFormat) -> None:
    assert exotel.media_format(fmt) == expected


def test_a_route_parameter_and_tracks_are_kept() -> None:
    start = {**START, "start": {**START["start"], "custom_parameters": {"route": "+918000000001", "to": "x"}}}
    event = parse(start)
    assert isinstance(event, StreamStart) and event.custom_parameters == {"route": "+918000000001", "to": "x"}
    both = parse({**START, "start": {**START["start"], "tracks": ["inbound_track", "outbound_track"]}})
    assert isinstance(both, StreamStart) and both.tracks == ("inbound", "outbound")
    assert parse({**MEDIA, "media": {**MEDIA["media"], "track": "outbound"}}) == Media(
        "outbound", b"\x00\x01\x02\xff", 200, 2
    )


@settings(max_examples=400, deadline=None)
@given(
    messages(
        ["connected", "start", "media", "dtmf", "mark", "stop"],
        [
            "start",
            "media",
            "stop",
            "dtmf",
            "mark",
            "stream_sid",
            "call_sid",
            "account_sid",
            "from",
            "to",
            "custom_parameters",
            "media_format",
            "encoding",
            "sample_rate",
            "bit_rate",
            "chunk",
            "timestamp",
            "payload",
            "track",
            "tracks",
            "digit",
            "reason",
            "name",
            "sequence_number",
        ],
    )  # fmt: skip
)
def test_the_parser_returns_an_event_or_a_protocol_error(text: str) -> None:
    assert_total(exotel.parse, text)


# --- authentication ------------------------------------------------------------------------------


def test_basic_credentials_against_rfc_7617() -> None:
    # RFC 7617 section 2: user "Aladdin", password "open sesame".
    assert basic_header("Aladdin:open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    assert check_basic("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==", "Aladdin:open sesame") is None
    assert check_basic("basic  QWxhZGRpbjpvcGVuIHNlc2FtZQ== ", "Aladdin:open sesame") is None
    assert check_basic(basic_header("Aladdin:open sesamE"), "Aladdin:open sesame") == "credentials_invalid"
    assert check_basic("Basic !!!", "Aladdin:open sesame") == "credentials_invalid"
    assert check_basic("Bearer QWxhZGRpbjpvcGVuIHNlc2FtZQ==", "Aladdin:open sesame") == "credentials_missing"
    assert check_basic(None, "Aladdin:open sesame") == check_basic("Basic ", "x:y") == "credentials_missing"


def test_the_allowlist() -> None:
    allow = networks(["10.0.0.0/8", "203.0.113.7", "2001:db8::/32"])
    assert allowed("10.1.2.3", allow) and allowed("203.0.113.7", allow) and allowed("2001:db8::1", allow)
    assert allowed("::ffff:10.9.9.9", allow)  # IPv4 seen through an IPv6 socket
    assert not allowed("203.0.113.8", allow) and not allowed("127.0.0.1", allow)
    assert not allowed(None, allow) and not allowed("not-an-ip", allow) and not allowed("10.0.0.1", ())


# --- the simulator -------------------------------------------------------------------------------


def test_the_simulator_speaks_exotels_shapes() -> None:
    call = ExotelCall(custom_parameters={"route": "+918000000001"})
    plan = plan_messages(call, np.arange(1700, dtype=np.int16))
    (_, connected), (_, start), *media, (t_stop, stop) = plan
    assert connected == {"event": "connected"}
    assert start["start"]["media_format"] == {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"}
    assert start["sequence_number"] == "1" and start["start"]["to"] == call.called
    assert [m["media"] for _, m in media][0].keys() == {"chunk", "timestamp", "payload"}  # no track on one track
    assert [(m["sequence_number"], m["media"]["chunk"], m["media"]["timestamp"]) for _, m in media] == [
        ("2", "1", "0"),
        ("3", "2", "100"),
        ("4", "3", "200"),
    ]
    assert stop == {
        "event": "stop",
        "sequence_number": "5",
        "stream_sid": call.stream_sid,
        "stop": {"call_sid": call.call_sid, "account_sid": call.account_sid, "reason": "callended"},
    }
    assert t_stop == pytest.approx(1700 / 8000)
    first = exotel.parse(json.dumps(media[0][1]))
    assert isinstance(first, Media) and np.array_equal(np.frombuffer(first.payload, "<i2"), np.arange(800))
    two = plan_messages(
        ExotelCall(tracks=["inbound", "outbound"], sample_rate=16000), np.ones(1600, np.int16), np.ones(1600, np.int16)
    )
    assert [m["media"]["track"] for _, m in two[2:-1]] == ["outbound", "inbound"]
    with pytest.raises(ValueError):
        plan_messages(ExotelCall(sample_rate=24000), np.ones(10, np.int16))
