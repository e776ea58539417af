"""Eka's ``v2rx.completed`` webhook (spec §7): when a session finishes processing, POST a short
notification to the registered endpoint, signed with ``Eka-Webhook-Signature`` when a signing
key is set. The payload is minimal, as Eka's is: the receiver fetches the result with Get Session.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from structlog.typing import FilteringBoundLogger

from bridge.emulator.changes import Changes
from bridge.emulator.options import EmulatorOptions
from bridge.emulator.results import iso
from bridge.emulator.state import EmulatedSession

SIGNATURE_HEADER = "Eka-Webhook-Signature"
EVENT = "v2rx.completed"


def sign(key: str, body: bytes, timestamp: int) -> str:
    """``t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`` (W-SIG)."""
    mac = hmac.new(key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def notification(session: EmulatedSession) -> dict[str, Any]:
    """The V2-OV/SDK shape; for protocol sessions the transaction id is the session id (§7.2)."""
    return {
        "event": EVENT,
        "data": {"transaction_id": session.session_id, "session_id": session.session_id, "status": session.status},
        "timestamp": iso(datetime.now(UTC)),
    }


@dataclass(frozen=True)
class SentWebhook:
    session_id: str
    status: int | None  # the receiver's HTTP status; None when it could not be reached


class WebhookNotifier:
    """Sends one notification per completed session (Eka's retry policy is unknown: none here).

    Reads ``webhook_url`` and ``webhook_signing_key`` from the options when a session completes,
    so a test may point them at a server it starts after the emulator.
    """

    def __init__(self, options: EmulatorOptions, changes: Changes, log: FilteringBoundLogger) -> None:
        self._options = options
        self._changes = changes
        self._log = log
        self.sent: list[SentWebhook] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def completed(self, session: EmulatedSession) -> None:
        url = self._options.webhook_url
        if not url:
            return
        task = asyncio.get_running_loop().create_task(self._send(url, session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, url: str, session: EmulatedSession) -> None:
        body = json.dumps(notification(session)).encode()
        headers = {"Content-Type": "application/json"}
        if self._options.webhook_signing_key:
            headers[SIGNATURE_HEADER] = sign(self._options.webhook_signing_key, body, int(time.time()))
        status: int | None = None
        try:
            async with httpx.AsyncClient(timeout=10.0) as http:
                status = (await http.post(url, content=body, headers=headers)).status_code
        except httpx.HTTPError as exc:
            self._log.warning("webhook_failed", session_id=session.session_id, reason=type(exc).__name__)
        self.sent.append(SentWebhook(session.session_id, status))
        self._log.info("webhook_sent", session_id=session.session_id, status=status)
        self._changes.notify()

    def cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()
