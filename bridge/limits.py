"""Time limits of one telephony socket: no media for ``media_idle_s``, or longer than ``max_call_s``.

Twilio sends media continuously while a call is up (silence included), so a stream with no
media for a while is a call whose end never reached us; a stream that runs for hours is a
stuck or abusive one. Either way the bridge ends the call normally: the socket is closed and
the Eka session is ended once, with ``end_reason`` ``idle_timeout`` or ``max_duration``.
"""

from __future__ import annotations

import asyncio
from typing import Any

IDLE_TIMEOUT = "idle_timeout"
MAX_DURATION = "max_duration"
#: The message type ``StreamLimits.receive`` returns when a limit is reached.
LIMIT_REACHED = "bridge.limit_reached"


class StreamLimits:
    def __init__(self, *, media_idle_s: float, max_call_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self.media_idle_s = media_idle_s
        self.ends_at = now + max_call_s
        self.last_media_at = now

    def media_seen(self) -> None:
        self.last_media_at = self._loop.time()

    def next_limit(self) -> tuple[float, str]:
        """When the next limit falls due (loop time), and which."""
        idle_at = self.last_media_at + self.media_idle_s
        return (idle_at, IDLE_TIMEOUT) if idle_at < self.ends_at else (self.ends_at, MAX_DURATION)

    async def receive(self, websocket: Any) -> dict[str, Any]:
        """The next ASGI message, or ``{"type": LIMIT_REACHED, "reason": …}`` when a limit falls due."""
        at, reason = self.next_limit()
        try:
            async with asyncio.timeout_at(at):
                return await websocket.receive()
        except TimeoutError:
            return {"type": LIMIT_REACHED, "reason": reason}
