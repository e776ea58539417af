"""Replay a call as a Vobiz Audio Stream, with the exact message shapes Vobiz sends.

As for Twilio, ``plan_messages`` is pure (what to send and when) and the network part is
the shared :func:`bridge.providers.twilio.simulator.replay`, called without a signature (Vobiz's
upgrade auth is undocumented). Differences from Twilio: no ``connected``, no ``stop`` (the
socket close ends the stream), numeric ``sequenceNumber`` from 0 and ``chunk``, epoch-ms
``timestamp`` strings, and μ-law or big-endian L16 audio per ``contentType``.

A reconnect (``<Stream maxRetries>``) is replayed as Vobiz does it: the first socket
closes after some media, a second one opens with a fresh ``start`` carrying a new
``streamId`` and the same ``callId``, and the media goes on where it stopped.
"""

from __future__ import annotations

import math
import secrets
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bridge.audio.codec import pcm16_to_ulaw
from bridge.providers.events import MediaFormat
from bridge.providers.twilio.simulator import ReplayResult, replay
from bridge.providers.vobiz.stream import media_message, parse_content_type, start_message
from bridge.simulator.audio import load_pcm16, load_ulaw
from bridge.simulator.framing import interleaved_frames

#: What ``<Stream contentType>`` may ask for inbound, and what the simulator can send.
CONTENT_TYPES = ("audio/x-mulaw;rate=8000", "audio/x-l16;rate=8000", "audio/x-l16;rate=16000")
_FORMATS = {("audio/x-mulaw", 8000), ("audio/x-l16", 8000), ("audio/x-l16", 16000)}
DEFAULT_CONTENT_TYPE = "audio/x-mulaw;rate=8000"
BYTE_ORDERS = ("big", "little")

Plan = list[tuple[float, dict[str, Any]]]


def new_uuid() -> str:
    return str(uuid.uuid4())


def new_account_id() -> str:
    """Vobiz's ``accountId`` is an internal numeric id, e.g. ``500025``."""
    return str(100000 + secrets.randbelow(900000))


@dataclass
class VobizCall:
    """The identity of one simulated stream: the values a ``start`` message carries."""

    call_id: str = field(default_factory=new_uuid)
    stream_id: str = field(default_factory=new_uuid)
    account_id: str = field(default_factory=new_account_id)
    tracks: list[str] = field(default_factory=lambda: ["inbound"])
    extra_headers: str = "{}"


@dataclass
class Connection:
    """One WebSocket of a call: the stream it carries and its messages."""

    call: VobizCall
    plan: Plan


def media_format(content_type: str) -> MediaFormat:
    """The format a supported ``contentType`` names, or ValueError."""
    fmt = parse_content_type(content_type)
    if (fmt.encoding, fmt.sample_rate) not in _FORMATS:
        raise ValueError(f"unsupported content type {content_type!r}; use one of {', '.join(CONTENT_TYPES)}")
    return fmt


def load_audio(path: Path, content_type: str = DEFAULT_CONTENT_TYPE) -> bytes | np.ndarray:
    """The file as the simulator sends it: μ-law bytes, or int16 samples at the L16 rate."""
    fmt = media_format(content_type)
    if fmt.encoding == "audio/x-mulaw":
        return load_ulaw(path)
    return load_pcm16(path, fmt.sample_rate)


def wire_bytes(audio: bytes | np.ndarray, fmt: MediaFormat, l16_byte_order: str = "big") -> bytes:
    """Audio as it goes on the wire: bytes as given; int16 samples μ-law encoded or as L16."""
    if isinstance(audio, (bytes, bytearray)):
        return bytes(audio)
    if fmt.encoding == "audio/x-mulaw":
        return pcm16_to_ulaw(audio)
    if l16_byte_order not in BYTE_ORDERS:
        raise ValueError(f"l16_byte_order must be 'big' or 'little', got {l16_byte_order!r}")
    return np.asarray(audio, dtype=">i2" if l16_byte_order == "big" else "<i2").tobytes()


def frame_bytes(fmt: MediaFormat, frame_ms: int) -> int:
    """Bytes per frame: 160 (μ-law/8k), 320 (L16/8k), 640 (L16/16k) at 20 ms."""
    width = 1 if fmt.encoding == "audio/x-mulaw" else 2
    return fmt.sample_rate * frame_ms // 1000 * width


