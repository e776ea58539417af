"""Replay a call as a Twilio Media Stream, with the exact message shapes Twilio sends.

Split in two so tests can aim at either half: ``plan_messages`` is a pure function
(what to send and when), ``replay`` is the only part that touches the network.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bridge.providers.twilio.signature import compute_signature
from bridge.providers.twilio.stream import (
    connected_message,
    media_message,
    start_message,
    stop_message,
)
from bridge.simulator.audio import TARGET_RATE, load_ulaw
from bridge.simulator.framing import interleaved_frames

#: μ-law is one byte per sample, so bytes per millisecond at 8 kHz.
BYTES_PER_MS = TARGET_RATE // 1000


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two-letter prefix plus 32 hex characters."""
    return prefix + secrets.token_hex(16)


@dataclass
class TwilioCall:
    """The identity of one simulated call: the values a ``start`` message carries."""

    account_sid: str = field(default_factory=lambda: new_sid("AC"))
    call_sid: str = field(default_factory=lambda: new_sid("CA"))
    stream_sid: str = field(default_factory=lambda: new_sid("MZ"))
    tracks: list[str] = field(default_factory=lambda: ["inbound"])
    custom_parameters: dict[str, str] = field(default_factory=dict)


def plan_messages(
    call: TwilioCall,
    inbound: bytes,
    outbound: bytes | None = None,
    *,
    frame_ms: int = 20,
    shared_chunk_counter: bool = False,
    send_stop: bool = True,
) -> list[tuple[float, dict[str, Any]]]:
    """Every message of the stream with its send time in seconds from stream start.

    A frame is due when its audio has been "spoken", i.e. at the end of the frame
    (capped at the end of the audio), as a live call delivers it; its ``timestamp``
    is the frame's start. Per tick the outbound frame precedes the inbound one, as
    in Twilio's own example. ``stop`` goes out at the end of the audio.
    """
    if frame_ms <= 0:
        raise ValueError(f"frame_ms must be > 0, got {frame_ms}")
    frame_bytes = frame_ms * BYTES_PER_MS
    audio = [(name, data) for name, data in (("outbound", outbound), ("inbound", inbound)) if data]
    for name, _ in audio:
        if name not in call.tracks:
            raise ValueError(f"{name} audio given but call.tracks is {call.tracks}")

    sid = call.stream_sid
    plan: list[tuple[float, dict[str, Any]]] = [
        (0.0, connected_message()),
        (
            0.0,
            start_message(
                1,
                account_sid=call.account_sid,
                stream_sid=sid,
                call_sid=call.call_sid,
                tracks=list(call.tracks),
                custom_parameters=dict(call.custom_parameters),
            ),
        ),
    ]
    seq = 1
    chunks = {name: 0 for name, _ in audio}
    shared_chunk = 0
    longest = max((len(data) for _, data in audio), default=0)
    for tick, ready_at, name, piece in interleaved_frames(audio, frame_bytes):
        seq += 1
        shared_chunk += 1
        chunks[name] += 1
        message = media_message(
            seq,
            stream_sid=sid,
            track=name,
            chunk=shared_chunk if shared_chunk_counter else chunks[name],
            timestamp_ms=tick * frame_ms,
            payload=piece,
        )
        plan.append((ready_at / TARGET_RATE, message))
    if send_stop:
        seq += 1
        stop = stop_message(seq, stream_sid=sid, account_sid=call.account_sid, call_sid=call.call_sid)
        plan.append((longest / TARGET_RATE, stop))
    return plan


@dataclass
class ReplayResult:
    """What was sent and how the connection ended."""

    messages_sent: int = 0
    media_sent: int = 0
    bytes_sent: dict[str, int] = field(default_factory=dict)  # decoded payload bytes per track
    elapsed_s: float = 0.0
    close_code: int | None = None  # the server's close frame, None if it sent none
    close_reason: str | None = None
    frames_sent: dict[str, int] = field(default_factory=dict)  # media messages per track
    completed: bool = False  # every planned message went out
    closed_by: str = ""  # "client", "server", "abort" (drop_after_s) or "lost" (no close frame)

    def _count(self, message: dict[str, Any] | str | bytes) -> None:
        self.messages_sent += 1
        if not isinstance(message, dict) or message.get("event") != "media":
            return
        body = message.get("media")
        if not isinstance(body, dict):
            return
        track = str(body.get("track") or "inbound")  # a single-track stream may name none (Exotel)
        try:
            size = len(base64.b64decode(str(body.get("payload", "")), validate=True))
        except (binascii.Error, ValueError):
            size = 0
        self.media_sent += 1
        self.frames_sent[track] = self.frames_sent.get(track, 0) + 1
        self.bytes_sent[track] = self.bytes_sent.get(track, 0) + size


