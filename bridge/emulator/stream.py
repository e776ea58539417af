"""The Stream Audio WebSocket (P-SA), behaving like Eka's OSS ``stream_ws_router``.

Binary frames are PCM16LE mono 16 kHz; text frames are the Media-Streams JSON
envelope (``start`` / ``media`` / ``stop``). The server never sends a message.
Authorization is accepted but not required (spec §3.4: the ``stream_id`` is the
credential in OSS and Eka's SDK sends no header). After ``stop`` the socket is
closed with 1000; the production close code is undocumented.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from starlette.types import Message
from starlette.websockets import WebSocket
from structlog.typing import FilteringBoundLogger

from bridge.emulator.changes import Changes
from bridge.emulator.errors import fault_response
from bridge.emulator.faults import Faults, StreamDrop
from bridge.emulator.recording import RecordedRequest
from bridge.emulator.state import EmulatedSession, SessionStore
from bridge.emulator.wav import WavSink

UNKNOWN_STREAM = 4000  # OSS: unknown or expired stream_id -> accept, then close 4000
NORMAL_CLOSE = 1000
DROPPED = 1011
NO_STATUS = 1005  # a disconnect that carried no close code


class StreamEndpoint:
    """One instance serves every stream socket; per-session WAV files live here."""

    def __init__(
        self,
        *,
        store: SessionStore,
        faults: Faults,
        changes: Changes,
        record: Callable[[RecordedRequest], None],
        audio_dir: Path | None,
        log: FilteringBoundLogger,
        record_arrivals: bool = False,
    ) -> None:
        self._store = store
        self._faults = faults
        self._changes = changes
        self._record = record
        self._audio_dir = audio_dir
        self._log = log
        self._record_arrivals = record_arrivals
        self._sinks: dict[str, WavSink | None] = {}  # session_id -> open WAV (None: writing failed)

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
        if session is None or datetime.now(timezone.utc) >= session.expires_at:
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
        """Read frames until stop, disconnect or an injected drop; returns the close code.

        Finalizes before closing, so once a client sees the close the session shows it.
        """
        received = 0
        code = NO_STATUS
        keep_registration = False
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    code = int(message.get("code") or NO_STATUS)
                    break
                audio_bytes, stopped = self._frame(session, message)
                received += audio_bytes
                if drop is not None and received >= drop.after_bytes:
                    code, keep_registration = DROPPED, drop.keep_registration
                    break
                if stopped:
                    code = NORMAL_CLOSE
                    break
        finally:
            self._finalize(session, stream_id, keep_registration=keep_registration)
        if code == DROPPED:
            await _close(websocket, DROPPED, "emulator fault: stream dropped")
        elif code == NORMAL_CLOSE:
            await _close(websocket, NORMAL_CLOSE)
        return code

    def _frame(self, session: EmulatedSession, message: Message) -> tuple[int, bool]:
        """Apply one frame; returns (audio bytes it carried, whether it was ``stop``)."""
        data = message.get("bytes")
        if data is not None:
            self._wire_mode(session, "binary")
            return self._append(session, data), False
        text = message.get("text")
        if text is None:
            return 0, False
        self._wire_mode(session, "json")
        try:
            envelope = json.loads(text)
        except ValueError:
            envelope = None
        if not isinstance(envelope, dict):
            session.ignored_frames += 1  # OSS ignores text that is not a JSON object
            return 0, False
        event = envelope.get("event")
        if event == "media":
            pcm = _media_payload(envelope)
            if not pcm:
                session.ignored_frames += 1  # empty or undecodable payload
            return self._append(session, pcm), False
        if event == "start":
            self._start(session, envelope)
        elif event == "stop":
            reason = envelope.get("reason")
            session.stop_received = True
            session.stop_reason = reason if isinstance(reason, str) else None
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

    def _append(self, session: EmulatedSession, pcm: bytes) -> int:
        if not pcm:
            return 0  # OSS ignores empty media payloads
        session.audio.extend(pcm)
        if self._record_arrivals:
            session.arrivals.append((time.monotonic(), len(session.audio)))
        self._write_wav(session, pcm)
        self._changes.notify()
        return len(pcm)

    def _write_wav(self, session: EmulatedSession, pcm: bytes) -> None:
        """Synchronous writes: small, and they keep the file in frame order."""
        if self._audio_dir is None:
            return
        if session.session_id not in self._sinks:
            path = self._audio_dir / f"{_file_stem(session.session_id)}.wav"
            self._sinks[session.session_id] = WavSink(path)
        sink = self._sinks[session.session_id]
        if sink is None:
            return  # writing failed earlier; the audio is still in session.audio
        try:
            sink.write(pcm, session.sample_rate)
        except OSError as exc:
            self._log.error("wav_write_failed", session_id=session.session_id, path=str(sink.path), error=str(exc))
            sink.close()
            self._sinks[session.session_id] = None
            return
        session.wav_path = sink.path

    def _finalize(self, session: EmulatedSession, stream_id: str, *, keep_registration: bool) -> None:
        """Flush: record the close, drop the registration (so a reconnect gets 4000), close the WAV."""
        session.open_streams -= 1
        session.stream_closed_at = time.monotonic()
        if not keep_registration:
            self._store.unregister_stream(stream_id)
        if session.open_streams == 0 and self._store.by_stream(stream_id) is None:
            sink = self._sinks.pop(session.session_id, None)
            if sink is not None:
                sink.close()
        self._log.info(
            "stream_finished",
            session_id=session.session_id,
            stream_id=stream_id,
            audio_seconds=round(session.audio_seconds, 2),
            sample_rate=session.sample_rate,
            wire_mode=session.wire_mode,
            stop=session.stop_received,
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

    def close_all(self) -> None:
        """Close every open WAV (at shutdown) so the headers are final."""
        for sink in self._sinks.values():
            if sink is not None:
                sink.close()
        self._sinks.clear()


async def _close(websocket: WebSocket, code: int, reason: str = "") -> None:
    """Close unless the client got there first (then the server's close cannot be sent)."""
    try:
        await websocket.close(code, reason)
    except (RuntimeError, OSError):
        pass


def _media_payload(envelope: dict[str, Any]) -> bytes:
    media = envelope.get("media")
    payload = media.get("payload") if isinstance(media, dict) else None
    if not isinstance(payload, str) or not payload:
        return b""
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _file_stem(session_id: str) -> str:
    """Client-chosen session ids become file names: keep them inside ``audio_dir``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", session_id)
