"""Twilio as a provider: call webhooks, the stream's upgrade check and parser, refusals.

- ``POST /twilio/voice``: TwiML for the called number's route (see bridge/routing.py and
  bridge/providers/twilio/twiml.py).
- ``POST /twilio/stream-status``: the ``<Stream statusCallback>`` events, logged.
- The WebSocket upgrade to ``/twilio/stream`` is checked here before it is accepted.

The webhooks themselves are the TwiML family's (``bridge/providers/schemes/twiml_webhooks.py``,
shared with SignalWire and Telnyx); what is Twilio's own is here. Every request must carry a
valid ``X-Twilio-Signature`` when ``TWILIO_AUTH_TOKEN`` is set; without the token, Twilio
traffic is refused (403) unless development mode is on. Every refusal counts under its reason
in ``rejections`` and logs one ``twilio_rejected`` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.websockets import WebSocket

from bridge.providers.base import Refused, WebhookSettings
from bridge.providers.events import StreamEvent
from bridge.providers.schemes.twiml_webhooks import S, TwimlProvider
from bridge.providers.twilio import stream
from bridge.providers.twilio.signature import SIGNATURE_HEADER, validate
from bridge.routing import resolve

STREAM_PATH = "/twilio/stream"
VOICE_PATH = "/twilio/voice"
STATUS_PATH = "/twilio/stream-status"
TWIML_MEDIA_TYPE = "application/xml"


@dataclass(frozen=True)
class TwilioSettings(WebhookSettings):
    """The settings Twilio reads."""

    twilio_auth_token: str | None


class TwilioSignedProvider(TwimlProvider[S]):
    """A TwiML-family provider whose requests carry Twilio's signature (Twilio, and SignalWire
    which copied it): the checks of webhooks and of the stream upgrade."""

    #: Headers that may carry the signature, in the order they are looked for.
    signature_headers: tuple[str, ...] = (SIGNATURE_HEADER,)

    # -- signatures -----------------------------------------------------------------------------

    def _check_signature(
        self,
        conn: HTTPConnection,
        url: str,
        params: Any,
        *,
        body: bytes | None = None,
        either_slash: bool = False,
    ) -> None:
        key = self.webhook_key()
        if not key:
            if self.settings.development:
                return
            raise Refused(403, self.no_key_reason)
        signature = self.signature(conn)
        if not signature:
            raise Refused(403, "signature_missing")
        if not validate(key, url, params, signature, body=body, either_slash=either_slash):
            raise Refused(403, "signature_invalid")

    def signature(self, conn: HTTPConnection) -> str | None:
        """The first signature header present (empty counts as missing)."""
        for header in self.signature_headers:
            value = conn.headers.get(header)
            if value:
                return value
        return None

    def verify_form(self, request: Request, url: str, pairs: list[tuple[str, str]], body: bytes) -> None:
        self._check_signature(request, url, pairs)

    def verify_json(self, request: Request, url: str, body: bytes) -> None:
        # Twilio signs a JSON body through the bodySHA256 query parameter, not as fields.
        self._check_signature(request, url, None, body=body)

    # -- the WebSocket upgrade ------------------------------------------------------------------

    def check_upgrade(self, websocket: WebSocket) -> None:
        """Raise Refused unless the upgrade is signed over the stream's ``wss://`` URL.

        The caller answers a refusal with an HTTP status before accepting the socket.
        """
        self._check_signature(websocket, self.signed_url(websocket), None, either_slash=True)


class TwilioProvider(TwilioSignedProvider[TwilioSettings]):
    name = stream.PROVIDER
    stream_path = STREAM_PATH
    voice_path = VOICE_PATH
    status_path = STATUS_PATH

    def parse(self, text: str) -> StreamEvent:
        return stream.parse(text)

    def webhook_key(self) -> str | None:
        return self.settings.twilio_auth_token

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
        default = resolve(s.routing, None)
        if default.mode == "forward" and not default.forward_to:
            self.log.warning(
                "no_default_forward_number",
                detail="calls to numbers without a forward_to hear an apology and are hung up;"
                " set BRIDGE_FORWARD_NUMBER or forward_to in the routes file",
            )
