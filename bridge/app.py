"""The bridge service: its dependencies, built once, and the endpoints that use them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from bridge.call import Call
from bridge.config import Settings
from bridge.eka.auth import TokenProvider
from bridge.eka.client import EkaClient
from bridge.eka.retry import Backoff
from bridge.registry import CallRegistry
from bridge.telephony import twilio
from bridge.telephony.events import ProtocolError

#: How long shutdown waits for calls that are still finalizing (End Session in flight).
SHUTDOWN_GRACE_S = 30.0


class Bridge:
    """Holds the shared parts (HTTP client, token, Eka client, call registry) for all calls.

    ``eka_transport`` lets a test route Eka traffic through a given httpx transport;
    by default the real network stack is used.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        log: Any | None = None,
        eka_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.log = log if log is not None else structlog.get_logger("bridge")
        self.calls = CallRegistry()
        self.eka: EkaClient | None = None
        self._eka_transport = eka_transport
        self.app = Starlette(
            routes=[
                Route("/healthz", self.healthz),
                WebSocketRoute("/twilio/stream", self.twilio_stream),
            ],
            lifespan=self._lifespan,
        )

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        s = self.settings
        timeout = httpx.Timeout(s.http_timeout_s, connect=min(10.0, s.http_timeout_s))
        async with httpx.AsyncClient(timeout=timeout, transport=self._eka_transport) as http:
            backoff = Backoff()
            tokens = TokenProvider(
                http,
                base_url=s.eka_base_url,
                client_id=s.eka_client_id,
                client_secret=s.eka_client_secret,
                static_token=s.eka_access_token,
                budget_s=s.create_budget_s,
                backoff=backoff,
                log=self.log,
            )
            self.eka = EkaClient(
                http,
                tokens,
                base_url=s.eka_base_url,
                create_budget_s=s.create_budget_s,
                end_budget_s=s.end_budget_s,
                backoff=backoff,
                log=self.log,
            )
            self.log.info("bridge_ready", eka_base_url=s.eka_base_url, development=s.development)
            try:
                yield
            finally:
                await self._settle_calls()

    async def _settle_calls(self) -> None:
        """Give calls that are still finalizing a bounded time before the HTTP client closes."""
        if not self.calls.active:
            return
        self.log.warning("shutdown_waiting_for_calls", active=len(self.calls.active))
        try:
            await self.calls.wait_idle(SHUTDOWN_GRACE_S)
        except TimeoutError:
            self.log.error("shutdown_left_calls_open", active=len(self.calls.active))

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "active_calls": len(self.calls.active)})

    async def twilio_stream(self, websocket: WebSocket) -> None:
        """One Twilio Media Stream: read it to its end, whatever EkaScribe does meanwhile."""
        assert self.eka is not None
        await websocket.accept()
        call = Call(provider=twilio.PROVIDER, settings=self.settings, eka=self.eka, log=self.log)
        await self.calls.add(call)
        reason = "socket_closed"
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    call.protocol_error(ProtocolError("binary_frame"))
                    continue
                self._handle(call, text)
                if call.stopped:
                    reason = "stop"
                    await websocket.close(1000)
                    break
        except WebSocketDisconnect:
            pass
        except Exception:
            reason = "error"
            call.log.exception("telephony_socket_error")
        finally:
            # Shielded: if this handler is cancelled, the call still finalizes in the background.
            await asyncio.shield(self._finish(call, reason))

    def _handle(self, call: Call, text: str) -> None:
        try:
            event = twilio.parse(text)
        except ProtocolError as error:
            call.protocol_error(error)
            return
        try:
            call.handle(event)
        except Exception as exc:  # a bug on one message must not cost the rest of the call
            call.protocol_error(ProtocolError("internal_error", type(exc).__name__))
            if call.bad_messages["internal_error"] == 1:
                call.log.exception("stream_message_failed")

    async def _finish(self, call: Call, reason: str) -> None:
        summary = await call.finish(reason)
        await self.calls.done(call, summary)


def create_app(settings: Settings, **kwargs: Any) -> Starlette:
    return Bridge(settings, **kwargs).app
