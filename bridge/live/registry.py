"""The calls this process is carrying, and the summaries of those it has finished."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from bridge.live.call import Call


class CallRegistry:
    """Active calls, the sockets feeding them, and calls waiting out a reconnect grace period.

    A call whose provider socket closed without an end signal (Vobiz has none) is *detached*:
    it stays active, its session open, until the same provider call id reconnects (``resume``),
    the grace period runs out, or a hang-up webhook ends it (``end_detached``).
    """

    def __init__(self, keep_summaries: int = 200) -> None:
        self.active: set[Call] = set()
        self.sockets: dict[Call, Any] = {}  # the telephony socket feeding each active call
        self.summaries: deque[dict[str, Any]] = deque(maxlen=keep_summaries)
        self.finished_count = 0
        self._changed = asyncio.Condition()
        self._by_call_id: dict[tuple[str, str], Call] = {}
        self._grace: dict[Call, asyncio.TimerHandle] = {}

    async def add(self, call: Call, socket: Any = None) -> None:
        async with self._changed:
            self.active.add(call)
            if socket is not None:
                self.sockets[call] = socket
            self._changed.notify_all()

    async def done(self, call: Call, summary: dict[str, Any]) -> None:
        async with self._changed:
            self.active.discard(call)
            self.sockets.pop(call, None)
            if call.start is not None:
                self._by_call_id.pop((call.provider, call.start.call_id), None)
            timer = self._grace.pop(call, None)
            if timer is not None:
                timer.cancel()
            self.summaries.append({"call_sid": call.start.call_id if call.start else None, **summary})
            self.finished_count += 1
            self._changed.notify_all()

    async def wait_finished(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """Wait until ``count`` calls in all have finished; returns the summaries kept."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: self.finished_count >= count)
        return list(self.summaries)

    async def wait_idle(self, timeout: float) -> None:
        """Wait until no call is active (raises TimeoutError)."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: not self.active)

    async def forget(self, call: Call) -> None:
        """Drop a call that never started (its socket joined another call): no summary."""
        async with self._changed:
            self.active.discard(call)
            self.sockets.pop(call, None)
            self._changed.notify_all()

    def started(self, call: Call) -> None:
        """The call knows its provider call id now: a reconnect can find it."""
        assert call.start is not None
        self._by_call_id[(call.provider, call.start.call_id)] = call

    def find(self, provider: str, call_id: str) -> Call | None:
        return self._by_call_id.get((provider, call_id))

    def detach(self, call: Call, grace_s: float, on_expiry: Callable[[Call], Any]) -> None:
        """The call's socket closed; end the call after ``grace_s`` unless it is resumed."""
        self.sockets.pop(call, None)
        loop = asyncio.get_running_loop()
        self._grace[call] = loop.call_later(grace_s, on_expiry, call)

    def resume(self, call: Call, socket: Any) -> bool:
        """A new socket for a detached call; False if the call is not waiting (ended or attached)."""
        timer = self._grace.pop(call, None)
        if timer is None:
            return False
        timer.cancel()
        self.sockets[call] = socket
        return True

    def take_over(self, call: Call, socket: Any) -> Any:
        """A new socket for a call still attached to an old one (the provider reconnected
        before the old socket's end reached us): the new one feeds it from now on. Returns the
        old socket, or None if the call has none."""
        old = self.sockets.get(call)
        if old is not None:
            self.sockets[call] = socket
        return old

    def owns(self, call: Call, socket: Any) -> bool:
        """Whether ``socket`` still feeds ``call`` (not detached, not taken over)."""
        return self.sockets.get(call) is socket

    def is_detached(self, call: Call) -> bool:
        return call in self._grace

    def take_detached(self, call: Call) -> bool:
        """Claim a detached call for ending now (hang-up); False if it is attached or gone."""
        timer = self._grace.pop(call, None)
        if timer is None:
            return False
        timer.cancel()
        return True
