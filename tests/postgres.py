"""A real PostgreSQL server for the tests: initdb + pg_ctl into a temporary directory, on a
loopback port, one per test process; a fresh database for every bridge a test starts.

``BRIDGE_TEST_LEDGER=postgres`` runs the suite on the PostgreSQL ledger (``make test`` runs it
both ways). PostgreSQL refuses to run as root, so under root the server runs as ``postgres``.
"""

from __future__ import annotations

import atexit
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

ENV = "BRIDGE_TEST_LEDGER"


def wanted() -> bool:
    return os.environ.get(ENV, "sqlite") == "postgres"


def binaries() -> Path | None:
    """Debian's postgresql-NN packages keep the server binaries out of PATH."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


class PostgresServer:
    def __init__(self) -> None:
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError("no PostgreSQL server binaries (initdb) on this machine")
        self._bin = bin_dir
        self._root = Path(tempfile.mkdtemp(prefix="bridge-pg-"))
        self._as_root = os.geteuid() == 0
        self._data: Path | None = None
        if self._as_root:
            shutil.chown(self._root, "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        data = self._root / "data"
        self._run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        options = f"-p {self.port} -k {self._root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        log = str(self._root / "server.log")
        self._run("pg_ctl", "-D", str(data), "-o", options, "-l", log, "-w", "start")
        self._data = data
        atexit.register(self.stop)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self._bin / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self._data is not None:
            try:
                self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "stop")
            except (subprocess.SubprocessError, OSError):
                pass
            self._data = None
            shutil.rmtree(self._root, ignore_errors=True)


_server: PostgresServer | None = None


def database_url() -> str | None:
    """A fresh database when the suite runs on PostgreSQL, else None (SQLite)."""
    global _server
    if not wanted():
        return None
    if _server is None:
        _server = PostgresServer()
    return _server.new_database()
