"""The load benchmark's parts: the emulator's arrival log, the generator's pre-masked frames,
the lag arithmetic, and one tiny end-to-end run (bridge, emulator, generator as processes)."""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.frames import Opcode
from websockets.protocol import OPEN, SERVER, Protocol

from bench.load import Cpus, Plan, Service, delivery_lags_ms, report, run
from bench.loadgen import FRAME_BYTES, Templates, frame
from bench.proc import CoreTimes, cpu_seconds, percentile, rss_kb
from bridge.audio.resample import HALF_SPAN
from bridge.providers.twilio.simulator import TwilioCall, plan_messages, replay
from bridge.providers.twilio.stream import media_message
from tests.harness import running
from tests.live.test_call import ulaw_call
from tests.postgres import binaries


def received_frames(data: bytes) -> list[tuple[Opcode, bytes]]:
    """Decode client frames with the websockets library's own server-side parser (unmasking included)."""
    protocol = Protocol(SERVER, state=OPEN, max_size=None)
    protocol.receive_data(data)
    return [(f.opcode, bytes(f.data)) for f in protocol.events_received()]


def test_pre_masked_media_frames_are_exactly_the_simulators_messages() -> None:
    mask = b"\x8a\x13\x5c\xe1"  # every alignment of the sid matters: a nonzero, uneven mask
    templates = Templates(["inbound", "outbound"], ticks=7, mask=mask)
    sid = "MZ" + "0123456789abcdef" * 2
    sids = templates.masked_sids(sid)
    wire = b"".join(p.head + sids[p.sid_phase] + p.tail for tick in templates.ticks for p in tick)
    messages = [json.loads(data) for opcode, data in received_frames(wire)]
    assert len(messages) == 14
    for n, message in enumerate(messages):
        k, track = divmod(n, 2)
        track_name = ("outbound", "inbound")[track]
        assert message["streamSid"] == sid
        expected = media_message(2 + n, stream_sid=sid, track=track_name, chunk=k + 1, timestamp_ms=20 * k, payload=b"")
        assert {**message, "media": {**message["media"], "payload": ""}} == {
            **expected,
            "media": {**expected["media"], "payload": ""},
        }
        assert len(base64.b64decode(message["media"]["payload"])) == FRAME_BYTES


def test_control_frames_decode() -> None:
    (closing,) = received_frames(frame(0x8, (1000).to_bytes(2, "big"), b"abcd"))
    assert closing == (Opcode.CLOSE, (1000).to_bytes(2, "big"))
    big = b"x" * 70_000  # the 8-byte length form
    ((opcode, data),) = received_frames(frame(0x1, big, b"wxyz"))
    assert opcode == Opcode.TEXT and data == big


