"""This process's lease in the fleet, renewed for as long as it runs.

A process whose lease has expired is dead to the fleet: the others end its sessions and take
over its result polls and deliveries (``Ledger.claim_unsettled`` and friends). Seeing a member
go is also what wakes those workers, so a dead process's work moves within seconds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bridge.after_call.ledger import Ledger
from bridge.logging import Logger
from bridge.metrics import Metrics


class Membership:
    def __init__(
        self, ledger: Ledger, *, metrics: Metrics, log: Logger, on_member_lost: Callable[[], None] = lambda: None
    ) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self.log = log
        self.on_member_lost = on_member_lost
        #: Renewed three times per lease: two renewals may fail before the lease runs out.
        self.interval_s = ledger.lease_ttl_s / 3
        self.members: set[str] = {ledger.boot_id}

    async def run(self) -> None:
        while True:
            await self.renew_once()
            await asyncio.sleep(self.interval_s)

    async def renew_once(self) -> None:
        try:
            live = await self.ledger.renew_lease()
        except Exception:  # the database is away: claims stop by themselves once the lease lapses
            self.log.exception("lease_renewal_failed")
            return
        lost = self.members - live
        joined = live - self.members - {self.ledger.boot_id}
        self.members = live
        self.metrics.fleet_members.set(len(live))
        for boot_id in sorted(joined):
            self.log.info("fleet_member_joined", member=boot_id, members=len(live))
        for boot_id in sorted(lost):
            self.log.warning("fleet_member_lost", member=boot_id, members=len(live))
        if lost:
            self.on_member_lost()
