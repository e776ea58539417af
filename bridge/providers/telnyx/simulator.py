"""Replay a call as a Telnyx media stream, with the exact frames Telnyx sends.

``connected`` (version 1.0.0), ``start`` (``stream_id`` at the top level, the call in
``start.call_control_id``), ``media`` every 20 ms per track (PCMU, or big-endian L16 at 8 or
16 kHz), then ``stop``. Telnyx does not promise frame order, so ``reorder`` swaps that many
pairs of neighbouring frames of one track (keeping the send times), as an out-of-order network
would deliver them. The streaming auth token goes on the upgrade as
``x-telnyx-streaming-auth-token``. The network part is Twilio's shared ``replay``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.audio.codec import pcm16_to_ulaw
from bridge.providers.telnyx.stream import (
    AUTH_TOKEN_HEADER,
    connected_message,
    media_message,
    start_message,
    stop_message,
)
from bridge.providers.twilio.simulator import ReplayResult, replay
from bridge.simulator.audio import load_pcm16
from bridge.simulator.framing import interleaved_frames

FRAME_MS = 20
#: What the simulator can send: Telnyx's codec name and its rate.
FORMATS = {"PCMU": (8000,), "L16": (8000, 16000)}

Plan = list[tuple[float, dict[str, Any]]]


def _uuid() -> str:
    return str(uuid.uuid4())


@dataclass
class TelnyxCall:
    """The identity of one simulated call: the values a ``start`` frame carries."""

    stream_id: str = field(default_factory=_uuid)
    call_control_id: str = field(default_factory=lambda: "v3:" + uuid.uuid4().hex)
    call_session_id: str = field(default_factory=_uuid)
    user_id: str = field(default_factory=_uuid)
    caller: str = "+13122010094"
    called: str = "+13122123456"
    tracks: list[str] = field(default_factory=lambda: ["inbound"])
    custom_parameters: dict[str, str] = field(default_factory=dict)
    encoding: str = "PCMU"
    sample_rate: int = 8000


def wire_bytes(audio: bytes | np.ndarray, encoding: str) -> bytes:
    """int16 samples as the codec's payload (μ-law, or big-endian L16); bytes as given."""
    if isinstance(audio, (bytes, bytearray)):
        return bytes(audio)
    if encoding == "PCMU":
        return pcm16_to_ulaw(audio)
    return np.asarray(audio, dtype=">i2").tobytes()


def plan_messages(
    call: TelnyxCall,
    inbound: bytes | np.ndarray,
    outbound: bytes | np.ndarray | None = None,
    *,
    frame_ms: int = FRAME_MS,
    reorder: int = 0,
    send_stop: bool = True,
) -> Plan:
    """Every frame of the stream with its send time in seconds from the stream's start.

    A frame is due when its audio has been spoken; its ``timestamp`` is the frame's start in ms,
    ``chunk`` counts each track's frames from 1. Per tick the outbound frame precedes the
    inbound one. ``reorder`` > 0 swaps that many pairs of neighbouring same-track frames, spread
    over the call. ``stop`` goes out at the end of the audio.
    """
    if call.sample_rate not in FORMATS.get(call.encoding, ()):
        raise ValueError(f"unsupported format {call.encoding} at {call.sample_rate} Hz")
    width = 1 if call.encoding == "PCMU" else 2
    frame_bytes = call.sample_rate * frame_ms // 1000 * width
    bytes_per_s = call.sample_rate * width
    audio = [
        (name, wire_bytes(data, call.encoding))
        for name, data in (("outbound", outbound), ("inbound", inbound))
        if data is not None and len(data)
    ]
    for name, _ in audio:
        if name not in call.tracks:
            raise ValueError(f"{name} audio given but call.tracks is {call.tracks}")
    start = start_message(
        1,
        stream_id=call.stream_id,
        call_control_id=call.call_control_id,
        call_session_id=call.call_session_id,
        user_id=call.user_id,
        caller=call.caller,
        called=call.called,
        encoding=call.encoding,
        sample_rate=call.sample_rate,
        custom_parameters=dict(call.custom_parameters),
    )
    plan: Plan = [(0.0, connected_message()), (0.0, start)]
    seq = 1
    chunks = {name: 0 for name, _ in audio}
    for tick, ready_at, name, piece in interleaved_frames(audio, frame_bytes):
        seq += 1
        chunks[name] += 1
        frame = media_message(
            seq, stream_id=call.stream_id, track=name, chunk=chunks[name], timestamp_ms=tick * frame_ms, payload=piece
        )
        plan.append((ready_at / bytes_per_s, frame))
    _reorder(plan, reorder)
    if send_stop:
        longest = max((len(data) for _, data in audio), default=0)
        stop = stop_message(
            seq + 1, stream_id=call.stream_id, user_id=call.user_id, call_control_id=call.call_control_id
        )
        plan.append((longest / bytes_per_s, stop))
    return plan


def _reorder(plan: Plan, pairs: int) -> None:
    """Swap ``pairs`` pairs of neighbouring media frames of one track, evenly spread."""
    media = [i for i, (_, m) in enumerate(plan) if m["event"] == "media"]
    by_track: dict[str, list[int]] = {}
    for i in media:
        by_track.setdefault(plan[i][1]["media"]["track"], []).append(i)
    for indices in by_track.values():
        step = max(len(indices) // (pairs + 1), 2) if pairs else 0
        for k in range(1, pairs + 1):
            j = k * step
            if j + 1 >= len(indices):
                break
            a, b = indices[j], indices[j + 1]
            plan[a], plan[b] = (plan[a][0], plan[b][1]), (plan[b][0], plan[a][1])


def auth_header(token: str | None) -> dict[str, str]:
    """The upgrade's headers for a ``stream_auth_token`` (none without one)."""
    return {AUTH_TOKEN_HEADER: token} if token else {}


async def simulate_telnyx(
    url: str,
    audio: Path,
    *,
    second_track: Path | None = None,
    encoding: str = "PCMU",
    sample_rate: int = 8000,
    pace: float = 1.0,
    reorder: int = 0,
    stream_token: str | None = None,
    params: dict[str, str] | None = None,
) -> ReplayResult:
    """Replay ``audio`` (inbound) and optionally ``second_track`` (outbound) as a new call."""
    inbound = load_pcm16(audio, sample_rate)
    outbound = load_pcm16(second_track, sample_rate) if second_track is not None else None
    call = TelnyxCall(
        tracks=["inbound", "outbound"] if outbound is not None else ["inbound"],
        custom_parameters=dict(params or {}),
        encoding=encoding,
        sample_rate=sample_rate,
    )
    plan = plan_messages(call, inbound, outbound, reorder=reorder)
    return await replay(url, plan, pace=pace, extra_headers=auth_header(stream_token))
