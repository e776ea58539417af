"""Exotel as a provider: the stream socket and its upgrade check (Exotel sends no webhooks the
bridge needs).

- WebSocket ``/exotel/stream``: the Stream or Voicebot applet's AgentStream. The upgrade must
  pass the Basic credentials (``EXOTEL_BASIC_AUTH``) and/or come from an allowed address
  (``EXOTEL_ALLOWED_IPS``), whichever are configured, before it is accepted. With neither,
  Exotel streams are refused (403) unless development mode is on, and start-up says so.

A call is routed by its ``route`` custom parameter (``?route=%2B91…`` on the applet's URL) or
else by the called number Exotel puts in ``start.to``, when either is an E.164 number; the route
is looked up in the bridge's own table, so only the key comes from the stream.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from bridge.logging import Logger
from bridge.providers.base import Provider, ProviderSettings, Refused, StreamEndpoint
from bridge.providers.events import StreamEvent, StreamStart
from bridge.providers.exotel import auth
from bridge.providers.exotel import stream as exotel
from bridge.routing import CallRoute, is_e164, resolve

STREAM_PATH = "/exotel/stream"
#: The custom parameter that may name the route (as Twilio's ``<Parameter name="route">``).
ROUTE_PARAMETER = "route"


@dataclass(frozen=True)
class ExotelSettings(ProviderSettings):
    """The settings Exotel reads (no webhooks, so no public URL)."""

    exotel_basic_auth: str | None
    exotel_allowed_ips: tuple[str, ...]


class ExotelProvider(Provider):
    name = exotel.PROVIDER
    #: Exotel documents raw PCM as little-endian.
    l16_byte_order = "little"

    def __init__(self, settings: ExotelSettings, *, log: Logger, rejections: Counter[str]) -> None:
        self.settings = settings
        self.log = log
        self.rejections = rejections
        self.allow = auth.networks(settings.exotel_allowed_ips)

    def routes(self, stream_endpoint: StreamEndpoint) -> list[BaseRoute]:
        return [WebSocketRoute(STREAM_PATH, stream_endpoint)]

    def parse(self, text: str) -> StreamEvent:
        return exotel.parse(text)

    def announce(self) -> None:
        s = self.settings
        if s.exotel_basic_auth or s.exotel_allowed_ips:
            return
        if s.development:
            self.log.warning(
                "exotel_streams_not_checked",
                detail="EXOTEL_BASIC_AUTH and EXOTEL_ALLOWED_IPS are not set: development mode accepts"
                " every Exotel stream",
            )
        else:
            self.log.warning(
                "exotel_traffic_refused",
                detail="EXOTEL_BASIC_AUTH and EXOTEL_ALLOWED_IPS are not set: every Exotel stream is refused"
                " (403); set one or both, or run with --dev",
            )

    def reject(
        self, endpoint: str, reason: str, *, status: int | None = None, conn: HTTPConnection | None = None
    ) -> None:
        self.rejections[f"exotel_{endpoint}:{reason}"] += 1
        client = conn.client.host if conn is not None and conn.client else None
        self.log.warning("exotel_rejected", endpoint=endpoint, reason=reason, status=status, client=client)

    def check_upgrade(self, websocket: WebSocket) -> None:
        """Raise Refused unless the upgrade passes every configured check."""
        s = self.settings
        if not s.exotel_basic_auth and not self.allow:
            if s.development:
                return
            raise Refused(403, "no_credentials")
        if self.allow and not auth.allowed(websocket.client.host if websocket.client else None, self.allow):
            raise Refused(403, "address_not_allowed")
        if s.exotel_basic_auth:
            failure = auth.check_basic(websocket.headers.get("authorization"), s.exotel_basic_auth)
            if failure:
                raise Refused(403, failure)

    def route_for(self, start: StreamStart) -> CallRoute:
        for key in (ROUTE_PARAMETER, exotel.CALLED_PARAMETER):
            value = start.custom_parameters.get(key, "").strip()
            if is_e164(value):
                return resolve(self.settings.routing, value)
        return resolve(self.settings.routing, None)

    def session_overrides(self, start: StreamStart) -> dict[str, Any]:
        return self.route_for(start).session_overrides()
