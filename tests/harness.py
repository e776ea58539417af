"""The real parts, wired together on loopback: EkaScribe emulator ← bridge ← call simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import structlog

from bridge.app import Bridge
from bridge.config import Settings
from bridge.emulator import Emulator, EmulatorOptions
from tests import postgres
from tests.servers import serve

CLIENT_ID = "test-client"
CLIENT_SECRET = "test-secret-do-not-log"


@dataclass
class LogCapture:
    """A structlog processor chain end that keeps every event dict (nothing is printed)."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        self.events.append({**event, "log_level": method})
        raise structlog.DropEvent

    def logger(self) -> Any:
        return structlog.wrap_logger(None, processors=[self], wrapper_class=structlog.BoundLogger)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]


@dataclass
class Harness:
    emulator: Emulator
    bridge: Bridge
    eka_url: str
    bridge_url: str
    logs: LogCapture

    @property
    def twilio_url(self) -> str:
        return self.bridge_url.replace("http://", "ws://") + "/twilio/stream"

    def only_session(self) -> Any:
        assert len(self.emulator.sessions) == 1, list(self.emulator.sessions)
        return next(iter(self.emulator.sessions.values()))


def assert_processed_whole(session: Any, *, flushed_on_stop: bool = True) -> None:
    """EkaScribe processed every byte the session received, and End came after the last flush:
    after the server's close following our ``stop`` (or, for a socket that was lost or a
    process that crashed, after the server's silent flush on disconnect)."""
    assert session.end_calls == 1
    assert len(session.audio) > 0
    assert session.processed_audio == bytes(session.audio)
    assert session.lost_after_end_bytes == 0
    assert session.flushed_at is not None and session.ended_at is not None
    assert session.flushed_at <= session.ended_at
    if flushed_on_stop:
        assert session.stop_received and session.server_closed_at is not None
        assert session.server_closed_at <= session.ended_at


def make_settings(eka_url: str, **overrides: Any) -> Settings:
    base = Settings(
        eka_base_url=eka_url,
        eka_client_id=CLIENT_ID,
        eka_client_secret=CLIENT_SECRET,
        create_budget_s=10.0,
        end_budget_s=10.0,
        upstream_close_timeout_s=5.0,
        # The emulator flushes 1 s after a stream ends (its realistic default): wait for it, and
        # without its signal settle a little longer than that before End.
        flush_wait_s=5.0,
        flush_settle_s=1.5,
        http_timeout_s=5.0,
        backoff_base_s=0.02,
        backoff_max_s=0.2,
        # As `make run`: unsigned Twilio traffic is accepted. Signature tests set twilio_auth_token
        # (and development=False to see the production refusal).
        development=True,
    )
    return replace(base, **overrides)


@asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    emulator_options: dict[str, Any] | None = None,
    emulator_rcvbuf: int | None = None,
    **settings: Any,
) -> AsyncIterator[Harness]:
    options = EmulatorOptions(
        audio_dir=tmp_path / "eka-audio",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        **{"processing_s": 0.0, **(emulator_options or {})},
    )
    emulator = Emulator(options)
    logs = LogCapture()
    async with serve(emulator.app, rcvbuf=emulator_rcvbuf) as eka_url:
        settings.setdefault("ledger_path", str(tmp_path / "ledger.db"))
        settings.setdefault("database_url", postgres.database_url())  # None: SQLite at ledger_path
        bridge = Bridge(make_settings(eka_url, **settings), log=logs.logger())
        async with serve(
            bridge.app, ws_max_size=bridge.settings.ws_max_bytes, http=bridge.http_protocol()
        ) as bridge_url:
            async with httpx.AsyncClient(timeout=10) as http:  # answered once its start-up has run:
                (await http.get(bridge_url + "/healthz")).raise_for_status()  # the ledger is open
            yield Harness(emulator, bridge, eka_url, bridge_url, logs)


@asynccontextmanager
async def bridge_running(eka_url: str, logs: LogCapture, **settings: Any) -> AsyncIterator[tuple[Bridge, str]]:
    """One more bridge against an emulator already running (e.g. two in sequence on one ledger)."""
    bridge = Bridge(make_settings(eka_url, **settings), log=logs.logger())
    async with serve(bridge.app, ws_max_size=bridge.settings.ws_max_bytes, http=bridge.http_protocol()) as bridge_url:
        async with httpx.AsyncClient(timeout=10) as http:  # answered once its start-up has run
            (await http.get(bridge_url + "/healthz")).raise_for_status()
        yield bridge, bridge_url
