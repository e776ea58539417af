"""Telnyx as a provider: TeXML (the TwiML family's webhooks), Ed25519-signed webhooks, and the
streaming auth token on the upgrade.

- ``POST /telnyx/voice``: TeXML for the called number's route (Twilio's TwiML documents, with
  ``<Stream codec="PCMU">``), for a TeXML application's voice URL.
- ``POST /telnyx/stream-status``: the ``<Stream statusCallback>`` events, logged.
- WebSocket ``/telnyx/stream`` (and ``/telnyx/stream/{token}``): the upgrade must carry
  ``TELNYX_STREAM_AUTH_TOKEN``, as the ``x-telnyx-streaming-auth-token`` header Telnyx sends for
  a Call Control ``stream_auth_token``, or as the last path segment (TeXML's ``<Stream>`` has no
  token attribute, so the TeXML the bridge answers puts it in the URL path).

Webhooks must carry a valid ``telnyx-signature-ed25519`` over ``"{telnyx-timestamp}|{body}"``
for ``TELNYX_PUBLIC_KEY``, at most 5 minutes old. Without the key every webhook, and without the
token every stream, is refused (403) unless development mode is on; start-up says which.
"""

from __future__ import annotations

import hmac
import time
from collections import Counter
from dataclasses import dataclass

from starlette.requests import Request
from starlette.websockets import WebSocket

from bridge.config import stream_url
from bridge.logging import Logger
from bridge.providers.base import Refused, WebhookSettings
from bridge.providers.events import StreamEvent
from bridge.providers.schemes.twiml_webhooks import TwimlProvider
from bridge.providers.telnyx import signature, stream

STREAM_PATH = "/telnyx/stream"
VOICE_PATH = "/telnyx/voice"
STATUS_PATH = "/telnyx/stream-status"
#: What the TeXML asks for: μ-law at 8 kHz (Telnyx transcodes only between PCMU and PCMA).
CODEC = "PCMU"


@dataclass(frozen=True)
class TelnyxSettings(WebhookSettings):
    """The settings Telnyx reads."""

    telnyx_public_key: str | None
    telnyx_stream_auth_token: str | None


class TelnyxProvider(TwimlProvider[TelnyxSettings]):
    name = stream.PROVIDER
    stream_path = STREAM_PATH
    voice_path = VOICE_PATH
    status_path = STATUS_PATH
    rejection_prefix = "telnyx_"
    no_key_reason = "no_public_key"
    stream_token_in_path = True
    #: L16 on Telnyx is the RTP payload: network byte order.
    l16_byte_order = "big"

    def __init__(self, settings: TelnyxSettings, *, log: Logger, rejections: Counter[str]) -> None:
        super().__init__(settings, log=log, rejections=rejections)
        key = settings.telnyx_public_key
        self.public_key = signature.public_key(key) if key else None  # validated at start-up

    def parse(self, text: str) -> StreamEvent:
        return stream.parse(text)

    def webhook_key(self) -> str | None:
        return self.settings.telnyx_public_key

    def announce(self) -> None:
        s = self.settings
        unset = [
            name
            for name, value in (
                ("TELNYX_PUBLIC_KEY", s.telnyx_public_key),
                ("TELNYX_STREAM_AUTH_TOKEN", s.telnyx_stream_auth_token),
            )
            if not value
        ]
        if not unset:
            return
        what = "webhook" if unset == ["TELNYX_PUBLIC_KEY"] else "stream" if len(unset) == 1 else "webhook and stream"
        if s.development:
            self.log.warning(
                "telnyx_credentials_not_checked",
                detail=f"{' and '.join(unset)} not set: development mode accepts every Telnyx {what}",
            )
        else:
            self.log.warning(
                "telnyx_traffic_refused",
                detail=f"{' and '.join(unset)} not set: every Telnyx {what} is refused (403);"
                " set it, or run with --dev",
            )

    # -- webhooks: Ed25519 over the raw body, whatever its type --------------------------------

    def _verify(self, request: Request, body: bytes) -> None:
        if self.public_key is None:
            if self.settings.development:
                return
            raise Refused(403, self.no_key_reason)
        failure = signature.verify(
            self.public_key,
            body,
            request.headers.get(signature.SIGNATURE_HEADER),
            request.headers.get(signature.TIMESTAMP_HEADER),
            time.time(),
        )
        if failure:
            raise Refused(403, failure)

    def verify_form(self, request: Request, url: str, pairs: list[tuple[str, str]], body: bytes) -> None:
        self._verify(request, body)

    def verify_json(self, request: Request, url: str, body: bytes) -> None:
        self._verify(request, body)

    # -- the stream ---------------------------------------------------------------------------

    def stream_url_for(self, base: str) -> str:
        token = self.settings.telnyx_stream_auth_token
        return stream_url(base, f"{STREAM_PATH}/{token}" if token else STREAM_PATH)

    def stream_attributes(self) -> dict[str, str]:
        return {"codec": CODEC}

    def check_upgrade(self, websocket: WebSocket) -> None:
        """Raise Refused unless the upgrade carries the streaming auth token (header or path)."""
        expected = self.settings.telnyx_stream_auth_token
        if not expected:
            if self.settings.development:
                return
            raise Refused(403, "no_stream_token")
        given = websocket.headers.get(stream.AUTH_TOKEN_HEADER) or websocket.path_params.get("token", "")
        if not given:
            raise Refused(403, "token_missing")
        if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode()):
            raise Refused(403, "token_invalid")
