"""A durable record of calls and their Eka sessions, so no session is left un-ended.

SQLite in WAL mode via the standard library. Every statement runs on one
dedicated worker thread, so the event loop (and the audio path) never waits on
the disk; callers ``await`` the write only where durability matters (a session
is recorded before audio is streamed into it).

A session row moves ``open`` → ``ended`` (End answered, or Eka says it is gone)
or ``open`` → ``end_pending`` (End's retry budget ran out; the sweeper retries)
→ ``ended``. Rows are stamped with the ``boot_id`` of the process that opened
them, so after a crash the next process can tell its own sessions from orphans.

Results: ending a session queues it in ``result_queue`` (same transaction); the result
poller takes it from there and ``record_result`` moves it to ``results``. When every session
of a finished call has a result and deliveries are on, a ``deliveries`` row (the outbox) is
created in that same transaction, with a ``delivery_id`` that never changes. Transcripts and
templates are kept only while deliveries are on, and erased once the call's delivery is done
(delivered or given up): the ledger is not an archive of clinical notes.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")

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
CREATE INDEX IF NOT EXISTS sessions_call ON sessions (call_sid);
CREATE INDEX IF NOT EXISTS calls_started ON calls (started_at);
CREATE TABLE IF NOT EXISTS result_queue (   -- ended sessions waiting for their result
    session_id TEXT PRIMARY KEY,
    call_sid   TEXT NOT NULL,
    ended_at   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    session_id  TEXT PRIMARY KEY,
    call_sid    TEXT NOT NULL,
    status      TEXT NOT NULL,          -- completed | partial | failed | expired | not_found | timed_out
    http_status INTEGER,
    polls       INTEGER NOT NULL,
    via         TEXT NOT NULL,          -- poll | webhook
    recorded_at REAL NOT NULL,
    transcript  TEXT,                   -- only while a delivery needs it
    templates   TEXT                    -- JSON, likewise
);
CREATE INDEX IF NOT EXISTS results_call ON results (call_sid);
CREATE TABLE IF NOT EXISTS deliveries (     -- the result webhook's outbox: one row per call
    delivery_id  TEXT PRIMARY KEY,
    call_sid     TEXT NOT NULL UNIQUE,
    state        TEXT NOT NULL,         -- pending | delivered | failed
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL,
    created_at   REAL NOT NULL,
    delivered_at REAL,
    last_error   TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_at);
"""
#: Session columns a call record shows (never the payloads).
RECORD_SESSION_COLUMNS = (
    "s.session_id, s.part, s.state, s.end_status, s.created_at, s.ended_at, "
    "r.status AS result_status, r.recorded_at AS result_at, r.via AS result_via, r.polls AS result_polls"
)


class SessionState(StrEnum):
    """A session's row in the ledger (the ``state`` column)."""

    OPEN = "open"  # streaming, or left by a process that died: the sweeper ends it
    END_PENDING = "end_pending"  # an End ran out of budget: the sweeper tries again
    ENDED = "ended"  # settled (its ``end_status`` says how)


class DeliveryState(StrEnum):
    """A call's result delivery to the clinic (the ``deliveries`` table's ``state``)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # given up after RESULT_WEBHOOK_GIVE_UP_S


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


@dataclass(frozen=True)
class AwaitingResult:
    """An ended session whose result is not known yet."""

    session_id: str
    call_sid: str
    ended_at: float  # wall clock (time.time()): the result deadline counts from here


@dataclass(frozen=True)
class SessionResult:
    """What Get Session finally said about one session."""

    status: str  # completed | partial | failed | expired | not_found | timed_out
    http_status: int | None
    polls: int
    via: str  # poll | webhook
    transcript: str | None = None
    templates: list[Any] | None = None


@dataclass(frozen=True)
class DueDelivery:
    """A call's result delivery that is due, with what its payload is made of."""

    delivery_id: str
    call_sid: str
    attempts: int
    created_at: float
    call: dict[str, Any]  # the calls row
    sessions: list[dict[str, Any]]  # in part order: session and result columns, transcript included


