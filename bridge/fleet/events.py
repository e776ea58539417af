"""Events for the process that owns a call, wherever they land: a hang-up webhook, Eka's
``v2rx.completed``. Published with ``pg_notify`` on one channel and heard by every process
of the fleet through ``LISTEN``: no second system to run.

On SQLite the ledger has one process, so there is nobody else to tell: publishing does nothing.
NOTIFY is not durable: an event published while a process's listening connection is down is
lost to it; the fallbacks hold then (a hang-up: the socket's end or its idle limit; a result:
the fallback poll).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from bridge.logging import Logger

CHANNEL = "bridge_fleet"
#: Between attempts to (re)connect the listening connection.
RECONNECT_S = 1.0

Handler = Callable[[dict[str, Any]], Awaitable[None]]


class FleetEvents:
    def __init__(self, database_url: str | None, boot_id: str, *, log: Logger) -> None:
        self.database_url = database_url or ""
        self.boot_id = boot_id
        self.log = log
        self.handlers: dict[str, Handler] = {}
        self._publisher: Any = None
        self._lock = asyncio.Lock()
        self._listening = asyncio.Event()
        self.received = 0

    @property
    def enabled(self) -> bool:
        return bool(self.database_url)

    def on(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    async def wait_listening(self, timeout: float) -> None:
        await asyncio.wait_for(self._listening.wait(), timeout)

    async def publish(self, kind: str, **fields: Any) -> None:
        """Tell every other process (each checks whether the event is its own to act on)."""
        if not self.enabled:
            return
        import psycopg

        payload = json.dumps({"kind": kind, "from": self.boot_id, **fields})
        async with self._lock:
            for attempt in (1, 2):  # a connection lost since the last event is made again, once
                try:
                    if self._publisher is None or self._publisher.closed:
                        self._publisher = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
                    await self._publisher.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                    return
                except psycopg.OperationalError:
                    self._publisher = None
                    if attempt == 2:
                        raise

    async def run(self) -> None:
        """Listen for the fleet's events for the life of the process, reconnecting as needed."""
        if not self.enabled:
            self._listening.set()
            return
        import psycopg

        try:
            while True:
                try:
                    async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
                        await conn.execute(f"LISTEN {CHANNEL}")
                        self._listening.set()
                        self.log.info("fleet_events_listening", channel=CHANNEL)
                        async for note in conn.notifies():
                            await self._dispatch(note.payload)
                except psycopg.OperationalError as exc:
                    self._listening.clear()
                    self.log.warning("fleet_listen_lost", reason=type(exc).__name__)
                await asyncio.sleep(RECONNECT_S)
        finally:
            if self._publisher is not None:
                await self._publisher.close()

    async def _dispatch(self, payload: str) -> None:
        try:
            event = json.loads(payload)
            if not isinstance(event, dict) or event.get("from") == self.boot_id:
                return
            handler = self.handlers.get(str(event.get("kind")))
            if handler is None:
                return
            self.received += 1
            await handler(event)
        except Exception:  # one bad event must not stop the listener
            self.log.exception("fleet_event_failed")
