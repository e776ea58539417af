"""A clinic's result webhook for tests: a real Starlette app that checks ``X-Bridge-Signature``
with its own HMAC code (not the bridge's), records every attempt, and fails on request."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.servers import serve

SECRET = "clinic-webhook-secret-0123456789"


def signature_ok(secret: str, header: str, body: bytes, tolerance_s: float = 300) -> bool:
    """What the README tells a clinic to do."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(time.time() - int(parts["t"])) <= tolerance_s


@dataclass
class Attempt:
    body: bytes
    headers: dict[str, str]
    signature_ok: bool
    answered: int

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    secret: str = SECRET
    fail_next: int = 0  # answer this many attempts with 500 first
    attempts: list[Attempt] = field(default_factory=list)
    url: str = ""
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def delivered(self) -> list[Attempt]:
        return [a for a in self.attempts if a.answered == 200]

    async def wait_attempts(self, count: int, timeout: float = 10.0) -> list[Attempt]:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.attempts) >= count)
        return list(self.attempts)

    async def wait_delivered(self, count: int = 1, timeout: float = 10.0) -> list[Attempt]:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.delivered) >= count)
        return self.delivered

    async def _receive(self, request: Request) -> JSONResponse:
        body = await request.body()
        ok = signature_ok(self.secret, request.headers.get("x-bridge-signature", "t=0,v1="), body)
        status = 401 if not ok else 500 if self.fail_next > 0 else 200
        if status == 500:
            self.fail_next -= 1
        async with self._changed:
            self.attempts.append(Attempt(body, dict(request.headers), ok, status))
            self._changed.notify_all()
        return JSONResponse({"ok": status == 200}, status_code=status)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Receiver]:
        app = Starlette(routes=[Route("/results", self._receive, methods=["POST"])])
        async with serve(app) as base:
            self.url = base + "/results"
            yield self
