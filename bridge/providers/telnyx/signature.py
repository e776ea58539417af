"""Telnyx's Ed25519 webhook signatures: ``telnyx-signature-ed25519`` (base64, 64 bytes) over
``"{telnyx-timestamp}|{raw body}"``, verified with the account's public key (base64, 32 bytes,
from Mission Control). The timestamp is inside the signature, so a captured request is refused
once it is older (or newer) than :data:`TOLERANCE_S`, as Telnyx's own SDKs refuse it.

Verification is the ``cryptography`` package's Ed25519 (OpenSSL's): nothing of it is written here.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
#: How far a webhook's timestamp may be from now, either way (Telnyx's SDKs: 5 minutes).
TOLERANCE_S = 300


def public_key(encoded: str) -> Ed25519PublicKey:
    """The key from its base64 form (ValueError if it is not 32 bytes of base64)."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ValueError("not base64") from exc
    return Ed25519PublicKey.from_public_bytes(raw)


def valid_signature(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """Ed25519: whether ``signature`` is ``message`` signed by the key's private half."""
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def signed_message(timestamp: str, body: bytes) -> bytes:
    """What Telnyx signs: the timestamp header, a ``|``, then the raw body."""
    return timestamp.encode("ascii") + b"|" + body


def verify(key: Ed25519PublicKey, body: bytes, signature: str | None, timestamp: str | None, now: float) -> str | None:
    """None if the webhook is signed and fresh, else ``signature_missing``, ``signature_malformed``,
    ``signature_invalid`` or ``signature_stale``."""
    if not signature or not timestamp:
        return "signature_missing"
    timestamp = timestamp.strip()
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        return "signature_malformed"
    if len(raw) != 64 or not timestamp.isdigit() or len(timestamp) > 12:
        return "signature_malformed"
    if not valid_signature(key, raw, signed_message(timestamp, body)):
        return "signature_invalid"
    if abs(now - int(timestamp)) > TOLERANCE_S:
        return "signature_stale"
    return None
