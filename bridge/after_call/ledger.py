"""A durable record of calls and their Eka sessions, so no session is left un-ended.

Two stores behind one ledger: SQLite in WAL mode via the standard library (the embedded
default), or PostgreSQL (``BRIDGE_DATABASE_URL``) through psycopg 3 and its connection pool,
so several processes can share one ledger. The ledger's work is written once, as functions
of a DB-API connection inside one transaction, in the SQL both speak; it runs on the store's
own worker threads, so the event loop (and the audio path) never waits on the database.
Callers ``await`` a write only where durability matters (a session is recorded before audio
is streamed into it).

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
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

SCHEMA_TEMPLATE = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id   TEXT PRIMARY KEY,
    call_sid     TEXT NOT NULL,
    provider     TEXT NOT NULL,
    part         INTEGER NOT NULL,
    boot_id      TEXT NOT NULL,
    state        TEXT NOT NULL,          -- open | end_pending | ended
    created_at   {real} NOT NULL,
    ended_at     {real},
    end_status   TEXT,
    end_attempts INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX IF NOT EXISTS sessions_state ON sessions (state);
CREATE TABLE IF NOT EXISTS calls (
    call_sid    TEXT PRIMARY KEY,
    provider    TEXT NOT NULL,
    boot_id     TEXT NOT NULL,
    started_at  {real} NOT NULL,
    finished_at {real},
    summary     TEXT
);
CREATE INDEX IF NOT EXISTS sessions_call ON sessions (call_sid);
CREATE INDEX IF NOT EXISTS calls_started ON calls (started_at);
CREATE TABLE IF NOT EXISTS result_queue (   -- ended sessions waiting for their result
    session_id TEXT PRIMARY KEY,
    call_sid   TEXT NOT NULL,
    ended_at   {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    session_id  TEXT PRIMARY KEY,
    call_sid    TEXT NOT NULL,
    status      TEXT NOT NULL,          -- completed | partial | failed | expired | not_found | timed_out
    http_status INTEGER,
    polls       INTEGER NOT NULL,
    via         TEXT NOT NULL,          -- poll | webhook
    recorded_at {real} NOT NULL,
    transcript  TEXT,                   -- only while a delivery needs it
    templates   TEXT                    -- JSON, likewise
);
CREATE INDEX IF NOT EXISTS results_call ON results (call_sid);
CREATE TABLE IF NOT EXISTS deliveries (     -- the result webhook's outbox: one row per call
    delivery_id  TEXT PRIMARY KEY,
    call_sid     TEXT NOT NULL UNIQUE,
    state        TEXT NOT NULL,         -- pending | delivered | failed
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      {real} NOT NULL,
    created_at   {real} NOT NULL,
    delivered_at {real},
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


class Cursor(Protocol):
    """What the ledger reads of a DB-API cursor (sqlite3's and psycopg's both fit)."""

    @property
    def description(self) -> Any: ...
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """One connection inside one transaction, with ``?`` placeholders whatever the store."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...


