"""Vobiz Audio Streams: parse the messages Vobiz sends, build them (for the simulator), and
the answer XML that forks a call into the bridge (spec part B).

Message shapes follow Vobiz's newer stream-events pages: ``sequenceNumber`` and
``chunk`` are numbers, ``media.timestamp`` is a string of epoch milliseconds, ``start``
nests the ids (``start.callId``/``streamId``/``accountId``) and ``media`` carries a
top-level ``streamId``. There is no ``connected`` and no inbound ``stop``: the socket
closing ends the stream. The older flat ``start`` (ids and ``contentType`` at the top
level) is accepted too, since Vobiz's own pages disagree.
"""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from bridge.providers import envelope
from bridge.providers.events import (
    MAX_LISTED_TRACKS,
    Dtmf,
    MediaFormat,
    ProtocolError,
    StreamEvent,
    StreamStart,
    Unknown,
)

PROVIDER = "vobiz"
#: ``<Stream contentType>`` defaults to L16 at 8 kHz when the XML leaves it out [V-XML].
DEFAULT_FORMAT = MediaFormat("audio/x-l16", 8000, 1)
#: ``extraHeaders`` is at most 512 bytes; anything much longer is not Vobiz's and is cut.
MAX_EXTRA_HEADERS_CHARS = 4096
MAX_EXTRA_HEADERS = 64

APOLOGY_TEXT = "Sorry, this number cannot take calls right now. Please try again later. Goodbye."
STREAM_TIMEOUT_S = 86400
_PHONE = re.compile(r"\+?[0-9]{2,16}")


def parse(text: str | bytes) -> StreamEvent:
    """Turn one WebSocket text message into a neutral event, or raise ProtocolError."""
    msg, event = envelope.load(text)
    if event == "media":
        return envelope.media(msg)
    if event == "start":
        return _start(msg)
    if event == "dtmf":  # not documented for Vobiz; Plivo nests it as dtmf.digit
        body = msg.get("dtmf")
        body = body if isinstance(body, dict) else msg
        return Dtmf(str(body.get("track") or "inbound"), str(body.get("digit", "")))
    # playedStream, clearedAudio, and a `stop` from the older docs: the socket close is the end.
    return Unknown(event[:40])


def parse_content_type(text: str, default_rate: int | None = None) -> MediaFormat:
    """``audio/x-l16;rate=16000`` → MediaFormat; the rate defaults to ``default_rate``, then 8000."""
    encoding, *params = (part.strip() for part in text.split(";"))
    rate = default_rate
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "rate":
            rate = envelope.optional_int(value.strip()) or rate
    return MediaFormat(encoding.lower() or DEFAULT_FORMAT.encoding, rate or 8000, 1)


def parse_extra_headers(value: Any) -> dict[str, str]:
    """``extra_headers`` as key/values: a JSON object string (``"{}"``), ``k=v,k2=v2``, or an
    object. Its encoding when non-empty is undocumented, so anything else yields ``{}``."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, str):
        text = value.strip()[:MAX_EXTRA_HEADERS_CHARS]
        if text.startswith("{"):
            try:
                decoded = json.loads(text)
            except ValueError:
                return {}
            items = list(decoded.items()) if isinstance(decoded, dict) else []
        else:
            pairs = (piece.partition("=") for piece in re.split(r"[,;&]", text))
            items = [(k.strip(), v.strip()) for k, sep, v in pairs if sep and k.strip()]
    else:
        return {}
    out: dict[str, str] = {}
    for key, item in items[:MAX_EXTRA_HEADERS]:
        out[str(key)] = item if isinstance(item, str) else json.dumps(item)
    return out


def _text(value: Any) -> str | None:
    """An id: a non-empty string, or a number (accountId is numeric) as its decimal string."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _start(msg: dict[str, Any]) -> StreamStart:
    nested = msg.get("start")
    body = nested if isinstance(nested, dict) else msg  # older docs: everything at the top level
    call_id = _text(body.get("callId")) or _text(msg.get("callId"))
    stream_id = _text(body.get("streamId")) or _text(msg.get("streamId"))
    if call_id is None or stream_id is None:
        raise ProtocolError("bad_start", "callId/streamId missing")
    account_id = _text(body.get("accountId")) or _text(msg.get("accountId")) or ""
    return StreamStart(
        call_id=call_id,
        stream_id=stream_id,
        account_id=account_id,
        tracks=_tracks(body),
        media_format=_media_format(body),
        custom_parameters=parse_extra_headers(
            msg.get("extra_headers", body.get("extra_headers", body.get("extraHeaders")))
        ),
    )


