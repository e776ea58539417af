"""The load generator: N concurrent Twilio Media Streams, paced in real time, from one cheap process.

Each call is a raw WebSocket client on an asyncio protocol (no per-message library work): every
media message of a call is pre-encoded and pre-masked once for all calls, and only the 34-byte
``streamSid`` differs per call (its four mask alignments are computed once per call). Sending a
message is one ``writelines`` of three prepared byte strings. One timer loop wakes every 1–2 ms
and sends every frame that is due, so the process stays far below a core while the server
under test is saturated; bench/load.py checks that (its CPU and its send-schedule slip).

Messages are exactly what ``bridge simulate twilio`` sends (the same builders): ``connected``,
``start``, one ``media`` per 20 ms per track (the sample recordings, looped), then ``stop``; the
upgrade is signed with ``X-Twilio-Signature``. Frame k of a call is due (k+1)·20 ms after its
``start``, like live audio. Every time is ``time.monotonic()``, which the emulator's arrival log
shares (CLOCK_MONOTONIC is system-wide).

Run by bench/load.py: ``python -m bench.loadgen --url ws://… --calls N --duration S --out DIR``.
Writes ``DIR/calls.json`` (per call: ids, start, stop, close, error) and ``DIR/send_times.npy``
(calls × frames: when each frame went out; NaN if it never did).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import heapq
import json
import math
import os
import secrets
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from bridge.providers.twilio.signature import compute_signature
from bridge.providers.twilio.simulator import new_sid
from bridge.providers.twilio.stream import connected_message, media_message, start_message, stop_message
from bridge.simulator.audio import load_ulaw

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the pure-Python fallback is slower but equivalent
    from websockets.utils import apply_mask

FRAME_S = 0.020
FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
SAMPLES = Path(__file__).resolve().parent.parent / "samples"
TRACK_AUDIO = {"inbound": SAMPLES / "caller.wav", "outbound": SAMPLES / "clinician.wav"}
SID_PLACEHOLDER = "MZ" + "f" * 32  # same length as every streamSid
TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA
CLOSE_WAIT_S = 30.0
EARLY_S = 0.0005  # a frame may go out this much before it is due (timer resolution)
MIN_SLEEP_S, MAX_SLEEP_S = 0.001, 0.002


def frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """One masked client frame (RFC 6455 §5.2)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    return header + mask + apply_mask(payload, mask)


def rotated(mask: bytes, offset: int) -> bytes:
    """The mask as it applies to bytes starting ``offset`` bytes into a payload."""
    shift = offset % 4
    return mask[shift:] + mask[:shift]


@dataclass(frozen=True)
class Piece:
    """One media message minus its streamSid: ``head`` (header, mask, masked JSON up to the sid),
    the mask alignment the sid needs, and the masked JSON after it."""

    head: bytes
    sid_phase: int
    tail: bytes


class Templates:
    """Every media message of a call, encoded and masked once; shared by all calls.

    Tick k holds one message per track (outbound first, as Twilio orders them), with the
    sequence numbers, chunks and timestamps Twilio would send.
    """

    def __init__(self, tracks: list[str], ticks: int, mask: bytes) -> None:
        self.mask = mask
        audio = {name: _looped(load_ulaw(TRACK_AUDIO[name]), ticks * FRAME_BYTES) for name in tracks}
        order = [t for t in ("outbound", "inbound") if t in tracks]
        self.ticks: list[list[Piece]] = []
        for k in range(ticks):
            pieces = []
            for j, track in enumerate(order):
                message = media_message(
                    2 + k * len(order) + j,
                    stream_sid=SID_PLACEHOLDER,
                    track=track,
                    chunk=k + 1,
                    timestamp_ms=k * 20,
                    payload=audio[track][k * FRAME_BYTES : (k + 1) * FRAME_BYTES],
                )
                pieces.append(self._piece(_json(message)))
            self.ticks.append(pieces)

    def _piece(self, text: bytes) -> Piece:
        before, after = text.split(SID_PLACEHOLDER.encode())
        whole = frame(TEXT, text, self.mask)
        head_size = len(whole) - len(text) + len(before)
        tail_offset = len(before) + len(SID_PLACEHOLDER)
        return Piece(
            head=whole[:head_size],
            sid_phase=len(before) % 4,
            tail=apply_mask(after, rotated(self.mask, tail_offset)),
        )

    def masked_sids(self, sid: str) -> tuple[bytes, ...]:
        """``sid`` masked for each of the four alignments it may start at."""
        return tuple(apply_mask(sid.encode(), rotated(self.mask, phase)) for phase in range(4))


