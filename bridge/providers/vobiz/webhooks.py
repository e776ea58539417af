"""Vobiz as a provider: answer XML, the hang-up and stream-status callbacks, the stream token.

- ``POST /vobiz/answer``: XML that announces the call, forks both parties to
  ``wss://…/vobiz/stream/{token}`` and dials the clinician (the called number's route).
- ``POST /vobiz/hangup``: the authoritative end of a call; its session is finalized at once.
- ``POST /vobiz/stream-status``: the ``<Stream statusCallbackUrl>`` events, logged.
- The stream upgrade: Vobiz cannot add headers to the socket, so when ``VOBIZ_STREAM_TOKEN``
  is set the token must be the last path segment (constant-time compare, refused before accept).

HTTP callbacks must carry a valid ``X-Vobiz-Signature-V3`` when ``VOBIZ_AUTH_TOKEN`` is set:
HMAC-SHA256 over the query-stripped URL + "." + nonce, each nonce accepted once in 5 minutes.
"""

from __future__ import annotations

import hmac
from collections import Counter, OrderedDict
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from bridge.config import Settings, stream_url
from bridge.logging import Logger
from bridge.providers.base import MAX_LOGGED_CHARS, MAX_WEBHOOK_BYTES, EndCall, Provider, Refused, StreamEndpoint
from bridge.providers.events import StreamEvent, StreamStart
from bridge.providers.vobiz import stream as vobiz
from bridge.providers.vobiz.signature import NONCE_V3_HEADER, SIGNATURE_V3_HEADER, NonceCache, verify_v3
from bridge.routing import CallRoute, is_e164, resolve

STREAM_PATH = "/vobiz/stream"
ANSWER_PATH = "/vobiz/answer"
HANGUP_PATH = "/vobiz/hangup"
STATUS_PATH = "/vobiz/stream-status"
#: The inbound format asked of Vobiz: μ-law is what the phone network carries anyway.
CONTENT_TYPE = "audio/x-mulaw;rate=8000"
#: Calls remembered between the answer webhook and their stream (called number, for routing).
MAX_REMEMBERED_CALLS = 10_000