def _tracks(body: dict[str, Any]) -> tuple[str, ...]:
    tracks = body.get("tracks")
    if isinstance(tracks, list) and tracks and all(isinstance(t, str) and t for t in tracks[:MAX_LISTED_TRACKS]):
        return tuple(tracks[:MAX_LISTED_TRACKS])
    audio_track = body.get("audioTrack")  # older flat shape: the <Stream audioTrack> value
    if audio_track == "both":
        return ("inbound", "outbound")
    if audio_track in ("inbound", "outbound"):
        return (audio_track,)
    return ("inbound",)


def _media_format(body: dict[str, Any]) -> MediaFormat:
    fmt = body.get("mediaFormat")
    if isinstance(fmt, dict) and isinstance(fmt.get("encoding"), str):
        return parse_content_type(fmt["encoding"], envelope.optional_int(fmt.get("sampleRate")))
    content_type = body.get("contentType")
    if isinstance(content_type, str) and content_type.strip():
        return parse_content_type(content_type, envelope.optional_int(body.get("sampleRate")))
    return DEFAULT_FORMAT


# --- building messages (the call simulator speaks exactly what Vobiz sends) ----------------


def start_message(
    seq: int,
    *,
    call_id: str,
    stream_id: str,
    account_id: str,
    tracks: list[str],
    encoding: str,
    sample_rate: int,
    extra_headers: str = "{}",
) -> dict[str, Any]:
    return {
        "sequenceNumber": seq,
        "event": "start",
        "start": {
            "callId": call_id,
            "streamId": stream_id,
            "accountId": account_id,
            "tracks": tracks,
            "mediaFormat": {"encoding": encoding, "sampleRate": sample_rate},
        },
        "extra_headers": extra_headers,
    }


def media_message(
    seq: int,
    *,
    stream_id: str,
    track: str,
    chunk: int,
    timestamp_ms: int,
    payload: bytes,
    extra_headers: str = "{}",
) -> dict[str, Any]:
    return {
        "sequenceNumber": seq,
        "streamId": stream_id,
        "event": "media",
        "media": {
            "track": track,
            "timestamp": str(timestamp_ms),
            "chunk": chunk,
            "payload": base64.b64encode(payload).decode("ascii"),
        },
        "extra_headers": extra_headers,
    }


# --- answer XML ----------------------------------------------------------------------------


def answer_xml(
    *,
    stream_url: str,
    status_callback_url: str,
    content_type: str,
    forward_to: str | None,
    consent_text: str | None,
    consent_voice: str | None = None,
    consent_language: str | None = None,
    caller_id: str | None = None,
) -> str:
    """Vobiz XML for a call: announce, fork both parties to the bridge, dial onward.

    ``<Speak>`` the consent text (when given; ``voice`` WOMAN/MAN and ``language`` as
    Vobiz's Speak takes them), then a one-way ``<Stream audioTrack="both">`` whose text is
    the WebSocket URL (Vobiz reads the URL from the element's content, not an attribute),
    then ``<Dial><Number>`` the clinician, with ``callerId`` when it looks like a number.
    The stream runs alongside the Dial: inbound is the caller, outbound the callee.

    Without a forward number the call is still streamed, so the attempt is on record,
    then hears an apology and is hung up: a ``<Stream>`` with nothing after it would hang
    up at once anyway (no ``keepCallAlive`` on a one-way stream).
    """
    root = ET.Element("Response")
    if consent_text:
        _speak(root, consent_text, consent_voice, consent_language)
    stream = ET.SubElement(
        root,
        "Stream",
        {
            "bidirectional": "false",
            "audioTrack": "both",
            "contentType": envelope.xml_safe(content_type),
            "statusCallbackUrl": envelope.xml_safe(status_callback_url),
            "statusCallbackMethod": "POST",
            "streamTimeout": str(STREAM_TIMEOUT_S),
        },
    )
    stream.text = envelope.xml_safe(stream_url)
    if forward_to:
        dial = ET.SubElement(root, "Dial")
        if caller_id is not None and _PHONE.fullmatch(caller_id):
            dial.set("callerId", caller_id)
        ET.SubElement(dial, "Number").text = envelope.xml_safe(forward_to)
    else:
        _speak(root, APOLOGY_TEXT, consent_voice, consent_language)
        ET.SubElement(root, "Hangup")
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="unicode")


def _speak(parent: ET.Element, text: str, voice: str | None, language: str | None) -> None:
    speak = ET.SubElement(parent, "Speak")
    if voice:
        speak.set("voice", envelope.xml_safe(voice))
    if language:
        speak.set("language", envelope.xml_safe(language))
    speak.text = envelope.xml_safe(text)
