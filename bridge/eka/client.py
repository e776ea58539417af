"""The EkaScribe session API: Create, End and Get Session, with retries and token renewal."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import httpx

from bridge.eka.auth import TokenProvider
from bridge.eka.retry import Backoff, EkaError, with_retries
from bridge.logging import Logger

SESSIONS_PATH = "/voice/v1/sessions"
#: A session not ended by then expires (P-CS, OSS ``SESSION_DURATION_SECONDS``): assumed when
#: Create Session's ``expires_at`` is missing or unreadable.
DEFAULT_SESSION_TTL_S = 3600.0


@dataclass(frozen=True)
class CreatedSession:
    session_id: str
    upload_url: str
    expires_at: float  # Unix seconds; an End after this is refused (410) and nothing is processed


class EndStatus(StrEnum):
    """How a session's End went (stored as these strings in the ledger and the summaries)."""

    ENDED = "ended"  # 202: processing started
    ALREADY_ENDED = "already_ended"  # 400 on a repeat: an earlier attempt (ours) landed
    GONE = "gone"  # 404 or 410: nothing more to do (an expired session processes nothing)
    END_PENDING = "end_pending"  # out of retry budget: the sweeper tries again

    @property
    def settled(self) -> bool:
        return self is not EndStatus.END_PENDING


@dataclass(frozen=True)
class EndResult:
    status: int
    settled: EndStatus


def new_session_id() -> str:
    """Our own id (Eka accepts 16–32 chars), so a retried Create cannot make a second session."""
    return "ses_" + secrets.token_hex(12)


class EkaClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        tokens: TokenProvider,
        *,
        base_url: str,
        create_budget_s: float,
        end_budget_s: float,
        backoff: Backoff,
        log: Logger,
        observe: Callable[[str, str], None] | None = None,
    ) -> None:
        self._http = http
        self._observe = observe  # (op, status or error) per attempt: the Eka request metrics
        self._tokens = tokens
        self._base_url = base_url
        self._create_budget_s = create_budget_s
        self._end_budget_s = end_budget_s
        self._backoff = backoff
        self._log = log

    async def create_session(self, body: dict[str, Any], *, log: Logger | None = None) -> CreatedSession:
        """Create a stream session. A 409 on a retry means our earlier attempt did land: fetch it."""
        body = {**body, "session_id": body.get("session_id") or new_session_id()}
        session_id = body["session_id"]
        asked_at = time.time()  # the fallback expiry counts from before the server could have created it
        response, tries = await self._call("create", "POST", SESSIONS_PATH, self._create_budget_s, log, json=body)
        if response.status_code == 409 and tries > 1:
            response, _ = await self._call("get", "GET", f"{SESSIONS_PATH}/{session_id}", self._create_budget_s, log)
        if response.status_code not in (200, 201, 202):
            raise EkaError("create", _error_reason(response), response.status_code, tries)
        try:
            data = response.json()
            expires_at = parse_expires_at(data.get("expires_at"))
            return CreatedSession(
                str(data["session_id"]),
                str(data["upload_url"]),
                expires_at if expires_at is not None else asked_at + DEFAULT_SESSION_TTL_S,
            )
        except (ValueError, KeyError, TypeError):
            raise EkaError("create", "malformed response (no session_id/upload_url)") from None

    async def end_session(self, session_id: str, *, log: Logger | None = None) -> EndResult:
        """End (finalize) a stream session; ``audio_files_sent`` is 0 for streams, as Eka's SDK sends."""
        response, tries = await self._call(
            "end",
            "POST",
            f"{SESSIONS_PATH}/{session_id}/end",
            self._end_budget_s,
            log,
            json={"audio_files_sent": 0},
        )
        if response.status_code in (200, 202):
            return EndResult(response.status_code, EndStatus.ENDED)
        if response.status_code == 400 and (tries > 1 or _says_already_ended(response)):
            # The documented answer to a repeated End: an earlier attempt (ours) landed.
            return EndResult(400, EndStatus.ALREADY_ENDED)
        if response.status_code in (404, 410):
            return EndResult(response.status_code, EndStatus.GONE)
        raise EkaError("end", _error_reason(response), response.status_code, tries)

    async def get_session(
        self, session_id: str, *, log: Logger | None = None, budget_s: float = 30.0
    ) -> httpx.Response:
        """One Get Session (transient failures retried within ``budget_s``). The server may hold
        it up to ~14 s while processing (spec §6): the client's read timeout must exceed that."""
        response, _ = await self._call("get", "GET", f"{SESSIONS_PATH}/{session_id}", budget_s, log)
        return response

    async def _call(
        self, op: str, method: str, path: str, budget_s: float, log: Logger | None, **kwargs: Any
    ) -> tuple[httpx.Response, int]:
        """One logical request: retried while transient, renewed and retried once on 401."""
        log = log or self._log
        tries = 0
        url = self._base_url + path
        for renewed in (False, True):
            token = await self._tokens.get()

            async def attempt(token: str = token) -> httpx.Response:
                nonlocal tries
                tries += 1
                return await self._http.request(method, url, headers={"Authorization": f"Bearer {token}"}, **kwargs)

            response = await with_retries(
                op,
                attempt,
                budget_s=budget_s,
                backoff=self._backoff,
                on_retry=lambda o, n, reason, delay: log.warning(
                    "eka_retry", op=o, attempt=n, reason=reason, delay_s=round(delay, 3)
                ),
                observe=self._observe,
            )
            if response.status_code != 401 or renewed:
                return response, tries
            log.warning("eka_unauthorized", op=op, action="renewing token and trying once more")
            await self._tokens.invalidate(token)
        raise AssertionError("unreachable")


def parse_expires_at(value: Any) -> float | None:
    """``expires_at`` as Unix seconds: Eka's server sends a number (seconds), its docs an ISO 8601
    string. ``None`` when absent or unreadable (the caller assumes creation + 1 h)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                return None
            if moment.tzinfo is None:  # no zone given: Eka's examples are all UTC
                moment = moment.replace(tzinfo=UTC)
            seconds = moment.timestamp()
    else:
        return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    if seconds > 1e11:  # milliseconds, not seconds
        seconds /= 1000
    return seconds


def _says_already_ended(response: httpx.Response) -> bool:
    text = response.text[:500].lower()
    return "already" in text or "ended" in text


def _error_reason(response: httpx.Response) -> str:
    """A short reason from Eka's error body (its code, never the whole body)."""
    try:
        error = response.json().get("error")
        code = error.get("code") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        code = None
    return f"http_{response.status_code}" + (f" {str(code)[:60]}" if code else "")
