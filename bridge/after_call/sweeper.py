"""Ends the sessions no live call will end: orphans of a dead process (its lease expired), and
Ends that ran out of retry budget. Runs for the life of the process, off every call's path;
in a fleet, each orphan is claimed by exactly one process (``Ledger.claim_unsettled``)."""

from __future__ import annotations

import asyncio

from bridge.after_call.ledger import Ledger
from bridge.eka.client import EkaClient
from bridge.eka.retry import EkaError
from bridge.logging import Logger
from bridge.metrics import Metrics


class Sweeper:
    def __init__(
        self,
        ledger: Ledger,
        eka: EkaClient,
        *,
        grace_s: float,
        settle_s: float,
        interval_s: float,
        metrics: Metrics,
        log: Logger,
    ) -> None:
        self.ledger = ledger
        self.eka = eka
        self.grace_s = grace_s
        #: A dead process's sockets died with it and the server flushed them without a signal:
        #: its sessions are ended only this long after its lease expired.
        self.settle_s = settle_s
        self.interval_s = interval_s
        self.metrics = metrics
        self.log = log
        self.settled = 0
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """First sweep after ``grace_s``, then every ``interval_s`` or when woken (a member of
        the fleet was seen to die)."""
        await self._pause(self.grace_s)
        while True:
            try:
                await self.sweep_once()
            except Exception:  # the sweeper must outlive any one bad row or ledger hiccup
                self.log.exception("sweep_failed")
            await self._pause(await self._next_pause())

    def wake(self) -> None:
        self._wake.set()

    async def sweep_once(self) -> int:
        """End every unsettled session once; returns how many settled."""
        rows = await self.ledger.claim_unsettled(settle_s=self.settle_s)
        settled = 0
        for row in rows:
            if row.boot_id != self.ledger.boot_id:
                self.metrics.adopted.labels("session").inc()
            log = self.log.bind(call_sid=row.call_sid, session_id=row.session_id, stream_sid=None)
            try:
                result = await self.eka.end_session(row.session_id, log=log)
            except EkaError as exc:
                await self.ledger.session_end_pending(row.session_id, exc.reason)
                log.warning("sweep_end_failed", reason=exc.reason, attempts=row.end_attempts + 1)
                continue
            await self.ledger.session_ended(row.session_id, result.settled)
            settled += 1
            log.info(
                "sweep_session_ended", was=row.state, status=result.settled, orphan=row.boot_id != self.ledger.boot_id
            )
        self.settled += settled
        self.metrics.ends_pending.set(await self.ledger.unsettled_count())
        return settled

    async def _next_pause(self) -> float:
        """The interval, or less when a dead process's session settles sooner."""
        try:
            due = await self.ledger.next_orphan_in(settle_s=self.settle_s)
        except Exception:
            self.log.exception("sweep_failed")
            return self.interval_s
        return self.interval_s if due is None else min(self.interval_s, due + 0.05)

    async def _pause(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass
