"""Where stream audio lands, as in Eka's server: chunks written to storage, listed by End.

Eka's OSS server (``vad_chunk_accumulator.py``) writes a chunk to storage only once it is
complete, and the last partial chunk only when the connection is flushed; End Session
(``protocol/routes/sessions.py``) lists storage at that moment and processes exactly
that. This module is that storage, plus the per-session WAV that mirrors it.
"""

from __future__ import annotations

import re
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from bridge.emulator.changes import Changes
from bridge.emulator.state import BYTES_PER_SAMPLE, EmulatedSession
from bridge.emulator.wav import WavFile


class Storage:
    """Stores chunks on sessions and keeps ``<audio_dir>/<session>.wav`` in step with them.

    The WAV holds what storage held while the session was not ended, and from End on exactly
    what End processed (``processed_audio``, whole samples): chunks that arrive after End
    are counted as lost, not written. A reprocessing End lists storage again, so the WAV
    grows to what that End processed.
    """

    def __init__(self, *, audio_dir: Path | None, changes: Changes, log: FilteringBoundLogger) -> None:
        self._audio_dir = audio_dir
        self._changes = changes
        self._log = log
        self._wavs: dict[str, WavFile | None] = {}  # session_id -> its WAV (None: writing failed)

    def write_chunk(self, session: EmulatedSession, chunk: bytes, *, final: bool) -> None:
        """One chunk reaches storage: a full one as it completes, or a connection's last (``final``) one."""
        if not chunk:
            return
        session.stored.extend(chunk)
        session.stored_chunk_sizes.append(len(chunk))
        if session.ended_at is not None:
            # End has already listed storage: nothing processes this chunk (spec §3.6).
            session.lost_after_end_bytes += len(chunk)
            self._log.warning(
                "audio_lost_after_end",
                session_id=session.session_id,
                seconds=round(session.seconds(len(chunk)), 3),
                chunk=len(session.stored_chunk_sizes) - 1,
                final=final,
                lost_seconds=round(session.lost_after_end_seconds, 3),
            )
        else:
            self._sync_wav(session, len(session.stored))
        self._changes.notify()

    def commit(self, session: EmulatedSession) -> None:
        """End lists storage: what it holds now is what gets processed; later chunks are not."""
        session.audio_bytes_at_end = len(session.stored)
        session.chunks_at_end = len(session.stored_chunk_sizes)
        self._sync_wav(session, session.audio_bytes_at_end)
        self._changes.notify()

    def _sync_wav(self, session: EmulatedSession, limit: int) -> None:
        """Append ``stored[written:limit]`` (whole samples) to the session's WAV."""
        if self._audio_dir is None:
            return
        if session.session_id not in self._wavs:
            path = self._audio_dir / f"{file_stem(session.session_id)}.wav"
            self._wavs[session.session_id] = WavFile(path, session.sample_rate)
        wav = self._wavs[session.session_id]
        if wav is None:
            return  # writing failed earlier; the audio is still in session.stored
        whole = limit - limit % BYTES_PER_SAMPLE
        if whole <= wav.bytes_written:
            return
        try:
            wav.append(bytes(session.stored[wav.bytes_written : whole]))
        except OSError as exc:
            self._log.error("wav_write_failed", session_id=session.session_id, path=str(wav.path), error=str(exc))
            self._wavs[session.session_id] = None
            return
        session.wav_path = wav.path


def file_stem(session_id: str) -> str:
    """Client-chosen session ids become file names: keep them inside ``audio_dir``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", session_id)