@dataclass
class Call(asyncio.Protocol):
    """One simulated call: a raw WebSocket client that answers pings and echoes the close."""

    index: int
    request: bytes  # the HTTP upgrade request
    mask: bytes
    call_sid: str = field(default_factory=lambda: new_sid("CA"))
    stream_sid: str = field(default_factory=lambda: new_sid("MZ"))
    account_sid: str = field(default_factory=lambda: new_sid("AC"))
    sids: tuple[bytes, ...] = ()
    transport: Any = None
    started_at: float | None = None  # when `start` went out: frame k is due (k+1)·20 ms later
    stop_at: float | None = None
    closed_at: float | None = None
    close_code: int | None = None
    error: str | None = None
    sent: array = field(default_factory=lambda: array("d"))
    _buffer: bytearray = field(default_factory=bytearray)
    _upgraded: bool = False
    _close_sent: bool = False
    opened: asyncio.Future[None] | None = None
    closed: asyncio.Future[None] | None = None

    def __hash__(self) -> int:
        return self.index

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self._buffer[: self._buffer.find(b"\r\n")]).decode("latin-1")
            del self._buffer[: end + 4]
            if " 101 " not in status + " ":
                self.error = f"handshake: {status}"
                self.transport.close()
                return
            self._upgraded = True
            if self.opened is not None and not self.opened.done():
                self.opened.set_result(None)
        self._read_frames()

    def _read_frames(self) -> None:
        buf = self._buffer
        while len(buf) >= 2:
            opcode, size, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if size == 126:
                if len(buf) < 4:
                    return
                size, at = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                if len(buf) < 10:
                    return
                size, at = int.from_bytes(buf[2:10], "big"), 10
            if buf[1] & 0x80:  # servers never mask, but skip a mask key if one came
                at += 4
            if len(buf) < at + size:
                return
            payload = bytes(buf[at : at + size])
            del buf[: at + size]
            if opcode == PING:
                self.transport.write(frame(PONG, payload, self.mask))
            elif opcode == CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.close()

    def close(self) -> None:
        """Echo (or send) the close frame, then let the TCP connection go."""
        if self.transport is None or self.transport.is_closing():
            return
        if not self._close_sent:
            self._close_sent = True
            self.transport.write(frame(CLOSE, (1000).to_bytes(2, "big"), self.mask))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_at = time.monotonic()
        if self.opened is not None and not self.opened.done():
            self.opened.set_exception(ConnectionError(self.error or f"connection lost: {exc}"))
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def send_tick(self, pieces: list[Piece]) -> None:
        parts: list[bytes] = []
        for piece in pieces:
            parts += (piece.head, self.sids[piece.sid_phase], piece.tail)
        self.transport.writelines(parts)


