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
    ended_at   {real} NOT NULL,
    owner      TEXT                     -- the process following it (boot_id)
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
    last_error   TEXT,
    owner        TEXT                   -- the process making it (boot_id)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_at);
CREATE TABLE IF NOT EXISTS members (        -- the fleet: processes sharing this ledger, and their leases
    boot_id      TEXT PRIMARY KEY,
    internal_url TEXT,                  -- where the others reach it (BRIDGE_INTERNAL_URL)
    started_at   {real} NOT NULL,
    lease_until  {real} NOT NULL        -- renewed every third of BRIDGE_LEASE_TTL_S; past it, dead
);
CREATE TABLE IF NOT EXISTS fleet (          -- facts shared by the fleet (the relay token)
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
#: Columns added since a ledger was first created: (table, column, type), added at start-up.
MIGRATIONS = (("result_queue", "owner", "TEXT"), ("deliveries", "owner", "TEXT"))
#: The processes whose lease is live at a given time (one ``?``).
LIVE_MEMBERS = "SELECT boot_id FROM members WHERE lease_until > ?"
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
    #: Appended to a SELECT that claims rows: other processes skip what one is claiming.
    skip_locked: str = ""

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
        for table, column, kind in MIGRATIONS:
            if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
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

    skip_locked = " FOR UPDATE SKIP LOCKED"

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
                for table, column, kind in MIGRATIONS:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
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
    adopted: bool = False  # taken over from a process whose lease expired


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
    adopted: bool = False  # taken over from a process whose lease expired


class Ledger:
    """The bridge's durable record; ``store`` says where it lives (``open_store``).

    It is also the fleet's membership: every process sharing the ledger holds a lease
    (``members``) it renews; work a process owns (its calls' sessions, their result polls,
    their deliveries) is taken over by another only once that lease has expired, and each
    claim is a row-locked compare-and-set (``SKIP LOCKED`` on PostgreSQL; SQLite's writes
    are serial), so exactly one process acts on each row.
    """

    def __init__(
        self,
        store: Store,
        boot_id: str,
        *,
        keep_results: bool = False,
        lease_ttl_s: float = 15.0,
        internal_url: str | None = None,
    ) -> None:
        self._store = store
        self.boot_id = boot_id
        #: Keep transcripts and templates, and create deliveries (RESULT_WEBHOOK_URL is set).
        self.keep_results = keep_results
        self.lease_ttl_s = lease_ttl_s
        self.internal_url = internal_url
        #: The fleet's shared secret for relayed streams (read from the ledger at ``open``).
        self.relay_token = ""

    @property
    def where(self) -> str:
        """Where the ledger lives, safe to log (no password)."""
        return self._store.where

    async def open(self) -> None:
        """Open the store, join the fleet (take a lease) and read the fleet's relay token."""
        await self._store.open()

        def join(db: Connection) -> str:
            now = time.time()
            db.execute(
                "INSERT INTO members (boot_id, internal_url, started_at, lease_until) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (boot_id) DO UPDATE SET lease_until = excluded.lease_until",
                (self.boot_id, self.internal_url, now, now + self.lease_ttl_s),
            )
            db.execute(
                "INSERT INTO fleet (name, value) VALUES ('relay_token', ?) ON CONFLICT DO NOTHING",
                (secrets.token_urlsafe(32),),
            )
            token: str = db.execute("SELECT value FROM fleet WHERE name = 'relay_token'").fetchone()[0]
            return token

        self.relay_token = await self._store.run(join)

    async def close(self) -> None:
        """Leave the fleet (what this process still owns is taken over at once), close the store."""
        try:
            await self._write("DELETE FROM members WHERE boot_id = ?", (self.boot_id,))
        finally:
            await self._store.close()

    # -- the fleet ------------------------------------------------------------------------

    async def renew_lease(self) -> set[str]:
        """Extend this process's lease; returns the boot ids of every live process (this one too).
        Members dead for a day are forgotten."""

        def renew(db: Connection) -> set[str]:
            now = time.time()
            updated = db.execute(
                "UPDATE members SET lease_until = ? WHERE boot_id = ?", (now + self.lease_ttl_s, self.boot_id)
            ).rowcount
            if not updated:  # forgotten (dead too long, or the table was reset): join again
                db.execute(
                    "INSERT INTO members (boot_id, internal_url, started_at, lease_until) VALUES (?, ?, ?, ?)",
                    (self.boot_id, self.internal_url, now, now + self.lease_ttl_s),
                )
            db.execute("DELETE FROM members WHERE lease_until < ?", (now - 86400,))
            return {row[0] for row in db.execute(LIVE_MEMBERS, (now,)).fetchall()}

        return await self._store.run(renew)

    async def members(self) -> list[dict[str, Any]]:
        """Every process in the fleet, live or lately dead, with its lease."""
        rows = await self._rows(
            "SELECT boot_id, internal_url, started_at, lease_until FROM members ORDER BY started_at", ()
        )
        now = time.time()
        return [{**row, "live": row["lease_until"] > now, "self": row["boot_id"] == self.boot_id} for row in rows]

    async def result_follower(self, session_id: str) -> str | None:
        """The live process following this session's result (its ``result_queue`` owner), if any."""
        rows = await self._rows(
            f"SELECT owner FROM result_queue WHERE session_id = ? AND owner IN ({LIVE_MEMBERS})",
            (session_id, time.time()),
        )
        return rows[0]["owner"] if rows else None

    async def owner_of_call(self, provider: str, call_sid: str) -> str | None:
        """The internal URL of another live process carrying this call, if one is."""
        rows = await self._rows(
            "SELECT m.internal_url FROM calls c JOIN members m ON m.boot_id = c.boot_id"
            " WHERE c.call_sid = ? AND c.provider = ? AND c.finished_at IS NULL AND c.boot_id != ?"
            " AND m.lease_until > ? AND m.internal_url IS NOT NULL",
            (call_sid, provider, self.boot_id, time.time()),
        )
        return rows[0]["internal_url"] if rows else None

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

    async def session_discarded(self, session_id: str) -> None:
        """A session recorded before its Create, which failed: there is nothing to end."""
        await self._write(f"DELETE FROM sessions WHERE session_id = ? AND state = '{SessionState.OPEN}'", (session_id,))

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
                "INSERT INTO result_queue (session_id, call_sid, ended_at, owner)"
                " SELECT session_id, call_sid, ?, ? FROM sessions WHERE session_id = ?"
                " AND NOT EXISTS (SELECT 1 FROM results WHERE results.session_id = sessions.session_id)"
                " ON CONFLICT DO NOTHING",
                (now, self.boot_id, session_id),
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

    async def claim_unsettled(self, *, settle_s: float) -> list[SessionRow]:
        """Claim the sessions that need an End from this process: its own pending Ends, and the
        open or pending sessions of processes whose lease expired over ``settle_s`` ago (their
        sockets died with them; the server has flushed them by then). A claimed session is this
        process's from now on (``boot_id``); the rows returned say whose it was. The calls those
        processes left are marked finished (``owner_lost``): nothing will add to them."""

        def claim(db: Connection) -> list[SessionRow]:
            now = time.time()
            if not self._lease_live(db, now):
                return []  # this process may have been given up for dead: it claims nothing
            rows = _dicts(
                db.execute(
                    "SELECT session_id, call_sid, provider, part, boot_id, state, created_at, end_attempts"
                    f" FROM sessions WHERE (state = '{SessionState.END_PENDING}' AND boot_id = ?)"
                    f" OR (state != '{SessionState.ENDED}' AND boot_id != ? AND boot_id NOT IN ({LIVE_MEMBERS}))"
                    f" ORDER BY created_at{self._store.skip_locked}",
                    (self.boot_id, self.boot_id, now - settle_s),
                )
            )
            for row in rows:
                if row["boot_id"] != self.boot_id:
                    db.execute(
                        "UPDATE sessions SET boot_id = ? WHERE session_id = ?", (self.boot_id, row["session_id"])
                    )
            for call_sid in {row["call_sid"] for row in rows if row["boot_id"] != self.boot_id}:
                db.execute(
                    "UPDATE calls SET finished_at = ?, summary = ? WHERE call_sid = ? AND finished_at IS NULL"
                    f" AND boot_id NOT IN ({LIVE_MEMBERS})",
                    (now, json.dumps({"end_reason": "owner_lost", "end_status": "swept"}), call_sid, now),
                )
            return [SessionRow(**row) for row in rows]

        return await self._store.run(claim)

    async def next_orphan_in(self, *, settle_s: float) -> float | None:
        """Seconds until the next session of a dead process becomes claimable (its owner's lease
        expired less than ``settle_s`` ago), or None. The sweeper sleeps no longer than this: a
        process that died before this one ever saw it alive wakes no one."""
        now = time.time()
        rows = await self._rows(
            "SELECT min(m.lease_until) AS expired FROM sessions s JOIN members m ON m.boot_id = s.boot_id"
            f" WHERE s.state != '{SessionState.ENDED}' AND m.lease_until <= ? AND m.lease_until > ?",
            (now, now - settle_s),
        )
        expired = rows[0]["expired"] if rows else None
        return None if expired is None else max(0.0, float(expired) + settle_s - now)

    async def unsettled_count(self) -> int:
        """Sessions waiting for an End anywhere in the fleet (pending, or left by a dead process)."""
        rows = await self._rows(
            f"SELECT count(*) AS n FROM sessions WHERE state = '{SessionState.END_PENDING}'"
            f" OR (state = '{SessionState.OPEN}' AND boot_id NOT IN ({LIVE_MEMBERS}))",
            (time.time(),),
        )
        return int(rows[0]["n"])

    async def session(self, session_id: str) -> dict[str, Any] | None:
        rows = await self._rows("SELECT * FROM sessions WHERE session_id = ?", (session_id,))
        return rows[0] if rows else None

    async def sessions_of(self, call_sid: str) -> list[dict[str, Any]]:
        return await self._rows("SELECT * FROM sessions WHERE call_sid = ? ORDER BY part", (call_sid,))

    async def awaiting_results(self) -> list[AwaitingResult]:
        """Ended sessions without a result yet that this process follows, oldest first: those it
        queued, and those of processes whose lease expired (claimed now)."""

        def claim(db: Connection) -> list[AwaitingResult]:
            now = time.time()
            if not self._lease_live(db, now):
                return []
            rows = _dicts(
                db.execute(
                    "SELECT session_id, call_sid, ended_at, owner FROM result_queue"
                    f" WHERE owner = ? OR owner IS NULL OR owner NOT IN ({LIVE_MEMBERS})"
                    f" ORDER BY ended_at{self._store.skip_locked}",
                    (self.boot_id, now),
                )
            )
            claimed = []
            for row in rows:
                adopted = row.pop("owner") != self.boot_id
                if adopted:
                    db.execute(
                        "UPDATE result_queue SET owner = ? WHERE session_id = ?", (self.boot_id, row["session_id"])
                    )
                claimed.append(AwaitingResult(**row, adopted=adopted))
            return claimed

        return await self._store.run(claim)

    async def result(self, session_id: str) -> dict[str, Any] | None:
        rows = await self._rows("SELECT * FROM results WHERE session_id = ?", (session_id,))
        return rows[0] if rows else None

    async def delivery_of(self, call_sid: str) -> dict[str, Any] | None:
        rows = await self._rows("SELECT * FROM deliveries WHERE call_sid = ?", (call_sid,))
        return rows[0] if rows else None

    async def due_deliveries(self, now: float, limit: int) -> list[DueDelivery]:
        """Pending deliveries whose next attempt is due, with their calls and sessions."""

        def due(db: Connection) -> list[DueDelivery]:
            wall = time.time()
            if not self._lease_live(db, wall):
                return []
            rows = _dicts(
                db.execute(
                    "SELECT delivery_id, call_sid, attempts, created_at, owner FROM deliveries"
                    f" WHERE state = '{DeliveryState.PENDING}' AND next_at <= ?"
                    f" AND (owner = ? OR owner IS NULL OR owner NOT IN ({LIVE_MEMBERS}))"
                    f" ORDER BY next_at LIMIT ?{self._store.skip_locked}",
                    (now, self.boot_id, wall, limit),
                )
            )
            jobs = []
            for row in rows:
                adopted = row.pop("owner") != self.boot_id
                if adopted:
                    db.execute(
                        "UPDATE deliveries SET owner = ? WHERE delivery_id = ?", (self.boot_id, row["delivery_id"])
                    )
                call = _dicts(db.execute("SELECT * FROM calls WHERE call_sid = ?", (row["call_sid"],)))
                sessions = _dicts(
                    db.execute(
                        "SELECT s.session_id, s.part, s.ended_at, r.status, r.transcript, r.templates"
                        " FROM sessions s JOIN results r ON r.session_id = s.session_id"
                        " WHERE s.call_sid = ? ORDER BY s.part",
                        (row["call_sid"],),
                    )
                )
                jobs.append(DueDelivery(**row, call=call[0] if call else {}, sessions=sessions, adopted=adopted))
            return jobs

        return await self._store.run(due)

    async def next_delivery_at(self) -> float | None:
        rows = await self._rows(
            f"SELECT min(next_at) AS next_at FROM deliveries WHERE state = '{DeliveryState.PENDING}'"
            f" AND (owner = ? OR owner IS NULL OR owner NOT IN ({LIVE_MEMBERS}))",
            (self.boot_id, time.time()),
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

    def _take(self, db: Connection, table: str, owner: str, key: str, value: str) -> None:
        """Make a claimed row this process's (it is locked by the claim's SELECT)."""
        db.execute(f"UPDATE {table} SET {owner} = ? WHERE {key} = ?", (self.boot_id, value))

    def _lease_live(self, db: Connection, now: float) -> bool:
        row = db.execute("SELECT lease_until FROM members WHERE boot_id = ?", (self.boot_id,)).fetchone()
        return row is not None and row[0] > now

    def _delivery_due(self, db: Connection, call_sid: str) -> str | None:
        """Create the call's delivery if it is complete: the call is over (or its process is
        dead, so no session will be added) and every one of its sessions has a result."""
        if not self.keep_results:
            return None
        # Lock the call's row first: a call's last result and its end may be recorded at once (on
        # PostgreSQL, on two connections); each must see the other's write, or neither would make
        # the delivery. A no-op UPDATE locks the row in PostgreSQL; SQLite's writes are serial anyway.
        db.execute("UPDATE calls SET call_sid = call_sid WHERE call_sid = ?", (call_sid,))
        call = db.execute(
            f"SELECT finished_at, boot_id IN ({LIVE_MEMBERS}) FROM calls WHERE call_sid = ?", (time.time(), call_sid)
        ).fetchone()
        if call is None or (call[0] is None and call[1]):  # its process is alive and carrying it
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
            "INSERT INTO deliveries (delivery_id, call_sid, state, next_at, created_at, owner)"
            f" VALUES (?, ?, '{DeliveryState.PENDING}', ?, ?, ?) ON CONFLICT DO NOTHING",
            (delivery_id, call_sid, now, now, self.boot_id),
        ).rowcount
        return delivery_id if inserted else None


def _dicts(cursor: Cursor) -> list[dict[str, Any]]:
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
