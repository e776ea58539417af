"""connect-auth endpoints (login, refresh) and the Bearer check the voice gateway applies."""

from __future__ import annotations

import json
import secrets
from typing import Any, TypeGuard

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from structlog.typing import FilteringBoundLogger

from bridge.emulator.errors import auth_error, unauthorized
from bridge.emulator.options import EmulatorOptions
from bridge.emulator.tokens import TokenStore


def bearer_token(request: Request) -> str | None:
    """The token from ``Authorization: Bearer <token>``, or None."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def check_bearer(request: Request, tokens: TokenStore) -> Response | None:
    """None if the request may call the voice API, else the 401 to send."""
    token = bearer_token(request)
    if token is None:
        return unauthorized("missing Authorization: Bearer token")
    if not tokens.is_valid(token):
        return unauthorized("access token is invalid or expired")
    return None


class AuthEndpoints:
    """Login and refresh (A-YML). Bodies and errors use connect-auth's ``{code, error}`` shape."""

    def __init__(self, tokens: TokenStore, options: EmulatorOptions, log: FilteringBoundLogger) -> None:
        self._tokens = tokens
        self._options = options
        self._log = log

    async def login(self, request: Request) -> Response:
        body = await _json_object(request)
        if body is None:
            return auth_error(400, "request body must be a JSON object")
        client_id, client_secret = body.get("client_id"), body.get("client_secret")
        if not _non_empty(client_id) or not _non_empty(client_secret):
            return auth_error(400, "client_id and client_secret are required")
        if not self._credentials_match(client_id, client_secret):
            self._log.info("login_rejected", client_id=client_id)
            return auth_error(401, "invalid client credentials")
        self._log.info("login", client_id=client_id)
        return JSONResponse(self._tokens.issue().as_json())

    async def refresh_token(self, request: Request) -> Response:
        """``/refresh-token`` (A-REF2): Bearer access token (expired is fine) and ``Client-Id`` required."""
        token = bearer_token(request)
        if token is None:
            return auth_error(401, "missing Authorization: Bearer access token")
        if not self._tokens.is_known(token):
            return auth_error(401, "access token not recognised")
        client_id = request.headers.get("client-id", "")
        if not client_id:
            return auth_error(400, "Client-Id header is required")
        if self._options.client_id is not None and not _same(client_id, self._options.client_id):
            return auth_error(401, "Client-Id does not match")
        return await self._refresh(request)

    async def refresh_legacy(self, request: Request) -> Response:
        """``/refresh`` (A-REF, deprecated): the refresh token in the body is the only credential."""
        return await self._refresh(request)

    async def _refresh(self, request: Request) -> Response:
        body = await _json_object(request)
        if body is None:
            return auth_error(400, "request body must be a JSON object")
        refresh_token = body.get("refresh_token")
        if not _non_empty(refresh_token):
            return auth_error(400, "refresh_token is required")
        grant = self._tokens.refresh(refresh_token)
        if grant is None:
            return auth_error(401, "refresh token is invalid or expired")
        self._log.info("token_refreshed")
        return JSONResponse(grant.as_json())

    def _credentials_match(self, client_id: str, client_secret: str) -> bool:
        expected_id, expected_secret = self._options.client_id, self._options.client_secret
        id_ok = expected_id is None or _same(client_id, expected_id)
        secret_ok = expected_secret is None or _same(client_secret, expected_secret)
        return id_ok and secret_ok


async def _json_object(request: Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _non_empty(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value)


def _same(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode(), expected.encode())
