"""Replay a call as an Exotel AgentStream, with the exact message shapes Exotel sends.

``connected``, ``start`` (``sequence_number`` "1"), ``media`` every 100 ms of raw 16-bit
little-endian PCM at the stream's rate (8 kHz, or 16 kHz as ``?sample-rate=16000`` asks), then
``stop`` with ``reason: "callended"``. With a second track every ``media`` names its ``track``
(Exotel's beta extension; one track sends none). The network part is Twilio's shared
:func:`bridge.providers.twilio.simulator.replay`; ``credentials`` (``user:password``) go on the
upgrade as ``Authorization: Basic``, as Exotel sends the ones written into the stream URL.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.providers.exotel.auth import basic_header
from bridge.providers.exotel.stream import connected_message, media_message, start_message, stop_message
from bridge.providers.twilio.simulator import ReplayResult, replay
from bridge.simulator.audio import load_pcm16
from bridge.simulator.framing import interleaved_frames

#: Exotel streams about every 100 ms.
FRAME_MS = 100
SAMPLE_RATES = (8000, 16000)

Plan = list[tuple[float, dict[str, Any]]]


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


@dataclass
class ExotelCall:
    """The identity of one simulated call: the values a ``start`` message carries."""

    stream_sid: str = field(default_factory=lambda: _sid("MZ"))
    call_sid: str = field(default_factory=lambda: _sid("CA"))
    account_sid: str = field(default_factory=lambda: _sid("AC"))
    caller: str = "+919876543210"
    called: str = "+918047491899"
    tracks: list[str] = field(default_factory=lambda: ["inbound"])
    custom_parameters: dict[str, str] = field(default_factory=dict)
    sample_rate: int = 8000


def wire_bytes(audio: bytes | np.ndarray) -> bytes:
    """int16 samples as raw little-endian PCM; bytes as given."""
    if isinstance(audio, (bytes, bytearray)):
        return bytes(audio)
    return np.asarray(audio, dtype="<i2").tobytes()


def plan_messages(
    call: ExotelCall,
    inbound: bytes | np.ndarray,
    outbound: bytes | np.ndarray | None = None,
    *,
    frame_ms: int = FRAME_MS,
    send_stop: bool = True,
    reason: str = "callended",
) -> Plan:
    """Every message of the stream with its send time in seconds from the stream's start.

    A frame is due when its audio has been spoken; its ``timestamp`` is the frame's start in ms
    from the stream's start and ``chunk`` counts each track's frames from 1. Per tick the
    outbound frame precedes the inbound one. ``stop`` goes out at the end of the audio.
    """
    if call.sample_rate not in SAMPLE_RATES:
        raise ValueError(f"sample_rate must be one of {SAMPLE_RATES}, got {call.sample_rate}")
    if frame_ms <= 0:
        raise ValueError(f"frame_ms must be > 0, got {frame_ms}")
    frame_bytes = call.sample_rate * frame_ms // 1000 * 2
    bytes_per_s = call.sample_rate * 2
    audio = [
        (name, wire_bytes(data))
        for name, data in (("outbound", outbound), ("inbound", inbound))
        if data is not None and len(data)
    ]
    for name, _ in audio:
        if name not in call.tracks:
            raise ValueError(f"{name} audio given but call.tracks is {call.tracks}")
    named = len(call.tracks) > 1
    plan: Plan = [
        (0.0, connected_message()),
        (
            0.0,
            start_message(
                1,
                stream_sid=call.stream_sid,
                call_sid=call.call_sid,
                account_sid=call.account_sid,
                caller=call.caller,
                called=call.called,
                sample_rate=call.sample_rate,
                custom_parameters=dict(call.custom_parameters),
            ),
        ),
    ]
    seq = 1
    chunks = {name: 0 for name, _ in audio}
    longest = max((len(data) for _, data in audio), default=0)
    for tick, ready_at, name, piece in interleaved_frames(audio, frame_bytes):
        seq += 1
        chunks[name] += 1
        message = media_message(
            seq,
            stream_sid=call.stream_sid,
            chunk=chunks[name],
            timestamp_ms=tick * frame_ms,
            payload=piece,
            track=name if named else None,
        )
        plan.append((ready_at / bytes_per_s, message))
    if send_stop:
        seq += 1
        stop = stop_message(
            seq, stream_sid=call.stream_sid, call_sid=call.call_sid, account_sid=call.account_sid, reason=reason
        )
        plan.append((longest / bytes_per_s, stop))
    return plan


def basic(credentials: str | None) -> dict[str, str]:
    """The upgrade's headers for ``wss://user:password@…`` (none without credentials)."""
    return {"Authorization": basic_header(credentials)} if credentials else {}


async def simulate_exotel(
    url: str,
    audio: Path,
    *,
    second_track: Path | None = None,
    sample_rate: int = 8000,
    pace: float = 1.0,
    credentials: str | None = None,
    params: dict[str, str] | None = None,
) -> ReplayResult:
    """Replay ``audio`` (the caller) and optionally ``second_track`` (the other party) as a new call."""
    inbound = load_pcm16(audio, sample_rate)
    outbound = load_pcm16(second_track, sample_rate) if second_track is not None else None
    call = ExotelCall(
        tracks=["inbound", "outbound"] if outbound is not None else ["inbound"],
        custom_parameters=dict(params or {}),
        sample_rate=sample_rate,
    )
    return await replay(url, plan_messages(call, inbound, outbound), pace=pace, extra_headers=basic(credentials))
