"""A small admin API under ``/_emulator``, for humans and scripts driving a running emulator."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bridge.emulator.errors import invalid_request
from bridge.emulator.faults import Faults
from bridge.emulator.results import iso
from bridge.emulator.state import EmulatedSession, SessionStore


def summary(session: EmulatedSession) -> dict[str, Any]:
    """What a human wants to see about a session: never the audio, never tokens.

    Audio is reported received (``audio_*``), stored and processed, because they differ
    when End races a stream's final flush (spec §3.6).
    """
    return {
        "session_id": session.session_id,
        "stream_id": session.stream_id,
        "status": session.status,
        "upload_type": session.upload_type,
        "created_at": iso(session.created_at),
        "wire_mode": session.wire_mode,
        "sample_rate": session.sample_rate,
        "audio_bytes": len(session.audio),  # received
        "audio_seconds": round(session.audio_seconds, 3),  # received
        "stored_seconds": round(session.stored_seconds, 3),
        "stored_chunks": len(session.stored_chunk_sizes),
        "processed_bytes": session.audio_bytes_at_end,  # None before End
        "processed_seconds": round(session.processed_seconds, 3),
        "lost_after_end_seconds": round(session.lost_after_end_seconds, 3),
        "stream_connections": session.stream_connections,
        "open_streams": session.open_streams,
        "stop_received": session.stop_received,
        "frames_after_stop": session.frames_after_stop,
        "ignored_frames": session.ignored_frames,
        "end_calls": session.end_calls,
        "audio_files_sent": session.audio_files_sent,
        "wav_path": str(session.wav_path) if session.wav_path else None,
    }


class AdminEndpoints:
    """List sessions and their frame arrival times; add, list and clear faults; revoke access tokens."""

    def __init__(
        self,
        *,
        store: SessionStore,
        faults: Faults,
        revoke_tokens: Callable[[], None],
        record_arrivals: bool = False,
    ) -> None:
        self._store = store
        self._record_arrivals = record_arrivals
        self._faults = faults
        self._revoke_tokens = revoke_tokens

    async def sessions(self, request: Request) -> Response:
        return JSONResponse({"sessions": [summary(s) for s in self._store.sessions.values()]})

    async def arrivals(self, request: Request) -> Response:
        """Per session: when each audio frame arrived, when End came, when the stream was flushed
        and closed (``time.monotonic()``).

        For the load benchmark, which compares these with its own send times on the same
        machine; ``arrivals`` is empty unless the emulator runs with ``--record-arrivals``.
        """
        return JSONResponse(
            {
                "clock": "monotonic",
                "recording": self._record_arrivals,
                "sessions": [
                    {
                        "session_id": s.session_id,
                        "call_sid": s.additional_data.get("call_sid"),
                        "audio_bytes": len(s.audio),  # received
                        "processed_bytes": s.audio_bytes_at_end,
                        "lost_after_end_bytes": s.lost_after_end_bytes,
                        "end_calls": s.end_calls,
                        "ended_at": s.ended_at,
                        "stream_closed_at": s.stream_closed_at,
                        "flushed_at": s.flushed_at,
                        "server_closed_at": s.server_closed_at,
                        "arrivals": s.arrivals,
                    }
                    for s in self._store.sessions.values()
                ],
            }
        )

    async def get_faults(self, request: Request) -> Response:
        return JSONResponse(self._faults.pending())

    async def add_fault(self, request: Request) -> Response:
        """Body: ``{"op", "status", "count"?, "retry_after"?}`` to fail requests,
        ``{"op", "delay_s"}`` to add latency, or ``{"drop_stream_after_bytes", "count"?}``.
        """
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return invalid_request("request body must be a JSON object")
        try:
            if "drop_stream_after_bytes" in body:
                self._faults.drop_stream_after(
                    _int(body, "drop_stream_after_bytes"),
                    _int(body, "count", 1),
                    keep_registration=bool(body.get("keep_registration", False)),
                )
            elif "delay_s" in body:
                self._faults.delay(_op(body), _number(body, "delay_s"))
            else:
                retry_after = body.get("retry_after")
                self._faults.fail(
                    _op(body),
                    _int(body, "status"),
                    _int(body, "count", 1),
                    None if retry_after is None else _number(body, "retry_after"),
                )
        except (TypeError, ValueError) as exc:
            return invalid_request(str(exc))
        return JSONResponse(self._faults.pending())

    async def clear_faults(self, request: Request) -> Response:
        self._faults.clear()
        return JSONResponse(self._faults.pending())

    async def revoke_tokens(self, request: Request) -> Response:
        self._revoke_tokens()
        return JSONResponse({"revoked": True})


def _op(body: dict[str, Any]) -> str:
    op = body.get("op")
    if not isinstance(op, str) or not op:
        raise ValueError("op is required")
    return op


def _int(body: dict[str, Any], name: str, default: int | None = None) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer")
    return value


def _number(body: dict[str, Any], name: str) -> float:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number")
    return float(value)
