"""Follows every ended session to its result (Get Session, spec §6), off every call's path.

The ledger queues a session when it is ended (by its call or by the sweeper); this poller
picks up what is queued, at start-up too, so polls that a stopped process left pending
resume. Each session is polled about every ``interval_s`` while Get answers 202 (a long poll
held by the server counts as waiting), until ``deadline_s`` after its End; the outcome is
recorded in the ledger. With Eka's webhook configured, polling is only a slow fallback: a
``v2rx.completed`` notification (``notified``) makes the session's follower fetch at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable

import httpx

from bridge.after_call.ledger import AwaitingResult, Ledger, SessionResult, SessionState
from bridge.eka.client import EkaClient
from bridge.eka.retry import EkaError
from bridge.logging import Logger
from bridge.metrics import Metrics

#: How often the queue is re-read without being woken (sessions the sweeper ended, say).
SCAN_INTERVAL_S = 5.0
#: Get Session requests in flight at once; each may be held ~14 s by the server.
MAX_CONCURRENT_GETS = 20
#: Read timeout for Get Session: above the server's ~14 s long poll.
LONG_POLL_TIMEOUT_S = 30.0
#: Get Session answers that are final without a body to read.
FINAL_WITHOUT_BODY = {404: "not_found", 410: "expired"}
WITH_TRANSCRIPT = ("completed", "partial")


def call_status(statuses: list[str]) -> str:
    """One status for a call from its sessions' (in part order): ``completed`` when all are,
    ``partial`` when some audio was transcribed and some not, else the common failure
    (``failed`` when they differ)."""
    if not statuses:
        return "failed"
    if all(s == "completed" for s in statuses):
        return "completed"
    if any(s in WITH_TRANSCRIPT for s in statuses):
        return "partial"
    return statuses[0] if len(set(statuses)) == 1 else "failed"


def interpret(response: httpx.Response) -> SessionResult | None:
    """A final result from one Get Session answer, or None to keep waiting (202, or an answer
    that says nothing final: an unexpected status, a malformed body)."""
    status = response.status_code
    if status in (404, 410):
        return SessionResult(FINAL_WITHOUT_BODY[status], status, 0, "poll")
    if status not in (200, 206):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    stated = body.get("status")
    if status == 206 or stated == "partial":
        outcome = "partial"
    elif stated == "failed":
        outcome = "failed"
    else:
        outcome = "completed"
    transcript = body.get("transcript")
    templates = body.get("templates")
    return SessionResult(
        outcome,
        status,
        0,
        "poll",
        transcript=transcript if isinstance(transcript, str) else None,
        templates=templates if isinstance(templates, list) else [],
    )


class ResultPoller:
    def __init__(
        self,
        ledger: Ledger,
        eka: EkaClient,
        *,
        interval_s: float,
        deadline_s: float,
        fallback_interval_s: float | None,
        metrics: Metrics,
        log: Logger,
        on_recorded: Callable[[], None] = lambda: None,
        scan_interval_s: float = SCAN_INTERVAL_S,
    ) -> None:
        self.ledger = ledger
        self.eka = eka
        self.interval_s = interval_s
        self.deadline_s = deadline_s
        #: Set when Eka's webhook is configured: the wait before (and between) fallback polls.
        self.fallback_interval_s = fallback_interval_s
        self.metrics = metrics
        self.log = log
        self.on_recorded = on_recorded
        self.scan_interval_s = scan_interval_s
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_GETS)
        self._wake = asyncio.Event()
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._nudges: dict[str, asyncio.Event] = {}
        self.recorded = 0  # results recorded by this process
        self._changed = asyncio.Condition()

    async def run(self) -> None:
        """Follow whatever the ledger has queued, now and whenever woken or every scan interval."""
        try:
            while True:
                self._wake.clear()
                try:
                    await self._scan()
                except Exception:  # the poller must outlive a ledger hiccup
                    self.log.exception("result_scan_failed")
                try:
                    await asyncio.wait_for(self._wake.wait(), self.scan_interval_s)
                except TimeoutError:
                    pass
        finally:
            followers = list(self._followers.values())
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)

    def wake(self) -> None:
        """Something was ended: look at the queue now."""
        self._wake.set()

    async def notified(self, session_id: str) -> bool:
        """Eka says ``session_id`` is processed: fetch it now. False if it is not a session
        of ours waiting for a result (nothing is fetched then)."""
        if session_id not in self._followers:
            row = await self.ledger.session(session_id)
            if row is None or row["state"] != SessionState.ENDED or await self.ledger.result(session_id) is not None:
                return False
            self.wake()
        self._nudges.setdefault(session_id, asyncio.Event()).set()
        return True

    @property
    def following(self) -> int:
        return len(self._followers)

    async def wait_recorded(self, count: int, timeout: float) -> None:
        """Wait until this process has recorded ``count`` results in all (raises TimeoutError)."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: self.recorded >= count)

    async def _scan(self) -> None:
        for row in await self.ledger.awaiting_results():
            if row.adopted:
                self.metrics.adopted.labels("result").inc()
                self.log.info("result_poll_adopted", call_sid=row.call_sid, session_id=row.session_id)
            if row.session_id not in self._followers:
                task = asyncio.create_task(self._follow(row), name=f"result-{row.session_id}")
                self._followers[row.session_id] = task
                task.add_done_callback(functools.partial(self._forgotten, row.session_id))

    def _forgotten(self, session_id: str, _task: asyncio.Task[None]) -> None:
        self._forget(session_id)

    def _forget(self, session_id: str) -> None:
        self._followers.pop(session_id, None)
        self._nudges.pop(session_id, None)

    async def _follow(self, row: AwaitingResult) -> None:
        """Poll one session until it has a final answer or its deadline passes (at least one Get,
        so a session whose deadline passed while the bridge was down is still asked once)."""
        log = self.log.bind(call_sid=row.call_sid, session_id=row.session_id)
        nudge = self._nudges.setdefault(row.session_id, asyncio.Event())
        deadline = row.ended_at + self.deadline_s
        interval = self.fallback_interval_s or self.interval_s
        loop = asyncio.get_running_loop()
        polls = 0
        try:
            if self.fallback_interval_s is not None:  # Eka will say when: wait for it (or the fallback)
                await self._sleep(min(interval, deadline - time.time()), nudge)
            while True:
                via = "webhook" if nudge.is_set() else "poll"
                if nudge.is_set():
                    interval = self.interval_s  # told it is ready: if not quite, look again soon
                nudge.clear()
                started = loop.time()
                async with self._slots:
                    result = await self._get(row.session_id, log)
                polls += 1
                if result is None and time.time() >= deadline:
                    result = SessionResult("timed_out", None, 0, via)
                if result is not None:
                    await self._record(row, dataclasses.replace(result, polls=polls, via=via), log)
                    return
                wait = min(started + interval - loop.time(), deadline - time.time())
                await self._sleep(wait, nudge)
        except Exception:
            log.exception("result_poll_crashed")  # the next scan picks the session up again

    async def _get(self, session_id: str, log: Logger) -> SessionResult | None:
        try:
            response = await self.eka.get_session(session_id, log=log)
        except (EkaError, httpx.HTTPError) as exc:
            log.warning("result_poll_failed", reason=getattr(exc, "reason", type(exc).__name__))
            return None
        result = interpret(response)
        if result is None and response.status_code != 202:
            log.warning("result_poll_unexpected", status=response.status_code)
        return result

    async def _record(self, row: AwaitingResult, result: SessionResult, log: Logger) -> None:
        delivery_id = await self.ledger.record_result(row.session_id, result)
        self.metrics.result(result.status)
        log.info(
            "eka_result",
            status=result.status,
            http_status=result.http_status,
            polls=result.polls,
            via=result.via,
            waited_s=round(time.time() - row.ended_at, 3),
            delivery_id=delivery_id,
        )
        if delivery_id is not None:
            self.on_recorded()
        async with self._changed:
            self.recorded += 1
            self._changed.notify_all()

    @staticmethod
    async def _sleep(seconds: float, nudge: asyncio.Event) -> None:
        """Wait ``seconds``, or less if Eka's webhook says the result is ready."""
        if seconds <= 0 or nudge.is_set():
            return
        try:
            await asyncio.wait_for(nudge.wait(), seconds)
        except TimeoutError:
            pass
