"""Retrying one HTTP exchange with exponential backoff and full jitter inside a time budget."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from bridge.errors import EkaError as EkaError

#: Statuses worth another try: the server is overloaded or briefly broken.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


class Backoff:
    """Exponential backoff with full jitter (AWS style), capped per attempt."""

    def __init__(self, base_s: float = 0.25, cap_s: float = 8.0, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.rng = rng or random.Random()

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(self.base_s / 2, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


async def with_retries(
    op: str,
    attempt: Callable[[], Awaitable[httpx.Response]],
    *,
    budget_s: float,
    backoff: Backoff,
    on_retry: Callable[[str, int, str, float], None],
    observe: Callable[[str, str], None] | None = None,
) -> httpx.Response:
    """Run ``attempt`` until it gives a non-transient response or the budget is spent.

    Connect errors, timeouts and 429/5xx are transient. Any other response,
    success or not, is returned for the caller to interpret. ``observe(op, outcome)`` hears of
    every attempt (outcome: the HTTP status, or the transport error's class name), for metrics.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s
    tries = 0
    while True:
        tries += 1
        status: int | None = None
        wait_hint: float | None = None
        try:
            response = await attempt()
        except httpx.TransportError as exc:  # connect errors, timeouts, broken connections
            reason = type(exc).__name__
            if observe is not None:
                observe(op, reason)
        else:
            if observe is not None:
                observe(op, str(response.status_code))
            if response.status_code not in TRANSIENT_STATUSES:
                return response
            status = response.status_code
            reason = f"http_{status}"
            wait_hint = retry_after_seconds(response)
        delay = backoff.delay(tries)
        if wait_hint is not None:
            delay = max(delay, wait_hint)
        if loop.time() + delay > deadline:
            raise EkaError(op, reason, status, tries)
        on_retry(op, tries, reason, delay)
        await asyncio.sleep(delay)
