"""The fast, in-process tier of the live call: ``Call``, the PCM queue and the socket's limits,
driven directly, without a telephony socket. Real parts throughout: a real ledger (SQLite in
``tmp_path``), real metrics, and an Eka client that talks to a loopback port nobody listens on,
so any session the call tried to open would fail fast and show in its summary.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import structlog

from bridge import logging as bridge_logging
from bridge.after_call.ledger import Ledger, SqliteStore
from bridge.audio.codec import ULAW, pcm16_bytes, pcm16_to_ulaw
from bridge.audio.mixer import Mixer
from bridge.config import Settings
from bridge.eka.auth import TokenProvider
from bridge.eka.client import EkaClient
from bridge.eka.retry import Backoff
from bridge.live.call import Call, CallSettings
from bridge.live.limits import IDLE_TIMEOUT, LIMIT_REACHED, MAX_DURATION, NO_START, StreamLimits
from bridge.live.pcm_queue import PcmQueue, ReplayBuffer
from bridge.metrics import Metrics
from bridge.providers.events import Media, MediaFormat, StreamStart, StreamStop, Unknown
from tests.harness import LogCapture

pytestmark = pytest.mark.anyio


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def a_call(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[Call, LogCapture]]:
    logs = LogCapture()
    log = logs.logger()
    base = Settings(eka_access_token="t", create_budget_s=0, end_budget_s=0, **settings)
    ledger = Ledger(SqliteStore(str(tmp_path / "ledger.db")), boot_id="unit")
    await ledger.open()
    async with httpx.AsyncClient(timeout=1) as http:
        backoff = Backoff(0.01, 0.01)
        url = f"http://127.0.0.1:{closed_port()}"
        tokens = TokenProvider(
            http,
            base_url=url,
            client_id=None,
            client_secret=None,
            static_token="t",
            budget_s=0,
            backoff=backoff,
            log=log,
        )
        eka = EkaClient(http, tokens, base_url=url, create_budget_s=0, end_budget_s=0, backoff=backoff, log=log)
        metrics = Metrics(active_calls=lambda: 0, rejections=Counter())
        call = Call(provider="twilio", settings=CallSettings.of(base), eka=eka, log=log, ledger=ledger, metrics=metrics)
        try:
            yield call, logs
        finally:
            await ledger.close()


def start(encoding: str = "audio/x-mulaw", rate: int = 8000, call_id: str = "CA1") -> StreamStart:
    return StreamStart(call_id, "MZ1", "AC1", ("inbound",), MediaFormat(encoding, rate))


def media(payload: bytes = b"\xff" * 160, ts: int | None = 0, track: str = "inbound") -> Media:
    return Media(track, payload, ts, None)


# -- Call -----------------------------------------------------------------------------------------


async def test_an_unsupported_format_is_refused_and_opens_nothing(tmp_path: Path) -> None:
    async with a_call(tmp_path) as (call, _):
        call.handle(start("audio/x-l16", 44100))
        assert call.refused == "unsupported_format" and call.start is None and call.relay is None
        call.handle(media())
        summary = await call.finish("refused")
    assert summary["end_status"] == "no_start"
    assert summary["bad_messages"] == {"unsupported_format": 1, "media_before_start": 1}


async def test_a_call_with_no_audio_opens_no_session(tmp_path: Path) -> None:
    async with a_call(tmp_path) as (call, _):
        call.handle(start())
        call.handle(media(b""))  # an empty payload is no audio
        call.handle(StreamStop())
        assert call.stopped and call.relay is None
        summary = await call.finish("stop")
    assert summary["end_status"] == "no_audio" and summary["sessions"] == []


async def test_audio_opens_the_session_and_an_eka_that_cannot_be_reached_is_reported(tmp_path: Path) -> None:
    async with a_call(tmp_path) as (call, logs):
        call.handle(start())
        for i in range(10):
            call.handle(media(ts=20 * i))
        assert call.relay is not None
        summary = await asyncio.wait_for(call.finish("stop"), 10)
    assert summary["end_status"] == "not_created" and summary["failure"].startswith("create_session")
    assert summary["frames"] == 10 and summary["discarded_bytes"] > 0  # counted, not silently lost
    assert logs.named("call_failed")


async def test_unknown_event_names_are_counted_under_a_bounded_set(tmp_path: Path) -> None:
    async with a_call(tmp_path) as (call, _):
        for i in range(100):
            call.handle(Unknown(f"event-{i}" + "x" * 1000))
        await call.finish("socket_closed")
    assert len(call.ignored_events) == 17 and call.ignored_events["other"] == 84
    assert all(len(name) <= 40 for name in call.ignored_events)


async def test_finish_twice_is_a_programming_error(tmp_path: Path) -> None:
    async with a_call(tmp_path) as (call, _):
        await call.finish("stop")
        with pytest.raises(RuntimeError):
            await call.finish("stop")


# -- the PCM queue ----------------------------------------------------------------------------------


async def test_the_pcm_queue_batches_in_order_and_drains_after_close() -> None:
    queue = PcmQueue(10)
    queue.put(b"abcd")
    queue.put(b"efgh")
    assert await queue.next_batch(6) == b"abcdef"
    queue.close()
    assert queue.closed
    assert await queue.next_batch(6) == b"gh"  # fewer only at the end
    assert await queue.next_batch(6) is None
    with pytest.raises(RuntimeError):
        queue.put(b"late")


async def test_the_pcm_queue_drops_the_oldest_whole_samples_and_counts_them() -> None:
    queue = PcmQueue(8)
    queue.put(b"12345678")
    queue.put(b"abc")  # odd: the excess is rounded up to whole 16-bit samples
    assert queue.dropped_bytes == 4 and len(queue) == 7
    assert queue.high_water_bytes == 8
    queue.discard()
    queue.put(b"zz")
    assert queue.discarded_bytes == 9 and len(queue) == 0


def test_the_replay_buffer_keeps_a_second_and_gives_back_what_was_sent() -> None:
    """Blocks kept as their source come back as the very bytes sent, beside batches kept as sent."""
    mixer = Mixer(["inbound"], 8000, ULAW, render_samples=1600)
    replay = ReplayBuffer(32000)  # 1 s of 16 kHz PCM16
    sent = []
    rng = np.random.default_rng(7)
    for i in range(200):  # 4 s of 20 ms frames
        out = mixer.push("inbound", 20 * i, pcm16_to_ulaw(rng.normal(0, 4000, 160).astype(np.int16)))
        if len(out):
            batch = pcm16_bytes(out)
            sent.append(batch)
            replay.append(batch, mixer.source if len(sent) % 3 else None)  # every third kept as PCM
    assert len(sent) >= 15
    kept = list(replay)
    assert kept == sent[-len(kept) :]
    assert replay.size == sum(map(len, kept)) and 32000 <= replay.size < 32000 + len(sent[-1])
    assert not ReplayBuffer(0) and list(ReplayBuffer(0)) == []


async def test_a_batch_waits_for_its_size_and_knows_when_its_audio_arrived() -> None:
    queue = PcmQueue(100)
    waiting = asyncio.create_task(queue.next_batch(4))
    await asyncio.sleep(0)
    queue.put(b"ab")
    await asyncio.sleep(0)
    assert not waiting.done()
    queue.put(b"cd")
    assert await asyncio.wait_for(waiting, 1) == b"abcd"
    assert queue.batch_arrived_at is not None


async def test_a_parked_writer_sleeps_through_puts_and_wakes_on_close_or_wake() -> None:
    """While the relay is parked, the media path takes whole batches itself: puts must not wake it."""
    queue = PcmQueue(100)
    parked = asyncio.create_task(queue.parked())
    await asyncio.sleep(0)
    queue.put(b"abcdef")
    await asyncio.sleep(0)
    assert not parked.done()
    assert queue.take(4) == b"abcd" and queue.take(4) is None  # not a whole batch: left for later
    queue.wake()
    await asyncio.wait_for(parked, 1)
    parked = asyncio.create_task(queue.parked())
    await asyncio.sleep(0)
    queue.close()
    await asyncio.wait_for(parked, 1)
    assert queue.take(4) == b"ef"  # once closed, the tail goes too
    await asyncio.wait_for(queue.parked(), 1)  # closed: returns at once


# -- the socket's limits -----------------------------------------------------------------------------


class Silent:
    """A WebSocket that never sends anything (what the limits exist for)."""

    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("limits", "started", "reason"),
    [
        ({"media_idle_s": 5, "max_call_s": 5, "start_timeout_s": 0.05}, False, NO_START),
        ({"media_idle_s": 0.05, "max_call_s": 5, "start_timeout_s": 0.01}, True, IDLE_TIMEOUT),
        ({"media_idle_s": 5, "max_call_s": 0.05}, True, MAX_DURATION),
    ],
)
async def test_each_limit_ends_a_silent_socket(limits: dict[str, float], started: bool, reason: str) -> None:
    stream = StreamLimits(**limits)
    if started:
        stream.started()
    async with asyncio.timeout(2):  # in this task: the limits cancel the task that made them
        message = await stream.receive(Silent())  # type: ignore[arg-type]
    assert message == {"type": LIMIT_REACHED, "reason": reason}
    assert await stream.receive(Silent()) == message  # it stays reached  # type: ignore[arg-type]
    stream.close()


async def test_media_keeps_a_socket_from_idling_out() -> None:
    stream = StreamLimits(media_idle_s=0.2, max_call_s=5)
    for _ in range(4):
        await asyncio.sleep(0.1)
        stream.media_seen()
    assert stream.reached is None
    stream.close()


# -- logging ------------------------------------------------------------------------------------------


def test_json_logs_mask_anything_named_like_a_secret_or_a_payload() -> None:
    out = io.StringIO()
    bridge_logging.configure("json", stream=out, level=logging.INFO)
    try:
        log = structlog.get_logger("unit")
        log.info("hello", access_token="t0ken", payload=base64.b64encode(b"audio").decode(), call_sid="CA1")
        log.debug("hidden")
    finally:
        structlog.reset_defaults()
    (line,) = out.getvalue().splitlines()
    event = json.loads(line)
    assert event["access_token"] == "[redacted]" and event["payload"] == "[redacted]"
    assert event["call_sid"] == "CA1" and event["level"] == "info" and "timestamp" in event


def test_console_logs_are_plain_text() -> None:
    out = io.StringIO()
    bridge_logging.configure("console", stream=out)
    try:
        structlog.get_logger("unit").warning("readable", secret="s")
    finally:
        structlog.reset_defaults()
    text = out.getvalue()
    assert "readable" in text and "[redacted]" in text and "s\n" not in text


# -- Retry-After ----------------------------------------------------------------------------------------


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    from bridge.eka.retry import retry_after_seconds

    def answer(value: str | None) -> httpx.Response:
        return httpx.Response(429, headers={} if value is None else {"Retry-After": value})

    assert retry_after_seconds(answer("2.5")) == 2.5
    assert retry_after_seconds(answer("-3")) == 0.0
    assert retry_after_seconds(answer(None)) is None and retry_after_seconds(answer("soon")) is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after_seconds(answer(later)) or 0) <= 30
