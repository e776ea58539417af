"""Telnyx Media Streaming: parse the frames Telnyx sends, and build them (for the simulator).

Shapes follow Telnyx's "Stream call media over WebSocket" reference: ``connected`` with
``version``; ``start`` with ``sequence_number`` and ``stream_id`` at the **top level** and
``start{user_id, call_control_id, call_session_id, from, to, client_state, custom_parameters,
media_format{encoding, sample_rate, channels}}``; ``media{track, chunk, timestamp, payload}``
(the payload the call's RTP payload, base64, no header) beside a top-level ``stream_id``;
``dtmf``, ``mark``, ``error`` and ``stop``. Encodings are codec names: ``PCMU`` (μ-law) and
``L16`` (16-bit big-endian, network order, as RTP carries it) are what the bridge takes.

Frame order is not guaranteed: every ``media`` keeps its ``timestamp`` and ``chunk``, and the
mixer places frames by timestamp, holding an early one until the frames before it arrive
(``BRIDGE_TRACK_WAIT_MS``).
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

PROVIDER = "telnyx"
#: Telnyx's codec names → the audio path's encodings (others keep their name and are refused).
ENCODINGS = {"PCMU": "audio/x-mulaw", "L16": "audio/x-l16"}
DEFAULT_FORMAT = MediaFormat("audio/x-mulaw", 8000, 1)
#: The header (and ``connected`` field) that carries the streaming auth token.
AUTH_TOKEN_HEADER = "x-telnyx-streaming-auth-token"


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
    if event == "dtmf":
        body = envelope.nested(msg, "dtmf")
        return Dtmf("inbound", str(body.get("digit", ""))[:MAX_LABEL_CHARS])
    if event == "mark":
        return Mark(str(envelope.nested(msg, "mark").get("name", ""))[:MAX_LABEL_CHARS])
    return Unknown(event[:MAX_LABEL_CHARS])  # "error" among them: counted and logged by name


def media_format(fmt: Any) -> MediaFormat:
    if not isinstance(fmt, dict):
        return DEFAULT_FORMAT
    codec = str(fmt.get("encoding") or "PCMU")
    return MediaFormat(
        ENCODINGS.get(codec.upper(), codec),
        envelope.optional_int(fmt.get("sample_rate")) or 8000,
        envelope.optional_int(fmt.get("channels")) or 1,
    )


def _start(msg: dict[str, Any]) -> StreamStart:
    body = envelope.nested(msg, "start")
    call_id = body.get("call_control_id")
    stream_id = msg.get("stream_id") or body.get("stream_id")
    if not isinstance(call_id, str) or not call_id or not isinstance(stream_id, str) or not stream_id:
        raise ProtocolError("bad_start", "call_control_id/stream_id missing")
    params = body.get("custom_parameters")
    items = list(params.items())[:MAX_PARAMS] if isinstance(params, dict) else []
    tracks = body.get("tracks")
    listed = [t for t in tracks[:MAX_LISTED_TRACKS] if isinstance(t, str)] if isinstance(tracks, list) else []
    user = body.get("user_id")
    return StreamStart(
        call_id=call_id,
        stream_id=stream_id,
        account_id=user if isinstance(user, str) else "",
        tracks=tuple(envelope.track_name(t) for t in listed) or ("inbound",),
        media_format=media_format(body.get("media_format")),
        custom_parameters={str(k): v if isinstance(v, str) else str(v) for k, v in items},
    )


# --- building frames (the call simulator speaks exactly what Telnyx sends) --------------------


def connected_message() -> dict[str, Any]:
    return {"event": "connected", "version": "1.0.0"}


def start_message(
    seq: int,
    *,
    stream_id: str,
    call_control_id: str,
    call_session_id: str,
    user_id: str,
    caller: str,
    called: str,
    encoding: str,
    sample_rate: int,
    custom_parameters: dict[str, str],
) -> dict[str, Any]:
    return {
        "event": "start",
        "sequence_number": str(seq),
        "stream_id": stream_id,
        "start": {
            "user_id": user_id,
            "call_control_id": call_control_id,
            "call_session_id": call_session_id,
            "from": caller,
            "to": called,
            "tags": [],
            "client_state": "",
            "custom_parameters": custom_parameters,
            "media_format": {"encoding": encoding, "sample_rate": sample_rate, "channels": 1},
        },
    }


def media_message(
    seq: int, *, stream_id: str, track: str, chunk: int, timestamp_ms: int, payload: bytes
) -> dict[str, Any]:
    return {
        "event": "media",
        "sequence_number": str(seq),
        "media": {
            "track": track,
            "chunk": str(chunk),
            "timestamp": str(timestamp_ms),
            "payload": base64.b64encode(payload).decode("ascii"),
        },
        "stream_id": stream_id,
    }


def stop_message(seq: int, *, stream_id: str, user_id: str, call_control_id: str) -> dict[str, Any]:
    return {
        "event": "stop",
        "sequence_number": str(seq),
        "stop": {"user_id": user_id, "call_control_id": call_control_id},
        "stream_id": stream_id,
    }
