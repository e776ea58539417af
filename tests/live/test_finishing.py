"""How a call finishes against an EkaScribe that flushes late and expires sessions (spec §3.6).

The emulator runs with its realistic defaults here: audio reaches storage in 20 s chunks, a
connection's last partial chunk is flushed 1 s after its receive loop ends, and End processes
only what storage holds when it arrives. So each test asserts on the audio EkaScribe
*processed*, not on what merely arrived: an End that raced the flush would fail it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bridge.config import ConfigError, Settings
from bridge.eka.client import DEFAULT_SESSION_TTL_S, parse_expires_at
from bridge.providers.twilio.simulator import TwilioCall, plan_messages, replay
from tests.after_call.test_results import delivering
from tests.harness import Harness, assert_processed_whole, running
from tests.live.test_call import PACE, finished, reference_16k, si_snr_db, ulaw_call
from tests.receiver import Receiver

pytestmark = pytest.mark.anyio


def processed_pcm(session: Any) -> np.ndarray:
    return np.frombuffer(session.processed_audio, dtype="<i2")


def metric(h: Harness, name: str) -> float:
    for line in h.bridge.metrics.exposition().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


@pytest.mark.parametrize("seconds", [3.0, 21.0], ids=["under-one-chunk", "just-over-one-chunk"])
@pytest.mark.parametrize("wire", ["json", "binary"])
async def test_every_second_sent_is_processed(tmp_path: Path, seconds: float, wire: str) -> None:
    audio = ulaw_call(seconds)
    async with running(tmp_path, stream_format=wire) as h:
        await replay(h.twilio_url, plan_messages(TwilioCall(), audio), pace=PACE)
        summary = await finished(h)
        session = h.only_session()

    assert session.wire_mode == wire and session.stop_received
    assert_processed_whole(session)
    pcm = processed_pcm(session)
    assert len(pcm) == 2 * len(audio)
    assert si_snr_db(pcm, reference_16k(audio)) > 45
    (part,) = summary["sessions"]
    assert part["finish"] == "flushed" and part["end_status"] == "ended"
    assert part["streamed_s"] == pytest.approx(seconds, abs=0.001)
    # The bridge waited out the server's flush (1 s in the emulator), and says so.
    assert 900 <= part["flush_wait_ms"] < 5000 and summary["flush_wait_ms"] == part["flush_wait_ms"]
    assert metric(h, "bridge_upstream_flush_wait_seconds_count") == 1
    assert metric(h, "bridge_upstream_flush_timeouts_total") == 0


async def test_a_flush_slower_than_the_wait_is_settled_then_ended_and_counted(tmp_path: Path) -> None:
    audio = ulaw_call(2.0)
    async with running(tmp_path, emulator_options={"flush_delay_s": 1.2}, flush_wait_s=0.3, flush_settle_s=1.5) as h:
        await replay(h.twilio_url, plan_messages(TwilioCall(), audio), pace=PACE)
        summary = await finished(h)
        session = h.only_session()
        timeouts = metric(h, "bridge_upstream_flush_timeouts_total")

    # No close came in time: the bridge closed, waited the settle time, and Ended anyway.
    assert session.server_closed_at is None and session.end_calls == 1
    assert session.flushed_at is not None and session.ended_at is not None and session.flushed_at <= session.ended_at
    assert session.processed_audio == bytes(session.audio) and len(session.audio) == 4 * len(audio)
    (part,) = summary["sessions"]
    assert part["finish"] == "flush_timeout" and part["end_status"] == "ended"
    assert timeouts == 1
    (line,) = h.logs.named("upstream_flush_timeout")
    assert line["log_level"] == "warning" and line["flush_wait_s"] == 0.3 and line["settle_s"] == 1.5


@pytest.mark.parametrize("expires_format", ["unix", "iso"])
async def test_a_call_longer_than_its_session_rolls_over_without_a_gap(tmp_path: Path, expires_format: str) -> None:
    """Sessions live 3 s here; the call lasts 7 s in real time: several parts, each ended while
    still valid, the processed audio of all of them the whole call exactly, one delivery."""
    audio = ulaw_call(7.0)
    emulator = {"session_ttl_s": 3.0, "flush_delay_s": 0.3, "expires_format": expires_format, "processing_s": 0.05}
    async with (
        Receiver().running() as rx,
        running(
            tmp_path,
            emulator_options=emulator,
            rollover_margin_s=1.5,
            flush_wait_s=1.0,
            flush_settle_s=0.5,
            end_budget_s=1.0,
            **delivering(rx),
        ) as h,
    ):
        await replay(h.twilio_url, plan_messages(TwilioCall(), audio), pace=1.0)
        summary = await finished(h, count=1)
        assert h.bridge.delivery is not None
        await h.bridge.delivery.wait_delivered(1, 10)
        sessions = [h.emulator.sessions[p["session_id"]] for p in summary["sessions"]]
        rollovers = metric(h, "bridge_session_rollovers_total")

    parts = summary["sessions"]
    assert len(parts) >= 3 and summary["rollovers"] == len(parts) - 1 == rollovers
    assert [p["opened_because"] for p in parts] == ["call_start"] + ["rollover"] * (len(parts) - 1)
    # Each part was finished (stop, the server's flush) and ended before it expired: an End
    # after expiry is answered 410 and would show as "gone".
    assert all(p["finish"] == "flushed" and p["end_status"] == "ended" for p in parts)
    for session in sessions:
        assert_processed_whole(session)
        assert session.status in ("processing", "completed")
        ended_wall = time.time() - (time.monotonic() - session.ended_at)
        assert ended_wall < session.expires_at.timestamp()
    for previous, session in itertools.pairwise(sessions):
        assert session.request["additional_data"]["continues_session"] == previous.session_id
        assert session.request["additional_data"]["reason"] == "rollover"
    # No gap and no overlap: the parts' processed audio, in order, is the call.
    pcm = np.concatenate([processed_pcm(s) for s in sessions])
    assert len(pcm) == 2 * len(audio)
    assert si_snr_db(pcm, reference_16k(audio)) > 45
    assert sum(p["streamed_s"] for p in parts) == pytest.approx(7.0, abs=0.01)
    (attempt,) = rx.attempts  # one delivery for the call, with every part
    assert attempt.json["session_ids"] == [p["session_id"] for p in parts]


def test_expires_at_is_read_in_both_forms() -> None:
    assert parse_expires_at(1767225600) == 1767225600.0  # Eka's server: Unix seconds
    assert parse_expires_at(1767225600.5) == 1767225600.5
    assert parse_expires_at("1767225600") == 1767225600.0
    assert parse_expires_at(1767225600123) == pytest.approx(1767225600.123)  # milliseconds
    assert parse_expires_at("2026-01-01T00:00:00Z") == 1767225600.0  # the docs: ISO 8601
    assert parse_expires_at("2026-01-01T05:30:00+05:30") == 1767225600.0
    assert parse_expires_at("2026-01-01T00:00:00") == 1767225600.0  # no zone: UTC
    for unreadable in (None, "", "soon", True, -5, float("nan"), {}, []):
        assert parse_expires_at(unreadable) is None
    assert DEFAULT_SESSION_TTL_S == 3600.0


def test_the_finish_settings_are_read_and_the_margin_must_cover_a_finish() -> None:
    base = {"EKA_ACCESS_TOKEN": "eka-token"}
    default = Settings.from_env(base)
    assert (default.stream_format, default.flush_wait_s, default.flush_settle_s) == ("json", 30.0, 5.0)
    assert default.rollover_margin_s == 300.0 and default.finalize_budget_s == 30 + 5 + 120
    # A 4 h call (BRIDGE_MAX_CALL_S) on hour-long sessions: each part ends well inside its hour.
    assert default.max_call_s == 4 * 3600 and default.rollover_margin_s >= default.finalize_budget_s
    tuned = Settings.from_env(
        {**base, "BRIDGE_FLUSH_WAIT_S": "10", "BRIDGE_FLUSH_SETTLE_S": "2", "BRIDGE_ROLLOVER_MARGIN_S": "600"}
    )
    assert (tuned.flush_wait_s, tuned.flush_settle_s, tuned.rollover_margin_s) == (10, 2, 600)
    with pytest.raises(ConfigError) as error:
        Settings.from_env({**base, "BRIDGE_ROLLOVER_MARGIN_S": "60", "EKA_END_RETRY_BUDGET_S": "120"})
    assert any("BRIDGE_ROLLOVER_MARGIN_S=60 must cover" in p for p in error.value.problems)


async def test_a_rollover_whose_create_fails_keeps_streaming_and_tries_again(tmp_path: Path) -> None:
    audio = ulaw_call(4.0)
    emulator = {"session_ttl_s": 4.0, "flush_delay_s": 0.2}
    async with running(
        tmp_path,
        emulator_options=emulator,
        rollover_margin_s=2.0,
        flush_wait_s=0.5,
        flush_settle_s=0.3,
        end_budget_s=0.5,
        create_budget_s=0.0,  # one attempt per Create: the fault below fails exactly one
    ) as h:
        calling = asyncio.create_task(replay(h.twilio_url, plan_messages(TwilioCall(), audio), pace=1.0))
        await h.emulator.wait_for(lambda: len(h.emulator.sessions) == 1, 5)
        h.emulator.faults.fail("create", 503, count=1)  # the first rollover's Create fails
        await asyncio.wait_for(calling, 10)
        summary = await finished(h)
        failed = h.logs.named("rollover_failed")
        sessions = [h.emulator.sessions[p["session_id"]] for p in summary["sessions"]]

    assert failed and summary["rollovers"] >= 1
    assert all(p["end_status"] == "ended" and p["finish"] == "flushed" for p in summary["sessions"])
    for session in sessions:
        assert_processed_whole(session)
    pcm = np.concatenate([processed_pcm(s) for s in sessions])
    assert len(pcm) == 2 * len(audio)  # nothing lost while the next session could not be had
