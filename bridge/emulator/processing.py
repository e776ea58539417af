"""Emulated processing: an ended session becomes ``completed`` a fixed time later."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import datetime, timezone

from structlog.typing import FilteringBoundLogger

from bridge.emulator.changes import Changes
from bridge.emulator.state import EmulatedSession
from bridge.emulator.validation import DEFAULT_TEMPLATE


class Processor:
    """Schedules completion ``processing_s`` after each successful End.

    A timer (not a Get) flips the status, so ``Emulator.wait_for`` can wait for
    completion; Get also catches up on its own, in case the timer has not run yet.
    """

    def __init__(self, *, processing_s: float, changes: Changes, log: FilteringBoundLogger) -> None:
        self._processing_s = processing_s
        self._changes = changes
        self._log = log
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def start(self, session: EmulatedSession) -> None:
        """Begin (or, on a reprocessing End, restart) processing."""
        session.status = "processing"
        session.processing_started_at = time.monotonic()
        session.completed_at = None
        self._cancel(session.session_id)
        loop = asyncio.get_running_loop()
        self._timers[session.session_id] = loop.call_later(self._processing_s, self._complete, session)
        self._changes.notify()

    def catch_up(self, session: EmulatedSession) -> None:
        """Complete now if the processing time has passed but the timer has not fired yet."""
        started = session.processing_started_at
        if session.status == "processing" and started is not None:
            if time.monotonic() - started >= self._processing_s:
                self._cancel(session.session_id)
                self._complete(session)

    def cancel_all(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def _cancel(self, session_id: str) -> None:
        handle = self._timers.pop(session_id, None)
        if handle is not None:
            handle.cancel()

    def _complete(self, session: EmulatedSession) -> None:
        self._timers.pop(session.session_id, None)
        if session.status != "processing":
            return
        for template in session.templates or [DEFAULT_TEMPLATE]:
            session.documents.setdefault(template, "doc_" + secrets.token_hex(10))
        session.status = "completed"
        session.completed_at = datetime.now(timezone.utc)
        self._log.info(
            "session_completed",
            session_id=session.session_id,
            audio_seconds=round(session.committed_seconds, 2),
            templates=list(session.documents),
        )
        self._changes.notify()
