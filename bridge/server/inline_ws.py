"""uvicorn's WebSocket protocol with one addition: text messages handed to the app as they are
parsed, when the app asks for it, instead of through the ASGI receive queue.

Why: a call sends 50 media messages a second per track, and through ASGI each one costs a
queue put and get, a task wake-up, a pause and resume of the transport's reading, and
Starlette's receive checks, before the bridge does anything with it. Handled as it is parsed,
a media message costs its parse and the bridge's own work (see docs/sizing.md for what
this bought).

Everything else stays ASGI: the handshake, accept or denial, close, disconnect, and any
message the handler declines. An app sees the extension in ``scope["extensions"]`` and
registers a handler after accepting; under another server the extension is simply absent
and the app reads ``receive`` as usual.

The handler is called only while the ASGI queue is empty, so a message never overtakes
one the app has not read yet; it returns True if it consumed the message, False to have it
queued as usual. It must not block; an exception it raises is logged and the message queued.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.datastructures import Headers

#: The key in an ASGI WebSocket scope's ``extensions``; its value holds ``register(handler)``.
EXTENSION = "eka_bridge.inline_text"

InlineHandler = Callable[[str], bool]

_log = logging.getLogger("bridge.server.inline_ws")


class Inbox:
    """uvicorn's ASGI receive queue for one socket, slimmed: the protocol puts, the one app task
    gets. An ``asyncio.Queue`` holds three deques and an ``asyncio.Event`` (a fourth) from the
    start, about 3 KiB a socket, for a queue that media messages never enter."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class Flag:
    """``asyncio.Event``'s set, clear and wait, with its waiters made only when someone waits
    (uvicorn's ``writable``: set for the whole life of a socket unless its writes back up)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if not self._set:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return True


class InlineTextProtocol(WebSocketsSansIOProtocol):
    """Pass to ``uvicorn.Config(ws=InlineTextProtocol)``."""

    _inline: InlineHandler | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Hundreds of sockets at once: the same queue and flag without asyncio's eager deques.
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # set only for a valid upgrade request
        if scope is not None:
            scope["extensions"][EXTENSION] = {"register": self._register}

    def _register(self, handler: InlineHandler | None) -> None:
        self._inline = handler

    async def send(self, message: Any) -> None:
        """As uvicorn's, except that the handshake's request and response are dropped once it
        is answered: uvicorn reads them only to answer it, and the scope holds the headers."""
        await super().send(message)
        if self.handshake_complete and hasattr(self, "response"):
            self.request.headers = Headers()  # websockets' parser still holds the request itself
            del self.request, self.response

    def data_received(self, data: bytes) -> None:
        """As uvicorn's, except that the messages parsed before a protocol error (a message over
        the size cap, say) still reach the app, ahead of the disconnect: a ``start`` that came in
        the same read as an oversized message is not silently lost."""
        self.conn.receive_data(data)
        if self.conn.parser_exc is not None and self.handshake_complete:
            self.handle_events()
            self.handle_parser_exception()
            return
        if self.conn.parser_exc is not None:
            self.handle_parser_exception()
            return
        if self.conn.handshake_exc is not None and not self.handshake_initiated:
            self.handle_handshake_exception()
            return
        self.handle_events()

    def send_receive_event_to_app(self) -> None:
        handler = self._inline
        if handler is not None and self.curr_msg_data_type == "text" and not self.close_sent and self.queue.empty():
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            try:
                consumed = handler(data.decode())
            except UnicodeDecodeError:
                consumed = False  # the standard path closes with 1007
            except Exception:
                _log.exception("inline WebSocket handler failed; message queued instead")
                consumed = False
            if consumed:
                self.frames = []
                return
        super().send_receive_event_to_app()
