"""``X-Vobiz-Signature-V3`` / ``-V2`` on Vobiz's HTTP callbacks: compute and verify (spec B.7).

V3 is ``base64(HMAC-SHA256(key=auth_token, base_url + "." + nonce))``, V2 the same over
``base_url + nonce``; the nonce (20 random digits) comes in ``X-Vobiz-Signature-V3-Nonce``
(``-V2-Nonce``). ``base_url`` is the callback URL with every query parameter stripped, and
neither the body nor the form parameters are signed, so a captured request could be sent
again unchanged: nonces are remembered for a while (Vobiz suggests ~5 minutes) and a
repeat is refused.

Vobiz only signs callbacks whose URL has auth credentials configured on it; whether to
require a signature at all is the caller's decision.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

SIGNATURE_V3_HEADER = "X-Vobiz-Signature-V3"
NONCE_V3_HEADER = "X-Vobiz-Signature-V3-Nonce"
SIGNATURE_V2_HEADER = "X-Vobiz-Signature-V2"
NONCE_V2_HEADER = "X-Vobiz-Signature-V2-Nonce"
NONCE_TTL_S = 300.0
NONCE_CACHE_MAX = 100_000


def base_url(url: str) -> str:
    """``url`` without its query string and fragment: what Vobiz signs."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _sign(auth_token: str, data: str) -> str:
    digest = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def compute_v3(auth_token: str, url: str, nonce: str) -> str:
    """``X-Vobiz-Signature-V3`` for a request to ``url`` with ``nonce``."""
    return _sign(auth_token, base_url(url) + "." + nonce)


def compute_v2(auth_token: str, url: str, nonce: str) -> str:
    """``X-Vobiz-Signature-V2``: as V3, but the URL and nonce are joined without a dot."""
    return _sign(auth_token, base_url(url) + nonce)


class NonceCache:
    """Nonces seen in the last ``ttl_s`` seconds, at most ``max_size`` (the oldest go first).

    One per process, owned by the app; the clock is injectable for tests. Eviction under
    the bound only shortens how long the oldest nonces are remembered.
    """

    def __init__(
        self,
        ttl_s: float = NONCE_TTL_S,
        max_size: int = NONCE_CACHE_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0 or max_size <= 0:
            raise ValueError("ttl_s and max_size must be > 0")
        self.ttl_s = ttl_s
        self.max_size = max_size
        self.clock = clock
        self._expiry: OrderedDict[str, float] = OrderedDict()  # insertion order = expiry order

    def seen_before(self, nonce: str) -> bool:
        """True if ``nonce`` was recorded within the TTL; otherwise record it and return False."""
        now = self.clock()
        while self._expiry:
            oldest, expires = next(iter(self._expiry.items()))
            if expires > now:
                break
            del self._expiry[oldest]
        if nonce in self._expiry:
            return True
        self._expiry[nonce] = now + self.ttl_s
        while len(self._expiry) > self.max_size:
            self._expiry.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._expiry)


def _verify(
    compute: Callable[[str, str, str], str],
    auth_token: str,
    url: str,
    nonce: str | None,
    signature: str | None,
    nonces: NonceCache,
) -> str | None:
    if not auth_token:
        return "no_auth_token"
    if not signature or not nonce:
        return "missing_signature"
    expected = compute(auth_token, url, nonce).encode("ascii")
    # Plivo's convention, harmless here: a header may carry several comma-separated signatures.
    matched = False
    for candidate in signature.split(","):
        matched |= hmac.compare_digest(expected, candidate.strip().encode("utf-8", "surrogatepass"))
    if not matched:
        return "bad_signature"
    if nonces.seen_before(nonce):  # only a genuine request may claim a nonce
        return "replayed_nonce"
    return None


def verify_v3(auth_token: str, url: str, nonce: str | None, signature: str | None, nonces: NonceCache) -> str | None:
    """None if the V3 signature is valid and its nonce is fresh, else a short reason:
    ``missing_signature``, ``bad_signature``, ``replayed_nonce`` (``no_auth_token`` if
    there is no token to check against)."""
    return _verify(compute_v3, auth_token, url, nonce, signature, nonces)


def verify_v2(auth_token: str, url: str, nonce: str | None, signature: str | None, nonces: NonceCache) -> str | None:
    """As :func:`verify_v3`, for the ``X-Vobiz-Signature-V2`` headers."""
    return _verify(compute_v2, auth_token, url, nonce, signature, nonces)
