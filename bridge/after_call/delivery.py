"""Delivers each call's result to the clinic's webhook (``RESULT_WEBHOOK_URL``), signed.

The ledger's ``deliveries`` table is the outbox: a row is created, with its ``delivery_id``,
in the same transaction as the call's last result, so a delivery survives a restart and is
attempted until a 2xx answer (at least once: a receiver de-duplicates on ``delivery_id``), with
exponential backoff and full jitter between attempts, until ``give_up_s`` after it was due.
Redirects are not followed: transcripts go to the configured URL and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from bridge.after_call.ledger import DueDelivery, Ledger
from bridge.after_call.result_poller import call_status
from bridge.eka.retry import Backoff
from bridge.logging import Logger
from bridge.metrics import Metrics
from bridge.signing import sign

SIGNATURE_HEADER = "X-Bridge-Signature"
DELIVERY_ID_HEADER = "X-Bridge-Delivery-Id"
#: One attempt's time limit (connect, send, answer).
ATTEMPT_TIMEOUT_S = 10.0
#: Deliveries attempted at once.
BATCH = 8
#: Longest idle wait between looks at the outbox (new rows wake it sooner).
IDLE_S = 60.0


def iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def payload(job: DueDelivery) -> dict[str, Any]:
    """The JSON delivered for one call: its sessions' results combined in part order."""
    sessions = job.sessions
    transcripts = [s["transcript"] for s in sessions if s["transcript"]]
    templates: list[Any] = []
    for s in sessions:
        templates.extend(json.loads(s["templates"]) if s["templates"] else [])
    ended = job.call.get("finished_at") or max((s["ended_at"] or 0.0 for s in sessions), default=None)
    return {
        "delivery_id": job.delivery_id,
        "call_sid": job.call_sid,
        "provider": job.call.get("provider"),
        "session_ids": [s["session_id"] for s in sessions],
        "status": call_status([s["status"] for s in sessions]),
        "sessions": [{"session_id": s["session_id"], "part": s["part"], "status": s["status"]} for s in sessions],
        "transcript": "\n\n".join(transcripts) if transcripts else None,
        "templates": templates,
        "started_at": iso(job.call.get("started_at")),
        "ended_at": iso(ended),
    }


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class ResultDelivery:
    def __init__(
        self,
        ledger: Ledger,
        http: httpx.AsyncClient,
        *,
        url: str,
        secret: str,
        backoff: Backoff,
        give_up_s: float,
        metrics: Metrics,
        log: Logger,
    ) -> None:
        self.ledger = ledger
        self.http = http
        self.url = url
        self.secret = secret
        self.backoff = backoff
        self.give_up_s = give_up_s
        self.metrics = metrics
        self.log = log
        self._wake = asyncio.Event()
        self.delivered = 0  # deliveries this process saw accepted
        self._changed = asyncio.Condition()

    def wake(self) -> None:
        """A delivery may have become due."""
        self._wake.set()

    async def wait_delivered(self, count: int, timeout: float) -> None:
        """Wait until this process has delivered ``count`` results in all (raises TimeoutError)."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: self.delivered >= count)

    async def run(self) -> None:
        """Attempt what is due; then sleep until the next one is due, or until woken."""
        while True:
            self._wake.clear()
            pause = IDLE_S
            try:
                due = await self.ledger.due_deliveries(time.time(), BATCH)
                for job in due:
                    if job.adopted:
                        self.metrics.adopted.labels("delivery").inc()
                        self.log.info("result_delivery_adopted", call_sid=job.call_sid, delivery_id=job.delivery_id)
                if due:
                    await asyncio.gather(*(self.attempt(job) for job in due))
                    continue
                next_at = await self.ledger.next_delivery_at()
                if next_at is not None:
                    pause = min(IDLE_S, max(0.0, next_at - time.time()))
            except Exception:  # the outbox must outlive a ledger hiccup or a bad row
                self.log.exception("result_delivery_loop_failed")
            try:
                await asyncio.wait_for(self._wake.wait(), pause)
            except TimeoutError:
                pass

    async def attempt(self, job: DueDelivery) -> bool:
        """One POST of one delivery; the ledger records what happened. True when delivered."""
        log = self.log.bind(call_sid=job.call_sid, delivery_id=job.delivery_id, session_id=None)
        body = encode(payload(job))
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body, int(time.time())),
            DELIVERY_ID_HEADER: job.delivery_id,
        }
        attempt = job.attempts + 1
        try:
            response = await self.http.post(self.url, content=body, headers=headers)
            error = None if 200 <= response.status_code < 300 else f"http_{response.status_code}"
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        if error is None:
            await self.ledger.delivery_done(job.delivery_id, delivered=True)
            self.metrics.delivery("delivered")
            log.info("result_delivered", attempt=attempt)
            async with self._changed:
                self.delivered += 1
                self._changed.notify_all()
            return True
        if time.time() - job.created_at >= self.give_up_s:
            await self.ledger.delivery_done(job.delivery_id, delivered=False, error=error)
            self.metrics.delivery("given_up")
            log.error("result_delivery_given_up", attempt=attempt, reason=error)
            return False
        delay = self.backoff.delay(attempt)
        await self.ledger.delivery_retry(job.delivery_id, error, time.time() + delay)
        self.metrics.delivery("retried")
        log.warning("result_delivery_failed", attempt=attempt, reason=error, retry_in_s=round(delay, 3))
        return False
