"""Bridges as real subprocesses (`python -m bridge serve`), and an emulator for them to use."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bridge.emulator import Emulator, EmulatorOptions
from tests import postgres
from tests.harness import CLIENT_ID, CLIENT_SECRET
from tests.servers import serve

TWILIO_TOKEN = "twilio-test-token"


def a_ledger(tmp_path: Path) -> str:
    """Where a test's bridge processes keep their ledger: a fresh PostgreSQL database when the
    suite runs on it, else a SQLite file."""
    return postgres.database_url() or str(tmp_path / "ledger.db")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BridgeProcess:
    """`python -m bridge serve` on a free loopback port; its output is read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.lines: list[str] = []
        self._seen = asyncio.Condition()
        self._readers = [asyncio.create_task(self._read(s)) for s in (proc.stdout, proc.stderr) if s]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stream_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/twilio/stream"

    @classmethod
    async def start(
        cls, eka_url: str, ledger: str, *args: str, ready: str = "bridge: listening on", **env: str
    ) -> BridgeProcess:
        port = free_port()
        environment = {
            "PATH": os.environ.get("PATH", ""),
            "EKA_API_BASE_URL": eka_url,
            "EKA_CLIENT_ID": CLIENT_ID,
            "EKA_CLIENT_SECRET": CLIENT_SECRET,
            "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            **({"BRIDGE_DATABASE_URL": ledger} if ledger.startswith("postgresql") else {"BRIDGE_LEDGER_PATH": ledger}),
            "BRIDGE_LOG_FORMAT": "json",
            "EKA_BACKOFF_BASE_S": "0.02",
            # Under `make test`, coverage measures this process too (pyproject: patch = subprocess).
            **{k: v for k, v in os.environ.items() if k == "COVERAGE_PROCESS_CONFIG"},
            **env,
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "serve", "--host", "127.0.0.1", "--port", str(port), *args,
            env=environment, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        bridge = cls(proc, port)
        await bridge.wait_for_line(lambda line: ready in line, 20)
        return bridge

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            async with self._seen:
                self.lines.append(line.decode(errors="replace"))
                self._seen.notify_all()

    async def wait_for_line(self, predicate: Callable[[str], bool], timeout: float) -> str:
        async with asyncio.timeout(timeout):
            async with self._seen:
                await self._seen.wait_for(lambda: any(predicate(line) for line in self.lines))
        return next(line for line in self.lines if predicate(line))

    async def wait_for_event(self, event: str, timeout: float, count: int = 1) -> list[dict[str, Any]]:
        """Wait until the process has logged ``event`` (JSON logs) ``count`` times; returns them."""
        async with asyncio.timeout(timeout):
            async with self._seen:
                await self._seen.wait_for(lambda: len(self.events(event)) >= count)
        return self.events(event)

    def events(self, event: str) -> list[dict[str, Any]]:
        found = []
        for line in self.lines:
            if f'"{event}"' in line and line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == event:
                    found.append(record)
        return found

    async def exit_code(self, timeout: float) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.gather(*self._readers)
        return code

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@asynccontextmanager
async def emulator_running(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[Emulator, str]]:
    emulator = Emulator(
        EmulatorOptions(
            audio_dir=tmp_path / "eka-audio",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            **{"processing_s": 0, **options},
        )
    )
    async with serve(emulator.app) as url:
        yield emulator, url


def audio_arrived(emulator: Emulator, seconds: float) -> Callable[[], bool]:
    return lambda: any(len(s.audio) >= seconds * 32000 for s in emulator.sessions.values())
