"""``X-SignalWire-Signature`` on SignalWire's webhooks (spec "SignalWire").

For cXML (Compatibility API) requests it is Twilio's signature, keyed by the project's signing
key: ``base64(HMAC-SHA1(key, URL + sorted form fields))``, with or without the default port.
A JSON body is signed as ``hex(HMAC-SHA1(key, URL + raw body))`` (SignalWire's own SDK also
accepts the Compatibility form over the JSON's fields, and Twilio's ``bodySHA256``).
SignalWire sends the same value as ``X-Twilio-Signature`` too. The scheme is shared with
Twilio (``bridge/providers/schemes/hmac_sha1.py``); this module names SignalWire's headers and
its JSON rule.
"""

from __future__ import annotations

import json

from bridge.providers.schemes.hmac_sha1 import compute_hex, compute_signature, validate, validate_hex

SIGNATURE_HEADER = "X-SignalWire-Signature"
#: SignalWire's copy of the same value, for code written against Twilio.
COMPAT_SIGNATURE_HEADER = "X-Twilio-Signature"

__all__ = [
    "COMPAT_SIGNATURE_HEADER",
    "SIGNATURE_HEADER",
    "compute_hex",
    "compute_signature",
    "validate",
    "validate_json",
]


def json_fields(body: bytes) -> dict[str, str] | None:
    """A JSON object body's members as strings (the Compatibility form of a JSON body), or None."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}


def validate_json(key: str, url: str, body: bytes, signature: str | None) -> bool:
    """True if ``signature`` signs this JSON request in any of SignalWire's forms: hex over
    URL + body, the Compatibility signature over the JSON's fields, or Twilio's ``bodySHA256``.
    Every form is computed, whichever matches (no early exit)."""
    if not key or not signature:
        return False
    fields = json_fields(body)
    matched = validate_hex(key, url, body, signature)
    matched |= fields is not None and validate(key, url, fields, signature)
    matched |= validate(key, url, None, signature, body=body)
    return matched