async def replay(
    url: str,
    messages: Iterable[tuple[float, dict[str, Any] | str | bytes]],
    *,
    pace: float = 1.0,
    auth_token: str | None = None,
    extra_headers: dict[str, str] | None = None,
    close_after: bool = True,
    drop_after_s: float | None = None,
    open_timeout: float = 10,
    server_close_timeout: float = 10,
) -> ReplayResult:
    """Send ``messages`` to ``url``, each at ``t / pace`` seconds after the handshake.

    Dicts are JSON-encoded; ``str`` goes out raw as a text frame and ``bytes`` as a
    binary frame, so tests can inject malformed input. Deadlines are absolute
    (``loop.time()``), so slow sends never make the stream drift. The server may
    close at any time: the replay stops sending, records its close frame and returns.

    ``drop_after_s`` kills the TCP connection without a close frame once that much
    stream time has passed (or right after the last message, if sooner): a dropped
    call. Otherwise ``close_after`` closes with 1000 after the last message; without
    it the replay waits up to ``server_close_timeout`` for the server to close first.
    Handshake failures (HTTP 403, refused, timeout) raise websockets/OS errors.
    """
    if not pace > 0:
        raise ValueError(f"pace must be > 0, got {pace}")
    headers = dict(extra_headers or {})
    if auth_token is not None:
        headers["X-Twilio-Signature"] = compute_signature(auth_token, url)

    ws = await connect(url, additional_headers=headers, open_timeout=open_timeout)
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = ReplayResult()
    drain = asyncio.create_task(_drain(ws))
    aborted = False
    try:
        result.completed = True
        for t, message in messages:
            if drop_after_s is not None and t > drop_after_s:
                await _until(started + drop_after_s / pace, drain)
                result.completed = False
                break
            if await _until(started + t / pace, drain):
                result.completed = False  # the server closed first
                break
            try:
                await ws.send(message if isinstance(message, (str, bytes)) else _encode(message))
            except ConnectionClosed:
                result.completed = False
                break
            result._count(message)
        if drop_after_s is not None and not drain.done():
            ws.transport.abort()  # a dropped call: the socket just goes, no close frame
            aborted = True
        else:
            if not close_after:
                await asyncio.wait({drain}, timeout=server_close_timeout)
            await ws.close()  # no-op when already closed; bounded by the client's close_timeout
        try:
            await asyncio.wait_for(ws.wait_closed(), timeout=server_close_timeout)
        except TimeoutError:
            ws.transport.abort()  # the peer never finished closing: give up on it
    finally:
        if not drain.done():
            ws.transport.abort()
            drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
    result.elapsed_s = loop.time() - started
    received = ws.protocol.close_rcvd
    result.close_code = received.code if received else None
    result.close_reason = received.reason if received else None
    if aborted:
        result.closed_by = "abort"
    elif received is None:
        result.closed_by = "lost"
    elif ws.protocol.close_rcvd_then_sent is False:
        result.closed_by = "client"
    else:
        result.closed_by = "server"
    return result


def _encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


async def _drain(ws: ClientConnection) -> None:
    """Read (and drop) whatever the server sends, so its close frame is always seen."""
    try:
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass


async def _until(deadline: float, closed: asyncio.Task[None]) -> bool:
    """Sleep until ``deadline`` (loop time) unless the connection ends; True if it ended."""
    delay = deadline - asyncio.get_running_loop().time()
    if delay > 0 and not closed.done():
        await asyncio.wait({closed}, timeout=delay)
    return closed.done()


async def simulate_twilio(
    url: str,
    audio: Path,
    *,
    second_track: Path | None = None,
    pace: float = 1.0,
    auth_token: str | None = None,
    params: dict[str, str] | None = None,
) -> ReplayResult:
    """Replay ``audio`` (inbound) and optionally ``second_track`` (outbound) as a new call."""
    inbound = load_ulaw(audio)
    outbound = load_ulaw(second_track) if second_track is not None else None
    call = TwilioCall(
        tracks=["inbound", "outbound"] if outbound is not None else ["inbound"],
        custom_parameters=dict(params or {}),
    )
    return await replay(url, plan_messages(call, inbound, outbound), pace=pace, auth_token=auth_token)
