"""Emulated processing: an ended session becomes ``completed`` (or the configured outcome) a fixed
time later."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

from structlog.typing import FilteringBoundLogger

from bridge.emulator.changes import Changes
from bridge.emulator.state import EmulatedSession
from bridge.emulator.validation import DEFAULT_TEMPLATE


class Processor:
    """Schedules completion ``processing_s`` after each successful End.

    A timer (not a Get) flips the status, so ``Emulator.wait_for`` can wait for
    completion; Get also catches up on its own, in case the timer has not run yet.
    ``outcome`` is read at completion (``completed``, ``partial`` or ``failed``), so a test
    may change it while sessions are processing; ``on_complete`` hears of each completion
    (the webhook notifier).
    """

    def __init__(
        self,
        *,
        processing_s: float,
        changes: Changes,
        log: FilteringBoundLogger,
        outcome: Callable[[], str] = lambda: "completed",
        on_complete: Callable[[EmulatedSession], None] | None = None,
    ) -> None:
        self._processing_s = processing_s
        self._changes = changes
        self._log = log
        self._outcome = outcome
        self._on_complete = on_complete
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._processing: dict[str, EmulatedSession] = {}

    def start(self, session: EmulatedSession) -> None:
        """Begin (or, on a reprocessing End, restart) processing."""
        session.status = "processing"
        session.processing_started_at = time.monotonic()
        session.completed_at = None
        self._cancel(session.session_id)
        loop = asyncio.get_running_loop()
        self._timers[session.session_id] = loop.call_later(self._processing_s, self._complete, session)
        self._processing[session.session_id] = session
        self._changes.notify()

    def catch_up(self, session: EmulatedSession) -> None:
        """Complete now if the processing time has passed but the timer has not fired yet."""
        started = session.processing_started_at
        if session.status == "processing" and started is not None:
            if time.monotonic() - started >= self._processing_s:
                self._cancel(session.session_id)
                self._complete(session)

    def complete_all(self) -> int:
        """Finish every session still processing, now (skip the wait); returns how many."""
        pending = list(self._processing.values())
        for session in pending:
            self._cancel(session.session_id)
            self._complete(session)
        return len(pending)

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
        self._processing.pop(session.session_id, None)
        if session.status != "processing":
            return
        for template in session.templates or [DEFAULT_TEMPLATE]:
            session.documents.setdefault(template, "doc_" + secrets.token_hex(10))
        session.status = self._outcome()
        session.completed_at = datetime.now(UTC)
        self._log.info(
            "session_completed",
            session_id=session.session_id,
            outcome=session.status,
            processed_seconds=round(session.processed_seconds, 2),
            received_seconds=round(session.audio_seconds, 2),
            templates=list(session.documents),
        )
        self._changes.notify()
        if self._on_complete is not None:
            self._on_complete(session)
