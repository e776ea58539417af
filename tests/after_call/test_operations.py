"""Operations: the /calls API behind its key, and Prometheus metrics that move as calls happen."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.providers.twilio.simulator import TwilioCall, plan_messages, replay
from tests.after_call.test_results import WAIT, delivering
from tests.harness import running
from tests.live.test_call import PACE, finished, ulaw_call
from tests.receiver import Receiver

pytestmark = pytest.mark.anyio
API_KEY = "bridge-api-key-0123456789abcdef"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_calls_api_needs_the_key_and_returns_the_record(tmp_path: Path) -> None:
    audio = ulaw_call(0.5)
    call = TwilioCall()
    async with (
        Receiver().running() as rx,
        running(tmp_path, api_key=API_KEY, emulator_options={"processing_s": 0.05}, **delivering(rx)) as h,
    ):
        before = datetime.now(UTC).isoformat()
        await replay(h.twilio_url, plan_messages(call, audio), pace=PACE)
        await finished(h)
        assert h.bridge.delivery is not None
        await h.bridge.delivery.wait_delivered(1, WAIT)
        after = time.time()
        sid = h.only_session().session_id
        key = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=h.bridge_url, timeout=WAIT) as http:
            without = await http.get(f"/calls/{call.call_sid}")
            wrong = await http.get(f"/calls/{call.call_sid}", headers={"Authorization": f"Bearer {API_KEY}x"})
            basic = await http.get("/calls", headers={"Authorization": f"Basic {API_KEY}"})
            one = await http.get(f"/calls/{call.call_sid}", headers=key)
            unknown = await http.get("/calls/CA0000", headers=key)
            listed = await http.get("/calls", params={"since": before}, headers=key)
            by_unix = await http.get("/calls", params={"since": str(after - 60), "limit": "1"}, headers=key)
            later = await http.get("/calls", params={"since": str(after + 1)}, headers=key)
            bad_since = await http.get("/calls", params={"since": "yesterday"}, headers=key)
            bad_limit = await http.get("/calls", params={"limit": "100000"}, headers=key)
            no_eka_webhook = await http.post("/eka/webhook", content=b"{}")
        rejections = dict(h.bridge.rejections)

    assert without.status_code == wrong.status_code == basic.status_code == 401
    assert without.headers["www-authenticate"].startswith("Bearer")
    assert rejections["calls_api:key_missing"] == 1 and rejections["calls_api:key_invalid"] == 2
    assert one.status_code == 200
    record = one.json()
    assert record["call_sid"] == call.call_sid and record["provider"] == "twilio"
    assert record["session_ids"] == [sid]
    assert record["end_reason"] == "stop" and record["end_status"] == "ended" and record["failure"] is None
    assert record["result_status"] == "completed"
    (session,) = record["sessions"]
    assert session["session_id"] == sid and session["end_status"] == "ended"
    assert session["result_status"] == "completed" and session["result_via"] == "poll"
    delivery = record["delivery"]
    assert delivery["status"] == "delivered" and delivery["attempts"] == 1
    assert delivery["delivery_id"] == rx.attempts[0].json["delivery_id"]
    assert record["started_at"] <= record["finished_at"] and record["duration_s"] > 0
    assert "transcript" not in one.text and "Received" not in one.text  # ids and statuses only
    assert unknown.status_code == 404
    assert [c["call_sid"] for c in listed.json()["calls"]] == [call.call_sid] and listed.json()["next_since"] is None
    assert listed.json()["calls"][0] == record
    assert [c["call_sid"] for c in by_unix.json()["calls"]] == [call.call_sid]
    assert by_unix.json()["next_since"] > 0  # a full page: there may be more
    assert later.json() == {"calls": [], "next_since": None}
    assert bad_since.status_code == bad_limit.status_code == 400
    assert no_eka_webhook.status_code == 404  # EKA_WEBHOOK_SIGNING_KEY unset: no such endpoint


async def test_calls_api_is_absent_without_a_key(tmp_path: Path) -> None:
    async with running(tmp_path) as h, httpx.AsyncClient(base_url=h.bridge_url, timeout=WAIT) as http:
        answers = [await http.get("/calls"), await http.get("/calls/CA1", headers={"Authorization": "Bearer x"})]
    assert [a.status_code for a in answers] == [404, 404]


async def test_metrics_move_as_calls_happen(tmp_path: Path) -> None:
    audio = ulaw_call(4.0)
    call = TwilioCall()
    plan = plan_messages(call, audio)
    media = [i for i, (_, m) in enumerate(plan) if m.get("event") == "media"]
    gap = set(media[100:110])  # 200 ms the phone network lost: filled with silence
    plan = [item for i, item in enumerate(plan) if i not in gap]
    plan.insert(media[50], (plan[media[50]][0], "not json"))  # one malformed message
    async with (
        running(tmp_path, emulator_options={"processing_s": 0.05}, result_poll_s=0.05) as h,
        httpx.AsyncClient(base_url=h.bridge_url, timeout=WAIT) as http,
    ):
        before = parse((await http.get("/metrics")).text)
        h.emulator.faults.drop_stream_after(2 * 32000)  # an upstream drop and a continuation session
        calling = asyncio.create_task(replay(h.twilio_url, plan, pace=4))
        await h.emulator.wait_for(lambda: any(len(s.audio) >= 16000 for s in h.emulator.sessions.values()), WAIT)
        during = parse((await http.get("/metrics")).text)
        sent = await calling
        summary = await finished(h)
        await h.bridge.results.wait_recorded(2, WAIT)
        scraped = await http.get("/metrics")
        after = parse(scraped.text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    tw = {"provider": "twilio"}
    assert scraped.headers["content-type"].startswith("text/plain")
    assert value(during, "bridge_active_calls") == 1 and value(after, "bridge_active_calls") == 0
    assert 0 < value(during, "bridge_media_frames_total", **tw) < value(after, "bridge_media_frames_total", **tw)
    assert delta("bridge_calls_total", provider="twilio", outcome="ended", end_reason="stop") == 1
    assert delta("bridge_media_frames_total", **tw) == sent.media_sent == summary["frames"]
    assert delta("bridge_media_bytes_total", **tw) == summary["bytes_in"] == 160 * sent.media_sent
    # Sent and acknowledged by the socket; a batch lost in the drop went again in the replay (not counted).
    assert delta("bridge_relayed_bytes_total", **tw) == summary["bytes_relayed"] > 3 * len(audio)
    gap_s = sum(summary["gap_filled_ms"].values()) / 1000
    assert gap_s >= 0.2 and delta("bridge_gap_filled_seconds_total", **tw) == pytest.approx(gap_s)
    assert delta("bridge_upstream_reconnects_total") == summary["upstream_drops"] >= 1
    assert delta("bridge_continuation_sessions_total") == 1
    assert delta("bridge_end_session_seconds_count") == 2  # both sessions
    batches = delta("bridge_relay_lag_seconds_count")
    assert batches >= summary["bytes_relayed"] / 6400  # one observation per upstream batch (≤ 200 ms)
    assert 0 <= delta("bridge_relay_lag_seconds_sum") / batches < 1.0
    assert delta("bridge_eka_requests_total", endpoint="create", status="201") == 2
    assert delta("bridge_eka_requests_total", endpoint="end", status="202") == 2
    assert delta("bridge_eka_requests_total", endpoint="get", status="200") == 2
    assert delta("bridge_results_total", status="completed") == 2
    assert delta("bridge_rejections_total", endpoint="message", reason="bad_json") == 1
    assert delta("bridge_dropped_audio_bytes_total", reason="outbox_full") == 0


def test_result_and_api_settings_are_validated_at_start_up() -> None:
    from bridge.config import ConfigError, Settings

    base = {"EKA_ACCESS_TOKEN": "eka-token"}
    good = Settings.from_env(
        {
            **base,
            "RESULT_WEBHOOK_URL": "https://clinic.example/hooks/eka/",
            "RESULT_WEBHOOK_SECRET": "s" * 32,
            "EKA_WEBHOOK_SIGNING_KEY": "k" * 32,
            "BRIDGE_API_KEY": "a" * 32,
            "EKA_RESULT_DEADLINE_S": "600",
        }
    )
    assert good.result_webhook_url == "https://clinic.example/hooks/eka/"  # exactly as given
    assert good.result_deadline_s == 600 and good.result_poll_s == 1.0 and good.webhook_fallback_poll_s == 60
    local = Settings.from_env(
        {**base, "RESULT_WEBHOOK_URL": "http://127.0.0.1:9000/r", "RESULT_WEBHOOK_SECRET": "s" * 16}
    )
    assert local.result_webhook_url == "http://127.0.0.1:9000/r"  # a sidecar on this machine
    with pytest.raises(ConfigError) as error:
        Settings.from_env(
            {
                **base,
                "RESULT_WEBHOOK_URL": "http://clinic.example/r",
                "BRIDGE_API_KEY": "short",
                "EKA_WEBHOOK_SIGNING_KEY": "short",
                "EKA_RESULT_POLL_S": "0",
            }
        )
    problems = "\n".join(error.value.problems)
    for expected in (
        "RESULT_WEBHOOK_URL is set without RESULT_WEBHOOK_SECRET",
        "RESULT_WEBHOOK_URL must be https://",
        "BRIDGE_API_KEY must be at least 16 characters",
        "EKA_WEBHOOK_SIGNING_KEY must be at least 16 characters",
        "EKA_RESULT_POLL_S=0 is out of range",
    ):
        assert expected in problems
