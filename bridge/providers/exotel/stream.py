"""Exotel AgentStream (the Stream and Voicebot applets): parse the messages Exotel sends, and
build them (for the simulator).

Shapes follow Exotel's WebSocket protocol page: every field is snake_case; ``connected`` is just
``{"event": "connected"}``; ``start`` carries ``sequence_number`` and ``stream_sid`` and nests
``start{stream_sid, call_sid, account_sid, from, to, custom_parameters, media_format{encoding,
sample_rate, bit_rate}}`` (the numbers as strings); ``media`` is ``media{chunk, timestamp,
payload}`` (strings), the payload base64 raw 16-bit little-endian PCM, 8 kHz unless the stream
URL asks ``?sample-rate=16000``, in frames of about 100 ms; ``dtmf{digit, duration}`` and
``mark{name}`` (Voicebot only); ``stop{call_sid, account_sid, reason}`` with ``reason`` ``stopped``
or ``callended``. Exotel's beta extension adds μ-law and a ``track`` per media message when both
tracks are streamed; both are accepted.

The called number (``start.to``) is kept as the custom parameter ``to`` (unless the stream URL
set one) so the call can be routed by it, as Twilio's are by their ``route`` parameter.
"""

from __future__ import annotations

import base64
from typing import Any

from bridge.providers import envelope
from bridge.providers.events import (
    MAX_LABEL_CHARS,
    MAX_LISTED_TRACKS,
    MAX_PARAMS,
    Connected,
    Dtmf,
    Mark,
    MediaFormat,
    ProtocolError,
    StreamEvent,
    StreamStart,
    StreamStop,
    Unknown,
)

PROVIDER = "exotel"
#: Exotel's default: raw 16-bit little-endian PCM at 8 kHz.
RAW = "audio/x-raw"
DEFAULT_FORMAT = MediaFormat("audio/x-l16", 8000, 1)
#: The custom parameter the called number is kept under.
CALLED_PARAMETER = "to"
_L16 = {"audio/x-raw", "audio/l16", "audio/x-l16", "raw", "pcm", "linear16", "l16"}
_MULAW = {"audio/x-mulaw", "audio/mulaw", "audio/pcmu", "mulaw", "pcmu", "ulaw"}


def parse(text: str | bytes) -> StreamEvent:
    """Turn one WebSocket text message into a neutral event, or raise ProtocolError."""
    msg, event = envelope.load(text)
    if event == "media":
        return envelope.media(msg)
    if event == "start":
        return _start(msg)
    if event == "connected":
        return Connected()
    if event == "stop":
        stop = msg.get("stop")
        reason = stop.get("reason") if isinstance(stop, dict) else None
        return StreamStop(reason[:MAX_LABEL_CHARS] if isinstance(reason, str) and reason else "stop")
    if event == "dtmf":
        body = envelope.nested(msg, "dtmf")
        return Dtmf("inbound", str(body.get("digit", ""))[:MAX_LABEL_CHARS])
    if event == "mark":
        return Mark(str(envelope.nested(msg, "mark").get("name", ""))[:MAX_LABEL_CHARS])
    return Unknown(event[:MAX_LABEL_CHARS])


def media_format(fmt: Any) -> MediaFormat:
    """``media_format`` to a neutral format: raw PCM is little-endian L16 (the provider's byte
    order), μ-law is μ-law, anything else (or raw PCM that is not 16-bit) keeps a name the audio
    path refuses."""
    if not isinstance(fmt, dict):
        return DEFAULT_FORMAT
    encoding, *options = (part.strip() for part in str(fmt.get("encoding") or RAW).split(";"))
    rate = envelope.optional_int(fmt.get("sample_rate"))
    for option in options:  # "audio/L16;rate=16000", as the extension's MediaFormat writes it
        key, _, value = option.partition("=")
        if key.strip().lower() == "rate":
            rate = rate or envelope.optional_int(value)
    rate = rate or 8000
    name = encoding.lower()
    bits = envelope.optional_int(fmt.get("bit_rate"))
    if name in _L16:
        if bits not in (None, 16):
            return MediaFormat(f"{RAW};bits={bits}", rate, 1)
        return MediaFormat("audio/x-l16", rate, 1)
    if name in _MULAW:
        return MediaFormat("audio/x-mulaw", rate, 1)
    return MediaFormat(encoding or RAW, rate, 1)


def _start(msg: dict[str, Any]) -> StreamStart:
    nested = msg.get("start")
    body = nested if isinstance(nested, dict) else msg
    call_sid = body.get("call_sid")
    stream_sid = body.get("stream_sid") or msg.get("stream_sid")
    if not isinstance(call_sid, str) or not call_sid or not isinstance(stream_sid, str):
        raise ProtocolError("bad_start", "call_sid/stream_sid missing")
    params = body.get("custom_parameters")
    items = list(params.items())[:MAX_PARAMS] if isinstance(params, dict) else []
    custom = {str(k): v if isinstance(v, str) else str(v) for k, v in items}
    called = body.get("to")
    if isinstance(called, str) and called and CALLED_PARAMETER not in custom:
        custom[CALLED_PARAMETER] = called
    tracks = body.get("tracks")
    listed = [t for t in tracks[:MAX_LISTED_TRACKS] if isinstance(t, str)] if isinstance(tracks, list) else []
    account = body.get("account_sid")
    return StreamStart(
        call_id=call_sid,
        stream_id=stream_sid,
        account_id=account if isinstance(account, str) else "",
        tracks=tuple(envelope.track_name(t) for t in listed) or ("inbound",),
        media_format=media_format(body.get("media_format")),
        custom_parameters=custom,
    )


# --- building messages (the call simulator speaks exactly what Exotel sends) -----------------


def connected_message() -> dict[str, Any]:
    return {"event": "connected"}


def start_message(
    seq: int,
    *,
    stream_sid: str,
    call_sid: str,
    account_sid: str,
    caller: str,
    called: str,
    sample_rate: int,
    custom_parameters: dict[str, str],
) -> dict[str, Any]:
    return {
        "event": "start",
        "sequence_number": str(seq),
        "stream_sid": stream_sid,
        "start": {
            "stream_sid": stream_sid,
            "call_sid": call_sid,
            "account_sid": account_sid,
            "from": caller,
            "to": called,
            "custom_parameters": custom_parameters,
            "media_format": {"encoding": RAW, "sample_rate": str(sample_rate), "bit_rate": "16"},
        },
    }


def media_message(
    seq: int, *, stream_sid: str, chunk: int, timestamp_ms: int, payload: bytes, track: str | None = None
) -> dict[str, Any]:
    media: dict[str, Any] = {
        "chunk": str(chunk),
        "timestamp": str(timestamp_ms),
        "payload": base64.b64encode(payload).decode("ascii"),
    }
    if track is not None:  # only when both tracks are streamed (Exotel's beta extension)
        media = {"track": track, **media}
    return {"event": "media", "sequence_number": str(seq), "stream_sid": stream_sid, "media": media}


def stop_message(seq: int, *, stream_sid: str, call_sid: str, account_sid: str, reason: str) -> dict[str, Any]:
    return {
        "event": "stop",
        "sequence_number": str(seq),
        "stream_sid": stream_sid,
        "stop": {"call_sid": call_sid, "account_sid": account_sid, "reason": reason},
    }
