"""What the emulator remembers about each session, and the session/stream registry."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

BYTES_PER_SAMPLE = 2  # PCM16LE mono
DEFAULT_SAMPLE_RATE = 16000  # P-SA: raw binary frames are always 16 kHz


@dataclass
class EmulatedSession:
    """One EkaScribe session as the emulator saw it: what was asked, what arrived, what happened.

    Tests read these fields directly; times named ``*_at`` with float values are
    ``time.monotonic()`` readings, datetimes are wall-clock UTC as sent on the wire.
    """

    session_id: str
    stream_id: str | None
    request: dict[str, Any]  # the create body as received
    created_at: datetime
    expires_at: datetime
    upload_type: str = "stream"
    upload_url: str = ""
    templates: list[str] = field(default_factory=list)
    model: str = "lite"
    session_mode: str = "dictation"
    additional_data: dict[str, Any] = field(default_factory=dict)  # includes the server-added "_protocol"
    patient_details: dict[str, Any] | None = None
    status: str = "created"  # created -> processing (first End) -> completed | partial | failed
    sample_rate: int = DEFAULT_SAMPLE_RATE
    wire_mode: str | None = None  # "binary" or "json", from the first frame
    audio: bytearray = field(default_factory=bytearray, repr=False)
    stream_connections: int = 0
    open_streams: int = 0
    stream_opened_at: float | None = None  # first connection
    stream_closed_at: float | None = None  # last finalize
    stop_received: bool = False
    stop_reason: str | None = None
    ignored_frames: int = 0  # text frames OSS would ignore: not JSON, unknown event, empty/bad payload
    end_calls: int = 0  # authenticated, non-faulted End requests, repeats included
    ended_at: float | None = None  # first successful End
    processing_started_at: float | None = None  # latest successful End (differs on reprocess)
    completed_at: datetime | None = None
    audio_files_sent: int | None = None
    audio_bytes_at_end: int | None = None  # what End "committed"; later frames are not processed
    documents: dict[str, str] = field(default_factory=dict)  # template_id -> document_id
    wav_path: Path | None = None
    #: With ``record_arrivals``: (``time.monotonic()``, total audio bytes) after each audio frame.
    #: CLOCK_MONOTONIC is system-wide, so another process on the machine can compare its own times.
    arrivals: list[tuple[float, int]] = field(default_factory=list, repr=False)

    @property
    def audio_seconds(self) -> float:
        return len(self.audio) / (BYTES_PER_SAMPLE * self.sample_rate)

    @property
    def committed_seconds(self) -> float:
        """Seconds of audio that End handed to processing (all audio before End)."""
        size = len(self.audio) if self.audio_bytes_at_end is None else self.audio_bytes_at_end
        return size / (BYTES_PER_SAMPLE * self.sample_rate)


class SessionStore:
    """Sessions by id, plus the live stream registrations (stream_id -> session_id).

    A stream registration is deleted when its socket finalizes, as Eka's OSS server
    does, so reconnecting to the same ``upload_url`` is refused with close code 4000.
    """

    def __init__(self) -> None:
        self.sessions: dict[str, EmulatedSession] = {}
        self._streams: dict[str, str] = {}

    def add(self, session: EmulatedSession) -> None:
        self.sessions[session.session_id] = session
        if session.stream_id is not None:
            self._streams[session.stream_id] = session.session_id

    def get(self, session_id: str) -> EmulatedSession | None:
        return self.sessions.get(session_id)

    def by_stream(self, stream_id: str) -> EmulatedSession | None:
        session_id = self._streams.get(stream_id)
        return None if session_id is None else self.sessions.get(session_id)

    def unregister_stream(self, stream_id: str) -> None:
        self._streams.pop(stream_id, None)

    def new_session_id(self) -> str:
        while (candidate := "ses_" + secrets.token_hex(10)) in self.sessions:
            pass
        return candidate

    def new_stream_id(self) -> str:
        return "str_" + secrets.token_hex(10)
