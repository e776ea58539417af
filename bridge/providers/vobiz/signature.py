"""``X-Vobiz-Signature-V3`` / ``-V2`` on Vobiz's HTTP callbacks: compute and verify (spec B.7).

V3 is ``base64(HMAC-SHA256(key=auth_token, base_url + "." + nonce))``, V2 the same over
``base_url + nonce``; the nonce (20 random digits) comes in ``X-Vobiz-Signature-V3-Nonce``
(``-V2-Nonce``). ``base_url`` is the callback URL with every query parameter stripped, and
neither the body nor the form parameters are signed. The scheme (and the nonce cache that
refuses a repeat) is the V3 family Vobiz copied from Plivo, shared in
``bridge/providers/schemes/v3_nonce.py``; this module holds only what is Vobiz's own.

Vobiz only signs callbacks whose URL has auth credentials configured on it; whether to
require a signature at all is the caller's decision.
"""

from __future__ import annotations

from bridge.providers.schemes import v3_nonce
from bridge.providers.schemes.v3_nonce import NONCE_CACHE_MAX, NONCE_TTL_S, NonceCache

SIGNATURE_V3_HEADER = "X-Vobiz-Signature-V3"
NONCE_V3_HEADER = "X-Vobiz-Signature-V3-Nonce"
SIGNATURE_V2_HEADER = "X-Vobiz-Signature-V2"
NONCE_V2_HEADER = "X-Vobiz-Signature-V2-Nonce"

__all__ = [
    "NONCE_CACHE_MAX",
    "NONCE_TTL_S",
    "NONCE_V2_HEADER",
    "NONCE_V3_HEADER",
    "SIGNATURE_V2_HEADER",
    "SIGNATURE_V3_HEADER",
    "NonceCache",
    "base_url",
    "compute_v2",
    "compute_v3",
    "verify_v2",
    "verify_v3",
]


def base_url(url: str) -> str:
    """``url`` without its query string and fragment: what Vobiz signs."""
    return v3_nonce.query_stripped(url)


def compute_v3(auth_token: str, url: str, nonce: str) -> str:
    """``X-Vobiz-Signature-V3`` for a request to ``url`` with ``nonce``."""
    return v3_nonce.compute(auth_token, base_url(url), nonce)


def compute_v2(auth_token: str, url: str, nonce: str) -> str:
    """``X-Vobiz-Signature-V2``: as V3, but the URL and nonce are joined without a dot."""
    return v3_nonce.compute(auth_token, base_url(url), nonce, joiner="")


def verify_v3(auth_token: str, url: str, nonce: str | None, signature: str | None, nonces: NonceCache) -> str | None:
    """None if the V3 signature is valid and its nonce is fresh, else a short reason:
    ``missing_signature``, ``bad_signature``, ``replayed_nonce`` (``no_auth_token`` if
    there is no token to check against)."""
    return v3_nonce.verify(auth_token, base_url(url), nonce, signature, nonces)


def verify_v2(auth_token: str, url: str, nonce: str | None, signature: str | None, nonces: NonceCache) -> str | None:
    """As :func:`verify_v3`, for the ``X-Vobiz-Signature-V2`` headers."""
    return v3_nonce.verify(auth_token, base_url(url), nonce, signature, nonces, joiner="")
