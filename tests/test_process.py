"""Signals and crashes, with the bridge as a real subprocess (`python -m bridge serve`)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus

from bridge.audio.resample import HALF_SPAN
from bridge.providers.twilio.simulator import TwilioCall, plan_messages, replay
from tests.harness import assert_processed_whole
from tests.live.test_call import received_pcm, ulaw_call
from tests.live.test_failures import expected_stream
from tests.processes import TWILIO_TOKEN, BridgeProcess, a_ledger, audio_arrived, emulator_running

pytestmark = pytest.mark.anyio


async def test_sigterm_mid_call_drains_then_finalizes_before_exit(tmp_path: Path) -> None:
    audio = ulaw_call(20.0)
    async with emulator_running(tmp_path) as (emulator, eka_url):
        bridge = await BridgeProcess.start(eka_url, a_ledger(tmp_path), BRIDGE_DRAIN_S="1.5")
        try:
            url = bridge.stream_url
            calling = asyncio.create_task(
                replay(url, plan_messages(TwilioCall(), audio), pace=1.0, auth_token=TWILIO_TOKEN)
            )
            await emulator.wait_for(audio_arrived(emulator, 0.5), 15)
            bridge.proc.send_signal(signal.SIGTERM)
            await bridge.wait_for_line(lambda line: "draining calls" in line, 10)

            # Draining: not ready, new calls refused at the handshake, the live call goes on.
            async with httpx.AsyncClient() as http:
                ready = await http.get(f"http://127.0.0.1:{bridge.port}/readyz")
                health = await http.get(f"http://127.0.0.1:{bridge.port}/healthz")
            assert ready.status_code == 503 and health.status_code == 200
            with pytest.raises(InvalidStatus) as refused:
                await replay(url, plan_messages(TwilioCall(), audio[:1600]), pace=50, auth_token=TWILIO_TOKEN)
            assert refused.value.response.status_code == 503
            assert not calling.done()

            result = await asyncio.wait_for(calling, 30)  # finalized once the drain time is up
            code = await bridge.exit_code(30)
        finally:
            bridge.kill()
        (session,) = emulator.sessions.values()

    assert code == 0
    assert result.close_code == 1001 and not result.completed  # the bridge ended the call
    assert session.end_calls == 1 and session.stream_closed_at <= session.ended_at
    assert_processed_whole(session)
    pcm = received_pcm(session)
    full = expected_stream(audio)
    settled = len(pcm) - 2 * HALF_SPAN  # the flushed tail has silence for look-ahead, as it should
    assert np.array_equal(pcm[:settled], full[:settled])  # everything up to the end, in order
    assert len(pcm) >= 2 * 1.5 * 8000  # at least the drain period's worth
    assert any('"end_reason": "shutdown"' in line for line in bridge.lines)


async def test_a_second_signal_finalizes_at_once(tmp_path: Path) -> None:
    audio = ulaw_call(20.0)
    async with emulator_running(tmp_path) as (emulator, eka_url):
        bridge = await BridgeProcess.start(eka_url, a_ledger(tmp_path), BRIDGE_DRAIN_S="3600")
        try:
            calling = asyncio.create_task(
                replay(bridge.stream_url, plan_messages(TwilioCall(), audio), pace=1.0, auth_token=TWILIO_TOKEN)
            )
            await emulator.wait_for(audio_arrived(emulator, 0.3), 15)
            bridge.proc.send_signal(signal.SIGTERM)
            await bridge.wait_for_line(lambda line: "draining calls" in line, 10)
            bridge.proc.send_signal(signal.SIGINT)
            result = await asyncio.wait_for(calling, 15)
            code = await bridge.exit_code(15)
        finally:
            bridge.kill()
        (session,) = emulator.sessions.values()

    assert code == 0 and result.close_code == 1001
    assert session.end_calls == 1
    assert_processed_whole(session)


async def test_sigkill_mid_call_then_restart_ends_the_orphaned_session(tmp_path: Path) -> None:
    audio = ulaw_call(20.0)
    ledger = a_ledger(tmp_path)
    async with emulator_running(tmp_path) as (emulator, eka_url):
        first = await BridgeProcess.start(eka_url, ledger, BRIDGE_LEASE_TTL_S="2")
        try:
            calling = asyncio.create_task(
                replay(first.stream_url, plan_messages(TwilioCall(), audio), pace=1.0, auth_token=TWILIO_TOKEN)
            )
            await emulator.wait_for(audio_arrived(emulator, 0.3), 15)
            first.proc.kill()  # a crash: no finally, no End Session; its lease runs out in 2 s
            await first.exit_code(10)
            await asyncio.gather(calling, return_exceptions=True)
        finally:
            first.kill()
        (session,) = emulator.sessions.values()
        assert session.ended_at is None and session.end_calls == 0  # left open by the crash

        # The sweeper waits for the dead process's lease to expire, and then the settle time: the
        # server flushed the dead socket silently.
        second = await BridgeProcess.start(eka_url, ledger, BRIDGE_SWEEP_GRACE_S="0.2", BRIDGE_FLUSH_SETTLE_S="1.5")
        try:
            await emulator.wait_for(lambda: session.ended_at is not None, 15)
            swept = await second.wait_for_line(lambda line: "sweep_session_ended" in line, 10)
            second.proc.send_signal(signal.SIGTERM)
            code = await second.exit_code(15)
        finally:
            second.kill()

    assert session.end_calls == 1
    assert_processed_whole(session, flushed_on_stop=False)
    assert session.session_id in swept and '"orphan": true' in swept
    assert code == 0


async def test_refused_streams_leak_no_slot_and_two_signals_always_exit(tmp_path: Path) -> None:
    """The attack that once leaked a slot per socket and made the process unkillable: Vobiz L16
    at 44.1 kHz with byte-order detection. Refused (1003), no session, the slot released; a
    live call meanwhile; then SIGTERM twice exits within the finish budget."""
    from bridge.providers.vobiz.simulator import VobizCall
    from bridge.providers.vobiz.simulator import plan_messages as vobiz_plan

    async with emulator_running(tmp_path) as (emulator, eka_url):
        bridge = await BridgeProcess.start(eka_url, a_ledger(tmp_path), BRIDGE_FLUSH_SETTLE_S="1")
        try:
            vobiz_url = f"ws://127.0.0.1:{bridge.port}/vobiz/stream"
            for _ in range(5):
                plan = vobiz_plan(VobizCall(), np.zeros(8000, dtype=np.int16), content_type="audio/x-l16;rate=16000")
                plan[0][1]["start"]["mediaFormat"]["sampleRate"] = 44100  # what the simulator will not send
                result = await replay(vobiz_url, plan, pace=1000, close_after=False, server_close_timeout=5)
                assert result.close_code == 1003 and result.closed_by == "server"
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"http://127.0.0.1:{bridge.port}/healthz")).json()
            assert health["active_calls"] == 0  # every refused socket released its slot

            calling = asyncio.create_task(
                replay(
                    bridge.stream_url, plan_messages(TwilioCall(), ulaw_call(20.0)), pace=1.0, auth_token=TWILIO_TOKEN
                )
            )
            await emulator.wait_for(audio_arrived(emulator, 0.3), 15)
            began = time.monotonic()
            bridge.proc.send_signal(signal.SIGTERM)
            await bridge.wait_for_line(lambda line: "draining calls" in line, 10)
            bridge.proc.send_signal(signal.SIGTERM)
            code = await bridge.exit_code(30)
            exited_after = time.monotonic() - began
            await asyncio.wait_for(calling, 10)
        finally:
            bridge.kill()
        (session,) = emulator.sessions.values()

    assert code == 0 and exited_after < 10  # the flush (1 s) and End, not a drain or a hang
    assert_processed_whole(session)
    assert any('"reason": "unsupported_format"' in line for line in bridge.lines)


async def test_workers_need_a_shared_ledger(tmp_path: Path) -> None:
    """N processes on one SQLite file would each think the others' calls were orphans."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "serve", "--workers", "2", "--port", "0",
        env={"PATH": os.environ.get("PATH", ""), "BRIDGE_LEDGER_PATH": str(tmp_path / "ledger.db"),
             "EKA_ACCESS_TOKEN": "t"},
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert b"--workers needs BRIDGE_DATABASE_URL" in err


async def test_a_serving_process_freezes_start_up_out_of_the_collector() -> None:
    """Full collections scanned every long-lived object, a pause that grew with the calls: a
    process that serves freezes what start-up made and collects young objects less often."""
    script = (
        "import gc; from bridge.cli import GC_YOUNG_THRESHOLD, quiet_collector; "
        "before = gc.get_freeze_count(); quiet_collector(); "
        "print(before, gc.get_freeze_count() > 1000, gc.get_threshold()[0] == GC_YOUNG_THRESHOLD)"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert out.split() == [b"0", b"True", b"True"]
