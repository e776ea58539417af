"""The Plivo family's webhooks: Plivo and Vobiz (which copied Plivo's XML, Audio Streams and V3
signatures) answer a call the same way, so this is written once.

- ``POST /<name>/answer``: XML that announces the call, forks both parties to
  ``wss://…/<name>/stream[/{token}]`` and dials the clinician (the called number's route).
- ``POST /<name>/hangup``: the authoritative end of a call; its session is finalized at once.
- ``POST /<name>/stream-status``: the ``<Stream statusCallbackUrl>`` events, logged.
- The stream upgrade: neither provider documents a header on the socket, so a stream token,
  when there is one, is the last path segment (constant-time compare, refused before accept).

A provider says how its callbacks are shown authentic (``verify``), what its stream token is
(``stream_token``) and what happens without one (``open_without_token``). No ``stop`` arrives
on these streams: a closed socket may come back (new ``streamId``, same ``callId``) within
``reconnect_grace_s`` and carries on in the same Eka session.
"""

from __future__ import annotations

import hmac
from abc import abstractmethod
from collections import Counter, OrderedDict
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl

from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from bridge.config import stream_url
from bridge.logging import Logger
from bridge.providers.base import (
    MAX_LOGGED_CHARS,
    MAX_WEBHOOK_BYTES,
    EndCall,
    Provider,
    Refused,
    StreamEndpoint,
    WebhookSettings,
)
from bridge.providers.events import StreamEvent, StreamStart
from bridge.providers.vobiz import stream as wire
from bridge.routing import CallRoute, is_e164, resolve

#: The inbound format asked for: μ-law is what the phone network carries anyway.
CONTENT_TYPE = "audio/x-mulaw;rate=8000"
#: Calls remembered between the answer webhook and their stream (called number, for routing).
MAX_REMEMBERED_CALLS = 10_000
#: A provider's own settings: the webhook ones and its credentials and options.
S = TypeVar("S", bound=WebhookSettings)


