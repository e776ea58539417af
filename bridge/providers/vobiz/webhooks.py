"""Vobiz as a provider: answer XML, the hang-up and stream-status callbacks, the stream token.

- ``POST /vobiz/answer``: XML that announces the call, forks both parties to
  ``wss://…/vobiz/stream/{token}`` and dials the clinician (the called number's route).
- ``POST /vobiz/hangup``: the authoritative end of a call; its session is finalized at once.
- ``POST /vobiz/stream-status``: the ``<Stream statusCallbackUrl>`` events, logged.
- The stream upgrade: Vobiz cannot add headers to the socket, so when ``VOBIZ_STREAM_TOKEN``
  is set the token must be the last path segment (constant-time compare, refused before accept).

The handlers are the Plivo family's (``bridge/providers/schemes/plivo_family.py``, shared with
Plivo). HTTP callbacks must carry a valid ``X-Vobiz-Signature-V3`` when ``VOBIZ_AUTH_TOKEN`` is
set: HMAC-SHA256 over the query-stripped URL + "." + nonce, each nonce accepted once in 5 minutes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from starlette.requests import Request

from bridge.logging import Logger
from bridge.providers.base import EndCall, Refused, WebhookSettings
from bridge.providers.schemes.plivo_family import PlivoFamilyProvider
from bridge.providers.vobiz import stream as vobiz
from bridge.providers.vobiz.signature import NONCE_V3_HEADER, SIGNATURE_V3_HEADER, NonceCache, verify_v3

STREAM_PATH = "/vobiz/stream"
ANSWER_PATH = "/vobiz/answer"
HANGUP_PATH = "/vobiz/hangup"
STATUS_PATH = "/vobiz/stream-status"


@dataclass(frozen=True)
class VobizSettings(WebhookSettings):
    """The settings Vobiz reads."""

    vobiz_auth_token: str | None
    vobiz_stream_token: str | None
    vobiz_reconnect_grace_s: float
    vobiz_l16_byte_order: str


class VobizProvider(PlivoFamilyProvider[VobizSettings]):
    name = vobiz.PROVIDER

    def __init__(self, settings: VobizSettings, *, log: Logger, rejections: Counter[str], end_call: EndCall) -> None:
        # No end signal on a Vobiz stream: a closed socket may come back (new streamId, same callId).
        super().__init__(
            settings,
            log=log,
            rejections=rejections,
            end_call=end_call,
            reconnect_grace_s=settings.vobiz_reconnect_grace_s,
            l16_byte_order=settings.vobiz_l16_byte_order,
        )
        self.nonces = NonceCache()

    def announce(self) -> None:
        if not self.settings.vobiz_stream_token:
            self.log.warning(
                "vobiz_stream_open",
                detail="VOBIZ_STREAM_TOKEN is not set: anyone who can reach /vobiz/stream can open an Eka"
                " session; set it (the answer XML then carries it in the stream URL)",
            )

    def stream_token(self) -> str | None:
        return self.settings.vobiz_stream_token

    def verify(self, request: Request, url: str, pairs: list[tuple[str, str]]) -> None:
        """With ``VOBIZ_AUTH_TOKEN``, a valid fresh V3 signature (it ignores the query and body)."""
        token = self.settings.vobiz_auth_token
        if not token:
            return
        failure = verify_v3(
            token,
            url,
            request.headers.get(NONCE_V3_HEADER, ""),
            request.headers.get(SIGNATURE_V3_HEADER, ""),
            self.nonces,
        )
        if failure:
            raise Refused(403, failure)
