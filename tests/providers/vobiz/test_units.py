"""Vobiz units: the stream parser and builders, the answer XML, callback signatures and
the nonce cache, and L16 byte-order detection on the sample call's speech."""

from __future__ import annotations

import json
import wave
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import pytest
import soxr

from bridge.audio.byteorder import ByteOrderDetector, decode_l16
from bridge.audio.codec import ulaw_to_pcm16
from bridge.providers.events import Dtmf, Media, MediaFormat, ProtocolError, StreamStart, Unknown
from bridge.providers.vobiz import stream as vobiz
from bridge.providers.vobiz.signature import (
    NonceCache,
    base_url,
    compute_v2,
    compute_v3,
    verify_v2,
    verify_v3,
)
from bridge.simulator.audio import load_ulaw
from tests import SAMPLES

# The newer nested shapes, as spec B.3 shows them.
START = {
    "sequenceNumber": 0,
    "event": "start",
    "start": {
        "callId": "5401fd2e-0000-4000-8000-000000000001",
        "streamId": "c4dfd815-0000-4000-8000-000000000002",
        "accountId": "500025",
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 16000},
    },
    "extra_headers": "{}",
}
MEDIA = {
    "sequenceNumber": 2,
    "streamId": "c4dfd815-0000-4000-8000-000000000002",
    "event": "media",
    "media": {"track": "inbound", "timestamp": "1778597597091", "chunk": 2, "payload": "AAEC/w=="},
    "extra_headers": "{}",
}


def parse(message: dict[str, Any] | str | bytes) -> Any:
    return vobiz.parse(message if isinstance(message, (str, bytes)) else json.dumps(message))


def with_start(**changes: Any) -> dict[str, Any]:
    return {**START, "start": {**START["start"], **changes}}


# --- parser: start -------------------------------------------------------------------------


def test_nested_start() -> None:
    assert parse(START) == StreamStart(
        call_id="5401fd2e-0000-4000-8000-000000000001",
        stream_id="c4dfd815-0000-4000-8000-000000000002",
        account_id="500025",
        tracks=("inbound",),
        media_format=MediaFormat("audio/x-l16", 16000, 1),
        custom_parameters={},
    )


def test_start_numeric_and_string_fields() -> None:
    mulaw = {"encoding": "audio/x-mulaw", "sampleRate": "8000"}
    event = parse(with_start(accountId=500025, tracks=["inbound", "outbound"], mediaFormat=mulaw))
    assert event.account_id == "500025" and event.tracks == ("inbound", "outbound")
    assert event.media_format == MediaFormat("audio/x-mulaw", 8000, 1)
    # The encoding may carry its rate like a content type; sampleRate missing.
    event = parse(with_start(mediaFormat={"encoding": "Audio/X-L16;rate=16000"}))
    assert event.media_format == MediaFormat("audio/x-l16", 16000, 1)
    # No mediaFormat: <Stream contentType> defaults to L16/8k; no tracks: inbound.
    start = {k: v for k, v in START["start"].items() if k not in ("mediaFormat", "tracks")}
    event = parse({**START, "start": start})
    assert event.media_format == MediaFormat("audio/x-l16", 8000, 1) and event.tracks == ("inbound",)
    assert parse(with_start(accountId=None)).account_id == ""


def test_older_flat_start() -> None:
    flat = {
        "event": "start",
        "sequenceNumber": 1,
        "streamId": "s-1",
        "accountId": "500025",
        "callId": "c-1",
        "from": "+911234567890",
        "to": "+919876543210",
        "direction": "inbound",
        "contentType": "audio/x-l16;rate=16000",
        "audioTrack": "both",
        "extra_headers": "tenant=acme,tok=abc123",
    }
    event = parse(flat)
    assert (event.call_id, event.stream_id, event.account_id) == ("c-1", "s-1", "500025")
    assert event.tracks == ("inbound", "outbound")
    assert event.media_format == MediaFormat("audio/x-l16", 16000, 1)
    assert event.custom_parameters == {"tenant": "acme", "tok": "abc123"}
    assert parse({**flat, "contentType": "audio/x-mulaw;rate=8000", "audioTrack": "outbound"}).tracks == ("outbound",)
    assert parse({**flat, "contentType": "audio/x-mulaw;rate=8000"}).media_format.encoding == "audio/x-mulaw"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("{}", {}),
        ("", {}),
        ('{"tenant": "acme", "n": 12, "deep": {"a": 1}}', {"tenant": "acme", "n": "12", "deep": '{"a": 1}'}),
        ("test1=12,test2=123", {"test1": "12", "test2": "123"}),
        (" a = 1 ; b=2 & c=x=y ,, novalue, =orphan", {"a": "1", "b": "2", "c": "x=y"}),
        ("{not json", {}),
        ("[1, 2]", {}),
        ('"just a string"', {}),
        (12, {}),
        (None, {}),
        ({"k": "v"}, {"k": "v"}),
    ],
)
def test_extra_headers_variants(extra: Any, expected: dict[str, str]) -> None:
    assert parse({**START, "extra_headers": extra}).custom_parameters == expected


