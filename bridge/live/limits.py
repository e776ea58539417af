"""Time limits of one telephony socket: no ``start`` within ``start_timeout_s``, no media for
``media_idle_s``, or longer than ``max_call_s``.

Twilio sends media continuously while a call is up (silence included), so a stream with no
media for a while is a call whose end never reached us; a stream that runs for hours is a
stuck or abusive one. Either way the bridge ends the call normally: the socket is closed and
the Eka session is ended once, with ``end_reason`` ``idle_timeout`` or ``max_duration``.
"""

from __future__ import annotations

import asyncio

from starlette.types import Message
from starlette.websockets import WebSocket

IDLE_TIMEOUT = "idle_timeout"
MAX_DURATION = "max_duration"
NO_START = "no_start"  # a socket that never said which call it carries holds a slot for nothing
#: The message type ``StreamLimits.receive`` returns when a limit is reached.
LIMIT_REACHED = "bridge.limit_reached"


class StreamLimits:
    """One timer per socket, re-armed only when it fires: the per-message path pays nothing
    (``media_seen`` stores a float). When a limit falls due the timer cancels the pending
    ``receive``, which then returns ``{"type": LIMIT_REACHED, "reason": …}``."""

    def __init__(self, *, media_idle_s: float, max_call_s: float, start_timeout_s: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self.media_idle_s = media_idle_s
        self.ends_at = now + max_call_s
        self.start_by = None if start_timeout_s is None else now + start_timeout_s
        self.last_media_at = now
        self.reached: str | None = None
        self._task = asyncio.current_task()
        #: True while the handler waits in ``receive``: it is not in the middle of a message.
        self.receiving = False
        self._timer: asyncio.TimerHandle | None = self._loop.call_at(self.next_limit()[0], self._check)

    def media_seen(self) -> None:
        self.last_media_at = self._loop.time()

    def started(self) -> None:
        """The stream's ``start`` came: the start limit no longer applies."""
        self.start_by = None

    def next_limit(self) -> tuple[float, str]:
        """When the next limit falls due (loop time), and which."""
        idle_at = self.last_media_at + self.media_idle_s
        due = (idle_at, IDLE_TIMEOUT) if idle_at < self.ends_at else (self.ends_at, MAX_DURATION)
        if self.start_by is not None and self.start_by < due[0]:
            return self.start_by, NO_START
        return due

    def _check(self) -> None:
        at, reason = self.next_limit()
        if self._loop.time() < at:
            self._timer = self._loop.call_at(at, self._check)
            return
        self._timer = None
        self.reached = reason
        if self.receiving and self._task is not None:
            self._task.cancel()

    async def receive(self, websocket: WebSocket) -> Message:
        """The next ASGI message, or ``{"type": LIMIT_REACHED, "reason": …}`` once a limit is due."""
        if self.reached:
            return {"type": LIMIT_REACHED, "reason": self.reached}
        self.receiving = True
        try:
            return await websocket.receive()
        except asyncio.CancelledError:
            reached = self._reached()  # set by the timer while this waited
            if reached and self._task is not None and self._task.uncancel() == 0:
                return {"type": LIMIT_REACHED, "reason": reached}
            raise
        finally:
            self.receiving = False

    def _reached(self) -> str | None:
        return self.reached

    def close(self) -> None:
        """Stop the timer (the socket is done); must run before the call is finalized."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.receiving = False