def plan_messages(
    call: VobizCall,
    inbound: bytes | np.ndarray,
    outbound: bytes | np.ndarray | None = None,
    *,
    content_type: str = DEFAULT_CONTENT_TYPE,
    l16_byte_order: str = "big",
    frame_ms: int = 20,
    start_epoch_ms: int | None = None,
    first_seq: int = 0,
) -> Plan:
    """Every message of one stream with its send time in seconds from the stream's start.

    ``inbound``/``outbound``: bytes go out as given (already in the wire format); int16
    samples at the content type's rate are μ-law encoded, or written as L16 in
    ``l16_byte_order`` (Vobiz's is big-endian). ``start`` has ``sequenceNumber``
    ``first_seq``; each media message the next number. A frame is due when its audio has
    been spoken (the end of the frame, capped at the end of the audio); its ``timestamp``
    is the frame's start on the epoch clock from ``start_epoch_ms`` (default: now).
    Per tick the outbound frame precedes the inbound one; ``chunk`` counts the stream's
    media messages from 1. No ``stop``: the replay closes the socket.
    """
    if frame_ms <= 0:
        raise ValueError(f"frame_ms must be > 0, got {frame_ms}")
    fmt = media_format(content_type)
    size = frame_bytes(fmt, frame_ms)
    bytes_per_s = size * 1000 / frame_ms
    audio = [
        (name, wire_bytes(data, fmt, l16_byte_order))
        for name, data in (("outbound", outbound), ("inbound", inbound))
        if data is not None and len(data)
    ]
    for name, _ in audio:
        if name not in call.tracks:
            raise ValueError(f"{name} audio given but call.tracks is {call.tracks}")
    epoch = int(time.time() * 1000) if start_epoch_ms is None else start_epoch_ms

    seq = first_seq
    plan: Plan = [
        (
            0.0,
            start_message(
                seq,
                call_id=call.call_id,
                stream_id=call.stream_id,
                account_id=call.account_id,
                tracks=list(call.tracks),
                encoding=fmt.encoding,
                sample_rate=fmt.sample_rate,
                extra_headers=call.extra_headers,
            ),
        )
    ]
    chunk = 0
    for tick, ready_at, name, piece in interleaved_frames(audio, size):
        seq += 1
        chunk += 1
        message = media_message(
            seq,
            stream_id=call.stream_id,
            track=name,
            chunk=chunk,
            timestamp_ms=epoch + tick * frame_ms,
            payload=piece,
            extra_headers=call.extra_headers,
        )
        plan.append((ready_at / bytes_per_s, message))
    return plan


def plan_connections(
    call: VobizCall,
    inbound: bytes | np.ndarray,
    outbound: bytes | np.ndarray | None = None,
    *,
    content_type: str = DEFAULT_CONTENT_TYPE,
    l16_byte_order: str = "big",
    frame_ms: int = 20,
    start_epoch_ms: int | None = None,
    reconnect_after_s: float | None = None,
    first_seq: int = 0,
) -> list[Connection]:
    """The call as one connection, or two when ``reconnect_after_s`` is given.

    With a reconnect, the first connection carries the frames that end by that stream
    time; the second has a new ``streamId`` (same ``callId``), its own ``start`` with
    ``sequenceNumber`` ``first_seq`` (Vobiz: 0, Plivo: 1), ``chunk`` from 1 again, and the rest of the audio with
    timestamps continuing on the same epoch clock: nothing lost, nothing repeated.
    """
    epoch = int(time.time() * 1000) if start_epoch_ms is None else start_epoch_ms
    options: dict[str, Any] = {
        "content_type": content_type,
        "l16_byte_order": l16_byte_order,
        "frame_ms": frame_ms,
        "first_seq": first_seq,
    }
    if reconnect_after_s is None:
        return [Connection(call, plan_messages(call, inbound, outbound, start_epoch_ms=epoch, **options))]
    fmt = media_format(content_type)
    size = frame_bytes(fmt, frame_ms)
    first = wire_bytes(inbound, fmt, l16_byte_order)
    second = wire_bytes(outbound, fmt, l16_byte_order) if outbound is not None else None
    longest = max(len(first), len(second or b""))
    ticks = math.floor(reconnect_after_s * 1000 / frame_ms + 1e-9)
    if not 0 < ticks * size < longest:
        duration = longest / (size * 1000 / frame_ms)
        raise ValueError(
            f"reconnect_after_s must fall inside the audio ({frame_ms / 1000:g}..{duration:.2f} s), "
            f"got {reconnect_after_s}"
        )
    cut = ticks * size
    later = replace(call, stream_id=new_uuid())
    return [
        Connection(
            call,
            plan_messages(call, first[:cut], second[:cut] if second else None, start_epoch_ms=epoch, **options),
        ),
        Connection(
            later,
            plan_messages(
                later,
                first[cut:],
                second[cut:] if second else None,
                start_epoch_ms=epoch + ticks * frame_ms,
                **options,
            ),
        ),
    ]


async def replay_connections(url: str, connections: list[Connection], *, pace: float = 1.0) -> list[ReplayResult]:
    """Replay each connection in turn on its own socket, each closed with 1000 at its end."""
    return [await replay(url, connection.plan, pace=pace) for connection in connections]


async def simulate_vobiz(
    url: str,
    audio: Path,
    *,
    second_track: Path | None = None,
    content_type: str = DEFAULT_CONTENT_TYPE,
    pace: float = 1.0,
    reconnect_after_s: float | None = None,
    l16_byte_order: str = "big",
) -> list[ReplayResult]:
    """Replay ``audio`` (inbound, the caller) and optionally ``second_track`` (outbound, the
    callee) as a new Vobiz call; one result per connection."""
    inbound = load_audio(audio, content_type)
    outbound = load_audio(second_track, content_type) if second_track is not None else None
    call = VobizCall(tracks=["inbound", "outbound"] if outbound is not None else ["inbound"])
    connections = plan_connections(
        call,
        inbound,
        outbound,
        content_type=content_type,
        l16_byte_order=l16_byte_order,
        reconnect_after_s=reconnect_after_s,
    )
    return await replay_connections(url, connections, pace=pace)
