"""A fleet: two or three real bridge processes on one PostgreSQL ledger, and the emulator.

Every event about a call reaches the process that owns it, wherever it lands; a dead process's
work is taken over once its lease expires, by exactly one other. These run in the suite's
PostgreSQL pass (``make test`` runs both): a fleet needs a shared ledger.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.after_call.ledger import Ledger, PostgresStore, SessionResult
from bridge.emulator import Emulator
from bridge.providers.twilio.simulator import TwilioCall, replay
from bridge.providers.twilio.simulator import plan_messages as twilio_messages
from bridge.providers.vobiz.simulator import VobizCall, plan_connections, plan_messages
from bridge.simulator.audio import load_ulaw
from tests import SAMPLES, postgres
from tests.harness import assert_processed_whole
from tests.live.test_call import received_pcm, ulaw_call
from tests.processes import TWILIO_TOKEN, BridgeProcess, audio_arrived, emulator_running
from tests.receiver import SECRET, Receiver

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not postgres.wanted(), reason="a fleet shares a PostgreSQL ledger: run in the PostgreSQL pass"),
]

CLINICIAN = SAMPLES / "clinician.wav"
STREAM_TOKEN = "Tok3nForVobizStreams0123"
EKA_KEY = "eka-webhook-signing-key-0123456789"
API_KEY = "calls-api-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: A fleet that notices a death in seconds: leases of 2 s, the settle time after them 0.5 s.
FLEET = {
    "BRIDGE_LEASE_TTL_S": "2",
    "BRIDGE_FLUSH_SETTLE_S": "0.5",
    "BRIDGE_SWEEP_GRACE_S": "0.2",
    "BRIDGE_SWEEP_INTERVAL_S": "300",  # a member's death, not the interval, must wake the sweep
    "BRIDGE_DEV": "true",  # unsigned provider webhooks, as `make run`
    "VOBIZ_STREAM_TOKEN": STREAM_TOKEN,
    "BRIDGE_API_KEY": API_KEY,
}


@asynccontextmanager
async def fleet(eka_url: str, count: int, **env: str) -> AsyncIterator[list[BridgeProcess]]:
    """``count`` bridge processes on one fresh PostgreSQL database; each is stopped (SIGTERM)
    at the end unless the test already stopped it."""
    url = postgres.database_url()
    assert url is not None
    async with AsyncExitStack() as stack:
        processes = []
        for _ in range(count):
            process = await BridgeProcess.start(eka_url, url, **{**FLEET, **env})
            stack.callback(process.kill)
            processes.append(process)
        await asyncio.gather(*(p.wait_for_event("fleet_events_listening", 10) for p in processes))
        yield processes
        for process in processes:
            if process.proc.returncode is None:
                process.proc.send_signal(signal.SIGTERM)
        for process in processes:
            await process.exit_code(20)


def vobiz(process: BridgeProcess) -> str:
    return f"ws://127.0.0.1:{process.port}/vobiz/stream/{STREAM_TOKEN}"


def only_session(emulator: Emulator) -> Any:
    (session,) = emulator.sessions.values()
    return session


async def test_a_vobiz_reconnect_that_lands_on_the_other_process_stays_one_session(tmp_path: Path) -> None:
    ulaw = load_ulaw(CLINICIAN)
    first, second = plan_connections(VobizCall(), ulaw, reconnect_after_s=4.0)
    async with (
        emulator_running(tmp_path) as (emulator, eka_url),
        fleet(eka_url, 2, VOBIZ_RECONNECT_GRACE_S="3") as (a, b),
    ):
        before = await replay(vobiz(a), first.plan, pace=25.0)
        after = await replay(vobiz(b), second.plan, pace=25.0)  # the load balancer sent it elsewhere
        await emulator.wait_for(lambda: only_session(emulator).ended_at is not None, 20)
        (relayed,) = await b.wait_for_event("stream_relayed_to_owner", 5)
        (resumed,) = await a.wait_for_event("stream_resumed", 5)
        (summary,) = await a.wait_for_event("call_summary", 10)

    session = only_session(emulator)
    assert before.media_sent and after.media_sent
    assert len(emulator.sessions) == 1 and session.end_calls == 1  # one consultation, one note
    assert len(received_pcm(session)) == 2 * len(ulaw)  # all the audio, no gap, no repeat
    assert summary["telephony_reconnects"] == 1 and summary["gap_filled_ms"] == {"inbound": 0}
    assert not b.events("call_summary")  # the call was never B's
    assert_processed_whole(session)


async def test_a_duplicate_stream_for_a_live_call_on_the_other_process_is_refused_not_a_second_session(
    tmp_path: Path,
) -> None:
    """Twilio has been seen to open two streams for one call: the second landing on another
    process is relayed to the owner, which refuses it; the call goes on whole."""
    call = TwilioCall()
    async with (
        emulator_running(tmp_path) as (emulator, eka_url),
        fleet(eka_url, 2) as (a, b),
    ):
        calling = asyncio.create_task(
            replay(a.stream_url, twilio_messages(call, ulaw_call(3.0)), pace=1.0, auth_token=TWILIO_TOKEN)
        )
        await emulator.wait_for(audio_arrived(emulator, 0.3), 15)
        # In real time, as Twilio streams: the refusal comes back long before it would end.
        duplicate = await replay(b.stream_url, twilio_messages(call, ulaw_call(1.0)), pace=1.0, auth_token=TWILIO_TOKEN)
        original = await asyncio.wait_for(calling, 10)
        await emulator.wait_for(lambda: only_session(emulator).ended_at is not None, 10)
        (refused,) = await a.wait_for_event("twilio_rejected", 5)

    assert duplicate.close_code == 1008 and not duplicate.completed
    assert original.completed and len(emulator.sessions) == 1
    assert refused["reason"] == "duplicate_call"
    assert only_session(emulator).end_calls == 1
    assert_processed_whole(only_session(emulator))


async def test_a_hangup_sent_to_the_other_process_ends_the_call_within_a_second(tmp_path: Path) -> None:
    call = VobizCall()
    async with (
        emulator_running(tmp_path) as (emulator, eka_url),
        fleet(eka_url, 2, VOBIZ_RECONNECT_GRACE_S="600") as (a, b),
    ):
        calling = asyncio.create_task(replay(vobiz(a), plan_messages(call, load_ulaw(CLINICIAN)), pace=1.0))
        await emulator.wait_for(audio_arrived(emulator, 0.3), 15)
        async with httpx.AsyncClient(base_url=b.url) as http:
            response = await http.post("/vobiz/hangup", data={"CallUUID": call.call_id, "Event": "Hangup"})
        answered = time.monotonic()
        result = await asyncio.wait_for(calling, 5)
        closed_after = time.monotonic() - answered
        await emulator.wait_for(lambda: only_session(emulator).ended_at is not None, 10)
        (summary,) = await a.wait_for_event("call_summary", 10)
        (heard,) = await a.wait_for_event("fleet_end_call", 5)

    session = only_session(emulator)
    assert response.status_code == 204
    assert result.close_code == 1000 and not result.completed
    assert closed_after < 1.0
    assert summary["end_reason"] == "hangup" and session.end_calls == 1
    assert heard["call_sid"] == call.call_id
    assert_processed_whole(session)


async def test_an_eka_webhook_sent_to_the_other_process_completes_the_result_with_one_delivery(
    tmp_path: Path,
) -> None:
    async with (
        Receiver().running() as rx,
        emulator_running(tmp_path, processing_s=0.3, webhook_signing_key=EKA_KEY) as (emulator, eka_url),
        fleet(
            eka_url,
            2,
            EKA_WEBHOOK_SIGNING_KEY=EKA_KEY,
            EKA_WEBHOOK_FALLBACK_POLL_S="3600",  # without the webhook, nothing is fetched for an hour
            EKA_RESULT_POLL_S="0.05",
            RESULT_WEBHOOK_URL=rx.url,
            RESULT_WEBHOOK_SECRET=SECRET,
        ) as (a, b),
    ):
        emulator.options.webhook_url = b.url + "/eka/webhook"  # Eka's notification lands on B
        call = TwilioCall()
        await replay(a.stream_url, twilio_messages(call, ulaw_call(1.0)), pace=25.0, auth_token=TWILIO_TOKEN)
        (delivered,) = await rx.wait_delivered(1, 15)
        (recorded,) = await a.wait_for_event("eka_result", 5)
        async with httpx.AsyncClient(base_url=b.url, headers=AUTH) as http:  # the fleet's view, from B
            record = (await http.get(f"/calls/{call.call_sid}")).json()
            members = (await http.get("/fleet")).json()

    session = only_session(emulator)
    assert emulator.webhooks_sent and all(sent.status == 200 for sent in emulator.webhooks_sent)
    assert recorded["via"] == "webhook" and recorded["session_id"] == session.session_id
    assert delivered.json["call_sid"] == call.call_sid and delivered.json["status"] == "completed"
    assert len(rx.attempts) == 1 and emulator.count("get", 200) == 1  # fetched once, delivered once
    assert not b.events("eka_result")
    (ready_a,) = a.events("bridge_ready")
    assert record["process"] == ready_a["process"] and record["delivery"]["status"] == "delivered"
    assert members["live"] == 2 and {m["process"] for m in members["members"]} >= {ready_a["process"]}


async def test_workers_share_one_port_and_one_sigterm_drains_them_all(tmp_path: Path) -> None:
    url = postgres.database_url()
    assert url is not None
    calls = [TwilioCall() for _ in range(4)]
    async with emulator_running(tmp_path) as (emulator, eka_url):
        supervisor = await BridgeProcess.start(
            eka_url, url, "--workers", "2", ready="2 workers on", BRIDGE_DRAIN_S="1.5", **FLEET
        )
        try:
            ready = await supervisor.wait_for_event("fleet_events_listening", 15, count=2)
            async with httpx.AsyncClient(base_url=supervisor.url, headers=AUTH) as http:
                members = (await http.get("/fleet")).json()
            calling = [
                asyncio.create_task(
                    replay(
                        supervisor.stream_url, twilio_messages(c, ulaw_call(10.0)), pace=1.0, auth_token=TWILIO_TOKEN
                    )
                )
                for c in calls
            ]
            await emulator.wait_for(
                lambda: len(emulator.sessions) == 4 and all(s.audio for s in emulator.sessions.values()), 15
            )
            supervisor.proc.send_signal(signal.SIGTERM)
            code = await supervisor.exit_code(30)
            results = await asyncio.gather(*calling)
        finally:
            supervisor.kill()

    drains = [line for line in supervisor.lines if "draining calls" in line]
    assert len(ready) == 2 and members["live"] == 2
    assert len(drains) == 2  # each worker drained once: the signal was passed on, once
    assert code == 0 and all(r.close_code == 1001 for r in results)  # finalized after the drain
    assert len(emulator.sessions) == 4 and all(s.end_calls == 1 for s in emulator.sessions.values())
    for session in emulator.sessions.values():
        assert_processed_whole(session)


async def test_a_killed_process_is_taken_over_once_its_lease_expires_and_nothing_is_done_twice(
    tmp_path: Path,
) -> None:
    """A carries three calls: one whose delivery it keeps retrying (the clinic answers 500), one
    whose result it is still waiting for, one live. It is killed. Once its lease expires, exactly
    one of B and C ends the live call's session, one follows the pending result, one makes the
    pending delivery; every call is delivered once, nothing is ended or fetched twice."""
    async with (
        Receiver(fail_next=10**6).running() as rx,
        emulator_running(tmp_path, processing_s=3600) as (emulator, eka_url),
        fleet(
            eka_url,
            3,
            EKA_RESULT_POLL_S="0.05",
            RESULT_WEBHOOK_URL=rx.url,
            RESULT_WEBHOOK_SECRET=SECRET,
            RESULT_WEBHOOK_BACKOFF_S="0.05",
            RESULT_WEBHOOK_BACKOFF_MAX_S="0.2",
        ) as (a, b, c),
    ):
        delivering, polling, live = TwilioCall(), TwilioCall(), TwilioCall()
        quick = twilio_messages(delivering, ulaw_call(1.0))
        await replay(a.stream_url, quick, pace=25.0, auth_token=TWILIO_TOKEN)
        await a.wait_for_event("call_summary", 10)
        assert emulator.complete_processing() == 1
        await rx.wait_attempts(1, 10)  # its delivery is failing, and due again soon
        quick = twilio_messages(polling, ulaw_call(1.0))
        await replay(a.stream_url, quick, pace=25.0, auth_token=TWILIO_TOKEN)
        await a.wait_for_event("call_summary", 10, count=2)
        finished = {s.session_id for s in emulator.sessions.values()}
        calling = asyncio.create_task(
            replay(a.stream_url, twilio_messages(live, ulaw_call(20.0)), pace=1.0, auth_token=TWILIO_TOKEN)
        )
        await emulator.wait_for(
            lambda: len(emulator.sessions) == 3 and all(s.audio for s in emulator.sessions.values()), 10
        )
        a.proc.kill()  # a crash: no End, no lease renewal
        await a.exit_code(10)
        killed = time.monotonic()
        rx.fail_next = 0  # the clinic is back
        await asyncio.gather(calling, return_exceptions=True)

        await emulator.wait_for(lambda: all(s.ended_at is not None for s in emulator.sessions.values()), 15)
        ended_after = time.monotonic() - killed
        assert emulator.complete_processing() == 2
        delivered = await rx.wait_delivered(3, 15)
        sweeps = b.events("sweep_session_ended") + c.events("sweep_session_ended")
        polls = b.events("result_poll_adopted") + c.events("result_poll_adopted")
        deliveries = b.events("result_delivery_adopted") + c.events("result_delivery_adopted")

    assert ended_after < 2 + 0.5 + 3  # the lease, the settle time, and the sweep it woke
    assert all(s.end_calls == 1 for s in emulator.sessions.values())  # each ended once, fleet-wide
    (swept,) = sweeps
    assert swept["call_sid"] == live.call_sid and swept["orphan"] is True
    assert [r["call_sid"] for r in polls] == [polling.call_sid]  # the live call's was queued by its sweep
    assert [r["call_sid"] for r in deliveries] == [delivering.call_sid]
    assert sorted(d.json["call_sid"] for d in delivered) == sorted(
        [delivering.call_sid, polling.call_sid, live.call_sid]
    )
    assert len(rx.delivered) == 3 and emulator.count("get", 200) == 3  # nothing fetched or delivered twice
    for session in emulator.sessions.values():  # the killed call's socket died without a stop
        assert_processed_whole(session, flushed_on_stop=session.session_id in finished)


async def test_processes_racing_over_the_same_pending_ends_and_deliveries_each_act_exactly_once() -> None:
    """Three processes claim at once, over and over, the work a dead fourth left: 40 sessions to
    end, 40 results to follow, 40 deliveries to make. Each row goes to exactly one."""
    url = postgres.database_url()
    assert url is not None
    dead = Ledger(PostgresStore(url), boot_id="dead", keep_results=True)
    await dead.open()
    for i in range(40):
        call, session = f"CA-left-{i}", f"ses_left_{i:012d}"
        await dead.call_started(call, "twilio")
        await dead.session_opened(session, call, "twilio", 1)
        await dead.session_opened(f"ses_pend_{i:012d}", call, "twilio", 2)
        await dead.session_ended(f"ses_pend_{i:012d}", "ended")
        await dead.call_finished(call, {})
    await dead.session_end_pending("ses_left_000000000000", "budget")
    await dead.close()  # it left (or its lease ran out): all of it is up for grabs

    racers = [Ledger(PostgresStore(url), boot_id=f"racer-{n}", keep_results=True) for n in range(3)]
    await asyncio.gather(*(r.open() for r in racers))
    try:
        ends = await asyncio.gather(*(r.claim_unsettled(settle_s=0) for r in racers for _ in range(3)))
        polls = await asyncio.gather(*(r.awaiting_results() for r in racers for _ in range(3)))
        done = SessionResult("completed", 200, 1, "poll", transcript="t", templates=[])
        for claimed in polls:  # each process records what it claimed: the deliveries become due
            for row in claimed:
                await racers[0].record_result(row.session_id, done)
        for i in range(40):
            await racers[0].record_result(f"ses_left_{i:012d}", done)
        due = await asyncio.gather(*(r.due_deliveries(time.time() + 1, 100) for r in racers for _ in range(3)))
    finally:
        await asyncio.gather(*(r.close() for r in racers))

    ended = [row.session_id for claimed in ends for row in claimed]
    followed = [row.session_id for claimed in polls for row in claimed]
    delivering = [job.delivery_id for jobs in due for job in jobs]
    assert sorted(ended) == sorted(f"ses_left_{i:012d}" for i in range(40))  # each exactly once
    assert sorted(followed) == sorted(f"ses_pend_{i:012d}" for i in range(40))
    assert len(delivering) == 40 == len(set(delivering))