def test_delivery_lag_counts_from_the_frame_that_completed_each_batch() -> None:
    frames = 50
    sent = 100.0 + 0.02 * np.arange(1, frames + 1)
    batch = 3200  # 100 ms of 16 kHz PCM
    arrivals = []
    for j in range(1, 10):
        k = int(np.ceil((batch * j // 4 + HALF_SPAN) / FRAME_BYTES)) - 1  # 5j: 6 ms of look-ahead
        assert k == 5 * j
        arrivals.append([sent[k] + 0.003, batch * j])
    stop_at = sent[-1] + 0.001
    arrivals.append([stop_at + 0.004, frames * FRAME_BYTES * 4])  # the flushed tail, due to stop
    lags = delivery_lags_ms(arrivals, sent, stop_at, (0.0, 1e9))
    assert np.allclose(lags, [3.0] * 9 + [4.0])
    assert delivery_lags_ms(arrivals, sent, stop_at, (sent[20], sent[30])) == pytest.approx([3.0, 3.0])


def test_percentile_is_nearest_rank_and_proc_readers_read_this_process() -> None:
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50, 99, 100)
    assert percentile([7.0], 99) == 7.0
    assert cpu_seconds(os.getpid()) > 0 and rss_kb(os.getpid()) > 1000
    before = CoreTimes.read(None)
    time.sleep(0.05)
    assert 0.0 <= CoreTimes.read(None).busy_share_since(before) <= 1.0


@pytest.mark.anyio
async def test_emulator_records_when_each_frame_arrived(tmp_path: Path) -> None:
    call = TwilioCall()
    began = time.monotonic()
    async with running(tmp_path, emulator_options={"record_arrivals": True}) as h:
        await replay(h.twilio_url, plan_messages(call, ulaw_call(1.0)), pace=10)
        await h.emulator.wait_for(lambda: any(s.ended_at is not None for s in h.emulator.sessions.values()), 10)
        async with httpx.AsyncClient() as http:
            body = (await http.get(f"{h.eka_url}/_emulator/arrivals")).json()
    (session,) = body["sessions"]
    assert body["recording"] is True and body["clock"] == "monotonic"
    assert session["call_sid"] == call.call_sid and session["end_calls"] == 1
    times = [t for t, _ in session["arrivals"]]
    totals = [b for _, b in session["arrivals"]]
    assert totals[-1] == session["audio_bytes"] == 32000  # 1 s of 16 kHz PCM, all of it
    assert totals == sorted(totals) and times == sorted(times)
    assert began < times[0] and times[-1] <= session["ended_at"] < time.monotonic()  # one clock


@pytest.mark.anyio
async def test_emulator_keeps_no_arrivals_unless_asked(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        await replay(h.twilio_url, plan_messages(TwilioCall(), ulaw_call(0.5)), pace=10)
        await h.emulator.wait_for(lambda: any(s.ended_at is not None for s in h.emulator.sessions.values()), 10)
        async with httpx.AsyncClient() as http:
            body = (await http.get(f"{h.eka_url}/_emulator/arrivals")).json()
    assert body["recording"] is False and body["sessions"][0]["arrivals"] == []


def test_a_tiny_load_run_loses_nothing(tmp_path: Path) -> None:
    """Three two-track calls of 4 s through real processes: every frame arrives, every session ends."""
    figures = run("bridge", Plan(calls=3, duration_s=4.0, tracks=2, ramp_rate=100), tmp_path, Cpus())
    assert not figures.errors and figures.failed_calls == 0
    assert figures.frames_sent == 3 * 200 and figures.lost_frames == 0 and figures.calls_short == 0
    assert figures.ends_missing == 0 and figures.end_latency_ms is not None
    # End after stop is the server's flush (1 s in the emulator) plus End itself.
    assert figures.flush_wait_ms is not None and figures.end_after_close_ms is not None
    assert figures.flush_wait_ms[0] >= 900 and figures.end_after_close_ms[2] < figures.flush_wait_ms[0]
    assert figures.end_latency_ms[0] >= figures.flush_wait_ms[0]
    assert figures.media_messages > 0 and figures.cpu_pct > 0 and figures.us_per_message > 0
    assert figures.delivery_lag_ms is not None and figures.passed
    # The lag model (which frame completed each batch) never puts an arrival before its cause.
    calls = json.loads((tmp_path / "loadgen" / "calls.json").read_text())["calls"]
    sent = np.load(tmp_path / "loadgen" / "send_times.npy")
    by_sid = {c["call_sid"]: i for i, c in enumerate(calls)}
    for session in json.loads((tmp_path / "arrivals.json").read_text()):
        i = by_sid[session["call_sid"]]
        lags = delivery_lags_ms(session["arrivals"], sent[i], calls[i]["stop_at"], (0.0, float("inf")))
        assert len(lags) == len(session["arrivals"]) > 0 and min(lags) > 0


@pytest.mark.parametrize("sink", ["sink", "sink-asgi"])
def test_both_floors_read_every_call_to_its_stop(tmp_path: Path, sink: str) -> None:
    """The bare sinks (inline, and through ASGI receive) take the same calls and close each
    after its stop, as the bridge does: otherwise the floor would measure something else."""
    figures = run(sink, Plan(calls=3, duration_s=4.0, tracks=1, ramp_rate=100), tmp_path, Cpus())
    assert not figures.errors and figures.failed_calls == 0
    assert figures.frames_sent == 3 * 200 and figures.media_messages > 0 and figures.us_per_message > 0


def test_workers_share_out_cpus_and_say_when_the_load_shares_theirs() -> None:
    assert Cpus.fleet(2, [0, 1, 2]).workers == (0, 1) and Cpus.fleet(2, [0, 1, 2]).load_list == (2,)
    two = Cpus.fleet(2, [0, 1])
    assert two.workers == (0, 1) and two.load_list == (0, 1) and two.shared
    assert "worker 1 on CPU 0, worker 2 on CPU 1" in two.describe() and "competes" in two.describe()
    assert Cpus.fleet(3, [0, 1]).workers == (0, 1, 0)


def test_two_processes_on_one_line_count_twice(tmp_path: Path) -> None:
    """A fleet's workers share one output and a print is two writes, so two workers' lines can
    land on one: waiting for N of them counts what was printed, not lines."""
    program = "print('bridge: listening on 1bridge: listening on 1'); print(); print('bridge: listening on 1')"
    service = Service("two", [sys.executable, "-c", program], cpus=None, env=dict(os.environ), log=tmp_path / "log",
                      ready="bridge: listening on")  # fmt: skip
    assert len(service.wait_for("bridge: listening on", 3, 10)) == 2
    with pytest.raises(RuntimeError, match="printed 3 of 4 times"):
        service.wait_for("bridge: listening on", 4, 10)  # the process has ended: no waiting
    service.stop()


@pytest.mark.skipif(binaries() is None, reason="no PostgreSQL server binaries (initdb): `make postgres` installs them")
def test_a_tiny_run_of_two_workers_behind_one_port_reports_each(tmp_path: Path) -> None:
    """Four calls through `bridge serve --workers 2` on a PostgreSQL ledger: nothing lost, and
    each worker's own figures (from its internal port's /metrics and /proc) add up to the fleet's."""
    figures = run("bridge", Plan(calls=4, duration_s=4.0, tracks=1, ramp_rate=100), tmp_path, Cpus(), workers=2)
    assert not figures.errors and figures.failed_calls == 0
    assert figures.frames_sent == 4 * 200 and figures.lost_frames == 0 and figures.calls_short == 0
    assert figures.ends_missing == 0 and figures.passed
    assert len(figures.workers) == 2 and len({w.pid for w in figures.workers}) == 2
    assert sum(w.calls[0] for w in figures.workers) == 4  # every call on one worker or the other
    messages = sum(w.media_messages for w in figures.workers)
    # The workers count per 100 ms batch, the generator per message: a batch or so per call per edge.
    assert abs(messages - figures.media_messages) <= 4 * 2 * 10
    for w in figures.workers:
        assert w.rss_loaded_kb > 0 and w.loop_lag_ms[1] > 0  # probed on its own internal port
        if w.calls[0]:
            assert w.media_messages > 0 and w.cpu_pct > 0 and w.us_per_message > 0
        else:  # the kernel gave it no call (possible with four)
            assert w.media_messages == 0
    assert figures.cpu_pct == pytest.approx(sum(w.cpu_pct for w in figures.workers))
    lines: list[str] = []
    report([figures], Cpus(), out=lines.append)
    text = "\n".join(lines)
    assert "bridge (2 workers)" in text and "supervisor: CPU" in text
    for w in figures.workers:
        assert any(line.startswith(f"worker {w.number} ") and f" {w.pid} " in line for line in lines)
    assert any(line.startswith("all workers ") for line in lines)
