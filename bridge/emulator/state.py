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

    Audio goes through three stages, as in Eka's server (spec §3.6): ``audio`` is what
    the socket received; ``stored`` is what reached storage, chunk by chunk, the last
    partial chunk of a connection only after its flush; ``processed_audio`` is what End
    found in storage. A client that Ends before the flush loses the tail of its call.
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
    audio: bytearray = field(default_factory=bytearray, repr=False)  # every PCM byte received, in arrival order
    #: Audio in storage, in the order chunks were written (Eka's server stores VAD chunks, not frames).
    stored: bytearray = field(default_factory=bytearray, repr=False)
    stored_chunk_sizes: list[int] = field(default_factory=list)  # bytes of each stored chunk, in write order
    lost_after_end_bytes: int = 0  # reached storage after the first End: not processed (but by a reprocessing End)
    stream_connections: int = 0
    open_streams: int = 0
    stream_opened_at: float | None = None  # first connection
    stream_closed_at: float | None = None  # last finalize (after its flush); same as flushed_at
    flushed_at: float | None = None  # last final flush of a connection: flush_delay_s after its receive loop ended
    server_closed_at: float | None = None  # the server sent its close after a stop, only once flushed (§3.6)
    stop_received: bool = False
    stop_reason: str | None = None
    frames_after_stop: int = 0  # frames a client sent after its stop: never read as audio (OSS stops reading)
    ignored_frames: int = 0  # text frames OSS would ignore: not JSON, unknown event, empty/bad payload
    end_calls: int = 0  # authenticated, non-faulted End requests, repeats included
    ended_at: float | None = None  # first successful End
    processing_started_at: float | None = None  # latest successful End (differs on reprocess)
    completed_at: datetime | None = None
    audio_files_sent: int | None = None
    audio_bytes_at_end: int | None = None  # len(stored) when End listed storage: what it processed
    chunks_at_end: int | None = None  # stored chunks End listed: the audio_files it reported
    documents: dict[str, str] = field(default_factory=dict)  # template_id -> document_id
    wav_path: Path | None = None
    #: With ``record_arrivals``: (``time.monotonic()``, total audio bytes) after each audio frame.
    #: CLOCK_MONOTONIC is system-wide, so another process on the machine can compare its own times.
    arrivals: list[tuple[float, int]] = field(default_factory=list, repr=False)

    def seconds(self, n_bytes: int) -> float:
        """``n_bytes`` of this session's PCM in seconds, at its sample rate."""
        return n_bytes / (BYTES_PER_SAMPLE * self.sample_rate)

    @property
    def audio_seconds(self) -> float:
        """Seconds received over the stream socket(s), stored or not."""
        return self.seconds(len(self.audio))

    @property
    def stored_seconds(self) -> float:
        return self.seconds(len(self.stored))

    @property
    def processed_audio(self) -> bytes:
        """What End handed to processing: storage as it was at the (latest) End; b"" before End."""
        if self.audio_bytes_at_end is None:
            return b""
        return bytes(self.stored[: self.audio_bytes_at_end])

    @property
    def processed_seconds(self) -> float:
        return self.seconds(self.audio_bytes_at_end or 0)

    @property
    def committed_seconds(self) -> float:
        """Seconds End committed to processing: the processed seconds (0 before End)."""
        return self.processed_seconds

    @property
    def lost_after_end_seconds(self) -> float:
        return self.seconds(self.lost_after_end_bytes)


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
