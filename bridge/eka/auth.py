"""One access token shared by every call: cached, renewed before expiry, refreshed when possible."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from bridge.eka.retry import Backoff, EkaError, with_retries
from bridge.logging import Logger

LOGIN_PATH = "/connect-auth/v1/account/login"
REFRESH_PATH = "/connect-auth/v1/account/refresh-token"
#: Renew this long before expiry (Eka's SDK uses 5 minutes), or a quarter of a short lifetime.
RENEW_MARGIN_S = 300.0


class TokenProvider:
    """Hands out a valid bearer token; logs in or refreshes at most once at a time."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        client_id: str | None,
        client_secret: str | None,
        static_token: str | None,
        budget_s: float,
        backoff: Backoff,
        log: Logger,
        observe: Callable[[str, str], None] | None = None,
    ) -> None:
        self._http = http
        self._observe = observe  # (op, status or error) per attempt: the Eka request metrics
        self._base_url = base_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._static = static_token
        self._budget_s = budget_s
        self._backoff = backoff
        self._log = log
        self._lock = asyncio.Lock()
        self._access: str | None = None
        self._refresh: str | None = None
        self._renew_at = 0.0
        self._refresh_valid_until = 0.0
        self.logins = 0
        self.refreshes = 0

    @property
    def can_renew(self) -> bool:
        return bool(self._client_id and self._client_secret)

    async def get(self) -> str:
        if self._static and not self.can_renew:
            return self._static
        loop = asyncio.get_running_loop()
        if self._access and loop.time() < self._renew_at:
            return self._access
        async with self._lock:
            if self._access and loop.time() < self._renew_at:
                return self._access
            await self._renew()
            assert self._access is not None
            return self._access

    async def invalidate(self, token: str) -> None:
        """The server refused ``token`` (401): the next ``get`` renews it."""
        if token == self._access:
            self._renew_at = 0.0
        elif token == self._static and not self.can_renew:
            raise EkaError("auth", "the configured EKA_ACCESS_TOKEN was refused (401)", 401)

    async def _renew(self) -> None:
        loop = asyncio.get_running_loop()
        if self._refresh and self._access and loop.time() < self._refresh_valid_until:
            try:
                await self._exchange("refresh", REFRESH_PATH, self._refresh_request())
                self.refreshes += 1
                return
            except EkaError as exc:
                self._log.warning("eka_token_refresh_failed", reason=exc.reason)
        await self._exchange("login", LOGIN_PATH, self._login_request())
        self.logins += 1

    def _login_request(self) -> dict[str, Any]:
        return {"json": {"client_id": self._client_id, "client_secret": self._client_secret}}

    def _refresh_request(self) -> dict[str, Any]:
        return {
            "json": {"refresh_token": self._refresh, "access_token": self._access},
            "headers": {"Authorization": f"Bearer {self._access}", "Client-Id": self._client_id or ""},
        }

    async def _exchange(self, op: str, path: str, request: dict[str, Any]) -> None:
        url = self._base_url + path
        response = await with_retries(
            op,
            lambda: self._http.post(url, **request),
            budget_s=self._budget_s,
            backoff=self._backoff,
            on_retry=self._on_retry,
            observe=self._observe,
        )
        if response.status_code != 200:
            raise EkaError(op, f"http_{response.status_code}", response.status_code)
        try:
            body = response.json()
            access = str(body["access_token"])
            expires_in = float(body.get("expires_in") or 1800)
        except (ValueError, KeyError, TypeError):
            raise EkaError(op, "malformed token response") from None
        now = asyncio.get_running_loop().time()
        self._access = access
        self._refresh = body.get("refresh_token") or self._refresh
        self._renew_at = now + max(expires_in - min(RENEW_MARGIN_S, expires_in / 4), 0.0)
        refresh_ttl = body.get("refresh_expires_in")
        self._refresh_valid_until = now + float(refresh_ttl) if refresh_ttl else now + expires_in
        self._log.info("eka_token_renewed", via=op, expires_in_s=expires_in)

    def _on_retry(self, op: str, attempt: int, reason: str, delay: float) -> None:
        self._log.warning("eka_retry", op=op, attempt=attempt, reason=reason, delay_s=round(delay, 3))
