"""The TwiML family's webhooks: a voice webhook answered with TwiML (Twilio), cXML (SignalWire)
or TeXML (Telnyx), a ``<Stream statusCallback>`` that is logged, and the stream socket.

The three markups are the same document for what the bridge asks (``<Say>``, ``<Start>`` or
``<Connect>`` with ``<Stream>``, ``<Dial>``; see ``bridge/providers/twilio/twiml.py``), and the
webhooks carry the same fields (``To``, ``From``, ``CallSid``, ``StreamEvent``…). What differs
is how a request is shown to be authentic and what the stream says on the wire, so a provider
here says only that:

- ``webhook_key`` (its secret, or None), ``verify_form`` / ``verify_json`` (raise ``Refused``);
- ``check_upgrade`` (the stream's own proof), ``parse`` (its wire format);
- ``stream_url_for`` and ``stream_attributes`` (what the ``<Stream>`` must carry);
- ``announce`` (what start-up says about its credentials).

Without its webhook key a provider refuses every webhook (403) unless development mode is on.
The signed URL is rebuilt from ``BRIDGE_PUBLIC_URL`` when it is set (behind a TLS-terminating
proxy the Host header and scheme the bridge sees are not the ones the provider signed), else
from the request itself. Every refusal counts under its reason in ``rejections`` and logs one
``<name>_rejected`` line, without the signature, the key or the request's content.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections import Counter
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl

from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from bridge.config import stream_url
from bridge.logging import Logger
from bridge.providers.base import (
    MAX_LOGGED_CHARS,
    MAX_WEBHOOK_BYTES,
    Provider,
    Refused,
    StreamEndpoint,
    WebhookSettings,
)
from bridge.providers.events import StreamStart
from bridge.providers.twilio import twiml
from bridge.routing import CallRoute, is_e164, resolve

MARKUP_MEDIA_TYPE = "application/xml"
#: A provider's own settings: the webhook ones and its credentials.
S = TypeVar("S", bound=WebhookSettings)


class TwimlProvider(Provider, Generic[S]):
    """A provider whose calls are answered with TwiML-family markup. Subclasses set the paths,
    name their settings (``S``) and implement the hooks named in the module docstring."""

    stream_path: str
    voice_path: str
    status_path: str
    #: Prefix of this provider's refusal counters (Twilio's, the first, have none).
    rejection_prefix: str = ""
    #: The reason a webhook is refused when the provider's key is not configured.
    no_key_reason: str = "no_auth_token"
    #: Also serve ``<stream_path>/{token}`` (a stream secret carried in the URL path).
    stream_token_in_path: bool = False

    def __init__(self, settings: S, *, log: Logger, rejections: Counter[str]) -> None:
        self.settings = settings
        self.log = log
        self.rejections = rejections

    # -- what a subclass says ---------------------------------------------------------------

    @abstractmethod
    def webhook_key(self) -> str | None:
        """The secret webhooks are checked against; None refuses them (unless development)."""

    @abstractmethod
    def verify_form(self, request: Request, url: str, pairs: list[tuple[str, str]], body: bytes) -> None:
        """Raise ``Refused`` unless this form-encoded webhook is authentic."""

    @abstractmethod
    def verify_json(self, request: Request, url: str, body: bytes) -> None:
        """Raise ``Refused`` unless this JSON webhook is authentic."""

    def stream_url_for(self, base: str) -> str:
        """The ``<Stream url>`` for a call: the stream path under the public base."""
        return stream_url(base, self.stream_path)

    def stream_attributes(self) -> dict[str, str]:
        """Attributes the ``<Stream>`` carries besides ``url`` and the status callback."""
        return {}

    # -- routes -------------------------------------------------------------------------------

    def routes(self, stream_endpoint: StreamEndpoint) -> list[BaseRoute]:
        routes: list[BaseRoute] = [WebSocketRoute(self.stream_path, stream_endpoint)]
        if self.stream_token_in_path:
            routes.append(WebSocketRoute(self.stream_path + "/{token}", stream_endpoint))
        return routes + [
            # The provider signs the URL exactly as configured, so both spellings are served as-is.
            Route(self.voice_path, self.voice, methods=["POST"]),
            Route(self.voice_path + "/", self.voice, methods=["POST"]),
            Route(self.status_path, self.stream_status, methods=["POST"]),
            Route(self.status_path + "/", self.stream_status, methods=["POST"]),
        ]

    # -- refusals -----------------------------------------------------------------------------

    def reject(
        self, endpoint: str, reason: str, *, status: int | None = None, conn: HTTPConnection | None = None
    ) -> None:
        """Count and log one refused request or message (never its content or signature)."""
        self.rejections[f"{self.rejection_prefix}{endpoint}:{reason}"] += 1
        client = conn.client.host if conn is not None and conn.client else None
        self.log.warning(f"{self.name}_rejected", endpoint=endpoint, reason=reason, status=status, client=client)

    # -- URLs -----------------------------------------------------------------------------------

    def public_base(self, conn: HTTPConnection) -> str:
        """``https://host[/prefix]``: BRIDGE_PUBLIC_URL, else what this request was sent to."""
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        scheme = {"ws": "http", "wss": "https"}.get(conn.url.scheme, conn.url.scheme)
        return f"{scheme}://{conn.url.netloc}"

    def signed_url(self, conn: HTTPConnection) -> str:
        """The URL the provider signed for this request: public base + the path and query as sent."""
        raw_path = conn.scope.get("raw_path") or conn.scope["path"].encode("utf-8")
        path = raw_path.decode("latin-1")
        base = self.public_base(conn)
        url = stream_url(base, path) if conn.scope["type"] == "websocket" else base + path
        query = conn.scope.get("query_string", b"").decode("latin-1")
        return f"{url}?{query}" if query else url

    # -- webhooks -------------------------------------------------------------------------------

    async def authentic_fields(self, request: Request) -> dict[str, str]:
        """The webhook's fields, once it is shown authentic; raises Refused otherwise."""
        if not self.webhook_key() and not self.settings.development:
            raise Refused(403, self.no_key_reason)  # before reading anything
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_WEBHOOK_BYTES:
                raise Refused(413, "body_too_large")
        url = self.signed_url(request)
        content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type == "application/json":
            self.verify_json(request, url, bytes(body))
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
        self.verify_form(request, url, pairs, bytes(body))
        return dict(pairs)

    async def voice(self, request: Request) -> Response:
        """The markup for the called number: forward (announce, fork, dial) or dictation."""
        try:
            fields = await self.authentic_fields(request)
        except Refused as refused:
            self.reject("voice", refused.reason, status=refused.status, conn=request)
            return PlainTextResponse(refused.reason, status_code=refused.status)
        called = fields.get("To", "").strip() or None
        route = resolve(self.settings.routing, called if called and is_e164(called) else None)
        log = self.log.bind(call_sid=fields.get("CallSid", "")[:64] or None, called=called and called[:32])
        base = self.public_base(request)
        urls: dict[str, Any] = {
            "stream_url": self.stream_url_for(base),
            "status_url": base + self.status_path,
            "attributes": self.stream_attributes(),
        }
        if route.mode == "dictation":
            body = twiml.dictation(route, called=called, **urls)
        elif route.forward_to is None:
            reason = "no forward number for this number or the default"
            log.error("call_not_routable", provider=self.name, reason=reason)
            return Response(twiml.unavailable(route), media_type=MARKUP_MEDIA_TYPE)
        else:
            body = twiml.forward(route, called=called, caller=fields.get("From", "").strip() or None, **urls)
        log.info(f"{self.name}_call_routed", mode=route.mode, route=route.number or "default", consent=route.consent)
        return Response(body, media_type=MARKUP_MEDIA_TYPE)

    async def stream_status(self, request: Request) -> Response:
        """``<Stream statusCallback>``: stream-started, stream-stopped, stream-error (with its error)."""
        try:
            fields = await self.authentic_fields(request)
        except Refused as refused:
            self.reject("stream_status", refused.reason, status=refused.status, conn=request)
            return PlainTextResponse(refused.reason, status_code=refused.status)
        event = fields.get("StreamEvent", "")[:40] or None
        line = {
            "call_sid": fields.get("CallSid", "")[:64] or None,
            "stream_sid": fields.get("StreamSid", "")[:64] or None,
            "stream_event": event,
            f"{self.name}_timestamp": fields.get("Timestamp", "")[:40] or None,
        }
        if event == "stream-error":
            error = fields.get("StreamError", "")[:MAX_LOGGED_CHARS]
            self.log.error(f"{self.name}_stream_status", stream_error=error, **line)
        else:
            self.log.info(f"{self.name}_stream_status", **line)
        return Response(status_code=204)

    # -- per-call routing of the stream --------------------------------------------------------

    def route_for(self, start: StreamStart) -> CallRoute:
        """The route named by the stream's ``route`` parameter, looked up again in the table.

        Only the key travels in the stream; templates and identifiers come from our own
        configuration, never from the parameters.
        """
        key = start.custom_parameters.get(twiml.ROUTE_PARAMETER, "")
        return resolve(self.settings.routing, key if is_e164(key) else None)

    def session_overrides(self, start: StreamStart) -> dict[str, Any]:
        return self.route_for(start).session_overrides()
