"""SignalWire as a provider: Twilio's code paths with SignalWire's credentials.

- ``POST /signalwire/voice``: cXML for the called number's route (Twilio's TwiML documents; the
  ``<Stream>`` carries ``authBearerToken``).
- ``POST /signalwire/stream-status``: the ``<Stream statusCallback>`` events, logged.
- The WebSocket upgrade to ``/signalwire/stream`` must carry ``Authorization: Bearer`` with
  ``SIGNALWIRE_STREAM_TOKEN`` (the ``authBearerToken``), checked before it is accepted.

Webhooks must carry a valid ``X-SignalWire-Signature`` (or its copy ``X-Twilio-Signature``)
keyed by ``SIGNALWIRE_SIGNING_KEY``. Without the key every webhook, and without the stream token
every stream, is refused (403) unless development mode is on; start-up says which.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.requests import Request
from starlette.websockets import WebSocket

from bridge.providers.base import Refused, WebhookSettings
from bridge.providers.events import StreamEvent
from bridge.providers.signalwire import stream
from bridge.providers.signalwire.signature import COMPAT_SIGNATURE_HEADER, SIGNATURE_HEADER, validate_json
from bridge.providers.twilio.webhooks import TwilioSignedProvider

STREAM_PATH = "/signalwire/stream"
VOICE_PATH = "/signalwire/voice"
STATUS_PATH = "/signalwire/stream-status"


@dataclass(frozen=True)
class SignalWireSettings(WebhookSettings):
    """The settings SignalWire reads."""

    signalwire_signing_key: str | None
    signalwire_stream_token: str | None


class SignalWireProvider(TwilioSignedProvider[SignalWireSettings]):
    name = stream.PROVIDER
    stream_path = STREAM_PATH
    voice_path = VOICE_PATH
    status_path = STATUS_PATH
    signature_headers = (SIGNATURE_HEADER, COMPAT_SIGNATURE_HEADER)
    rejection_prefix = "signalwire_"
    no_key_reason = "no_signing_key"

    def parse(self, text: str) -> StreamEvent:
        return stream.parse(text)

    def webhook_key(self) -> str | None:
        return self.settings.signalwire_signing_key

    def announce(self) -> None:
        s = self.settings
        unset = [
            name
            for name, value in (
                ("SIGNALWIRE_SIGNING_KEY", s.signalwire_signing_key),
                ("SIGNALWIRE_STREAM_TOKEN", s.signalwire_stream_token),
            )
            if not value
        ]
        if not unset:
            return
        what = "webhooks" if unset == ["SIGNALWIRE_SIGNING_KEY"] else "streams" if len(unset) == 1 else "traffic"
        if s.development:
            self.log.warning(
                "signalwire_credentials_not_checked",
                detail=f"{' and '.join(unset)} not set: development mode accepts unauthenticated SignalWire {what}",
            )
        else:
            self.log.warning(
                "signalwire_traffic_refused",
                detail=f"{' and '.join(unset)} not set: every SignalWire {what.rstrip('s')} is refused (403);"
                " set it, or run with --dev",
            )

    def stream_attributes(self) -> dict[str, str]:
        token = self.settings.signalwire_stream_token
        return {"authBearerToken": token} if token else {}

    def verify_json(self, request: Request, url: str, body: bytes) -> None:
        key = self.webhook_key()
        if not key:
            if self.settings.development:
                return
            raise Refused(403, self.no_key_reason)
        signature = self.signature(request)
        if not signature:
            raise Refused(403, "signature_missing")
        if not validate_json(key, url, body, signature):
            raise Refused(403, "signature_invalid")

    def check_upgrade(self, websocket: WebSocket) -> None:
        """Raise Refused unless the upgrade carries ``Authorization: Bearer <stream token>``."""
        expected = self.settings.signalwire_stream_token
        if not expected:
            if self.settings.development:
                return
            raise Refused(403, "no_stream_token")
        scheme, _, given = websocket.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise Refused(403, "token_missing")
        if not hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"), expected.encode()):
            raise Refused(403, "token_invalid")
