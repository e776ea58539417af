"""A durable record of calls and their Eka sessions, so no session is left un-ended.

SQLite in WAL mode via the standard library. Every statement runs on one
dedicated worker thread, so the event loop (and the audio path) never waits on
the disk; callers ``await`` the write only where durability matters (a session
is recorded before audio is streamed into it).

A session row moves ``open`` → ``ended`` (End answered, or Eka says it is gone)
or ``open`` → ``end_pending`` (End's retry budget ran out; the sweeper retries)
→ ``ended``. Rows are stamped with the ``boot_id`` of the process that opened
them, so after a crash the next process can tell its own sessions from orphans.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id   TEXT PRIMARY KEY,
    call_sid     TEXT NOT NULL,
    provider     TEXT NOT NULL,
    part         INTEGER NOT NULL,
    boot_id      TEXT NOT NULL,
    state        TEXT NOT NULL,          -- open | end_pending | ended
    created_at   REAL NOT NULL,
    ended_at     REAL,
    end_status   TEXT,
    end_attempts INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX IF NOT EXISTS sessions_state ON sessions (state);
CREATE TABLE IF NOT EXISTS calls (
    call_sid    TEXT PRIMARY KEY,
    provider    TEXT NOT NULL,
    boot_id     TEXT NOT NULL,
    started_at  REAL NOT NULL,
    finished_at REAL,
    summary     TEXT
);
"""


@dataclass(frozen=True)
class SessionRow:
    session_id: str
    call_sid: str
    provider: str
    part: int
    boot_id: str
    state: str
    created_at: float
    end_attempts: int


class Ledger:
    def __init__(self, path: str, boot_id: str) -> None:
        self.path = path
        self.boot_id = boot_id
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    # -- writes -------------------------------------------------------------------------

    async def call_started(self, call_sid: str, provider: str) -> None:
        await self._run(
            self._execute,
            "INSERT OR IGNORE INTO calls (call_sid, provider, boot_id, started_at) VALUES (?, ?, ?, ?)",
            (call_sid, provider, self.boot_id, time.time()),
        )

    async def call_finished(self, call_sid: str, summary: dict[str, Any]) -> None:
        await self._run(
            self._execute,
            "UPDATE calls SET finished_at = ?, summary = ? WHERE call_sid = ?",
            (time.time(), json.dumps(summary, default=str), call_sid),
        )

    async def session_opened(self, session_id: str, call_sid: str, provider: str, part: int) -> None:
        await self._run(
            self._execute,
            "INSERT OR REPLACE INTO sessions (session_id, call_sid, provider, part, boot_id, state, created_at)"
            " VALUES (?, ?, ?, ?, ?, 'open', ?)",
            (session_id, call_sid, provider, part, self.boot_id, time.time()),
        )

    async def session_ended(self, session_id: str, status: str) -> None:
        await self._run(
            self._execute,
            "UPDATE sessions SET state = 'ended', end_status = ?, ended_at = ?,"
            " end_attempts = end_attempts + 1 WHERE session_id = ?",
            (status, time.time(), session_id),
        )

    async def session_end_pending(self, session_id: str, error: str) -> None:
        await self._run(
            self._execute,
            "UPDATE sessions SET state = 'end_pending', last_error = ?, end_attempts = end_attempts + 1"
            " WHERE session_id = ?",
            (error[:200], session_id),
        )

    # -- reads --------------------------------------------------------------------------

    async def unsettled(self, *, orphaned_before: float) -> list[SessionRow]:
        """Sessions that need an End: pending ones, and open ones a previous process left behind."""
        return await self._run(
            self._query,
            "SELECT session_id, call_sid, provider, part, boot_id, state, created_at, end_attempts"
            " FROM sessions WHERE state = 'end_pending'"
            " OR (state = 'open' AND boot_id != ? AND created_at < ?) ORDER BY created_at",
            (self.boot_id, orphaned_before),
        )

    async def session(self, session_id: str) -> dict[str, Any] | None:
        rows = await self._run(self._rows, "SELECT * FROM sessions WHERE session_id = ?", (session_id,))
        return rows[0] if rows else None

    async def sessions_of(self, call_sid: str) -> list[dict[str, Any]]:
        return await self._run(
            self._rows, "SELECT * FROM sessions WHERE call_sid = ? ORDER BY part", (call_sid,)
        )

    # -- on the worker thread -----------------------------------------------------------

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open(self) -> None:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA)
        self._db = db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _execute(self, sql: str, params: tuple[Any, ...]) -> None:
        assert self._db is not None, "ledger not open"
        self._db.execute(sql, params)

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[SessionRow]:
        assert self._db is not None, "ledger not open"
        return [SessionRow(*row) for row in self._db.execute(sql, params).fetchall()]

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        assert self._db is not None, "ledger not open"
        cursor = self._db.execute(sql, params)
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]
