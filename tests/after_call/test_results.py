"""Results: Get Session polling after End, signed delivery to the clinic, restarts, Eka's webhook.

Real servers throughout: the emulator (processing, outcomes, its own signed v2rx.completed
webhook), the bridge, and a clinic receiver that checks signatures with its own HMAC code.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.after_call.eka_webhook import session_of
from bridge.after_call.ledger import Ledger, SessionResult, open_store
from bridge.emulator import Emulator, EmulatorOptions
from bridge.emulator.results import transcript
from bridge.emulator.webhooks import SentWebhook
from bridge.providers.twilio.simulator import TwilioCall, plan_messages, replay
from bridge.signing import sign
from tests import ROOT, postgres
from tests.harness import CLIENT_ID, CLIENT_SECRET, LogCapture, bridge_running, running
from tests.live.test_call import CALL_TIMEOUT, PACE, finished, ulaw_call
from tests.receiver import SECRET, Receiver
from tests.servers import serve

pytestmark = pytest.mark.anyio
WAIT = 10.0
EKA_KEY = "eka-webhook-signing-key-0123456789"
PAYLOAD_KEYS = {
    "delivery_id", "call_sid", "provider", "session_ids", "status", "sessions",
    "transcript", "templates", "started_at", "ended_at",
}  # fmt: skip


def readme_verify() -> Any:
    """The ``verify`` function the docs give clinics, exactly as written there."""
    root = ROOT
    text = "".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    block = next(b for b in text.split("```python\n")[1:] if "def verify(" in b).split("```")[0]
    namespace: dict[str, Any] = {}
    exec(block, namespace)  # noqa: S102 - our own documentation
    return namespace["verify"]


def delivering(receiver: Receiver) -> dict[str, Any]:
    """Bridge settings for fast polls and fast delivery retries to ``receiver``."""
    return {
        "result_poll_s": 0.05,
        "result_webhook_url": receiver.url,
        "result_webhook_secret": SECRET,
        "result_webhook_backoff_s": 0.02,
        "result_webhook_backoff_max_s": 0.1,
    }


async def test_a_calls_result_is_polled_and_delivered_signed(tmp_path: Path) -> None:
    audio = ulaw_call(1.0)
    call = TwilioCall()
    async with (
        Receiver().running() as rx,
        running(
            tmp_path, emulator_options={"processing_s": 0.3}, templates=("clinical_notes_template",), **delivering(rx)
        ) as h,
    ):
        await replay(h.twilio_url, plan_messages(call, audio), pace=PACE)
        await finished(h)
        assert h.bridge.delivery is not None
        await h.bridge.delivery.wait_delivered(1, WAIT)
        session = h.only_session()
        gets = [r.status for r in h.emulator.requests if r.op == "get"]
        result = await h.bridge.ledger.result(session.session_id)
        delivery = await h.bridge.ledger.delivery_of(call.call_sid)
        events = h.logs.events

    (attempt,) = rx.attempts
    assert attempt.signature_ok and attempt.answered == 200
    verify = readme_verify()
    assert verify(SECRET, attempt.headers["x-bridge-signature"], attempt.body)
    assert not verify(SECRET, attempt.headers["x-bridge-signature"], attempt.body + b" ")
    assert not verify("another-secret-0123456789", attempt.headers["x-bridge-signature"], attempt.body)
    body = attempt.json
    assert set(body) == PAYLOAD_KEYS
    assert body["delivery_id"] == attempt.headers["x-bridge-delivery-id"] == delivery["delivery_id"]
    assert body["call_sid"] == call.call_sid and body["provider"] == "twilio"
    assert body["session_ids"] == [session.session_id] and body["status"] == "completed"
    assert body["sessions"] == [{"session_id": session.session_id, "part": 1, "status": "completed"}]
    assert body["transcript"] == transcript(session)  # the emulator's: "Received 1.00 s of audio ..."
    assert [list(t) for t in body["templates"]] == [["clinical_notes_template"]]
    started, ended = (datetime.fromisoformat(body[k].replace("Z", "+00:00")) for k in ("started_at", "ended_at"))
    assert started <= ended
    # Polled until no longer 202: at least one 202 (processing takes 0.3 s), then one 200.
    assert gets[0] == 202 and gets[-1] == 200 and gets.count(200) == 1
    assert result["status"] == "completed" and result["via"] == "poll" and result["polls"] == len(gets)
    assert result["transcript"] is None and result["templates"] is None  # erased once delivered
    assert delivery["state"] == "delivered" and delivery["attempts"] == 1
    assert transcript(session) not in repr(events)  # delivered, never logged


async def test_delivery_is_retried_until_the_receiver_accepts(tmp_path: Path) -> None:
    audio = ulaw_call(0.5)
    call = TwilioCall()
    async with Receiver(fail_next=2).running() as rx, running(tmp_path, **delivering(rx)) as h:
        await replay(h.twilio_url, plan_messages(call, audio), pace=PACE)
        await finished(h)
        assert h.bridge.delivery is not None
        await h.bridge.delivery.wait_delivered(1, WAIT)
        delivery = await h.bridge.ledger.delivery_of(call.call_sid)
        metric = h.bridge.metrics.registry.get_sample_value
        outcomes = {o: metric("bridge_result_deliveries_total", {"outcome": o}) for o in ("retried", "delivered")}
        failures = h.logs.named("result_delivery_failed")

    assert [a.answered for a in rx.attempts] == [500, 500, 200]  # exactly three attempts
    assert all(a.signature_ok for a in rx.attempts)
    assert len({a.json["delivery_id"] for a in rx.attempts}) == 1  # one stable id to de-duplicate on
    assert len({a.json["transcript"] for a in rx.attempts}) == 1  # the same content each time
    assert delivery["state"] == "delivered" and delivery["attempts"] == 3
    assert outcomes == {"retried": 2.0, "delivered": 1.0}
    assert [f["reason"] for f in failures] == ["http_500", "http_500"]
    assert all(f["delivery_id"] == rx.attempts[0].json["delivery_id"] for f in failures)


async def test_a_restart_between_end_and_result_resumes_polling(tmp_path: Path) -> None:
    """The first bridge ends the session and starts polling; it stops while Eka is still
    processing. The second, on the same ledger, picks the poll up and delivers."""
    audio = ulaw_call(1.0)
    call = TwilioCall()
    ledger = tmp_path / "ledger.db"
    emulator = Emulator(
        EmulatorOptions(
            audio_dir=tmp_path / "eka-audio", client_id=CLIENT_ID, client_secret=CLIENT_SECRET, processing_s=3600
        )
    )
    first_logs, second_logs = LogCapture(), LogCapture()
    async with Receiver().running() as rx, serve(emulator.app) as eka_url:
        settings = {"ledger_path": str(ledger), "database_url": postgres.database_url(), **delivering(rx)}
        async with bridge_running(eka_url, first_logs, **settings) as (first, url):
            await replay(url.replace("http", "ws") + "/twilio/stream", plan_messages(call, audio), pace=PACE)
            await first.calls.wait_finished(1, CALL_TIMEOUT)
            await emulator.wait_for(lambda: emulator.count("get", 202) >= 1, WAIT)
        (session,) = emulator.sessions.values()
        reader = Ledger(open_store(database_url=settings["database_url"], sqlite_path=str(ledger)), boot_id="reader")
        await reader.open()
        queued = [row.session_id for row in await reader.awaiting_results()]
        await reader.close()
        assert first.results.recorded == 0 and not rx.attempts
        assert queued == [session.session_id]

        assert emulator.complete_processing() == 1  # Eka finishes while no bridge is running
        async with bridge_running(eka_url, second_logs, **settings) as (second, _):
            assert second.delivery is not None
            await second.delivery.wait_delivered(1, WAIT)
            result = await second.ledger.result(session.session_id)

    (attempt,) = rx.attempts
    assert attempt.signature_ok
    assert attempt.json["call_sid"] == call.call_sid and attempt.json["status"] == "completed"
    assert attempt.json["session_ids"] == [session.session_id]
    assert result["status"] == "completed" and result["polls"] == 1
    assert emulator.count("get", 200) == 1 and session.end_calls == 1  # resumed, not re-ended
    (line,) = second_logs.named("eka_result")
    assert line["session_id"] == session.session_id and line["call_sid"] == call.call_sid


@pytest.mark.parametrize(
    ("outcome", "fault", "http_status"),
    [
        ("partial", None, 206),
        ("failed", None, 200),
        ("not_found", 404, 404),
        ("expired", 410, 410),
    ],
)
async def test_every_final_state_is_recorded(tmp_path: Path, outcome: str, fault: int | None, http_status: int) -> None:
    options = {"processing_s": 0.05, "outcome": outcome if fault is None else "completed"}
    templates = ("clinical_notes_template", "eka_emr_template")
    async with running(tmp_path, emulator_options=options, templates=templates, result_poll_s=0.05) as h:
        if fault is not None:
            h.emulator.faults.fail("get", fault)  # Eka has forgotten the session, or it expired
        await replay(h.twilio_url, plan_messages(TwilioCall(), ulaw_call(0.5)), pace=PACE)
        await finished(h)
        await h.bridge.results.wait_recorded(1, WAIT)
        result = await h.bridge.ledger.result(h.only_session().session_id)
        metric = h.bridge.metrics.registry.get_sample_value("bridge_results_total", {"status": outcome})

    assert result["status"] == outcome and result["http_status"] == http_status
    assert result["transcript"] is None  # without a result webhook, no transcript is kept
    assert metric == 1.0


async def test_a_result_that_never_comes_times_out_at_the_deadline(tmp_path: Path) -> None:
    async with running(
        tmp_path, emulator_options={"processing_s": 3600}, result_poll_s=0.05, result_deadline_s=0.4
    ) as h:
        await replay(h.twilio_url, plan_messages(TwilioCall(), ulaw_call(0.5)), pace=PACE)
        await finished(h)
        await h.bridge.results.wait_recorded(1, WAIT)
        result = await h.bridge.ledger.result(h.only_session().session_id)
        gets = h.emulator.count("get")

    assert result["status"] == "timed_out" and result["http_status"] is None
    assert 2 <= result["polls"] == gets <= 0.4 / 0.05 + 2  # about once per interval, then gave up


async def test_a_call_with_a_continuation_session_is_delivered_once_with_both(tmp_path: Path) -> None:
    audio = ulaw_call(4.0)
    call = TwilioCall()
    async with (
        Receiver().running() as rx,
        running(tmp_path, emulator_options={"processing_s": 0.05}, **delivering(rx)) as h,
    ):
        h.emulator.faults.drop_stream_after(2 * 32000)  # 2 s in; the reconnect gets 4000: part 2
        await replay(h.twilio_url, plan_messages(call, audio), pace=4)  # still talking at the drop
        summary = await finished(h)
        assert h.bridge.delivery is not None
        await h.bridge.delivery.wait_delivered(1, WAIT)
        recorded = h.bridge.results.recorded
        sessions = {s.session_id: s for s in h.emulator.sessions.values()}

    ids = [s["session_id"] for s in summary["sessions"]]
    assert len(ids) == 2 and recorded == 2
    (attempt,) = rx.attempts  # one delivery for the call, after both results
    body = attempt.json
    assert body["session_ids"] == ids and body["status"] == "completed"
    assert [s["part"] for s in body["sessions"]] == [1, 2]
    assert body["transcript"] == "\n\n".join(transcript(sessions[i]) for i in ids)  # in part order


async def test_the_eka_webhook_fetches_once_and_refuses_bad_or_stale_signatures(tmp_path: Path) -> None:
    options = {"processing_s": 0.1, "webhook_signing_key": EKA_KEY}
    async with running(
        tmp_path,
        emulator_options=options,
        eka_webhook_signing_key=EKA_KEY,
        webhook_fallback_poll_s=3600,  # without the webhook, nothing would be fetched for an hour
        result_poll_s=0.05,
    ) as h:
        h.emulator.options.webhook_url = h.bridge_url + "/eka/webhook"  # as registered with Eka (§7.1)
        await replay(h.twilio_url, plan_messages(TwilioCall(), ulaw_call(0.5)), pace=PACE)
        await finished(h)
        await h.bridge.results.wait_recorded(1, WAIT)
        sid = h.only_session().session_id
        result = await h.bridge.ledger.result(sid)
        gets = h.emulator.count("get")

        body = json.dumps({"event": "v2rx.completed", "data": {"session_id": sid, "status": "completed"}}).encode()
        unknown = json.dumps({"event": "v2rx.completed", "data": {"transaction_id": "ses_not_ours_12345678"}}).encode()
        now = int(time.time())
        header = "Eka-Webhook-Signature"
        async with httpx.AsyncClient(base_url=h.bridge_url, timeout=WAIT) as http:

            async def post(content: bytes, signature: str | None) -> httpx.Response:
                return await http.post(
                    "/eka/webhook", content=content, headers={header: signature} if signature else {}
                )

            answers = {
                "wrong_key": await post(body, sign("not-the-eka-signing-key-000000", body, now)),
                "tampered": await post(body.replace(b"completed", b"failed"), sign(EKA_KEY, body, now)),
                "stale": await post(body, sign(EKA_KEY, body, now - 181)),
                "missing": await post(body, None),
                "malformed": await post(body, "v1=deadbeef"),
                "unknown_session": await post(unknown, sign(EKA_KEY, unknown, now)),
                "already_fetched": await post(body, sign(EKA_KEY, body, now)),
            }
        gets_after = h.emulator.count("get")
        rejections = dict(h.bridge.rejections)
        received = h.logs.named("eka_webhook_received")

    assert h.emulator.webhooks_sent == [SentWebhook(sid, 200)]
    assert result["status"] == "completed" and result["via"] == "webhook" and result["polls"] == 1
    assert gets == 1 and gets_after == 1  # fetched once, on the notification; never for the rest
    assert {k: r.status_code for k, r in answers.items()} == {
        "wrong_key": 403, "tampered": 403, "stale": 403, "missing": 401, "malformed": 401,
        "unknown_session": 200, "already_fetched": 200,
    }  # fmt: skip
    assert answers["unknown_session"].json() == answers["already_fetched"].json() == {"status": "ignored"}
    assert {k: v for k, v in rejections.items() if k.startswith("eka_webhook:")} == {
        "eka_webhook:signature_invalid": 2,
        "eka_webhook:signature_stale": 1,
        "eka_webhook:signature_missing": 1,
        "eka_webhook:signature_malformed": 1,
    }
    assert received[0]["session_id"] == sid and received[0]["fetching"] is True


def test_both_documented_notification_shapes_name_the_session() -> None:
    sdk = {"event": "v2rx.completed", "data": {"transaction_id": "txn_1", "session_id": "ses_1", "status": "completed"}}
    sample = {
        "event_id": "v2rx.completed",
        "payload": {"event": "v2rx.completed", "transaction_id": "ses_2", "data": {}},
    }
    assert session_of(sdk) == ("v2rx.completed", "ses_1")
    assert session_of(sample) == ("v2rx.completed", "ses_2")
    assert session_of([]) == (None, None) and session_of({"event": "x"}) == ("x", None)


async def test_a_call_a_crashed_process_left_is_delivered_once_its_swept_sessions_have_results(
    tmp_path: Path,
) -> None:
    """The ledger's rule, on a real SQLite file: a call still running here waits for its end; a
    call a previous process left (never finished) is complete once its sessions have results."""
    path = str(tmp_path / "ledger.db")
    url = postgres.database_url()  # the same rule on PostgreSQL when the suite runs on it
    crashed = Ledger(open_store(database_url=url, sqlite_path=path), boot_id="crashed")
    await crashed.open()
    await crashed.call_started("CA-left", "twilio")
    await crashed.session_opened("ses_left_0000000001", "CA-left", "twilio", 1)
    await crashed.close()

    ledger = Ledger(open_store(database_url=url, sqlite_path=path), boot_id="now", keep_results=True)
    await ledger.open()
    try:
        await ledger.call_started("CA-live", "twilio")
        await ledger.session_opened("ses_live_0000000001", "CA-live", "twilio", 1)
        await ledger.session_ended("ses_live_0000000001", "ended")
        await ledger.session_ended("ses_left_0000000001", "ended")  # the sweeper's End
        queued = [r.session_id for r in await ledger.awaiting_results()]
        done = SessionResult("completed", 200, 1, "poll", transcript="t", templates=[])
        live = await ledger.record_result("ses_live_0000000001", done)
        left = await ledger.record_result("ses_left_0000000001", done)
        finished = await ledger.call_finished("CA-live", {"end_status": "ended"})
        again = await ledger.call_finished("CA-live", {"end_status": "ended"})
        due = await ledger.due_deliveries(time.time() + 1, 10)
    finally:
        await ledger.close()

    assert sorted(queued) == ["ses_left_0000000001", "ses_live_0000000001"]
    assert live is None  # the live call is not over yet
    assert left is not None and left.startswith("dlv_")  # the crashed process's call is
    assert finished is not None and again is None  # one delivery per call, however often asked
    assert sorted(d.call_sid for d in due) == ["CA-left", "CA-live"]
    assert all(d.sessions[0]["transcript"] == "t" for d in due)


async def test_a_calls_last_result_and_its_end_recorded_at_once_make_exactly_one_delivery(tmp_path: Path) -> None:
    """On PostgreSQL the two land on two connections at the same moment: each must see the
    other's write (the call's row is locked first), or neither would make the delivery."""
    url = postgres.database_url()
    ledger = Ledger(
        open_store(database_url=url, sqlite_path=str(tmp_path / "ledger.db")), boot_id="b", keep_results=True
    )
    await ledger.open()
    try:
        done = SessionResult("completed", 200, 1, "poll", transcript="t", templates=[])
        made: list[str | None] = []
        for i in range(20):
            call, session = f"CA-race-{i}", f"ses_race_{i:012d}"
            await ledger.call_started(call, "twilio")
            await ledger.session_opened(session, call, "twilio", 1)
            await ledger.session_ended(session, "ended")
            made += await asyncio.gather(ledger.record_result(session, done), ledger.call_finished(call, {}))
        due = await ledger.due_deliveries(time.time() + 1, 100)
    finally:
        await ledger.close()
    assert len([m for m in made if m]) == 20  # one per call, from whichever landed second
    assert sorted(d.call_sid for d in due) == sorted(f"CA-race-{i}" for i in range(20))


async def test_a_dead_process_the_sweeper_never_saw_alive_is_swept_once_its_lease_has_settled(
    tmp_path: Path,
) -> None:
    """A process that died before this one joined wakes no one: the ledger says when its
    sessions become claimable (lease expiry + settle), and not a moment before."""
    path = str(tmp_path / "ledger.db")
    url = postgres.database_url()
    crashed = Ledger(open_store(database_url=url, sqlite_path=path), boot_id="crashed", lease_ttl_s=0.05)
    await crashed.open()
    await crashed.call_started("CA-left", "twilio")
    await crashed.session_opened("ses_left_0000000001", "CA-left", "twilio", 1)  # then it died: no close

    ledger = Ledger(open_store(database_url=url, sqlite_path=path), boot_id="now")
    await ledger.open()
    try:
        while (due := await ledger.next_orphan_in(settle_s=1.0)) is None:  # the lease runs out in 50 ms
            await asyncio.sleep(0.01)
        early = await ledger.claim_unsettled(settle_s=1.0)
        await asyncio.sleep(due + 0.05)
        claimed = await ledger.claim_unsettled(settle_s=1.0)
        after = await ledger.next_orphan_in(settle_s=1.0)
    finally:
        await ledger.close()
    assert 0.5 < due <= 1.0 and early == []
    assert [row.session_id for row in claimed] == ["ses_left_0000000001"] and claimed[0].boot_id == "crashed"
    assert after is None  # the session is this process's now