class VobizProvider(Provider):
    name = vobiz.PROVIDER

    def __init__(self, settings: Settings, *, log: Logger, rejections: Counter[str], end_call: EndCall) -> None:
        self.settings = settings
        self.log = log
        self.rejections = rejections
        self.end_call = end_call  # (provider, call id, reason) → ended something?
        # No end signal on a Vobiz stream: a closed socket may come back (new streamId, same callId).
        self.reconnect_grace_s = settings.vobiz_reconnect_grace_s
        self.l16_byte_order = settings.vobiz_l16_byte_order
        self.nonces = NonceCache()
        self._called: OrderedDict[str, str] = OrderedDict()  # CallUUID → called number

    def routes(self, stream_endpoint: StreamEndpoint) -> list[BaseRoute]:
        return [
            WebSocketRoute(STREAM_PATH, stream_endpoint),
            WebSocketRoute(STREAM_PATH + "/{token}", stream_endpoint),
            Route(ANSWER_PATH, self.answer, methods=["POST"]),
            Route(HANGUP_PATH, self.hangup, methods=["POST"]),
            Route(STATUS_PATH, self.stream_status, methods=["POST"]),
        ]

    def parse(self, text: str) -> StreamEvent:
        return vobiz.parse(text)

    def announce(self) -> None:
        if not self.settings.vobiz_stream_token:
            self.log.warning(
                "vobiz_stream_open",
                detail="VOBIZ_STREAM_TOKEN is not set: anyone who can reach /vobiz/stream can open an Eka"
                " session; set it (the answer XML then carries it in the stream URL)",
            )

    def reject(
        self, endpoint: str, reason: str, *, status: int | None = None, conn: HTTPConnection | None = None
    ) -> None:
        self.rejections[f"vobiz_{endpoint}:{reason}"] += 1
        client = conn.client.host if conn is not None and conn.client else None
        self.log.warning("vobiz_rejected", endpoint=endpoint, reason=reason, status=status, client=client)

    # -- HTTP callbacks -------------------------------------------------------------------------

    async def _authentic_fields(self, request: Request) -> dict[str, str]:
        """The callback's form fields once its signature checks out; raises Refused otherwise."""
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_WEBHOOK_BYTES:
                raise Refused(413, "body_too_large")
        token = self.settings.vobiz_auth_token
        if token:
            url = self._public_base(request) + request.url.path  # the signature ignores the query
            failure = verify_v3(
                token,
                url,
                request.headers.get(NONCE_V3_HEADER, ""),
                request.headers.get(SIGNATURE_V3_HEADER, ""),
                self.nonces,
            )
            if failure:
                raise Refused(403, failure)
        return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))

    async def answer(self, request: Request) -> Response:
        try:
            fields = await self._authentic_fields(request)
        except Refused as refused:
            self.reject("answer", refused.reason, status=refused.status, conn=request)
            return PlainTextResponse(refused.reason, status_code=refused.status)
        called = _number(fields.get("To"))
        call_id = fields.get("CallUUID", "")[:64]
        if call_id and called:
            self._remember(call_id, called)
        route = resolve(self.settings, called)
        base = self._public_base(request)
        token = self.settings.vobiz_stream_token
        xml = vobiz.answer_xml(
            stream_url=stream_url(base, f"{STREAM_PATH}/{token}" if token else STREAM_PATH),
            status_callback_url=base + STATUS_PATH,
            content_type=CONTENT_TYPE,
            forward_to=route.forward_to,
            consent_text=route.consent_text if route.consent else None,
            consent_language=route.consent_language,
            caller_id=_number(fields.get("From")),
        )
        self.log.info("vobiz_answered", call_sid=call_id or None, routed=route.number is not None)
        if not route.forward_to:
            self.log.error("vobiz_no_forward_number", call_sid=call_id or None)
        return Response(xml, media_type="application/xml")

    async def hangup(self, request: Request) -> Response:
        try:
            fields = await self._authentic_fields(request)
        except Refused as refused:
            self.reject("hangup", refused.reason, status=refused.status, conn=request)
            return PlainTextResponse(refused.reason, status_code=refused.status)
        call_id = fields.get("CallUUID", "")[:64]
        ended = await self.end_call(self.name, call_id, "hangup") if call_id else False
        self.log.info(
            "vobiz_hangup",
            call_sid=call_id or None,
            hangup_cause=fields.get("HangupCause", "")[:MAX_LOGGED_CHARS] or None,
            ended_active_call=ended,
        )
        self._called.pop(call_id, None)
        return Response(status_code=204)

    async def stream_status(self, request: Request) -> Response:
        try:
            fields = await self._authentic_fields(request)
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
            self.log.warning("vobiz_stream_status", error=error or None, **line)
        else:
            self.log.info("vobiz_stream_status", **line)
        return Response(status_code=204)

    # -- the stream -------------------------------------------------------------------------

    def check_upgrade(self, websocket: WebSocket) -> None:
        """Raise Refused unless the path carries the configured stream token."""
        expected = self.settings.vobiz_stream_token
        if not expected:
            return
        given = websocket.path_params.get("token", "")
        if not given:
            raise Refused(403, "token_missing")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Refused(403, "token_invalid")

    def route_for(self, start: StreamStart) -> CallRoute:
        return resolve(self.settings, self._called.get(start.call_id))

    def session_overrides(self, start: StreamStart) -> dict[str, Any]:
        return self.route_for(start).session_overrides()

    # -- helpers ------------------------------------------------------------------------------

    def _remember(self, call_id: str, called: str) -> None:
        self._called[call_id] = called
        self._called.move_to_end(call_id)
        while len(self._called) > MAX_REMEMBERED_CALLS:
            self._called.popitem(last=False)

    def _public_base(self, conn: HTTPConnection) -> str:
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        scheme = {"ws": "http", "wss": "https"}.get(conn.url.scheme, conn.url.scheme)
        return f"{scheme}://{conn.url.netloc}"


def _number(value: str | None) -> str | None:
    """An E.164 number from a Vobiz field (which may omit the '+'), or None."""
    if not value:
        return None
    value = value.strip()
    candidate = value if value.startswith("+") else "+" + value
    return candidate if is_e164(candidate) else None
