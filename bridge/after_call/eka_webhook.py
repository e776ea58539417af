"""``POST /eka/webhook``: Eka's ``v2rx.completed`` notifications (spec §7), when
``EKA_WEBHOOK_SIGNING_KEY`` is set.

A notification is only a hint: it is verified (``Eka-Webhook-Signature``, HMAC-SHA256 over
``"t.raw_body"``, constant-time, timestamps older or newer than 180 s refused), and then the
session's result is fetched with Get Session by the result poller, as always. Only sessions
the ledger knows as ended and still waiting are fetched; anything else is acknowledged and
ignored, so a notification can never make the bridge fetch a session it does not own.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bridge.logging import Logger
from bridge.signing import check

PATH = "/eka/webhook"
SIGNATURE_HEADER = "Eka-Webhook-Signature"
EVENT = "v2rx.completed"
#: Largest notification read (they are a few hundred bytes).
MAX_BODY_BYTES = 64 * 1024
#: Missing or unreadable signature: not authenticated (401); a wrong or stale one: refused (403).
STATUS_FOR = {"signature_missing": 401, "signature_malformed": 401}


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def session_of(notification: Any) -> tuple[str | None, str | None]:
    """(event, session id) from either documented shape (spec §7.2): ``{"event", "data":
    {"session_id" | "transaction_id"}}`` or ``{"event_id", "payload": {"event", "transaction_id"}}``.
    For protocol sessions the transaction id is the session id."""
    if not isinstance(notification, dict):
        return None, None
    payload = _object(notification.get("payload"))
    data = _object(notification.get("data"))
    inner = _object(payload.get("data"))
    event = notification.get("event") or notification.get("event_id") or payload.get("event")
    for source in (data, inner, payload):
        for key in ("session_id", "transaction_id"):
            value = source.get(key)
            if isinstance(value, str) and 0 < len(value) <= 64:
                return (str(event) if event else None), value
    return (str(event) if event else None), None


class EkaWebhook:
    def __init__(
        self,
        signing_key: str,
        *,
        notify: Callable[[str], Awaitable[bool]],
        rejections: Counter[str],
        log: Logger,
    ) -> None:
        self._key = signing_key
        self._notify = notify  # session id → fetched? (the result poller's ``notified``)
        self._rejections = rejections
        self._log = log

    async def receive(self, request: Request) -> Response:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return self._reject(request, "body_too_large", 413)
        reason = check(self._key, request.headers.get(SIGNATURE_HEADER), bytes(body), time.time())
        if reason is not None:
            return self._reject(request, reason, STATUS_FOR.get(reason, 403))
        try:
            event, session_id = session_of(json.loads(body))
        except ValueError:
            event, session_id = None, None
        log = self._log.bind(call_sid=None, stream_sid=None, session_id=session_id)
        if event != EVENT or session_id is None:
            log.info("eka_webhook_ignored", eka_event=(event or "")[:40] or None, reason="not a v2rx.completed")
            return JSONResponse({"status": "ignored"})
        fetching = await self._notify(session_id)
        log.info("eka_webhook_received", eka_event=event, fetching=fetching)
        return JSONResponse({"status": "accepted" if fetching else "ignored"})

    def _reject(self, request: Request, reason: str, status: int) -> Response:
        self._rejections[f"eka_webhook:{reason}"] += 1
        client = request.client.host if request.client else None
        self._log.warning("eka_webhook_rejected", reason=reason, status=status, client=client)
        return JSONResponse({"error": reason}, status_code=status)
