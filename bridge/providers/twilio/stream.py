"""Twilio Media Streams: parse the messages Twilio sends, and build them (for the simulator).

Message shapes follow Twilio's websocket-messages page: ``sequenceNumber``, ``chunk``
and ``timestamp`` are strings; ``connected`` carries no stream id; ``start`` nests
the call data and repeats ``streamSid`` at the top level.
"""

from __future__ import annotations

import base64
from typing import Any

from bridge.providers import envelope
from bridge.providers.events import (
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
from bridge.providers.twilio.signature import compute_signature  # noqa: F401  (re-exported)

PROVIDER = "twilio"
DEFAULT_FORMAT = MediaFormat("audio/x-mulaw", 8000, 1)


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
        return StreamStop("stop")
    if event == "mark":
        return Mark(str(envelope.nested(msg, "mark").get("name", "")))
    if event == "dtmf":
        body = envelope.nested(msg, "dtmf")
        return Dtmf(str(body.get("track", "")), str(body.get("digit", "")))
    return Unknown(event[:40])


def _start(msg: dict[str, Any]) -> StreamStart:
    body = envelope.nested(msg, "start")
    call_sid = body.get("callSid")
    stream_sid = body.get("streamSid") or msg.get("streamSid")
    if not isinstance(call_sid, str) or not isinstance(stream_sid, str):
        raise ProtocolError("bad_start", "callSid/streamSid missing")
    fmt = body.get("mediaFormat")
    media_format = DEFAULT_FORMAT
    if isinstance(fmt, dict):
        media_format = MediaFormat(
            encoding=str(fmt.get("encoding", DEFAULT_FORMAT.encoding)),
            sample_rate=envelope.optional_int(fmt.get("sampleRate")) or DEFAULT_FORMAT.sample_rate,
            channels=envelope.optional_int(fmt.get("channels")) or 1,
        )
    tracks = body.get("tracks")
    if not isinstance(tracks, list) or not tracks:
        tracks = ["inbound"]
    params = body.get("customParameters")
    items = list(params.items())[:MAX_PARAMS] if isinstance(params, dict) else []  # bounded before any copy
    custom = {str(k): str(v) for k, v in items}
    return StreamStart(
        call_id=call_sid,
        stream_id=stream_sid,
        account_id=str(body.get("accountSid", "")),
        tracks=tuple(str(t) for t in tracks[:MAX_LISTED_TRACKS]),
        media_format=media_format,
        custom_parameters=custom,
    )


# --- building messages (the call simulator speaks exactly what Twilio sends) ---------------


def connected_message() -> dict[str, Any]:
    return {"event": "connected", "protocol": "Call", "version": "1.0.0"}


def start_message(
    seq: int,
    *,
    account_sid: str,
    stream_sid: str,
    call_sid: str,
    tracks: list[str],
    custom_parameters: dict[str, str],
) -> dict[str, Any]:
    return {
        "event": "start",
        "sequenceNumber": str(seq),
        "start": {
            "accountSid": account_sid,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": tracks,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": custom_parameters,
        },
        "streamSid": stream_sid,
    }


def media_message(
    seq: int, *, stream_sid: str, track: str, chunk: int, timestamp_ms: int, payload: bytes
) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": str(seq),
        "media": {
            "track": track,
            "chunk": str(chunk),
            "timestamp": str(timestamp_ms),
            "payload": base64.b64encode(payload).decode("ascii"),
        },
        "streamSid": stream_sid,
    }


def stop_message(seq: int, *, stream_sid: str, account_sid: str, call_sid: str) -> dict[str, Any]:
    return {
        "event": "stop",
        "sequenceNumber": str(seq),
        "stop": {"accountSid": account_sid, "callSid": call_sid},
        "streamSid": stream_sid,
    }
