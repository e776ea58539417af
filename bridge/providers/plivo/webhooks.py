"""Plivo as a provider: answer XML, the hang-up and stream-status callbacks, the stream token.

- ``POST /plivo/answer``: XML that announces the call, forks both parties to
  ``wss://…/plivo/stream/{token}`` and dials the clinician (the called number's route).
- ``POST /plivo/hangup``: the authoritative end of a call; its session is finalized at once.
- ``POST /plivo/stream-status``: the ``<Stream statusCallbackUrl>`` events, logged.
- The stream upgrade must carry the token derived from ``PLIVO_AUTH_TOKEN`` as its last path
  segment (Plivo documents no header on the socket).

The handlers are the Plivo family's (``bridge/providers/schemes/plivo_family.py``, shared with
Vobiz). Every callback must carry a valid ``X-Plivo-Signature-V3`` (or ``-Ma-V3``) with a fresh
nonce. Without ``PLIVO_AUTH_TOKEN`` every Plivo callback and stream is refused (403) unless
development mode is on, and start-up says so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from starlette.requests import Request

from bridge.logging import Logger
from bridge.providers.base import EndCall, Refused, WebhookSettings
from bridge.providers.plivo import stream as plivo
from bridge.providers.plivo.signature import (
    NONCE_V3_HEADER,
    SIGNATURE_MA_V3_HEADER,
    SIGNATURE_V3_HEADER,
    stream_token,
    verify_v3,
)
from bridge.providers.schemes.plivo_family import PlivoFamilyProvider
from bridge.providers.schemes.v3_nonce import NonceCache

#: Plivo's L16 byte order is undocumented: decided from the audio, as for Vobiz's "auto".
L16_BYTE_ORDER = "auto"


@dataclass(frozen=True)
class PlivoSettings(WebhookSettings):
    """The settings Plivo reads."""

    plivo_auth_token: str | None
    plivo_reconnect_grace_s: float


class PlivoProvider(PlivoFamilyProvider[PlivoSettings]):
    name = plivo.PROVIDER

    def __init__(self, settings: PlivoSettings, *, log: Logger, rejections: Counter[str], end_call: EndCall) -> None:
        # Plivo retries a dropped socket (twice): the call waits that long for it, in one session.
        super().__init__(
            settings,
            log=log,
            rejections=rejections,
            end_call=end_call,
            reconnect_grace_s=settings.plivo_reconnect_grace_s,
            l16_byte_order=L16_BYTE_ORDER,
        )
        self.nonces = NonceCache()

    def announce(self) -> None:
        if self.settings.plivo_auth_token:
            return
        if self.settings.development:
            self.log.warning(
                "plivo_signatures_not_checked",
                detail="PLIVO_AUTH_TOKEN is not set: development mode accepts unsigned Plivo callbacks"
                " and streams without a token",
            )
        else:
            self.log.warning(
                "plivo_traffic_refused",
                detail="PLIVO_AUTH_TOKEN is not set: every Plivo callback and stream is refused (403);"
                " set it, or run with --dev",
            )

    def stream_token(self) -> str | None:
        token = self.settings.plivo_auth_token
        return stream_token(token) if token else None

    def open_without_token(self) -> bool:
        return self.settings.development

    def verify(self, request: Request, url: str, pairs: list[tuple[str, str]]) -> None:
        token = self.settings.plivo_auth_token
        if not token:
            if self.settings.development:
                return
            raise Refused(403, "no_auth_token")
        given = [request.headers.get(h, "") for h in (SIGNATURE_V3_HEADER, SIGNATURE_MA_V3_HEADER)]
        failure = verify_v3(
            token,
            url,
            request.headers.get(NONCE_V3_HEADER, ""),
            ",".join(s for s in given if s),
            self.nonces,
            method=request.method,
            params=pairs,
        )
        if failure:
            raise Refused(403, failure)
