"""Exotel calls end to end on real sockets: a two-party stream routed by the called number and
processed whole, 16 kHz audio bit-exact, a dropped socket, refused upgrades (Basic credentials,
the allowlist, neither configured), start-up's word on it, and ``bridge simulate exotel``."""

from __future__ import annotations

import argparse
from pathlib import Path

import anyio
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus

from bridge.providers.exotel.simulator import ExotelCall, basic, plan_messages, simulate_exotel
from bridge.providers.twilio.simulator import replay
from bridge.routing import load_routes
from bridge.simulator import cli
from bridge.simulator.audio import load_pcm16
from tests import SAMPLES
from tests.harness import Harness, assert_processed_whole, running
from tests.live.test_call import finished, received_pcm

pytestmark = pytest.mark.anyio

CALLER = SAMPLES / "caller.wav"
CLINICIAN = SAMPLES / "clinician.wav"
CREDENTIALS = "exotel-key:exotel-token-0123456789"
EXOPHONE = "+918047491899"
PACE = 25.0
LIMIT_S = 20.0


def ws(h: Harness) -> str:
    return h.bridge_url.replace("http://", "ws://") + "/exotel/stream"


async def test_a_two_party_call_routed_by_the_called_number_is_processed_whole(tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text(f'[numbers."{EXOPHONE}"]\ntemplates = ["eka_soap"]\ndoctor_id = "dr-7"\n')
    table, problems = load_routes(str(routes))
    assert not problems
    caller, clinician = load_pcm16(CALLER, 8000), load_pcm16(CLINICIAN, 8000)
    call = ExotelCall(tracks=["inbound", "outbound"], called=EXOPHONE)
    async with running(tmp_path, exotel_basic_auth=CREDENTIALS, development=False, routes=table) as h:
        plan = plan_messages(call, caller, clinician)
        result = await replay(ws(h), plan, pace=PACE, extra_headers=basic(CREDENTIALS))
        summary = await finished(h)
        session = h.only_session()
    assert result.completed and result.close_code == 1000
    assert summary["end_reason"] == "stop" and summary["end_status"] == "ended"
    assert summary["gap_filled_ms"] == {"inbound": 0, "outbound": 0}
    assert len(received_pcm(session)) == 2 * max(len(caller), len(clinician))
    body = session.request
    assert body["additional_data"]["provider"] == "exotel" and body["additional_data"]["call_sid"] == call.call_sid
    assert body["templates"] == ["eka_soap"] and body["additional_data"]["doctor_id"] == "dr-7"
    assert h.logs.named("l16_byte_order_detected") == []  # little-endian, as documented: not guessed
    assert_processed_whole(session)


async def test_16k_pcm_reaches_eka_bit_exact(tmp_path: Path) -> None:
    source = load_pcm16(CALLER, 16000)
    async with running(tmp_path, exotel_allowed_ips=("127.0.0.0/8",), development=False) as h:
        result = await simulate_exotel(ws(h), CALLER, sample_rate=16000, pace=PACE)
        await finished(h)
        session = h.only_session()
    assert result.completed
    assert np.array_equal(received_pcm(session), source)  # nothing to resample, little-endian decoded
    assert_processed_whole(session)


async def test_a_dropped_socket_ends_the_call_once(tmp_path: Path) -> None:
    audio = load_pcm16(CALLER, 8000)
    async with running(tmp_path) as h:
        result = await replay(ws(h), plan_messages(ExotelCall(), audio), pace=PACE, drop_after_s=1.0)
        summary = await finished(h)
        session = h.only_session()
    assert result.closed_by == "abort" and summary["end_reason"] == "socket_closed"
    assert 0 < summary["bytes_in"] <= result.bytes_sent["inbound"] < 2 * len(audio)
    assert len(received_pcm(session)) == summary["bytes_in"]  # 16-bit at 8 kHz in, 16-bit at 16 kHz out
    assert_processed_whole(session)


async def test_unauthenticated_and_forged_upgrades_are_refused_before_any_session(tmp_path: Path) -> None:
    plan = plan_messages(ExotelCall(), load_pcm16(CALLER, 8000)[:4000])
    wrong = ["exotel-key:not-the-token-0000000", "other:exotel-token-0123456789"]
    async with running(tmp_path, exotel_basic_auth=CREDENTIALS, development=False) as h:
        for headers in [{}, {"Authorization": "Bearer x"}, *(basic(c) for c in wrong)]:
            with pytest.raises(InvalidStatus) as refused:
                await replay(ws(h), plan, pace=PACE, extra_headers=headers)
            assert refused.value.response.status_code == 403
        assert h.emulator.count("create") == 0 and not h.emulator.sessions
        await replay(ws(h), plan, pace=PACE, extra_headers=basic(CREDENTIALS))
        await finished(h)
        counts = dict(h.bridge.rejections)
    assert h.only_session().end_calls == 1
    assert counts == {"exotel_stream:credentials_missing": 2, "exotel_stream:credentials_invalid": 2}


async def test_the_allowlist_is_checked_before_accept_and_with_the_credentials(tmp_path: Path) -> None:
    plan = plan_messages(ExotelCall(), load_pcm16(CALLER, 8000)[:4000])
    settings = {"exotel_allowed_ips": ("203.0.113.0/24",), "exotel_basic_auth": CREDENTIALS, "development": False}
    async with running(tmp_path, **settings) as h:
        with pytest.raises(InvalidStatus) as refused:  # right credentials, wrong address
            await replay(ws(h), plan, pace=PACE, extra_headers=basic(CREDENTIALS))
        counts = dict(h.bridge.rejections)
        creates = h.emulator.count("create")
    assert refused.value.response.status_code == 403 and creates == 0
    assert counts == {"exotel_stream:address_not_allowed": 1}


async def test_without_credentials_exotel_is_refused_and_start_up_says_so(tmp_path: Path) -> None:
    plan = plan_messages(ExotelCall(), load_pcm16(CALLER, 8000)[:4000])
    async with running(tmp_path, development=False) as h:
        with pytest.raises(InvalidStatus) as refused:
            await replay(ws(h), plan, pace=PACE, extra_headers=basic(CREDENTIALS))
        warnings = h.logs.named("exotel_traffic_refused")
        counts = dict(h.bridge.rejections)
    assert refused.value.response.status_code == 403 and counts == {"exotel_stream:no_credentials": 1}
    assert len(warnings) == 1 and "EXOTEL_ALLOWED_IPS" in warnings[0]["detail"]


async def test_bridge_simulate_exotel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="bridge")
    cli.add_arguments(parser.add_subparsers(dest="command").add_parser("simulate"))
    async with running(tmp_path, exotel_basic_auth=CREDENTIALS, development=False) as h:
        args = parser.parse_args(
            ["simulate", "exotel", "--url", ws(h), "--audio", str(CALLER), "--sample-rate", "16000",
             "--pace", "25", "--exotel-basic-auth", CREDENTIALS, "--param", "route=+918000000001"]
        )  # fmt: skip
        with anyio.fail_after(LIMIT_S):
            code = await anyio.to_thread.run_sync(cli.run, args)
        await finished(h)
        session = h.only_session()
    (line,) = [out for out in capsys.readouterr().out.splitlines() if out.startswith("call ")]
    assert code == 0 and "inbound 108 frames" in line and "server answered 1000" in line
    assert session.request["additional_data"]["provider"] == "exotel"
    assert_processed_whole(session)