class Store(ABC):
    """Where the ledger's rows live. ``run`` calls ``work`` with a connection inside one
    transaction (all of it lands, or none of it), on the store's worker threads."""

    #: Where it lives, safe to log (no password).
    where: str

    @abstractmethod
    async def open(self) -> None:
        """Connect, and create the schema if it is not there yet."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def run(self, work: Callable[[Connection], T]) -> T: ...


class SqliteStore(Store):
    """The embedded default: one file, WAL mode, one connection on one worker thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.where = f"sqlite:{path}"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    async def run(self, work: Callable[[Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._transaction, work)

    def _open(self) -> None:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA_TEMPLATE.format(real="REAL"))
        self._db = db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        if self._db is None:
            raise RuntimeError("ledger not open")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result


class PostgresStore(Store):
    """PostgreSQL for a fleet: a psycopg connection pool, worked on a few threads (one per
    pooled connection), so several statements of different calls may run at once."""

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        from psycopg.conninfo import conninfo_to_dict

        self.url = url
        info = conninfo_to_dict(url)
        self.where = f"postgresql://{info.get('host', '')}:{info.get('port', '5432')}/{info.get('dbname', '')}"
        self._pool_size = pool_size
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="ledger")
        self._pool: Any = None

    async def open(self) -> None:
        from psycopg_pool import ConnectionPool

        def connect() -> None:
            # Every connection up front, one per worker thread: the pool never has to grow (and
            # make a write wait for a new connection) in the middle of a call.
            size = self._pool_size
            pool = ConnectionPool(self.url, min_size=size, max_size=size, open=False, timeout=10)
            pool.open(wait=True, timeout=30)
            with pool.connection() as conn:
                # Two processes starting together must not both create the schema.
                conn.execute("SELECT pg_advisory_xact_lock(78151)")
                conn.execute(SCHEMA_TEMPLATE.format(real="DOUBLE PRECISION"))
            self._pool = pool

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, pool.close)
        self._executor.shutdown(wait=True)

    async def run(self, work: Callable[[Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._transaction, work)

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        if self._pool is None:
            raise RuntimeError("ledger not open")
        with self._pool.connection() as conn, conn.transaction():
            return work(_QmarkConnection(conn))


class _QmarkConnection:
    """psycopg with the ledger's ``?`` placeholders (the SQL never holds a literal ``?``)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        cursor: Cursor = self._conn.execute(sql.replace("?", "%s"), tuple(params))
        return cursor


def open_store(*, database_url: str | None, sqlite_path: str) -> Store:
    """PostgreSQL when ``BRIDGE_DATABASE_URL`` is set, else SQLite at ``BRIDGE_LEDGER_PATH``."""
    return PostgresStore(database_url) if database_url else SqliteStore(sqlite_path)


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
    """The bridge's durable record; ``store`` says where it lives (``open_store``)."""

    def __init__(self, store: Store, boot_id: str, *, keep_results: bool = False) -> None:
        self._store = store
        self.boot_id = boot_id
        #: Keep transcripts and templates, and create deliveries (RESULT_WEBHOOK_URL is set).
        self.keep_results = keep_results

    @property
    def where(self) -> str:
        """Where the ledger lives, safe to log (no password)."""
        return self._store.where

    async def open(self) -> None:
        await self._store.open()

    async def close(self) -> None:
        await self._store.close()

    # -- writes -------------------------------------------------------------------------

    async def call_started(self, call_sid: str, provider: str) -> None:
        await self._write(
            "INSERT INTO calls (call_sid, provider, boot_id, started_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (call_sid, provider, self.boot_id, time.time()),
        )

    async def call_finished(self, call_sid: str, summary: dict[str, Any]) -> str | None:
        """Record the call's end; returns the id of a delivery this made due (all results in)."""

        def finish(db: Connection) -> str | None:
            db.execute(
                "UPDATE calls SET finished_at = ?, summary = ? WHERE call_sid = ?",
                (time.time(), json.dumps(summary, default=str), call_sid),
            )
            return self._delivery_due(db, call_sid)

        return await self._store.run(finish)

    async def session_opened(self, session_id: str, call_sid: str, provider: str, part: int) -> None:
        await self._write(
            "INSERT INTO sessions (session_id, call_sid, provider, part, boot_id, state, created_at)"
            f" VALUES (?, ?, ?, ?, ?, '{SessionState.OPEN}', ?) ON CONFLICT (session_id) DO UPDATE SET"
            " call_sid = excluded.call_sid, provider = excluded.provider, part = excluded.part,"
            " boot_id = excluded.boot_id, state = excluded.state, created_at = excluded.created_at",
            (session_id, call_sid, provider, part, self.boot_id, time.time()),
        )

    async def session_ended(self, session_id: str, status: str) -> None:
        """Ended (or gone): and, in the same transaction, queued for its result."""

        def ended(db: Connection) -> None:
            now = time.time()
            db.execute(
                f"UPDATE sessions SET state = '{SessionState.ENDED}', end_status = ?, ended_at = ?,"
                " end_attempts = end_attempts + 1 WHERE session_id = ?",
                (status, now, session_id),
            )
            db.execute(
                "INSERT INTO result_queue (session_id, call_sid, ended_at)"
                " SELECT session_id, call_sid, ? FROM sessions WHERE session_id = ?"
                " AND NOT EXISTS (SELECT 1 FROM results WHERE results.session_id = sessions.session_id)"
                " ON CONFLICT DO NOTHING",
                (now, session_id),
            )

        await self._store.run(ended)

    async def record_result(self, session_id: str, result: SessionResult) -> str | None:
        """Store a session's final result and take it off the queue; returns the id of a
        delivery this made due (the call's last result, the call over), else None."""

        def record(db: Connection) -> str | None:
            row = db.execute("SELECT call_sid FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
            if row is None:
                return None
            keep = self.keep_results
            db.execute(
                "INSERT INTO results (session_id, call_sid, status, http_status, polls, via,"
                " recorded_at, transcript, templates) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (session_id) DO UPDATE SET call_sid = excluded.call_sid, status = excluded.status,"
                " http_status = excluded.http_status, polls = excluded.polls, via = excluded.via,"
                " recorded_at = excluded.recorded_at, transcript = excluded.transcript,"
                " templates = excluded.templates",
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

        return await self._store.run(record)

    async def delivery_retry(self, delivery_id: str, error: str, next_at: float) -> None:
        await self._write(
            "UPDATE deliveries SET attempts = attempts + 1, last_error = ?, next_at = ? WHERE delivery_id = ?",
            (error[:200], next_at, delivery_id),
        )

    async def delivery_done(self, delivery_id: str, *, delivered: bool, error: str | None = None) -> None:
        """Delivered, or given up: either way the transcripts it carried are erased now."""

        def done(db: Connection) -> None:
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

        await self._store.run(done)

    async def session_end_pending(self, session_id: str, error: str) -> None:
        await self._write(
            f"UPDATE sessions SET state = '{SessionState.END_PENDING}', last_error = ?,"
            " end_attempts = end_attempts + 1"
            " WHERE session_id = ?",
            (error[:200], session_id),
        )

    # -- reads --------------------------------------------------------------------------

    async def unsettled(self, *, orphaned_before: float) -> list[SessionRow]:
        """Sessions that need an End: pending ones, and open ones a previous process left behind."""
        rows = await self._rows(
            "SELECT session_id, call_sid, provider, part, boot_id, state, created_at, end_attempts"
            f" FROM sessions WHERE state = '{SessionState.END_PENDING}'"
            f" OR (state = '{SessionState.OPEN}' AND boot_id != ? AND created_at < ?) ORDER BY created_at",
            (self.boot_id, orphaned_before),
        )
        return [SessionRow(**row) for row in rows]

    async def session(self, session_id: str) -> dict[str, Any] | None:
        rows = await self._rows("SELECT * FROM sessions WHERE session_id = ?", (session_id,))
        return rows[0] if rows else None

    async def sessions_of(self, call_sid: str) -> list[dict[str, Any]]:
        return await self._rows("SELECT * FROM sessions WHERE call_sid = ? ORDER BY part", (call_sid,))

    async def awaiting_results(self) -> list[AwaitingResult]:
        """Ended sessions without a result yet, oldest first (what the result poller follows)."""
        rows = await self._rows("SELECT session_id, call_sid, ended_at FROM result_queue ORDER BY ended_at", ())
        return [AwaitingResult(**row) for row in rows]

    async def result(self, session_id: str) -> dict[str, Any] | None:
        rows = await self._rows("SELECT * FROM results WHERE session_id = ?", (session_id,))
        return rows[0] if rows else None

    async def delivery_of(self, call_sid: str) -> dict[str, Any] | None:
        rows = await self._rows("SELECT * FROM deliveries WHERE call_sid = ?", (call_sid,))
        return rows[0] if rows else None

    async def due_deliveries(self, now: float, limit: int) -> list[DueDelivery]:
        """Pending deliveries whose next attempt is due, with their calls and sessions."""

        def due(db: Connection) -> list[DueDelivery]:
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

        return await self._store.run(due)

    async def next_delivery_at(self) -> float | None:
        rows = await self._rows(
            f"SELECT min(next_at) AS next_at FROM deliveries WHERE state = '{DeliveryState.PENDING}'", ()
        )
        return rows[0]["next_at"] if rows else None

    async def call_records(
        self, *, call_sid: str | None = None, since: float = 0.0, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Calls with their sessions, results and delivery (never transcripts): one call by id,
        or those started at or after ``since``, oldest first, at most ``limit``."""

        def records(db: Connection) -> list[dict[str, Any]]:
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

        return await self._store.run(records)

    # -- helpers ---------------------------------------------------------------------------

    async def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        await self._store.run(lambda db: db.execute(sql, params))

    async def _rows(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        return await self._store.run(lambda db: _dicts(db.execute(sql, params)))

    def _delivery_due(self, db: Connection, call_sid: str) -> str | None:
        """Create the call's delivery if it is complete: the call is over (or was left by a
        previous process, so no session will be added) and every one of its sessions has a result."""
        if not self.keep_results:
            return None
        # Lock the call's row first: a call's last result and its end may be recorded at once (on
        # PostgreSQL, on two connections); each must see the other's write, or neither would make
        # the delivery. A no-op UPDATE locks the row in PostgreSQL; SQLite's writes are serial anyway.
        db.execute("UPDATE calls SET call_sid = call_sid WHERE call_sid = ?", (call_sid,))
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
            "INSERT INTO deliveries (delivery_id, call_sid, state, next_at, created_at)"
            f" VALUES (?, ?, '{DeliveryState.PENDING}', ?, ?) ON CONFLICT DO NOTHING",
            (delivery_id, call_sid, now, now),
        ).rowcount
        return delivery_id if inserted else None


def _dicts(cursor: Cursor) -> list[dict[str, Any]]:
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
