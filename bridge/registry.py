"""The calls this process is carrying, and the summaries of those it has finished."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from bridge.call import Call


class CallRegistry:
    def __init__(self, keep_summaries: int = 200) -> None:
        self.active: set[Call] = set()
        self.sockets: dict[Call, Any] = {}  # the telephony socket feeding each active call
        self.summaries: deque[dict[str, Any]] = deque(maxlen=keep_summaries)
        self.finished_count = 0
        self._changed = asyncio.Condition()

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
