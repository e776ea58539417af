"""Twilio as a provider: call webhooks, the stream's upgrade check and parser, refusals.

- ``POST /twilio/voice``: TwiML for the called number's route (see bridge/routing.py and
  bridge/providers/twilio/twiml.py).
- ``POST /twilio/stream-status``: the ``<Stream statusCallback>`` events, logged.
- The WebSocket upgrade to ``/twilio/stream`` is checked here before it is accepted.

Every request must carry a valid ``X-Twilio-Signature`` when ``TWILIO_AUTH_TOKEN`` is set;
without the token, Twilio traffic is refused (403) unless development mode is on. The
signed URL is rebuilt from ``BRIDGE_PUBLIC_URL`` when it is set (behind a TLS-terminating
proxy the Host header and scheme the bridge sees are not the ones Twilio signed), else from
the request itself.

Every refusal counts under its reason in ``rejections`` and logs one line, without the
signature, the token or the request's content.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from bridge.config import Settings, stream_url
from bridge.logging import Logger
from bridge.providers.base import MAX_LOGGED_CHARS, MAX_WEBHOOK_BYTES, Provider, Refused, StreamEndpoint
from bridge.providers.events import StreamEvent, StreamStart
from bridge.providers.twilio import stream, twiml
from bridge.providers.twilio.signature import SIGNATURE_HEADER, validate
from bridge.routing import CallRoute, is_e164, resolve

STREAM_PATH = "/twilio/stream"
VOICE_PATH = "/twilio/voice"
STATUS_PATH = "/twilio/stream-status"
TWIML_MEDIA_TYPE = "application/xml"


class TwilioProvider(Provider):
    name = stream.PROVIDER

    def __init__(self, settings: Settings, *, log: Logger, rejections: Counter[str]) -> None:
        self.settings = settings
        self.log = log
        self.rejections = rejections

    def routes(self, stream_endpoint: StreamEndpoint) -> list[BaseRoute]:
        return [
            WebSocketRoute(STREAM_PATH, stream_endpoint),
            # Twilio signs the URL exactly as configured, so both spellings are served as-is.
            Route(VOICE_PATH, self.voice, methods=["POST"]),
            Route(VOICE_PATH + "/", self.voice, methods=["POST"]),
            Route(STATUS_PATH, self.stream_status, methods=["POST"]),
            Route(STATUS_PATH + "/", self.stream_status, methods=["POST"]),
        ]

    def parse(self, text: str) -> StreamEvent:
        return stream.parse(text)

    # -- start-up ---------------------------------------------------------------------------

    def announce(self) -> None:
        """Say at start-up how Twilio traffic will be treated, when it is not the normal case."""
        s = self.settings
        if not s.twilio_auth_token and s.development:
            self.log.warning(
                "twilio_signatures_not_checked",
                detail="TWILIO_AUTH_TOKEN is not set: development mode accepts unsigned Twilio requests",
            )
        elif not s.twilio_auth_token:
            self.log.warning(
                "twilio_traffic_refused",
                detail="TWILIO_AUTH_TOKEN is not set: every Twilio webhook and stream is refused (403);"
                " set it, or run with --dev",
            )
        if not s.public_url and not s.development:
            self.log.warning(
                "public_url_not_set",
                detail="BRIDGE_PUBLIC_URL is not set: URLs are derived from each request's Host header,"
                " which fails signature checks behind a TLS-terminating proxy",
            )
        default = resolve(s, None)
        if default.mode == "forward" and not default.forward_to:
            self.log.warning(
                "no_default_forward_number",
                detail="calls to numbers without a forward_to hear an apology and are hung up;"
                " set BRIDGE_FORWARD_NUMBER or forward_to in the routes file",
            )

    # -- refusals -----------------------------------------------------------------------------

    def reject(
        self, endpoint: str, reason: str, *, status: int | None = None, conn: HTTPConnection | None = None
    ) -> None:
        """Count and log one refused request or message (never its content or signature)."""
        self.rejections[f"{endpoint}:{reason}"] += 1
        client = conn.client.host if conn is not None and conn.client else None
        self.log.warning("twilio_rejected", endpoint=endpoint, reason=reason, status=status, client=client)

    def _check_signature(
        self,
        conn: HTTPConnection,
        url: str,
        params: Any,
        *,
        body: bytes | None = None,
        either_slash: bool = False,
    ) -> None:
        token = self.settings.twilio_auth_token
        if not token:
            if self.settings.development:
                return
            raise Refused(403, "no_auth_token")
        signature = conn.headers.get(SIGNATURE_HEADER)
        if not signature:
            raise Refused(403, "signature_missing")
        if not validate(token, url, params, signature, body=body, either_slash=either_slash):
            raise Refused(403, "signature_invalid")

    # -- URLs -----------------------------------------------------------------------------------

    def _public_base(self, conn: HTTPConnection) -> str:
        """``https://host[/prefix]``: BRIDGE_PUBLIC_URL, else what this request was sent to."""
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        scheme = {"ws": "http", "wss": "https"}.get(conn.url.scheme, conn.url.scheme)
        return f"{scheme}://{conn.url.netloc}"

    def signed_url(self, conn: HTTPConnection) -> str:
        """The URL Twilio signed for this request: public base + the path and query as sent."""
        raw_path = conn.scope.get("raw_path") or conn.scope["path"].encode("utf-8")
        path = raw_path.decode("latin-1")
        base = self._public_base(conn)
        if conn.scope["type"] == "websocket":
            url = stream_url(base, path)
        else:
            url = base + path
        query = conn.scope.get("query_string", b"").decode("latin-1")
        return f"{url}?{query}" if query else url

    # -- POST /twilio/voice and /twilio/stream-status ---------------------------------------------

    async def _authentic_fields(self, request: Request, endpoint: str) -> dict[str, str]:
        """The webhook's fields, once its signature checks out; raises Refused otherwise."""
        if not self.settings.twilio_auth_token and not self.settings.development:
            raise Refused(403, "no_auth_token")  # before reading anything
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_WEBHOOK_BYTES:
                raise Refused(413, "body_too_large")
        url = self.signed_url(request)
        content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type == "application/json":
            # Twilio signs a JSON body through the bodySHA256 query parameter, not as fields.
            self._check_signature(request, url, None, body=bytes(body))
            try:
                data = json.loads(body)
            except ValueError:
                raise Refused(400, "bad_json") from None
            if not isinstance(data, dict):
                raise Refused(400, "bad_json")
            return {str(k): str(v) for k, v in data.items() if isinstance(v, (str, int, float))}
        try:
            pairs = parse_qsl(bytes(body).decode("utf-8"), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            raise Refused(400, "bad_form") from None
        self._check_signature(request, url, pairs)
        return dict(pairs)

    async def voice(self, request: Request) -> Response:
        """TwiML for the called number: forward (announce, fork, dial) or dictation."""
        try:
            fields = await self._authentic_fields(request, "voice")
        except Refused as refused:
            self.reject("voice", refused.reason, status=refused.status, conn=request)
            return PlainTextResponse(refused.reason, status_code=refused.status)
        called = fields.get("To", "").strip() or None
        route = resolve(self.settings, called if called and is_e164(called) else None)
        log = self.log.bind(call_sid=fields.get("CallSid", "")[:64] or None, called=called and called[:32])
        base = self._public_base(request)
        urls = {"stream_url": stream_url(base, STREAM_PATH), "status_url": base + STATUS_PATH}
        if route.mode == "dictation":
            body = twiml.dictation(route, called=called, **urls)
        elif route.forward_to is None:
            log.error("call_not_routable", reason="no forward number for this number or the default")
            return self._twiml(twiml.unavailable(route))
        else:
            body = twiml.forward(route, called=called, caller=fields.get("From", "").strip() or None, **urls)
        log.info("twilio_call_routed", mode=route.mode, route=route.number or "default", consent=route.consent)
        return self._twiml(body)

    @staticmethod
    def _twiml(body: bytes) -> Response:
        return Response(body, media_type=TWIML_MEDIA_TYPE)

    async def stream_status(self, request: Request) -> Response:
        """``<Stream statusCallback>``: stream-started, stream-stopped, stream-error (with its error)."""
        try:
            fields = await self._authentic_fields(request, "stream_status")
        except Refused as refused:
            self.reject("stream_status", refused.reason, status=refused.status, conn=request)
            return PlainTextResponse(refused.reason, status_code=refused.status)
        event = fields.get("StreamEvent", "")[:40] or None
        line = {
            "call_sid": fields.get("CallSid", "")[:64] or None,
            "stream_sid": fields.get("StreamSid", "")[:64] or None,
            "stream_event": event,
            "twilio_timestamp": fields.get("Timestamp", "")[:40] or None,
        }
        if event == "stream-error":
            error = fields.get("StreamError", "")[:MAX_LOGGED_CHARS]
            self.log.error("twilio_stream_status", stream_error=error, **line)
        else:
            self.log.info("twilio_stream_status", **line)
        return Response(status_code=204)

    # -- the WebSocket upgrade ------------------------------------------------------------------

    def check_upgrade(self, websocket: WebSocket) -> None:
        """Raise Refused unless the upgrade is signed over the stream's ``wss://`` URL.

        The caller answers a refusal with an HTTP status before accepting the socket.
        """
        self._check_signature(websocket, self.signed_url(websocket), None, either_slash=True)

    # -- per-call routing of the stream --------------------------------------------------------

    def route_for(self, start: StreamStart) -> CallRoute:
        """The route named by the stream's ``route`` parameter, looked up again in the table.

        Only the key travels in the stream; templates and identifiers come from our own
        configuration, never from the parameters.
        """
        key = start.custom_parameters.get(twiml.ROUTE_PARAMETER, "")
        return resolve(self.settings, key if is_e164(key) else None)

    def session_overrides(self, start: StreamStart) -> dict[str, Any]:
        return self.route_for(start).session_overrides()
