"""The V3 callback signature family: Plivo's ``X-Plivo-Signature-V3``, and Vobiz's copy of it.

Both are ``base64(HMAC-SHA256(key=auth_token, signed_string + "." + nonce))``, the nonce coming
in a ``…-V3-Nonce`` header; a header may carry several comma-separated signatures (any one
matching is enough). The providers differ only in the signed string:

- Vobiz signs the callback URL with every query parameter stripped, and neither the body
  nor the form parameters (spec B.7); its older V2 joins URL and nonce without the dot.
- Plivo signs the URL with its query parameters sorted, and for a POST every form parameter
  sorted by name as ``name + value`` (:func:`plivo_signed_string`, as Plivo's own SDK builds
  it), so the body is covered too.

A nonce is random, not a time: a captured request could be sent again unchanged, so nonces
are remembered for a while (~5 minutes, as Vobiz suggests) and a repeat is refused.
Every comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import parse_qs, urlsplit, urlunsplit

NONCE_TTL_S = 300.0
NONCE_CACHE_MAX = 100_000

Pairs = Mapping[str, str] | Iterable[tuple[str, str]]


def query_stripped(url: str) -> str:
    """``url`` without its query string and fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def compute(auth_token: str, signed_string: str, nonce: str, joiner: str = ".") -> str:
    """``base64(HMAC-SHA256(auth_token, signed_string + joiner + nonce))``."""
    data = (signed_string + joiner + nonce).encode("utf-8")
    return base64.b64encode(hmac.new(auth_token.encode("utf-8"), data, hashlib.sha256).digest()).decode("ascii")


def _grouped(pairs: Pairs | Mapping[str, list[str]]) -> dict[str, list[str]]:
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    grouped: dict[str, list[str]] = {}
    for name, value in items:
        values = value if isinstance(value, list) else [value]
        grouped.setdefault(str(name), []).extend(str(v) for v in values)
    return grouped


def _sorted_query(grouped: dict[str, list[str]]) -> str:
    return "&".join("&".join(f"{name}={value}" for value in sorted(grouped[name])) for name in sorted(grouped))


def plivo_signed_string(method: str, url: str, params: Pairs | None = None) -> str:
    """What Plivo signs for a request to ``url``: the URL without its query, then its query
    parameters sorted (``?a=1&b=2``); for a POST with form parameters, a ``.`` after a
    non-empty query and every parameter sorted by name (values too) as ``name + value``;
    for a GET, the parameters join the query instead."""
    parts = urlsplit(url)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    query = parse_qs(parts.query, keep_blank_values=True)
    form = _grouped(params or ())
    if method.upper() == "GET":
        merged = {**form, **query}  # as Plivo's SDK: the URL's own parameters win
        text = _sorted_query(merged)
        return base + ("?" + text if text else "")
    text = _sorted_query(query)
    signed = base + ("?" + text if text or form else "") + ("." if text and form else "")
    return signed + "".join(name + value for name in sorted(form) for value in sorted(form[name]))


class NonceCache:
    """Nonces seen in the last ``ttl_s`` seconds, at most ``max_size`` (the oldest go first).

    One per provider, owned by it; the clock is injectable for tests. Eviction under the
    bound only shortens how long the oldest nonces are remembered.
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


def verify(
    auth_token: str,
    signed_string: str,
    nonce: str | None,
    signature: str | None,
    nonces: NonceCache,
    *,
    joiner: str = ".",
) -> str | None:
    """None if ``signature`` signs ``signed_string`` with this nonce and the nonce is fresh, else
    a short reason: ``missing_signature``, ``bad_signature``, ``replayed_nonce`` (``no_auth_token``
    if there is no token to check against)."""
    if not auth_token:
        return "no_auth_token"
    if not signature or not nonce:
        return "missing_signature"
    expected = compute(auth_token, signed_string, nonce, joiner).encode("ascii")
    matched = False
    for candidate in signature.split(","):  # several signatures may come; every one is compared
        matched |= hmac.compare_digest(expected, candidate.strip().encode("utf-8", "surrogatepass"))
    if not matched:
        return "bad_signature"
    if nonces.seen_before(nonce):  # only a genuine request may claim a nonce
        return "replayed_nonce"
    return None
