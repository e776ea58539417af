"""Records every HTTP request the emulator answers, so tests can assert on traffic."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

OP_KEY = "emulator.op"  # scope key a route sets so the recorder knows which operation it was


@dataclass(frozen=True)
class RecordedRequest:
    """One handled request. ``at`` is ``time.monotonic()`` when it arrived.

    Entries are appended when the response status is known, so under concurrency
    the list is in completion order, not strictly in ``at`` order.
    """

    op: str  # "login", "refresh", "create", "end", "get", "stream", "admin", "health", "other"
    method: str  # "WEBSOCKET" for stream connections
    path: str
    status: int  # HTTP status; for "stream", the close code (sent by us, or by the client)
    at: float


class RequestRecorder:
    """Pure ASGI middleware: notes op, method, path and response status of each HTTP request."""

    def __init__(self, app: ASGIApp, *, record: Callable[[RecordedRequest], None]) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.monotonic()
        scope[OP_KEY] = "other"  # routes overwrite this; unmatched paths stay "other"
        recorded = False

        def note(status: int) -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                self.record(RecordedRequest(scope[OP_KEY], scope["method"], scope["path"], status, arrived))

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                note(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            note(500)
            raise