class LoadGenerator:
    """Opens ``calls`` streams at ``ramp_rate`` per second and paces their frames in real time."""

    def __init__(self, url: str, *, calls: int, duration_s: float, tracks: list[str], ramp_rate: float, token: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.calls_n, self.ramp_rate = calls, ramp_rate
        self.ticks = max(1, round(duration_s / FRAME_S))
        self.tracks = tracks
        self.mask = secrets.token_bytes(4)
        self.templates = Templates(tracks, self.ticks, self.mask)
        request = (
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(secrets.token_bytes(16)).decode()}\r\n"
            f"Sec-WebSocket-Version: 13\r\nX-Twilio-Signature: {compute_signature(token, url)}\r\n\r\n"
        ).encode()
        self.calls = [Call(i, request, self.mask) for i in range(calls)]
        self._due: list[tuple[float, int, int]] = []  # (due time, call index, tick)
        self._opening: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for call in self.calls:
            call.sids = self.templates.masked_sids(call.stream_sid)
            call.opened, call.closed = loop.create_future(), loop.create_future()
        launcher = asyncio.create_task(self._launch())
        await self._pace(launcher)
        await asyncio.gather(*self._opening, return_exceptions=True)
        closing = [c.closed for c in self.calls if c.closed is not None and c.transport is not None]
        if closing:
            await asyncio.wait(closing, timeout=CLOSE_WAIT_S)
        for call in self.calls:
            if call.transport is not None and not call.transport.is_closing():
                call.error = call.error or "no close from the server"
                call.transport.abort()

    async def _launch(self) -> None:
        loop = asyncio.get_running_loop()
        begin = time.monotonic()
        for call in self.calls:
            await _sleep_until(begin + call.index / self.ramp_rate)
            task = loop.create_task(self._open(call))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)
        await asyncio.gather(*self._opening, return_exceptions=True)
        first_stop = min((c.started_at for c in self.calls if c.started_at), default=time.monotonic())
        first_stop += self.ticks * FRAME_S
        started = sum(1 for c in self.calls if c.started_at is not None)
        failed = self.calls_n - started
        print(f"loadgen: streaming calls={started} failed={failed} first_stop={first_stop:.6f}", flush=True)

    async def _open(self, call: Call) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: call, self.host, self.port)
            assert call.opened is not None
            await asyncio.wait_for(call.opened, 30)
        except (TimeoutError, OSError, ConnectionError) as exc:
            call.error = call.error or f"{type(exc).__name__}: {exc}"
            if call.transport is not None:
                call.transport.abort()
            return
        call.send(frame(TEXT, _json(connected_message()), self.mask))
        start = start_message(
            1,
            account_sid=call.account_sid,
            stream_sid=call.stream_sid,
            call_sid=call.call_sid,
            tracks=list(self.tracks),
            custom_parameters={},
        )
        call.send(frame(TEXT, _json(start), self.mask))
        call.started_at = time.monotonic()
        heapq.heappush(self._due, (call.started_at + FRAME_S, call.index, 0))

    async def _pace(self, launcher: asyncio.Task[None]) -> None:
        """Send every frame due within the next ``EARLY_S``, then sleep 1–2 ms.

        Event-loop timers have millisecond resolution: sleeping for less returns at once
        and the loop would spin. So frames go out in per-millisecond batches, at most
        ``EARLY_S`` early (their slip is recorded either way).
        """
        due, calls, ticks = self._due, self.calls, self.templates.ticks
        while due or not launcher.done() or self._opening:
            now = time.monotonic()
            if not due or due[0][0] > now + EARLY_S:
                wait = due[0][0] - now if due else MAX_SLEEP_S
                await asyncio.sleep(min(max(wait, MIN_SLEEP_S), MAX_SLEEP_S))
                continue
            horizon = now + EARLY_S
            while due and due[0][0] <= horizon:
                at, index, tick = heapq.heappop(due)
                call = calls[index]
                if call.transport is None or call.transport.is_closing():
                    continue  # the server ended this call early: recorded by its close
                call.sent.append(time.monotonic())  # before the write: an arrival can never precede it
                call.send_tick(ticks[tick])
                if tick + 1 < len(ticks):
                    heapq.heappush(due, (at + FRAME_S, index, tick + 1))
                else:
                    self._stop(call)
            await asyncio.sleep(0)
        await launcher

    def _stop(self, call: Call) -> None:
        stop = stop_message(
            2 + len(self.tracks) * self.ticks,
            stream_sid=call.stream_sid,
            account_sid=call.account_sid,
            call_sid=call.call_sid,
        )
        call.stop_at = time.monotonic()
        call.send(frame(TEXT, _json(stop), self.mask))

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        sent = np.full((self.calls_n, self.ticks), np.nan)
        for call in self.calls:
            sent[call.index, : len(call.sent)] = np.frombuffer(call.sent, dtype=np.float64)
        np.save(out / "send_times.npy", sent)
        summary = {
            "tracks": self.tracks,
            "ticks": self.ticks,
            "frame_bytes": FRAME_BYTES,
            "calls": [
                {
                    "call_sid": c.call_sid,
                    "started_at": c.started_at,
                    "stop_at": c.stop_at,
                    "closed_at": c.closed_at,
                    "close_code": c.close_code,
                    "frames_sent": len(c.sent),
                    "error": c.error,
                }
                for c in self.calls
            ],
        }
        (out / "calls.json").write_text(json.dumps(summary))


def _json(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def _looped(audio: bytes, size: int) -> bytes:
    return (audio * math.ceil(size / max(1, len(audio))))[:size]


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/twilio/stream")
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True, help="seconds of audio per call")
    parser.add_argument("--tracks", type=int, choices=(1, 2), default=1)
    parser.add_argument("--ramp-rate", type=float, default=100.0, help="calls started per second")
    parser.add_argument("--token", default="bench-twilio-token", help="Twilio auth token signing the upgrade")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the load generator only targets loopback")
    tracks = ["inbound"] if args.tracks == 1 else ["inbound", "outbound"]
    generator = LoadGenerator(
        args.url, calls=args.calls, duration_s=args.duration, tracks=tracks, ramp_rate=args.ramp_rate, token=args.token
    )
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    runner(generator.run())
    generator.write(args.out)
    print(f"loadgen: done pid={os.getpid()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
