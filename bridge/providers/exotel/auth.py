"""Exotel's stream authentication, checked on the upgrade before it is accepted.

Exotel signs nothing. It offers two things, and the bridge checks whichever are configured
(both, when both are):

- **Basic auth carried by the stream URL**: ``wss://user:password@host/exotel/stream`` arrives as
  ``Authorization: Basic base64(user:password)`` on the upgrade (``EXOTEL_BASIC_AUTH``); compared
  in constant time.
- **An IP allowlist** (``EXOTEL_ALLOWED_IPS``: addresses or CIDR blocks): the peer address of the
  connection, which behind a proxy is the one uvicorn takes from ``X-Forwarded-For`` for the
  proxies ``FORWARDED_ALLOW_IPS`` trusts.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def basic_header(credentials: str) -> str:
    """The ``Authorization`` value a client sends for ``user:password``."""
    return "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")


def check_basic(header: str | None, expected: str) -> str | None:
    """None if ``header`` is Basic auth for ``expected`` (``user:password``), else
    ``credentials_missing`` or ``credentials_invalid``."""
    scheme, _, encoded = (header or "").strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return "credentials_missing"
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return "credentials_invalid"
    if not hmac.compare_digest(given, expected.encode("utf-8")):
        return "credentials_invalid"
    return None


def networks(items: Iterable[str]) -> tuple[Network, ...]:
    """Parsed allowlist entries (validated at start-up, see ``bridge/config.py``)."""
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def allowed(host: str | None, allow: tuple[Network, ...]) -> bool:
    """Whether ``host`` (an IP address; IPv4-mapped IPv6 counts as IPv4) is in ``allow``."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in allow)
