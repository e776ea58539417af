"""A change signal, so waiters wake on state changes instead of polling with sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Changes:
    """Wakes every waiter on each ``notify()``; waiters re-check their own predicate.

    Like ``asyncio.Condition.notify_all`` but callable from plain (non-async) code such
    as ``loop.call_later`` callbacks, which is where session completion happens.
    Single event loop only: the emulator and its waiters share the loop that serves it.
    """

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Return once ``predicate()`` is true; raise TimeoutError after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while not predicate():
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.add(waiter)
                try:
                    await waiter
                finally:
                    self._waiters.discard(waiter)