class PlivoFamilyProvider(Provider, Generic[S]):
    """A provider answered with Plivo-style XML. Subclasses set ``name``, name their settings
    (``S``) and implement the hooks."""

    def __init__(
        self,
        settings: S,
        *,
        log: Logger,
        rejections: Counter[str],
        end_call: EndCall,
        reconnect_grace_s: float,
        l16_byte_order: str,
    ) -> None:
        self.settings = settings
        self.log = log
        self.rejections = rejections
        self.end_call = end_call  # (provider, call id, reason) → ended something?
        self.reconnect_grace_s = reconnect_grace_s
        self.l16_byte_order = l16_byte_order
        self._called: OrderedDict[str, str] = OrderedDict()  # CallUUID → called number

    # -- what a subclass says ---------------------------------------------------------------

    @abstractmethod
    def verify(self, request: Request, url: str, pairs: list[tuple[str, str]]) -> None:
        """Raise ``Refused`` unless this callback (to ``url``, with these form fields) is authentic."""

    @abstractmethod
    def stream_token(self) -> str | None:
        """The secret a stream URL's last path segment must carry; None: see ``open_without_token``."""

    def open_without_token(self) -> bool:
        """Without a stream token, whether streams are accepted (else refused 403)."""
        return True

    # -- paths ------------------------------------------------------------------------------

    @property
    def stream_path(self) -> str:
        return f"/{self.name}/stream"

    @property
    def answer_path(self) -> str:
        return f"/{self.name}/answer"

    @property
    def hangup_path(self) -> str:
        return f"/{self.name}/hangup"

    @property
    def status_path(self) -> str:
        return f"/{self.name}/stream-status"

    def routes(self, stream_endpoint: StreamEndpoint) -> list[BaseRoute]:
        return [
            WebSocketRoute(self.stream_path, stream_endpoint),
            WebSocketRoute(self.stream_path + "/{token}", stream_endpoint),
            Route(self.answer_path, self.answer, methods=["POST"]),
            Route(self.hangup_path, self.hangup, methods=["POST"]),
            Route(self.status_path, self.stream_status, methods=["POST"]),
        ]

    def parse(self, text: str) -> StreamEvent:
        return wire.parse(text)

    def reject(
        self, endpoint: str, reason: str, *, status: int | None = None, conn: HTTPConnection | None = None
    ) -> None:
        self.rejections[f"{self.name}_{endpoint}:{reason}"] += 1
        client = conn.client.host if conn is not None and conn.client else None
        self.log.warning(f"{self.name}_rejected", endpoint=endpoint, reason=reason, status=status, client=client)

    # -- HTTP callbacks -------------------------------------------------------------------------

    async def authentic_fields(self, request: Request) -> dict[str, str]:
        """The callback's form fields once it is shown authentic; raises Refused otherwise."""
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_WEBHOOK_BYTES:
                raise Refused(413, "body_too_large")
        pairs = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
        self.verify(request, self.signed_url(request), pairs)
        return dict(pairs)

    def signed_url(self, request: Request) -> str:
        """The callback URL as the provider called it: public base + path and query as sent."""
        query = request.scope.get("query_string", b"").decode("latin-1")
        url = self.public_base(request) + request.url.path
        return f"{url}?{query}" if query else url

    async def answer(self, request: Request) -> Response:
        try:
            fields = await self.authentic_fields(request)
        except Refused as refused:
            self.reject("answer", refused.reason, status=refused.status, conn=request)
            return PlainTextResponse(refused.reason, status_code=refused.status)
        called = _number(fields.get("To"))
        call_id = fields.get("CallUUID", "")[:64]
        if call_id and called:
            self._remember(call_id, called)
        route = resolve(self.settings.routing, called)
        base = self.public_base(request)
        token = self.stream_token()
        xml = wire.answer_xml(
            stream_url=stream_url(base, f"{self.stream_path}/{token}" if token else self.stream_path),
            status_callback_url=base + self.status_path,
            content_type=CONTENT_TYPE,
            forward_to=route.forward_to,
            consent_text=route.consent_text if route.consent else None,
            consent_language=route.consent_language,
            caller_id=_number(fields.get("From")),
        )
        self.log.info(f"{self.name}_answered", call_sid=call_id or None, routed=route.number is not None)
        if not route.forward_to:
            self.log.error(f"{self.name}_no_forward_number", call_sid=call_id or None)
        return Response(xml, media_type="application/xml")

    async def hangup(self, request: Request) -> Response:
        try:
            fields = await self.authentic_fields(request)
        except Refused as refused:
            self.reject("hangup", refused.reason, status=refused.status, conn=request)
            return PlainTextResponse(refused.reason, status_code=refused.status)
        call_id = fields.get("CallUUID", "")[:64]
        ended = await self.end_call(self.name, call_id, "hangup") if call_id else False
        self.log.info(
            f"{self.name}_hangup",
            call_sid=call_id or None,
            hangup_cause=fields.get("HangupCause", "")[:MAX_LOGGED_CHARS] or None,
            ended_active_call=ended,
        )
        self._called.pop(call_id, None)
        return Response(status_code=204)

    async def stream_status(self, request: Request) -> Response:
        try:
            fields = await self.authentic_fields(request)
        except Refused as refused:
            self.reject("stream_status", refused.reason, status=refused.status, conn=request)
            return PlainTextResponse(refused.reason, status_code=refused.status)
        event = fields.get("Event", "")[:40] or None
        line = {
            "call_sid": fields.get("CallUUID", "")[:64] or None,
            "stream_sid": fields.get("StreamID", "")[:64] or None,
            "stream_event": event,
        }
        error = fields.get("Error", "")[:MAX_LOGGED_CHARS]
        if error or event in ("DroppedStream", "DegradedStream"):
            self.log.warning(f"{self.name}_stream_status", error=error or None, **line)
        else:
            self.log.info(f"{self.name}_stream_status", **line)
        return Response(status_code=204)

    # -- the stream -------------------------------------------------------------------------

    def check_upgrade(self, websocket: WebSocket) -> None:
        """Raise Refused unless the path carries the stream token (or no token is needed)."""
        expected = self.stream_token()
        if not expected:
            if self.open_without_token():
                return
            raise Refused(403, "no_auth_token")
        given = websocket.path_params.get("token", "")
        if not given:
            raise Refused(403, "token_missing")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Refused(403, "token_invalid")

    def route_for(self, start: StreamStart) -> CallRoute:
        return resolve(self.settings.routing, self._called.get(start.call_id))

    def session_overrides(self, start: StreamStart) -> dict[str, Any]:
        return self.route_for(start).session_overrides()

    # -- helpers ------------------------------------------------------------------------------

    def _remember(self, call_id: str, called: str) -> None:
        self._called[call_id] = called
        self._called.move_to_end(call_id)
        while len(self._called) > MAX_REMEMBERED_CALLS:
            self._called.popitem(last=False)

    def public_base(self, conn: HTTPConnection) -> str:
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        scheme = {"ws": "http", "wss": "https"}.get(conn.url.scheme, conn.url.scheme)
        return f"{scheme}://{conn.url.netloc}"


def _number(value: str | None) -> str | None:
    """An E.164 number from a callback field (which may omit the '+'), or None."""
    if not value:
        return None
    value = value.strip()
    candidate = value if value.startswith("+") else "+" + value
    return candidate if is_e164(candidate) else None
