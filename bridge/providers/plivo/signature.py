"""``X-Plivo-Signature-V3`` on Plivo's callbacks, and the stream token derived from the auth token.

V3 is ``base64(HMAC-SHA256(key=auth_token, signed_string + "." + nonce))`` with the nonce in
``X-Plivo-Signature-V3-Nonce``; the signed string is the callback URL with its query sorted and,
for a POST, every form parameter sorted as ``name + value`` (Plivo's SDK builds it so). The
family is shared with Vobiz (``bridge/providers/schemes/v3_nonce.py``), nonce cache included.
``X-Plivo-Signature-Ma-V3`` is the same signature keyed by the main account's token: either
header may carry a match.

Plivo documents no header on the stream socket, so the answer XML carries a secret in the
stream URL's path: :func:`stream_token`, an HMAC of a fixed label under the auth token, so it
needs no setting of its own and changes when the token is rotated.
"""

from __future__ import annotations

import hashlib
import hmac

from bridge.providers.schemes import v3_nonce
from bridge.providers.schemes.v3_nonce import NonceCache, Pairs

SIGNATURE_V3_HEADER = "X-Plivo-Signature-V3"
SIGNATURE_MA_V3_HEADER = "X-Plivo-Signature-Ma-V3"
NONCE_V3_HEADER = "X-Plivo-Signature-V3-Nonce"
#: What the stream token is an HMAC of (a label: the token is this bridge's, not Plivo's).
STREAM_TOKEN_LABEL = b"eka-phone-bridge/plivo/stream"
STREAM_TOKEN_CHARS = 32


def compute_v3(auth_token: str, url: str, nonce: str, *, method: str = "POST", params: Pairs | None = None) -> str:
    """``X-Plivo-Signature-V3`` for a ``method`` request to ``url`` with these form parameters."""
    return v3_nonce.compute(auth_token, v3_nonce.plivo_signed_string(method, url, params), nonce)


def verify_v3(
    auth_token: str,
    url: str,
    nonce: str | None,
    signature: str | None,
    nonces: NonceCache,
    *,
    method: str = "POST",
    params: Pairs | None = None,
) -> str | None:
    """None if the signature is valid and its nonce fresh, else ``missing_signature``,
    ``bad_signature``, ``replayed_nonce`` or ``no_auth_token``."""
    signed = v3_nonce.plivo_signed_string(method, url, params)
    return v3_nonce.verify(auth_token, signed, nonce, signature, nonces)


def stream_token(auth_token: str) -> str:
    """The path secret of this bridge's Plivo stream URL: 32 hex characters."""
    return hmac.new(auth_token.encode("utf-8"), STREAM_TOKEN_LABEL, hashlib.sha256).hexdigest()[:STREAM_TOKEN_CHARS]