class Ledger:
    def __init__(self, path: str, boot_id: str, *, keep_results: bool = False) -> None:
        self.path = path
        self.boot_id = boot_id
        #: Keep transcripts and templates, and create deliveries (RESULT_WEBHOOK_URL is set).
        self.keep_results = keep_results
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

    async def call_finished(self, call_sid: str, summary: dict[str, Any]) -> str | None:
        """Record the call's end; returns the id of a delivery this made due (all results in)."""

        def finish(db: sqlite3.Connection) -> str | None:
            db.execute(
                "UPDATE calls SET finished_at = ?, summary = ? WHERE call_sid = ?",
                (time.time(), json.dumps(summary, default=str), call_sid),
            )
            return self._delivery_due(db, call_sid)

        return await self._run(self._transaction, finish)

    async def session_opened(self, session_id: str, call_sid: str, provider: str, part: int) -> None:
        await self._run(
            self._execute,
            "INSERT OR REPLACE INTO sessions (session_id, call_sid, provider, part, boot_id, state, created_at)"
            f" VALUES (?, ?, ?, ?, ?, '{SessionState.OPEN}', ?)",
            (session_id, call_sid, provider, part, self.boot_id, time.time()),
        )

    async def session_ended(self, session_id: str, status: str) -> None:
        """Ended (or gone): and, in the same transaction, queued for its result."""

        def ended(db: sqlite3.Connection) -> None:
            now = time.time()
            db.execute(
                f"UPDATE sessions SET state = '{SessionState.ENDED}', end_status = ?, ended_at = ?,"
                " end_attempts = end_attempts + 1 WHERE session_id = ?",
                (status, now, session_id),
            )
            db.execute(
                "INSERT OR IGNORE INTO result_queue (session_id, call_sid, ended_at)"
                " SELECT session_id, call_sid, ? FROM sessions WHERE session_id = ?"
                " AND NOT EXISTS (SELECT 1 FROM results WHERE results.session_id = sessions.session_id)",
                (now, session_id),
            )

        await self._run(self._transaction, ended)

    async def record_result(self, session_id: str, result: SessionResult) -> str | None:
        """Store a session's final result and take it off the queue; returns the id of a
        delivery this made due (the call's last result, the call over), else None."""

        def record(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT call_sid FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
            if row is None:
                return None
            keep = self.keep_results
            db.execute(
                "INSERT OR REPLACE INTO results (session_id, call_sid, status, http_status, polls, via,"
                " recorded_at, transcript, templates) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    row[0],
                    result.status,
                    result.http_status,
                    result.polls,
                    result.via,
                    time.time(),
                    result.transcript if keep else None,
                    json.dumps(result.templates) if keep and result.templates is not None else None,
                ),
            )
            db.execute("DELETE FROM result_queue WHERE session_id = ?", (session_id,))
            return self._delivery_due(db, row[0])

        return await self._run(self._transaction, record)

    async def delivery_retry(self, delivery_id: str, error: str, next_at: float) -> None:
        await self._run(
            self._execute,
            "UPDATE deliveries SET attempts = attempts + 1, last_error = ?, next_at = ? WHERE delivery_id = ?",
            (error[:200], next_at, delivery_id),
        )

    async def delivery_done(self, delivery_id: str, *, delivered: bool, error: str | None = None) -> None:
        """Delivered, or given up: either way the transcripts it carried are erased now."""

        def done(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, last_error = ?, delivered_at = ?"
                " WHERE delivery_id = ?",
                (
                    DeliveryState.DELIVERED if delivered else DeliveryState.FAILED,
                    error,
                    time.time() if delivered else None,
                    delivery_id,
                ),
            )
            db.execute(
                "UPDATE results SET transcript = NULL, templates = NULL"
                " WHERE call_sid = (SELECT call_sid FROM deliveries WHERE delivery_id = ?)",
                (delivery_id,),
            )

        await self._run(self._transaction, done)

    async def session_end_pending(self, session_id: str, error: str) -> None:
        await self._run(
            self._execute,
            f"UPDATE sessions SET state = '{SessionState.END_PENDING}', last_error = ?,"
            " end_attempts = end_attempts + 1"
            " WHERE session_id = ?",
            (error[:200], session_id),
        )

    # -- reads --------------------------------------------------------------------------

    async def unsettled(self, *, orphaned_before: float) -> list[SessionRow]:
        """Sessions that need an End: pending ones, and open ones a previous process left behind."""
        return await self._run(
            self._query,
            "SELECT session_id, call_sid, provider, part, boot_id, state, created_at, end_attempts"
            f" FROM sessions WHERE state = '{SessionState.END_PENDING}'"
            f" OR (state = '{SessionState.OPEN}' AND boot_id != ? AND created_at < ?) ORDER BY created_at",
            (self.boot_id, orphaned_before),
        )

    async def session(self, session_id: str) -> dict[str, Any] | None:
        rows = await self._run(self._rows, "SELECT * FROM sessions WHERE session_id = ?", (session_id,))
        return rows[0] if rows else None

    async def sessions_of(self, call_sid: str) -> list[dict[str, Any]]:
        return await self._run(self._rows, "SELECT * FROM sessions WHERE call_sid = ? ORDER BY part", (call_sid,))

    async def awaiting_results(self) -> list[AwaitingResult]:
        """Ended sessions without a result yet, oldest first (what the result poller follows)."""
        rows = await self._run(
            self._rows, "SELECT session_id, call_sid, ended_at FROM result_queue ORDER BY ended_at", ()
        )
        return [AwaitingResult(**row) for row in rows]

    async def result(self, session_id: str) -> dict[str, Any] | None:
        rows = await self._run(self._rows, "SELECT * FROM results WHERE session_id = ?", (session_id,))
        return rows[0] if rows else None

    async def delivery_of(self, call_sid: str) -> dict[str, Any] | None:
        rows = await self._run(self._rows, "SELECT * FROM deliveries WHERE call_sid = ?", (call_sid,))
        return rows[0] if rows else None

    async def due_deliveries(self, now: float, limit: int) -> list[DueDelivery]:
        """Pending deliveries whose next attempt is due, with their calls and sessions."""

        def due(db: sqlite3.Connection) -> list[DueDelivery]:
            rows = _dicts(
                db.execute(
                    "SELECT delivery_id, call_sid, attempts, created_at FROM deliveries"
                    f" WHERE state = '{DeliveryState.PENDING}' AND next_at <= ? ORDER BY next_at LIMIT ?",
                    (now, limit),
                )
            )
            jobs = []
            for row in rows:
                call = _dicts(db.execute("SELECT * FROM calls WHERE call_sid = ?", (row["call_sid"],)))
                sessions = _dicts(
                    db.execute(
                        "SELECT s.session_id, s.part, s.ended_at, r.status, r.transcript, r.templates"
                        " FROM sessions s JOIN results r ON r.session_id = s.session_id"
                        " WHERE s.call_sid = ? ORDER BY s.part",
                        (row["call_sid"],),
                    )
                )
                jobs.append(DueDelivery(**row, call=call[0] if call else {}, sessions=sessions))
            return jobs

        return await self._run(self._transaction, due)

    async def next_delivery_at(self) -> float | None:
        rows = await self._run(
            self._rows, f"SELECT min(next_at) AS next_at FROM deliveries WHERE state = '{DeliveryState.PENDING}'", ()
        )
        return rows[0]["next_at"] if rows else None

    async def call_records(
        self, *, call_sid: str | None = None, since: float = 0.0, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Calls with their sessions, results and delivery (never transcripts): one call by id,
        or those started at or after ``since``, oldest first, at most ``limit``."""

        def records(db: sqlite3.Connection) -> list[dict[str, Any]]:
            if call_sid is not None:
                calls = _dicts(db.execute("SELECT * FROM calls WHERE call_sid = ?", (call_sid,)))
            else:
                calls = _dicts(
                    db.execute("SELECT * FROM calls WHERE started_at >= ? ORDER BY started_at LIMIT ?", (since, limit))
                )
            for call in calls:
                call["sessions"] = _dicts(
                    db.execute(
                        f"SELECT {RECORD_SESSION_COLUMNS} FROM sessions s"
                        " LEFT JOIN results r ON r.session_id = s.session_id WHERE s.call_sid = ? ORDER BY s.part",
                        (call["call_sid"],),
                    )
                )
                delivery = _dicts(
                    db.execute(
                        "SELECT delivery_id, state, attempts, created_at, delivered_at, last_error"
                        " FROM deliveries WHERE call_sid = ?",
                        (call["call_sid"],),
                    )
                )
                call["delivery"] = delivery[0] if delivery else None
            return calls

        return await self._run(self._transaction, records)

    # -- on the worker thread -----------------------------------------------------------

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` on the ledger's own thread: the event loop (and the audio path) never waits on the disk."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: fn(*args, **kwargs))

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

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one transaction: all of it lands, or none of it."""
        assert self._db is not None, "ledger not open"
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    def _delivery_due(self, db: sqlite3.Connection, call_sid: str) -> str | None:
        """Create the call's delivery if it is complete: the call is over (or was left by a
        previous process, so no session will be added) and every one of its sessions has a result."""
        if not self.keep_results:
            return None
        call = db.execute("SELECT boot_id, finished_at FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
        if call is None or (call[1] is None and call[0] == self.boot_id):
            return None
        total, missing = db.execute(
            "SELECT count(*), count(*) - count(r.session_id) FROM sessions s"
            " LEFT JOIN results r ON r.session_id = s.session_id WHERE s.call_sid = ?",
            (call_sid,),
        ).fetchone()
        if total == 0 or missing:
            return None
        delivery_id = "dlv_" + secrets.token_hex(12)
        now = time.time()
        inserted = db.execute(
            "INSERT OR IGNORE INTO deliveries (delivery_id, call_sid, state, next_at, created_at)"
            f" VALUES (?, ?, '{DeliveryState.PENDING}', ?, ?)",
            (delivery_id, call_sid, now, now),
        ).rowcount
        return delivery_id if inserted else None

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[SessionRow]:
        assert self._db is not None, "ledger not open"
        return [SessionRow(*row) for row in self._db.execute(sql, params).fetchall()]

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        assert self._db is not None, "ledger not open"
        return _dicts(self._db.execute(sql, params))


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
