"""Access and refresh tokens, kept in memory: a stand-in for Eka's connect-auth service.

Tokens are random opaque strings, not JWTs: clients must treat them as opaque anyway,
and an opaque string cannot be mistaken for a real Eka credential in logs or fixtures.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Grant:
    """What login and refresh return (A-YML): the same shape from both endpoints."""

    access_token: str
    refresh_token: str
    expires_in: float
    refresh_expires_in: float

    def as_json(self) -> dict[str, object]:
        return {
            "access_token": self.access_token,
            "expires_in": _seconds(self.expires_in),
            "refresh_expires_in": _seconds(self.refresh_expires_in),
            "refresh_token": self.refresh_token,
        }


class TokenStore:
    """Issues, checks, refreshes and revokes tokens; expiry uses a monotonic clock."""

    def __init__(
        self,
        *,
        token_ttl_s: float,
        refresh_ttl_s: float,
        static_tokens: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token_ttl_s = token_ttl_s
        self._refresh_ttl_s = refresh_ttl_s
        self._static = static_tokens
        self._clock = clock
        self._access: dict[str, float] = {}  # live access token -> expiry
        self._refresh: dict[str, float] = {}  # refresh token -> expiry
        self._issued: set[str] = set()  # every access token ever issued, for the refresh call's Bearer

    def issue(self) -> Grant:
        now = self._clock()
        access = "emu_at_" + secrets.token_hex(16)
        refresh = "emu_rt_" + secrets.token_hex(16)
        self._access[access] = now + self._token_ttl_s
        self._refresh[refresh] = now + self._refresh_ttl_s
        self._issued.add(access)
        return Grant(access, refresh, self._token_ttl_s, self._refresh_ttl_s)

    def is_valid(self, token: str) -> bool:
        """May this Bearer token call the voice API right now?"""
        if token in self._static:
            return True
        expiry = self._access.get(token)
        return expiry is not None and self._clock() < expiry

    def is_known(self, token: str) -> bool:
        """Was this token ever ours? Refresh accepts expired or revoked access tokens as Bearer."""
        return token in self._static or token in self._issued

    def refresh(self, refresh_token: str) -> Grant | None:
        """A new grant for a live refresh token, else None.

        Whether Eka invalidates the old refresh token on use is not documented; the
        old one stays valid until it expires, so a client that reuses it is not punished.
        """
        expiry = self._refresh.get(refresh_token)
        if expiry is None or self._clock() >= expiry:
            return None
        return self.issue()

    def revoke_access(self) -> int:
        """Invalidate every access token issued so far (static and refresh tokens stay)."""
        revoked = len(self._access)
        self._access.clear()
        return revoked


def _seconds(value: float) -> float | int:
    """Eka sends whole seconds; keep fractions only when a test asked for them."""
    return int(value) if float(value).is_integer() else value
