"""The Emulator: wires state, endpoints and fault injection into one Starlette app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from bridge.emulator.admin import AdminEndpoints
from bridge.emulator.auth import AuthEndpoints
from bridge.emulator.changes import Changes
from bridge.emulator.errors import fault_response
from bridge.emulator.faults import Faults
from bridge.emulator.options import EmulatorOptions
from bridge.emulator.processing import Processor
from bridge.emulator.recording import OP_KEY, RecordedRequest, RequestRecorder
from bridge.emulator.sessions import STREAM_PATH, SessionEndpoints
from bridge.emulator.state import EmulatedSession, SessionStore
from bridge.emulator.storage import Storage
from bridge.emulator.stream import StreamEndpoint
from bridge.emulator.tokens import TokenStore
from bridge.emulator.webhooks import SentWebhook, WebhookNotifier

Endpoint = Callable[[Request], Awaitable[Response]]


class Emulator:
    """A faithful EkaScribe server for tests and humans: auth, sessions, stream audio, results.

    Everything lives in memory on this instance (no globals), so each test can run its
    own. Serve ``emulator.app`` with any ASGI server; inspect ``sessions`` and
    ``requests``; inject failures through ``faults``; wait with ``wait_for``.
    """

    def __init__(self, options: EmulatorOptions | None = None) -> None:
        self.options = options if options is not None else EmulatorOptions()
        self._log = structlog.get_logger("emulator")
        self._changes = Changes()
        self._store = SessionStore()
        self.sessions: dict[str, EmulatedSession] = self._store.sessions  # by session_id
        self.requests: list[RecordedRequest] = []  # every handled request, in completion order
        self.faults = Faults()
        self.tokens = TokenStore(
            token_ttl_s=self.options.token_ttl_s,
            refresh_ttl_s=self.options.refresh_ttl_s,
            static_tokens=self.options.static_tokens,
        )
        self._webhooks = WebhookNotifier(self.options, self._changes, self._log)
        #: Every v2rx.completed notification sent (``options.webhook_url``), with the receiver's status.
        self.webhooks_sent: list[SentWebhook] = self._webhooks.sent
        self._processor = Processor(
            processing_s=self.options.processing_s,
            changes=self._changes,
            log=self._log,
            outcome=lambda: self.options.outcome,
            on_complete=self._webhooks.completed,
        )
        self._storage = Storage(audio_dir=self.options.audio_dir, changes=self._changes, log=self._log)
        self._stream = StreamEndpoint(
            store=self._store,
            storage=self._storage,
            faults=self.faults,
            changes=self._changes,
            record=self._record,
            log=self._log,
            chunk_s=self.options.chunk_s,
            flush_delay_s=self.options.flush_delay_s,
            record_arrivals=self.options.record_arrivals,
        )
        self.app = Starlette(
            routes=self._routes(),
            middleware=[Middleware(RequestRecorder, record=self._record)],
            lifespan=self._lifespan,
        )

    def revoke_tokens(self) -> None:
        """Invalidate every access token issued so far, so the next voice call gets 401.

        Static tokens and refresh tokens stay valid: the client is expected to refresh.
        """
        revoked = self.tokens.revoke_access()
        self._log.info("tokens_revoked", count=revoked)
        self._changes.notify()

    def complete_processing(self) -> int:
        """Finish every session that is still processing now, as if ``processing_s`` had passed."""
        return self._processor.complete_all()

    def count(self, op: str, status: int | None = None) -> int:
        """How many recorded requests of ``op`` there were (with ``status``, if given)."""
        return sum(1 for r in self.requests if r.op == op and (status is None or r.status == status))

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` holds, re-checking on every state change; TimeoutError after ``timeout``."""
        await self._changes.wait_for(predicate, timeout)

    # Wiring ----------------------------------------------------------------------

    def _routes(self) -> list[BaseRoute]:
        auth = AuthEndpoints(self.tokens, self.options, self._log)
        voice = SessionEndpoints(
            store=self._store,
            storage=self._storage,
            tokens=self.tokens,
            processor=self._processor,
            changes=self._changes,
            options=self.options,
            log=self._log,
        )
        admin = AdminEndpoints(
            store=self._store,
            faults=self.faults,
            revoke_tokens=self.revoke_tokens,
            record_arrivals=self.options.record_arrivals,
        )
        op = self._operation
        return [
            Route("/connect-auth/v1/account/login", op("login", auth.login), methods=["POST"]),
            Route("/connect-auth/v1/account/refresh-token", op("refresh", auth.refresh_token), methods=["POST"]),
            Route("/connect-auth/v1/account/refresh", op("refresh", auth.refresh_legacy), methods=["POST"]),
            Route("/voice/v1/sessions", op("create", voice.create), methods=["POST"]),
            Route("/voice/v1/sessions/{session_id}/end", op("end", voice.end), methods=["POST"]),
            Route("/voice/v1/sessions/{session_id}", op("get", voice.get), methods=["GET"]),
            WebSocketRoute(STREAM_PATH, self._stream.handle),
            Route("/_emulator/sessions", op("admin", admin.sessions), methods=["GET"]),
            Route("/_emulator/arrivals", op("admin", admin.arrivals), methods=["GET"]),
            Route("/_emulator/faults", op("admin", admin.get_faults), methods=["GET"]),
            Route("/_emulator/faults", op("admin", admin.add_fault), methods=["POST"]),
            Route("/_emulator/faults", op("admin", admin.clear_faults), methods=["DELETE"]),
            Route("/_emulator/revoke-tokens", op("admin", admin.revoke_tokens), methods=["POST"]),
            Route("/healthz", op("health", _healthz), methods=["GET"]),
        ]

    def _operation(self, name: str, endpoint: Endpoint) -> Endpoint:
        """Tag the request with its op, then apply injected latency and failures before the endpoint."""
        faults = self.faults

        async def handle(request: Request) -> Response:
            request.scope[OP_KEY] = name
            if latency := faults.latency(name):
                await asyncio.sleep(latency)
            if (failure := faults.take_failure(name)) is not None:
                self._log.info("fault_injected", op=name, status=failure.status)
                return fault_response(name, failure.status, failure.retry_after)
            return await endpoint(request)

        handle.__name__ = f"{name}_{getattr(endpoint, '__name__', 'endpoint')}"
        return handle

    def _record(self, entry: RecordedRequest) -> None:
        self.requests.append(entry)
        self._changes.notify()

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        self._processor.cancel_all()
        self._webhooks.cancel_all()


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})
