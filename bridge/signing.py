"""The ``t=<unix seconds>,v1=<hex>`` webhook signature: HMAC-SHA256 over ``"<t>.<raw body>"``.

Eka signs its webhooks this way (``Eka-Webhook-Signature``, spec §7.3) and the bridge signs the
results it delivers the same way (``X-Bridge-Signature``), so a clinic verifies both with one
routine. The timestamp is inside the MAC, so a captured request cannot be replayed later than
the receiver's tolerance.
"""

from __future__ import annotations

import hashlib
import hmac

#: Eka's example tolerance for a signature's timestamp, either side of now.
TOLERANCE_S = 180


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The header value for ``body`` sent at ``timestamp`` (unix seconds)."""
    return f"t={timestamp},v1={_mac(secret, body, timestamp)}"


def check(secret: str, header: str | None, body: bytes, now: float, tolerance_s: float = TOLERANCE_S) -> str | None:
    """None when ``header`` signs ``body`` within ``tolerance_s`` of ``now``; else why not:
    ``signature_missing``, ``signature_malformed``, ``signature_invalid`` or ``signature_stale``.

    Several ``v1`` values are allowed (a sender rotating keys); each is compared in constant time.
    """
    if not header:
        return "signature_missing"
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif key == "v1" and value:
            candidates.append(value.strip())
    if timestamp is None or not candidates:
        return "signature_malformed"
    expected = _mac(secret, body, timestamp).encode()
    if not any(hmac.compare_digest(expected, c.encode("ascii", "replace")) for c in candidates):
        return "signature_invalid"
    if abs(now - timestamp) > tolerance_s:
        return "signature_stale"
    return None


def _mac(secret: str, body: bytes, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