def test_extra_headers_bounded() -> None:
    many = ",".join(f"k{i}=v" for i in range(500))
    assert len(parse({**START, "extra_headers": many}).custom_parameters) == vobiz.MAX_EXTRA_HEADERS


# --- parser: media, other events, malformed input ------------------------------------------


def test_media() -> None:
    assert parse(MEDIA) == Media(track="inbound", payload=b"\x00\x01\x02\xff", timestamp_ms=1778597597091, chunk=2)
    both_numeric = {**MEDIA, "media": {**MEDIA["media"], "timestamp": 1778597597091, "chunk": "7"}}
    assert parse(both_numeric) == Media("inbound", b"\x00\x01\x02\xff", 1778597597091, 7)
    odd = {**MEDIA, "media": {"payload": "", "timestamp": "soon", "chunk": None, "track": ""}}
    assert parse(odd) == Media("inbound", b"", None, None)
    assert parse({**MEDIA, "media": {**MEDIA["media"], "track": "outbound"}}).track == "outbound"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not json {", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        ("[1, 2]", "bad_message"),
        ('{"sequenceNumber": 0}', "bad_message"),
        ('{"event": 5}', "bad_message"),
        ('{"event": "media", "media": "AAA="}', "bad_message"),
        ('{"event": "media", "media": {"track": "inbound"}}', "bad_media"),
        ('{"event": "media", "media": {"payload": 12}}', "bad_media"),
        ('{"event": "media", "media": {"payload": "not base64!"}}', "bad_base64"),
        ('{"event": "start", "start": {"streamId": "s"}}', "bad_start"),
        ('{"event": "start", "start": {"callId": "c", "streamId": ""}}', "bad_start"),
        ('{"event": "start"}', "bad_start"),
    ],
)
def test_malformed_input(raw: str | bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        vobiz.parse(raw)
    assert caught.value.reason == reason


def test_other_events_are_tolerated() -> None:
    assert parse({"event": "playedStream", "name": "response-3"}) == Unknown("playedStream")
    assert parse({"event": "clearedAudio", "streamId": "s"}) == Unknown("clearedAudio")
    # Only the older docs have an inbound stop; the socket closing is the end.
    assert parse({"event": "stop", "streamId": "s"}) == Unknown("stop")
    assert parse({"event": "x" * 100}) == Unknown("x" * 40)
    assert parse({"event": "dtmf", "dtmf": {"digit": "5", "track": "inbound"}}) == Dtmf("inbound", "5")
    assert parse({"event": "dtmf", "digit": "#"}) == Dtmf("inbound", "#")


# --- builders ------------------------------------------------------------------------------


def test_builders_exact_shapes_and_round_trip() -> None:
    start = vobiz.start_message(
        0, call_id="c", stream_id="s", account_id="500025", tracks=["inbound", "outbound"],
        encoding="audio/x-mulaw", sample_rate=8000,
    )  # fmt: skip
    assert start == {
        "sequenceNumber": 0,
        "event": "start",
        "start": {
            "callId": "c",
            "streamId": "s",
            "accountId": "500025",
            "tracks": ["inbound", "outbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
        },
        "extra_headers": "{}",
    }
    media = vobiz.media_message(
        3, stream_id="s", track="outbound", chunk=3, timestamp_ms=1778597597091, payload=b"\x01\x02"
    )
    assert media == {
        "sequenceNumber": 3,
        "streamId": "s",
        "event": "media",
        "media": {"track": "outbound", "timestamp": "1778597597091", "chunk": 3, "payload": "AQI="},
        "extra_headers": "{}",
    }
    assert parse(start).media_format == MediaFormat("audio/x-mulaw", 8000, 1)
    assert parse(media) == Media("outbound", b"\x01\x02", 1778597597091, 3)


# --- answer XML ----------------------------------------------------------------------------

XML_ARGS: dict[str, Any] = {
    "stream_url": "wss://bridge.example.com/vobiz/stream/tok123",
    "status_callback_url": "https://bridge.example.com/vobiz/stream-status?route=a&x=1",
    "content_type": "audio/x-mulaw;rate=8000",
}


def test_answer_xml_forward() -> None:
    text = vobiz.answer_xml(
        **XML_ARGS, forward_to="+14155551234", consent_text="This call is transcribed.",
        consent_voice="WOMAN", consent_language="en-IN", caller_id="+919876543210",
    )  # fmt: skip
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(text)
    assert root.tag == "Response" and [c.tag for c in root] == ["Speak", "Stream", "Dial"]
    speak, stream, dial = root
    assert speak.text == "This call is transcribed."
    assert speak.attrib == {"voice": "WOMAN", "language": "en-IN"}
    assert stream.text == XML_ARGS["stream_url"]
    assert stream.attrib == {
        "bidirectional": "false",
        "audioTrack": "both",
        "contentType": "audio/x-mulaw;rate=8000",
        "statusCallbackUrl": XML_ARGS["status_callback_url"],
        "statusCallbackMethod": "POST",
        "streamTimeout": "86400",
    }
    assert dial.attrib == {"callerId": "+919876543210"}
    assert [(n.tag, n.text) for n in dial] == [("Number", "+14155551234")]


def test_answer_xml_without_consent_or_caller_id() -> None:
    root = ET.fromstring(
        vobiz.answer_xml(**XML_ARGS, forward_to="14155551234", consent_text=None, caller_id="anonymous")
    )
    assert [c.tag for c in root] == ["Stream", "Dial"]
    assert root.find("Dial").attrib == {}  # not a number: left out rather than sent


def test_answer_xml_without_forward_number() -> None:
    root = ET.fromstring(vobiz.answer_xml(**XML_ARGS, forward_to=None, consent_text="Consent."))
    assert [c.tag for c in root] == ["Speak", "Stream", "Speak", "Hangup"]
    assert root[2].text == vobiz.APOLOGY_TEXT


def test_answer_xml_escapes_hostile_text() -> None:
    hostile = 'Hi</Speak><Dial><Number>+19005550000</Number></Dial><Speak a="&amp;">\'"&<>\x00\x1b'
    text = vobiz.answer_xml(**XML_ARGS, forward_to="+14155551234", consent_text=hostile, consent_voice='MAN" evil="1')
    root = ET.fromstring(text)
    assert [c.tag for c in root] == ["Speak", "Stream", "Dial"]  # nothing injected
    assert root[0].text == hostile.replace("\x00", "").replace("\x1b", "")
    assert root[0].attrib == {"voice": 'MAN" evil="1'}
    assert len(root.findall(".//Number")) == 1


# --- signatures ----------------------------------------------------------------------------

TOKEN, URL, NONCE = "12345", "https://example.com/answer", "12345678901234567890"
V3 = "mJEl3/gDs3rbzKzNNcrLe8WtnVP9+O7iGuLJDjYLD+E="
V2 = "eHfWm49ZkzrEWYxPF6HxP9EFWSwzpOk9WlJ9MWvRzto="


def test_signature_vectors() -> None:
    assert compute_v3(TOKEN, URL, NONCE) == V3
    assert compute_v2(TOKEN, URL, NONCE) == V2
    for variant in (URL + "?x=1", URL + "?x=1&y=2#frag", URL + "#frag", URL + "?"):
        assert base_url(variant) == URL
        assert compute_v3(TOKEN, variant, NONCE) == V3
    assert compute_v3(TOKEN, URL + "/", NONCE) != V3  # the path is signed as is


def test_verify_v3() -> None:
    nonces = NonceCache()
    assert verify_v3(TOKEN, URL + "?CallUUID=abc", NONCE, V3, nonces) is None
    assert verify_v3(TOKEN, URL, NONCE, V3, nonces) == "replayed_nonce"
    other = "98765432109876543210"
    assert verify_v3(TOKEN, URL, other, V3, nonces) == "bad_signature"
    assert verify_v3("wrong", URL, other, compute_v3(TOKEN, URL, other), nonces) == "bad_signature"
    assert verify_v3(TOKEN, "https://example.com/hangup", other, compute_v3(TOKEN, URL, other), nonces) == (
        "bad_signature"
    )
    # A failed check does not burn the nonce: the genuine request still goes through.
    assert verify_v3(TOKEN, URL, other, compute_v3(TOKEN, URL, other), nonces) is None
    for nonce, signature in ((None, V3), ("", V3), (NONCE, None), (NONCE, "")):
        assert verify_v3(TOKEN, URL, nonce, signature, NonceCache()) == "missing_signature"
    assert verify_v3("", URL, NONCE, V3, NonceCache()) == "no_auth_token"
    assert verify_v3(TOKEN, URL, NONCE, "bm9wZQ==, " + V3, NonceCache()) is None  # a list of signatures
    assert verify_v3(TOKEN, URL, NONCE, "\udcff", NonceCache()) == "bad_signature"


def test_verify_v2() -> None:
    nonces = NonceCache()
    assert verify_v2(TOKEN, URL, NONCE, V2, nonces) is None
    assert verify_v2(TOKEN, URL, NONCE, V2, nonces) == "replayed_nonce"
    assert verify_v2(TOKEN, URL, NONCE, V3, NonceCache()) == "bad_signature"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_nonce_cache_ttl() -> None:
    clock = FakeClock()
    cache = NonceCache(ttl_s=300, clock=clock)
    assert not cache.seen_before("a")
    clock.now += 299
    assert cache.seen_before("a")
    assert not cache.seen_before("b")
    clock.now += 1.5  # "a" is 300.5 s old: forgotten; "b" is 1.5 s old
    assert len(cache) == 2 and not cache.seen_before("c") and len(cache) == 2
    assert not cache.seen_before("a")
    assert cache.seen_before("b")


def test_nonce_cache_bound() -> None:
    cache = NonceCache(max_size=3, clock=FakeClock())
    for nonce in "abcd":
        assert not cache.seen_before(nonce)
    assert len(cache) == 3
    assert not cache.seen_before("a")  # the oldest was evicted
    assert cache.seen_before("d")
    with pytest.raises(ValueError):
        NonceCache(max_size=0)


# --- L16 byte order ------------------------------------------------------------------------

FRAME_MS = 20


def read_wav(name: str) -> np.ndarray:
    with wave.open(str(SAMPLES / name)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def speech(name: str, source: str, rate: int) -> np.ndarray:
    """The sample's speech: straight from the WAV, or through μ-law as a phone call carries it."""
    pcm = read_wav(name) if source == "wav" else ulaw_to_pcm16(load_ulaw(SAMPLES / name)).astype(np.int16)
    if rate == 16000:
        up = soxr.resample(pcm.astype(np.float64), 8000, 16000, quality="VHQ")
        pcm = np.clip(np.rint(up), -32768, 32767).astype(np.int16)
    return pcm


def frames(samples: np.ndarray, rate: int, order: str) -> list[bytes]:
    data = samples.astype(">i2" if order == "big" else "<i2").tobytes()
    size = rate * FRAME_MS // 1000 * 2
    return [data[i : i + size] for i in range(0, len(data), size)]


def run_detector(detector: ByteOrderDetector, chunks: list[bytes]) -> tuple[str | None, int]:
    """Feed frames until a decision; returns it and how many frames it took."""
    for count, chunk in enumerate(chunks, start=1):
        decision = detector.feed(chunk)
        if decision is not None:
            return decision, count
    return None, len(chunks)


@pytest.mark.parametrize("order", ["big", "little"])
@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("source", ["wav", "ulaw"])
@pytest.mark.parametrize("name", ["caller.wav", "clinician.wav"])
def test_detects_byte_order_of_speech(name: str, source: str, rate: int, order: str) -> None:
    lead = np.zeros(rate // 2, dtype=np.int16)  # half a second of digital silence first
    samples = np.concatenate([lead, speech(name, source, rate)])
    detector = ByteOrderDetector(rate)
    decision, used = run_detector(detector, frames(samples, rate, order))
    assert decision == order, detector.figures()
    assert detector.evidence["rule"] == "smoothness"
    # Judged on the first ~1 s of speech: count the frames fed that really had sound in them.
    fed = samples[: used * rate * FRAME_MS // 1000].reshape(-1, rate * FRAME_MS // 1000)
    voiced_s = (np.abs(fed.astype(np.int32)).max(axis=1) > 64).sum() * FRAME_MS / 1000
    assert 0.9 <= voiced_s <= 1.5, voiced_s
    ours, theirs = (f"lag1_{order}", f"lag1_{'little' if order == 'big' else 'big'}")
    assert detector.evidence[ours] > 0.6 and detector.evidence[theirs] < 0.3


@pytest.mark.parametrize("order", ["big", "little"])
def test_one_detector_for_both_tracks(order: str) -> None:
    """Interleaved as a two-party stream sends them: the clinician talks first and settles it."""
    caller = frames(read_wav("caller.wav"), 8000, order)
    clinician = frames(read_wav("clinician.wav"), 8000, order)
    interleaved = [frame for pair in zip(clinician, caller, strict=False) for frame in pair]
    detector = ByteOrderDetector(8000)
    decision, used = run_detector(detector, interleaved)
    assert decision == order and used < 2 * 100  # within the first 2 s of the call


def harmonic(rate: int, seconds: float, peak: float) -> np.ndarray:
    """A voiced-speech-like tone: 140 Hz fundamental with falling harmonics, slowly modulated."""
    t = np.arange(int(rate * seconds)) / rate
    tone = sum(np.sin(2 * np.pi * 140 * k * t + k) / k for k in range(1, 12))
    tone *= 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
    return np.rint(tone / np.abs(tone).max() * peak).astype(np.int16)


@pytest.mark.parametrize("order", ["big", "little"])
@pytest.mark.parametrize("rate", [8000, 16000])
def test_low_level_signal_is_judged_by_level(rate: int, order: str) -> None:
    # Every sample within +-127: swapped it is the same waveform x256, just as smooth.
    quiet = harmonic(rate, 3, peak=120)
    detector = ByteOrderDetector(rate)
    decision, _ = run_detector(detector, frames(quiet, rate, order))
    assert decision == order and detector.evidence["rule"] == "level", detector.evidence


@pytest.mark.parametrize("order", ["big", "little"])
def test_moderate_synthetic_signal_and_noise_floor(order: str) -> None:
    rng = np.random.default_rng(7)
    floor = np.rint(rng.normal(0, 40, 8000 * 2)).astype(np.int16)  # a noisy line before speech
    signal = np.concatenate([floor, harmonic(8000, 2, peak=3000)])
    decision, _ = run_detector(ByteOrderDetector(8000), frames(signal, 8000, order))
    assert decision == order


def test_silence_falls_back_to_big_after_the_bound() -> None:
    detector = ByteOrderDetector(8000, give_up_s=3)
    idle = [b"\x00" * 320] * 100 + [b"\xff\xff" * 160] * 48 + [b"\x00\x01" * 160]  # 0, -1, +1/256
    assert run_detector(detector, idle) == (None, 149)  # 2.98 s fed: not yet at the bound
    assert detector.decision is None and detector.evidence == {}
    assert detector.feed(b"\x00" * 320) == "big"  # 3.0 s
    assert detector.evidence["rule"] == "fallback_no_speech" and detector.evidence["voiced_s"] == 0
    assert detector.feed(frames(read_wav("caller.wav"), 8000, "little")[200]) == "big"  # settled


def test_detector_input_edges() -> None:
    detector = ByteOrderDetector(8000, give_up_s=1)
    for payload in (b"", b"\x01", b"\x01\x02\x03"):  # too short to judge, or an odd byte
        assert detector.feed(payload) is None
    assert detector.figures()["fed_s"] == 0.0
    with pytest.raises(ValueError):
        ByteOrderDetector(0)


def test_decode_l16() -> None:
    assert decode_l16(b"\x01\x02\xff\xfe", "big").tolist() == [0x0102, -2]
    assert decode_l16(b"\x01\x02\xff\xfe", "little").tolist() == [0x0201, -257]
    assert decode_l16(b"\x01\x02\x03", "big").tolist() == [0x0102]
    with pytest.raises(ValueError):
        decode_l16(b"", "middle")
