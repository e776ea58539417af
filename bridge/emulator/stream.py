"""The Stream Audio WebSocket (P-SA), behaving like Eka's OSS ``stream_ws_router``.

Binary frames are PCM16LE mono 16 kHz; text frames are the Media-Streams JSON
envelope (``start`` / ``media`` / ``stop``). The server never sends a message.
Authorization is accepted but not required (spec §3.4: the ``stream_id`` is the
credential in OSS and Eka's SDK sends no header).

The end of a stream is as slow as Eka's server (spec §3.6): each connection keeps its
own partial chunk, which reaches storage only ``flush_delay_s`` after the receive loop
ends. After ``stop`` the server closes (1000; the production code is undocumented)
only once that flush is done, so the close is the client's signal that End will see
everything. A client that closes first gets its close answered at once by the WebSocket
layer and no signal at all: the flush still happens later, after an End that raced it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect
from structlog.typing import FilteringBoundLogger

from bridge.emulator.changes import Changes
from bridge.emulator.errors import fault_response
from bridge.emulator.faults import Faults, StreamDrop
from bridge.emulator.recording import RecordedRequest
from bridge.emulator.state import BYTES_PER_SAMPLE, EmulatedSession, SessionStore
from bridge.emulator.storage import Storage

UNKNOWN_STREAM = 4000  # OSS: unknown or expired stream_id -> accept, then close 4000
NORMAL_CLOSE = 1000
DROPPED = 1011
NO_STATUS = 1005  # a disconnect that carried no close code


class StreamEndpoint:
    """One instance serves every stream socket; audio goes to ``storage`` chunk by chunk."""

    def __init__(
        self,
        *,
        store: SessionStore,
        storage: Storage,
        faults: Faults,
        changes: Changes,
        record: Callable[[RecordedRequest], None],
        log: FilteringBoundLogger,
        chunk_s: float,
        flush_delay_s: float,
        record_arrivals: bool = False,
    ) -> None:
        self._store = store
        self._storage = storage
        self._faults = faults
        self._changes = changes
        self._record = record
        self._log = log
        self._chunk_s = chunk_s
        self._flush_delay_s = flush_delay_s
        self._record_arrivals = record_arrivals

    async def handle(self, websocket: WebSocket) -> None:
        arrived = time.monotonic()
        stream_id: str = websocket.path_params["stream_id"]
        path = websocket.url.path

        def record(code: int) -> None:
            self._record(RecordedRequest("stream", "WEBSOCKET", path, code, arrived))

        if latency := self._faults.latency("stream"):
            await asyncio.sleep(latency)
        if (failure := self._faults.take_failure("stream")) is not None:
            await self._refuse(websocket, failure.status, failure.retry_after)
            record(failure.status)
            return

        await websocket.accept()
        session = self._store.by_stream(stream_id)
        if session is None or datetime.now(UTC) >= session.expires_at:
            self._log.info("stream_refused", stream_id=stream_id, reason="unknown stream_id")
            await _close(websocket, UNKNOWN_STREAM, "unknown stream_id")
            record(UNKNOWN_STREAM)
            return

        drop = self._faults.take_drop()
        session.stream_connections += 1
        session.open_streams += 1
        if session.stream_opened_at is None:
            session.stream_opened_at = time.monotonic()
        self._log.info(
            "stream_opened",
            session_id=session.session_id,
            stream_id=stream_id,
            connection=session.stream_connections,
            authorization="authorization" in websocket.headers,
        )
        self._changes.notify()
        code = DROPPED  # if the handler itself fails
        try:
            code = await self._receive(websocket, session, stream_id, drop)
        finally:
            record(code)

    async def _receive(
        self, websocket: WebSocket, session: EmulatedSession, stream_id: str, drop: StreamDrop | None
    ) -> int:
        """Read frames until stop, disconnect or an injected drop, then flush; returns the close code.

        As in OSS ``_finalize``: the flush (``flush_delay_s``) runs after the receive loop and
        before the handler returns, so after ``stop`` the close goes out only once the last
        chunk is in storage. The registration goes when the loop ends, so a reconnect after
        the end of a stream gets 4000 however long the flush takes.
        """
        pending = bytearray()  # this connection's partial chunk: in storage only when full, or at the flush
        code = DROPPED  # if reading fails
        keep_registration = False
        flushed = False
        try:
            code, ending = await self._read(websocket, session, pending, drop)
            keep_registration = ending == "drop" and drop is not None and drop.keep_registration
            if not keep_registration:
                self._store.unregister_stream(stream_id)
            if ending == "drop":
                await _close(websocket, DROPPED, "emulator fault: stream dropped")
            client_code: int | None = None  # set when a client closes during the flush after its stop
            if ending == "stop":
                client_code = await self._flush_delay_watching(websocket, session)
                code = NORMAL_CLOSE if client_code is None else client_code
            else:
                await asyncio.sleep(self._flush_delay_s)  # encode + upload of the last chunk takes real time
            self._flush(session, stream_id, pending, code)
            flushed = True
            if ending == "stop" and client_code is None:  # else the WebSocket layer already answered the client
                closing = time.monotonic()
                if await _close(websocket, NORMAL_CLOSE):
                    session.server_closed_at = closing
                    self._changes.notify()
        finally:
            if not flushed:  # reading failed, or the server is shutting down: flush now, without the wait
                if not keep_registration:
                    self._store.unregister_stream(stream_id)
                self._flush(session, stream_id, pending, code)
        return code

    async def _flush_delay_watching(self, websocket: WebSocket, session: EmulatedSession) -> int | None:
        """Wait out the flush after a stop; returns the client's close code if it closed meanwhile.

        The WebSocket layer answers a client's close at once, whatever the handler is doing;
        then there is no close left to send, and ``server_closed_at`` stays None. Frames
        sent after ``stop`` are read only to notice that, and dropped (OSS stops reading).
        """
        watcher = asyncio.ensure_future(self._until_disconnect(websocket, session))
        try:
            await asyncio.sleep(self._flush_delay_s)  # encode + upload of the last chunk takes real time
            await asyncio.sleep(0)  # let the watcher take a disconnect that is already queued
            if not watcher.done():
                return None
            if watcher.cancelled() or watcher.exception() is not None:
                return NO_STATUS  # a failed read: the client is gone all the same
            return watcher.result()
        finally:
            if not watcher.done():
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    async def _until_disconnect(self, websocket: WebSocket, session: EmulatedSession) -> int:
        while (message := await websocket.receive())["type"] != "websocket.disconnect":
            session.frames_after_stop += 1
            self._changes.notify()
        return int(message.get("code") or NO_STATUS)

    async def _read(
        self, websocket: WebSocket, session: EmulatedSession, pending: bytearray, drop: StreamDrop | None
    ) -> tuple[int, str]:
        """The receive loop; returns the close code and how it ended: "stop", "disconnect" or "drop"."""
        received = 0
        stall = self._faults.take_stall()
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return int(message.get("code") or NO_STATUS), "disconnect"  # the client's code
            audio_bytes, stopped = self._frame(session, pending, message)
            received += audio_bytes
            if stall is not None and received >= stall.after_bytes:
                await asyncio.sleep(stall.seconds)  # not reading: the client's writes back up
                stall = None
            if drop is not None and received >= drop.after_bytes:
                return DROPPED, "drop"
            if stopped:
                return NORMAL_CLOSE, "stop"

    def _frame(self, session: EmulatedSession, pending: bytearray, message: Message) -> tuple[int, bool]:
        """Apply one frame; returns (audio bytes it carried, whether it was ``stop``)."""
        data = message.get("bytes")
        if data is not None:
            self._wire_mode(session, "binary")
            return self._append(session, pending, data), False
        text = message.get("text")
        if text is None:
            return 0, False
        try:
            envelope = json.loads(text)
        except ValueError:
            envelope = None
        event = envelope.get("event") if isinstance(envelope, dict) else None
        if event != "stop":  # binary audio ended by a text stop is one mode (Eka's SDK does exactly that)
            self._wire_mode(session, "json")
        if not isinstance(envelope, dict):
            session.ignored_frames += 1  # OSS ignores text that is not a JSON object
            return 0, False
        if event == "media":
            pcm = _media_payload(envelope)
            if not pcm:
                session.ignored_frames += 1  # empty or undecodable payload
            return self._append(session, pending, pcm), False
        if event == "start":
            self._start(session, envelope)
        elif event == "stop":
            reason = envelope.get("reason")
            session.stop_received = True
            session.stop_reason = reason if isinstance(reason, str) else None
            self._changes.notify()
            return 0, True
        else:
            session.ignored_frames += 1  # unknown events are ignored
        return 0, False

    def _wire_mode(self, session: EmulatedSession, mode: str) -> None:
        if session.wire_mode is None:
            session.wire_mode = mode
        elif session.wire_mode != mode:
            self._log.warning("mixed_wire_modes", session_id=session.session_id, first=session.wire_mode, now=mode)

    def _start(self, session: EmulatedSession, envelope: dict[str, Any]) -> None:
        """Apply ``start.mediaFormat.sampleRate`` when it is an int > 0 (OSS).

        Ignored once audio has arrived: the session keeps one buffer and one WAV at one rate.
        """
        start = envelope.get("start")
        media_format = start.get("mediaFormat") if isinstance(start, dict) else None
        rate = media_format.get("sampleRate") if isinstance(media_format, dict) else None
        if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
            return
        if session.audio and rate != session.sample_rate:
            self._log.warning(
                "sample_rate_change_ignored", session_id=session.session_id, rate=rate, kept=session.sample_rate
            )
            return
        session.sample_rate = rate

    def _append(self, session: EmulatedSession, pending: bytearray, pcm: bytes) -> int:
        """Received audio joins the connection's partial chunk; each full chunk goes to storage."""
        if not pcm:
            return 0  # OSS ignores empty media payloads
        session.audio.extend(pcm)
        if self._record_arrivals:
            session.arrivals.append((time.monotonic(), len(session.audio)))
        pending.extend(pcm)
        chunk_bytes = max(1, round(self._chunk_s * session.sample_rate)) * BYTES_PER_SAMPLE
        while len(pending) >= chunk_bytes:
            self._storage.write_chunk(session, bytes(pending[:chunk_bytes]), final=False)
            del pending[:chunk_bytes]
        self._changes.notify()
        return len(pcm)

    def _flush(self, session: EmulatedSession, stream_id: str, pending: bytearray, code: int) -> None:
        """The connection's final flush: its partial chunk (if any) goes to storage, then it counts as closed."""
        flushed_bytes = len(pending)
        self._storage.write_chunk(session, bytes(pending), final=True)
        pending.clear()
        now = time.monotonic()
        session.flushed_at = now
        session.stream_closed_at = now
        session.open_streams -= 1
        self._log.info(
            "stream_finished",
            session_id=session.session_id,
            stream_id=stream_id,
            code=code,
            flushed_seconds=round(session.seconds(flushed_bytes), 3),
            received_seconds=round(session.audio_seconds, 2),
            stored_seconds=round(session.stored_seconds, 2),
            stored_chunks=len(session.stored_chunk_sizes),
            sample_rate=session.sample_rate,
            wire_mode=session.wire_mode,
            stop=session.stop_received,
            ended_before_flush=session.ended_at is not None,
            wav=str(session.wav_path) if session.wav_path else None,
        )
        self._changes.notify()

    async def _refuse(self, websocket: WebSocket, status: int, retry_after: float | None) -> None:
        """An injected stream fault: an HTTP status refuses the handshake, a close code closes after accept."""
        if status >= 1000:
            await websocket.accept()
            await _close(websocket, status, "emulator fault")
            return
        try:
            await websocket.send_denial_response(fault_response("stream", status, retry_after))
        except RuntimeError:  # the server lacks the denial-response extension: plain 403
            await websocket.close()


async def _close(websocket: WebSocket, code: int, reason: str = "") -> bool:
    """Close unless the client got there first (then the server's close cannot be sent); True if sent."""
    try:
        await websocket.close(code, reason)
    except (RuntimeError, OSError, WebSocketDisconnect):
        return False
    return True


def _media_payload(envelope: dict[str, Any]) -> bytes:
    media = envelope.get("media")
    payload = media.get("payload") if isinstance(media, dict) else None
    if not isinstance(payload, str) or not payload:
        return b""
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return b""
