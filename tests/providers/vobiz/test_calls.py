"""Vobiz calls end to end: formats and byte orders, reconnects, hang-up, tokens, signatures."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import numpy as np
import pytest
import soxr
from websockets.exceptions import InvalidStatus

from bridge.audio.codec import ulaw_to_pcm16
from bridge.providers.twilio.simulator import replay
from bridge.providers.vobiz.signature import NONCE_V3_HEADER, SIGNATURE_V3_HEADER, compute_v3
from bridge.providers.vobiz.simulator import VobizCall, plan_messages, simulate_vobiz
from bridge.simulator.audio import load_pcm16, load_ulaw
from tests import SAMPLES
from tests.harness import Harness, assert_processed_whole, running
from tests.live.test_call import finished, received_pcm, si_snr_db

pytestmark = pytest.mark.anyio

CLINICIAN = SAMPLES / "clinician.wav"
PACE = 25.0
STREAM_TOKEN = "Tok3nForVobizStreams0123"
AUTH_TOKEN = "vobiz-auth-token"


def vobiz_url(h: Harness, token: str | None = None) -> str:
    base = h.bridge_url.replace("http://", "ws://") + "/vobiz/stream"
    return f"{base}/{token}" if token else base


def upsampled(samples: np.ndarray, rate: int) -> np.ndarray:
    return soxr.resample(samples.astype(np.float64), rate, 16000, quality="VHQ") if rate != 16000 else samples


@pytest.mark.parametrize(
    ("content_type", "byte_order"),
    [
        ("audio/x-mulaw;rate=8000", "big"),
        ("audio/x-l16;rate=8000", "big"),
        ("audio/x-l16;rate=8000", "little"),
        ("audio/x-l16;rate=16000", "big"),
        ("audio/x-l16;rate=16000", "little"),
    ],
)
async def test_each_format_and_byte_order_reaches_eka_as_16k_audio(
    tmp_path: Path, content_type: str, byte_order: str
) -> None:
    async with running(tmp_path, vobiz_reconnect_grace_s=0.1) as h:
        (result,) = await simulate_vobiz(
            vobiz_url(h), CLINICIAN, content_type=content_type, pace=PACE, l16_byte_order=byte_order
        )
        summary = await finished(h)
        session = h.only_session()
        detected = h.logs.named("l16_byte_order_detected")

    rate = 16000 if "16000" in content_type else 8000
    if "mulaw" in content_type:
        source = ulaw_to_pcm16(load_ulaw(CLINICIAN))
        assert detected == []
    else:
        source = load_pcm16(CLINICIAN, rate)
        assert [d["byte_order"] for d in detected] == [byte_order]  # auto-detected, on real speech
    pcm = received_pcm(session)
    assert len(pcm) == len(source) * 16000 // rate
    if rate == 16000:
        assert np.array_equal(pcm, source)  # nothing to resample: bit-exact
    else:
        assert si_snr_db(pcm, upsampled(source, rate)) > 45
    assert summary["end_reason"] == "socket_closed" and summary["end_status"] == "ended"
    assert session.end_calls == 1 and session.request["additional_data"]["provider"] == "vobiz"
    assert result.close_code is None or result.close_code == 1000


async def test_a_configured_byte_order_is_used_without_detection(tmp_path: Path) -> None:
    async with running(tmp_path, vobiz_reconnect_grace_s=0.1, vobiz_l16_byte_order="little") as h:
        await simulate_vobiz(
            vobiz_url(h), CLINICIAN, content_type="audio/x-l16;rate=8000", pace=PACE, l16_byte_order="little"
        )
        await finished(h)
        session = h.only_session()
        assert h.logs.named("l16_byte_order_detected") == []
    source = load_pcm16(CLINICIAN, 8000)
    assert si_snr_db(received_pcm(session), upsampled(source, 8000)) > 45


async def test_a_reconnect_within_the_grace_period_continues_the_same_session(tmp_path: Path) -> None:
    async with running(tmp_path, vobiz_reconnect_grace_s=1.0) as h:
        first, second = await simulate_vobiz(vobiz_url(h), CLINICIAN, pace=PACE, reconnect_after_s=4.0)
        # The second socket joined the first call: the grace timer now waits on the second close.
        assert len(h.bridge.calls.active) == 1
        summary = await finished(h)
        session = h.only_session()
        resumed = h.logs.named("stream_resumed")

    ulaw = load_ulaw(CLINICIAN)
    assert first.media_sent and second.media_sent
    assert len(resumed) == 1 and summary["telephony_reconnects"] == 1
    assert len(h.emulator.sessions) == 1 and session.end_calls == 1
    pcm = received_pcm(session)
    assert len(pcm) == 2 * len(ulaw)  # all the audio, no gap, no repeat
    assert si_snr_db(pcm, upsampled(ulaw_to_pcm16(ulaw), 8000)) > 45
    assert summary["gap_filled_ms"] == {"inbound": 0}
    assert_processed_whole(session)  # the grace period ran out: that close ended the call


async def test_a_reconnect_before_the_old_socket_closed_takes_the_call_over(tmp_path: Path) -> None:
    """Vobiz opened a new stream (same callId) while the old socket still looked alive to us:
    the new one carries the call on in the same session, and the old one is closed."""
    ulaw = load_ulaw(CLINICIAN)
    first_half, second_half = ulaw[:16000], ulaw[16000:32000]
    call = VobizCall()
    async with running(tmp_path, vobiz_reconnect_grace_s=1.0) as h:
        old = asyncio.create_task(replay(vobiz_url(h), plan_messages(call, first_half + second_half), pace=1.0))
        await h.emulator.wait_for(lambda: any(len(s.audio) > 32000 for s in h.emulator.sessions.values()), 10)
        again = VobizCall(call_id=call.call_id)  # a new streamId for the same call
        new = await replay(vobiz_url(h), plan_messages(again, second_half), pace=PACE)
        old_result = await asyncio.wait_for(old, 10)
        summary = await finished(h)
        session = h.only_session()
        superseded = h.logs.named("stream_superseded")

    assert old_result.close_code == 1000 and not old_result.completed  # the bridge closed the old socket
    assert new.media_sent and len(superseded) == 1
    assert summary["telephony_reconnects"] == 1 and len(h.emulator.sessions) == 1
    assert_processed_whole(session)


async def test_a_hangup_webhook_ends_a_detached_call_at_once(tmp_path: Path) -> None:
    call = VobizCall()
    async with running(tmp_path, vobiz_reconnect_grace_s=600.0) as h:
        await replay(vobiz_url(h), plan_messages(call, load_ulaw(CLINICIAN)[:16000]), pace=PACE)
        # 2 s of audio: all but the resampler's held tail and the last partial batch has arrived.
        await h.emulator.wait_for(
            lambda: any(len(s.audio) >= 51200 for s in h.emulator.sessions.values()), 10
        )  # all but a batch and the resampler's hold
        assert h.only_session().ended_at is None  # waiting out a 10-minute grace period
        async with httpx.AsyncClient(base_url=h.bridge_url) as http:
            response = await http.post("/vobiz/hangup", data={"CallUUID": call.call_id, "Event": "Hangup"})
        summary = await finished(h)  # well inside the grace period
        session = h.only_session()

    assert response.status_code == 204
    assert summary["end_reason"] == "hangup" and session.end_calls == 1
    assert len(session.audio) == 2 * 2 * 16000
    assert_processed_whole(session)


async def test_a_hangup_webhook_ends_a_live_call_at_once(tmp_path: Path) -> None:
    call = VobizCall()
    async with running(tmp_path, vobiz_reconnect_grace_s=600.0) as h:
        calling = asyncio.create_task(replay(vobiz_url(h), plan_messages(call, load_ulaw(CLINICIAN)), pace=1.0))
        await h.emulator.wait_for(lambda: any(len(s.audio) > 8000 for s in h.emulator.sessions.values()), 10)
        async with httpx.AsyncClient(base_url=h.bridge_url) as http:
            await http.post("/vobiz/hangup", data={"CallUUID": call.call_id})
        result = await asyncio.wait_for(calling, 10)
        summary = await finished(h)
        session = h.only_session()

    assert result.close_code == 1000 and not result.completed
    assert summary["end_reason"] == "hangup" and session.end_calls == 1
    assert len(session.audio) == 2 * 2 * summary["bytes_in"]
    assert_processed_whole(session)


async def test_the_stream_token_is_required_when_configured(tmp_path: Path) -> None:
    audio = load_ulaw(CLINICIAN)[:8000]
    async with running(tmp_path, vobiz_stream_token=STREAM_TOKEN, vobiz_reconnect_grace_s=0.0) as h:
        for url in (vobiz_url(h), vobiz_url(h, "WrongToken000000000000")):
            with pytest.raises(InvalidStatus) as refused:
                await replay(url, plan_messages(VobizCall(), audio), pace=PACE)
            assert refused.value.response.status_code == 403
        assert h.emulator.count("create") == 0 and not h.emulator.sessions
        await replay(vobiz_url(h, STREAM_TOKEN), plan_messages(VobizCall(), audio), pace=PACE)
        await finished(h)
        rejected = dict(h.bridge.rejections)
    assert h.only_session().end_calls == 1
    assert rejected["vobiz_stream:token_missing"] == 1 and rejected["vobiz_stream:token_invalid"] == 1


async def test_callbacks_need_a_valid_fresh_signature_when_configured(tmp_path: Path) -> None:
    async with running(
        tmp_path, vobiz_auth_token=AUTH_TOKEN, vobiz_stream_token=STREAM_TOKEN, forward_number="+14155550100"
    ) as h:
        url = h.bridge_url + "/vobiz/answer"
        form = {"CallUUID": "c0ffee", "From": "919876543210", "To": "+918000000000"}

        def signed(nonce: str, token: str = AUTH_TOKEN) -> dict[str, str]:
            return {NONCE_V3_HEADER: nonce, SIGNATURE_V3_HEADER: compute_v3(token, url, nonce)}

        async with httpx.AsyncClient() as http:
            missing = await http.post(url, data=form)
            forged = await http.post(url, data=form, headers=signed("11111111111111111111", "not-the-token"))
            good = await http.post(url + "?ignored=1", data=form, headers=signed("22222222222222222222"))
            replayed = await http.post(url, data=form, headers=signed("22222222222222222222"))

    assert (missing.status_code, forged.status_code, replayed.status_code) == (403, 403, 403)
    assert good.status_code == 200
    root = ET.fromstring(good.content)
    stream = root.find("Stream")
    assert stream is not None and stream.text == h.twilio_url.replace("/twilio/stream", f"/vobiz/stream/{STREAM_TOKEN}")
    assert stream.get("audioTrack") == "both" and stream.get("bidirectional") == "false"
    assert stream.get("contentType") == "audio/x-mulaw;rate=8000"
    assert stream.get("statusCallbackUrl") == h.bridge_url + "/vobiz/stream-status"
    number = root.find("Dial/Number")
    assert number is not None and number.text == "+14155550100"


async def test_malformed_vobiz_messages_are_counted_and_the_call_goes_on(tmp_path: Path) -> None:
    call = VobizCall()
    plan = plan_messages(call, load_ulaw(CLINICIAN)[:16000])
    start, *media = plan
    hostile: list = [
        (0.0, "{nope"),
        start,
        (0.0, {"event": "media", "sequenceNumber": 1, "media": {"payload": "!!!"}}),
        (0.0, {"event": "playedStream", "name": "x"}),
        (0.0, {"event": "media", "media": {"timestamp": "zzz", "payload": ""}}),
        *media,
    ]
    async with running(tmp_path, vobiz_reconnect_grace_s=0.0) as h:
        await replay(vobiz_url(h), hostile, pace=PACE)
        summary = await finished(h)
        session = h.only_session()
    assert summary["bad_messages"]["bad_json"] == 1 and summary["bad_messages"]["bad_base64"] == 1
    assert len(received_pcm(session)) == 2 * 16000 and session.end_calls == 1


async def test_stream_status_callbacks_are_logged_and_a_dropped_stream_warns(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        async with httpx.AsyncClient(base_url=h.bridge_url) as http:
            ok = await http.post(
                "/vobiz/stream-status", data={"CallUUID": "c1", "StreamID": "s1", "Event": "StartStream"}
            )
            dropped = await http.post("/vobiz/stream-status", data={"CallUUID": "c1", "Event": "DroppedStream"})
        lines = h.logs.named("vobiz_stream_status")

    assert ok.status_code == dropped.status_code == 204
    assert [(line["log_level"], line["stream_event"]) for line in lines] == [
        ("info", "StartStream"),
        ("warning", "DroppedStream"),
    ]
