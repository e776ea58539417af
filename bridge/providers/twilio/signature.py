"""``X-Twilio-Signature``: HMAC-SHA1 keyed by the auth token (spec part A.7).

The scheme itself is shared with SignalWire and lives in ``bridge/providers/schemes/hmac_sha1.py``;
this module names Twilio's header and re-exports the scheme under the names Twilio's code uses.
"""

from __future__ import annotations

from bridge.providers.schemes.hmac_sha1 import (
    DEFAULT_PORTS,
    Params,
    body_sha256,
    compute_signature,
    port_variants,
    signing_string,
    slash_variants,
    validate,
)

SIGNATURE_HEADER = "X-Twilio-Signature"

__all__ = [
    "DEFAULT_PORTS",
    "SIGNATURE_HEADER",
    "Params",
    "body_sha256",
    "compute_signature",
    "port_variants",
    "signing_string",
    "slash_variants",
    "validate",
]
