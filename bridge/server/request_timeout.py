"""uvicorn's httptools HTTP protocol with one addition: a bound on reading each request.

Why: uvicorn times out only an idle keep-alive connection *between* requests. A client that
opens a connection and then sends a request slowly, or half of one (a slowloris), holds the
connection and its memory for as long as it likes: 300 half-open upgrades lingered for 40 s and
more. Here each request, headers and body, must arrive within ``timeout_s`` of its first
byte (or of the connection, for the first); otherwise the connection is closed. A WebSocket
upgrade hands the connection to the WebSocket protocol at its headers, so the bound ends
there: a call's socket has its own limits (``bridge/live/limits.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: Seconds from a connection (or a request's first byte) to the whole request read.
DEFAULT_REQUEST_TIMEOUT_S = 10.0


class RequestTimeoutProtocol(HttpToolsProtocol):
    timeout_s = DEFAULT_REQUEST_TIMEOUT_S
    #: Told of each connection closed because its request did not arrive in time (a counter).
    on_timeout: Callable[[], None] = staticmethod(lambda: None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading: asyncio.TimerHandle | None = None

    @classmethod
    def with_timeout(cls, seconds: float, on_timeout: Callable[[], None]) -> type[RequestTimeoutProtocol]:
        """This protocol with its own bound and counter (uvicorn takes a class, not an instance)."""
        return type("RequestTimeoutProtocol", (cls,), {"timeout_s": seconds, "on_timeout": staticmethod(on_timeout)})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._reading is None:
            self._reading = self.loop.call_later(self.timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None

    def _too_slow(self) -> None:
        self._reading = None
        if not self.transport.is_closing():
            self.on_timeout()
            self.transport.close()
