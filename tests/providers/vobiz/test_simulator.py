"""The Vobiz call simulator: exact message shapes, L16 frames and byte order, the reconnect
(new streamId, same callId, no audio lost or repeated), the L16 loader and the CLI.

The server side is a plain ``websockets`` peer that records each connection's messages;
every wait is bounded with ``anyio.fail_after``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
import uuid
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from bridge.audio.codec import pcm16_to_ulaw, ulaw_to_pcm16
from bridge.providers.events import Media, MediaFormat, StreamStart
from bridge.providers.vobiz import stream as vobiz
from bridge.providers.vobiz.simulator import (
    VobizCall,
    load_audio,
    plan_connections,
    plan_messages,
    replay_connections,
    simulate_vobiz,
)
from bridge.simulator import cli
from bridge.simulator.audio import load_pcm16
from tests import SAMPLES

pytestmark = pytest.mark.anyio


LIMIT_S = 5  # upper bound for any single network wait in this file
EPOCH = 1_778_597_597_091


# --- test peer ---------------------------------------------------------------------------


@dataclass
class Conn:
    messages: list[dict[str, Any]] = field(default_factory=list)
    close: Any = None  # the client's close frame (None = none)


@dataclass
class Peer:
    url: str
    connections: list[Conn] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    done: int = 0

    async def wait_ended(self, connections: int = 1) -> None:
        with anyio.fail_after(LIMIT_S):
            while self.done < connections:
                await self.ended.wait()
                self.ended.clear()

    def all_messages(self) -> list[dict[str, Any]]:
        return [m for c in self.connections for m in c.messages]


@asynccontextmanager
async def peer() -> AsyncIterator[Peer]:
    """A WebSocket server on 127.0.0.1 recording each connection's JSON messages and close frame."""
    recorded: Peer | None = None

    async def handler(ws: ServerConnection) -> None:
        assert recorded is not None
        conn = Conn()
        recorded.connections.append(conn)
        try:
            async for message in ws:
                conn.messages.append(json.loads(message))
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        conn.close = ws.protocol.close_rcvd
        recorded.done += 1
        recorded.ended.set()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        recorded = Peer(f"ws://127.0.0.1:{port}/vobiz/stream/tok123")
        yield recorded


# --- helpers -------------------------------------------------------------------------------


def ramp(n: int, start: int = 0) -> bytes:
    """Distinct bytes, so any reordering or loss shows."""
    return bytes((start + i) % 256 for i in range(n))


def media_of(messages: list[dict[str, Any]], track: str | None = None) -> list[dict[str, Any]]:
    return [m for m in messages if m["event"] == "media" and track in (None, m["media"]["track"])]


def payloads(messages: list[dict[str, Any]], track: str) -> bytes:
    return b"".join(base64.b64decode(m["media"]["payload"]) for m in media_of(messages, track))


def is_uuid(text: str) -> bool:
    return str(uuid.UUID(text)) == text


def tone(rate: int, seconds: float, freq: float = 440.0, peak: float = 12000) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(peak * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())


# --- message shapes ------------------------------------------------------------------------


async def test_mulaw_one_track_exact_shapes() -> None:
    call = VobizCall(extra_headers="tenant=acme")
    inbound = ramp(400)  # 160 + 160 + a short 80-byte last frame
    async with peer() as server:
        results = await replay_connections(server.url, plan_connections(call, inbound, start_epoch_ms=EPOCH), pace=1000)
        await server.wait_ended()
    (conn,) = server.connections
    got = conn.messages
    assert [m["event"] for m in got] == ["start", "media", "media", "media"]  # no connected, no stop
    assert got[0] == {
        "sequenceNumber": 0,
        "event": "start",
        "start": {
            "callId": call.call_id,
            "streamId": call.stream_id,
            "accountId": call.account_id,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
        },
        "extra_headers": "tenant=acme",
    }
    assert "streamId" not in got[0]  # start nests its ids
    for m in got[1:]:
        assert set(m) == {"sequenceNumber", "streamId", "event", "media", "extra_headers"}
        assert set(m["media"]) == {"track", "timestamp", "chunk", "payload"}
        assert m["streamId"] == call.stream_id and m["media"]["track"] == "inbound"
        assert isinstance(m["sequenceNumber"], int) and isinstance(m["media"]["chunk"], int)
        assert isinstance(m["media"]["timestamp"], str)
    assert [m["sequenceNumber"] for m in got] == [0, 1, 2, 3]
    assert [m["media"]["chunk"] for m in got[1:]] == [1, 2, 3]
    assert [m["media"]["timestamp"] for m in got[1:]] == [str(EPOCH), str(EPOCH + 20), str(EPOCH + 40)]
    assert [len(base64.b64decode(m["media"]["payload"])) for m in got[1:]] == [160, 160, 80]
    assert payloads(got, "inbound") == inbound
    (result,) = results
    assert (result.messages_sent, result.media_sent, result.bytes_sent) == (4, 3, {"inbound": 400})
    assert result.completed and result.closed_by == "client" and conn.close.code == 1000
    assert is_uuid(call.call_id) and is_uuid(call.stream_id) and call.account_id.isdigit()


def test_two_tracks_interleave_per_tick_with_one_chunk_counter() -> None:
    call = VobizCall(tracks=["inbound", "outbound"])
    plan = plan_messages(call, ramp(480), ramp(250, start=100), start_epoch_ms=EPOCH)
    media = [m for _, m in plan if m["event"] == "media"]
    assert [(m["media"]["track"], m["media"]["chunk"], m["media"]["timestamp"]) for m in media] == [
        ("outbound", 1, str(EPOCH)),
        ("inbound", 2, str(EPOCH)),
        ("outbound", 3, str(EPOCH + 20)),
        ("inbound", 4, str(EPOCH + 20)),
        ("inbound", 5, str(EPOCH + 40)),
    ]
    assert [m["sequenceNumber"] for _, m in plan] == list(range(6))
    assert plan[0][1]["start"]["tracks"] == ["inbound", "outbound"]
    times = [t for t, _ in plan]
    assert times == [0.0, 0.02, 0.02, 0.04, 0.04, 0.06]  # due when the frame's audio is spoken
    assert payloads([m for _, m in plan], "outbound") == ramp(250, start=100)
    with pytest.raises(ValueError, match="outbound"):
        plan_messages(VobizCall(), ramp(160), ramp(160))
    with pytest.raises(ValueError, match="content type"):
        plan_messages(VobizCall(), ramp(160), content_type="audio/x-l16;rate=24000")


@pytest.mark.parametrize(
    ("content_type", "rate", "frame"),
    [("audio/x-l16;rate=8000", 8000, 320), ("audio/x-l16;rate=16000", 16000, 640)],
)
@pytest.mark.parametrize("order", ["big", "little"])
def test_l16_frames_and_byte_order(content_type: str, rate: int, frame: int, order: str) -> None:
    samples = tone(rate, 0.1)  # 5 frames
    plan = plan_messages(VobizCall(), samples, content_type=content_type, l16_byte_order=order, start_epoch_ms=EPOCH)
    start, media = plan[0][1], [m for _, m in plan[1:]]
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-l16", "sampleRate": rate}
    assert [len(base64.b64decode(m["media"]["payload"])) for m in media] == [frame] * 5
    assert [m["media"]["timestamp"] for m in media] == [str(EPOCH + 20 * i) for i in range(5)]
    wire = payloads(media, "inbound")
    assert wire == samples.astype(">i2" if order == "big" else "<i2").tobytes()
    assert plan[-1][0] == pytest.approx(0.1)


def test_big_endian_by_default_and_bytes_pass_through() -> None:
    samples = np.array([0x0102, -2, 0x7F00], dtype=np.int16)
    plan = plan_messages(VobizCall(), samples, content_type="audio/x-l16;rate=8000")
    assert payloads([m for _, m in plan], "inbound") == b"\x01\x02\xff\xfe\x7f\x00"
    raw = ramp(700)  # wire bytes are sent as given: 320 + 320 + 60
    plan = plan_messages(VobizCall(), raw, content_type="audio/x-l16;rate=8000", l16_byte_order="little")
    assert payloads([m for _, m in plan], "inbound") == raw
    # μ-law from samples is encoded; the epoch clock defaults to now.
    before = int(time.time() * 1000)
    plan = plan_messages(VobizCall(), tone(8000, 0.02))
    assert payloads([m for _, m in plan], "inbound") == pcm16_to_ulaw(tone(8000, 0.02))
    assert before <= int(plan[1][1]["media"]["timestamp"]) <= int(time.time() * 1000)


def test_messages_parse_back_into_neutral_events() -> None:
    call = VobizCall(tracks=["inbound", "outbound"], extra_headers='{"route": "r1"}')
    plan = plan_messages(
        call, tone(16000, 0.04), tone(16000, 0.04, 300), content_type="audio/x-l16;rate=16000",
        start_epoch_ms=EPOCH,
    )  # fmt: skip
    events = [vobiz.parse(json.dumps(m)) for _, m in plan]
    assert events[0] == StreamStart(
        call.call_id, call.stream_id, call.account_id, ("inbound", "outbound"),
        MediaFormat("audio/x-l16", 16000, 1), {"route": "r1"},
    )  # fmt: skip
    assert events[1:] == [
        Media("outbound", tone(16000, 0.04, 300)[:320].astype(">i2").tobytes(), EPOCH, 1),
        Media("inbound", tone(16000, 0.04)[:320].astype(">i2").tobytes(), EPOCH, 2),
        Media("outbound", tone(16000, 0.04, 300)[320:].astype(">i2").tobytes(), EPOCH + 20, 3),
        Media("inbound", tone(16000, 0.04)[320:].astype(">i2").tobytes(), EPOCH + 20, 4),
    ]


# --- reconnect -----------------------------------------------------------------------------


async def test_reconnect_new_stream_same_call_nothing_lost() -> None:
    call = VobizCall(tracks=["inbound", "outbound"])
    inbound, outbound = ramp(1000), ramp(900, start=7)  # 6.25 and 5.6 frames of μ-law
    connections = plan_connections(call, inbound, outbound, start_epoch_ms=EPOCH, reconnect_after_s=0.05)
    async with peer() as server:
        results = await replay_connections(server.url, connections, pace=1000)
        await server.wait_ended(connections=2)
    first, second = server.connections
    assert first.close.code == 1000 and second.close.code == 1000  # each socket just closes
    assert all(m["event"] in ("start", "media") for m in server.all_messages())
    a, b = first.messages[0], second.messages[0]
    assert a["event"] == b["event"] == "start"
    assert a["start"]["callId"] == b["start"]["callId"] == call.call_id
    assert a["start"]["streamId"] == call.stream_id != b["start"]["streamId"]
    assert is_uuid(b["start"]["streamId"]) and a["start"]["accountId"] == b["start"]["accountId"]
    for conn in (first, second):
        sid = conn.messages[0]["start"]["streamId"]
        assert [m["sequenceNumber"] for m in conn.messages] == list(range(len(conn.messages)))
        media = media_of(conn.messages)
        assert [m["media"]["chunk"] for m in media] == list(range(1, len(media) + 1))
        assert all(m["streamId"] == sid for m in media)
    # 0.05 s rounds down to 2 ticks: frames ending by 40 ms go on the first socket.
    assert {m["media"]["timestamp"] for m in media_of(first.messages)} == {str(EPOCH), str(EPOCH + 20)}
    later = [int(m["media"]["timestamp"]) for m in media_of(second.messages, "inbound")]
    assert later == [EPOCH + 40 + 20 * i for i in range(5)]
    for track, audio in (("inbound", inbound), ("outbound", outbound)):
        assert payloads(first.messages, track) + payloads(second.messages, track) == audio
    assert [r.bytes_sent for r in results] == [
        {"inbound": 320, "outbound": 320},
        {"inbound": 680, "outbound": 580},
    ]


def test_reconnect_bounds() -> None:
    for bad in (0.0, 0.019, 0.14, 5.0):  # 1000 bytes are 6.25 frames: 7 frames leave nothing
        with pytest.raises(ValueError, match="reconnect_after_s"):
            plan_connections(VobizCall(), ramp(1000), reconnect_after_s=bad)
    first, second = plan_connections(VobizCall(), ramp(1000), reconnect_after_s=0.125)
    assert payloads([m for _, m in second.plan], "inbound") == ramp(1000)[960:]
    assert first.call.call_id == second.call.call_id and first.call.stream_id != second.call.stream_id


async def test_simulate_vobiz_l16_from_a_wav_with_reconnect(tmp_path: Path) -> None:
    caller, callee = tmp_path / "caller.wav", tmp_path / "callee.wav"
    write_wav(caller, tone(8000, 0.2), 8000)
    write_wav(callee, tone(8000, 0.16, 300), 8000)
    async with peer() as server:
        results = await simulate_vobiz(
            server.url, caller, second_track=callee, content_type="audio/x-l16;rate=16000",
            pace=1000, reconnect_after_s=0.1,
        )  # fmt: skip
        await server.wait_ended(connections=2)
    assert len(results) == 2 and all(r.completed for r in results)
    first, second = server.connections
    for conn in (first, second):
        assert conn.messages[0]["start"]["mediaFormat"] == {"encoding": "audio/x-l16", "sampleRate": 16000}
        assert conn.messages[0]["start"]["tracks"] == ["inbound", "outbound"]
    wire = payloads(first.messages, "inbound") + payloads(second.messages, "inbound")
    assert wire == load_pcm16(caller, 16000).astype(">i2").tobytes()
    assert len(wire) == 0.2 * 16000 * 2
    assert len(payloads(first.messages, "outbound")) == 0.1 * 16000 * 2


# --- audio loading -------------------------------------------------------------------------


def test_load_pcm16() -> None:
    with wave.open(str(SAMPLES / "caller.wav")) as w:
        exact = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert np.array_equal(load_pcm16(SAMPLES / "caller.wav", 8000), exact)  # 8 kHz: sample for sample
    up = load_pcm16(SAMPLES / "caller.wav", 16000)
    assert up.dtype == np.int16 and abs(len(up) - 2 * len(exact)) <= 1
    # The 16 kHz version carries the same audio: decimated back it matches the original.
    error = up[::2][: len(exact)].astype(float) - exact
    assert np.sqrt(np.mean(error**2)) < 0.05 * np.sqrt(np.mean(exact.astype(float) ** 2))


def test_load_pcm16_raw_ulaw_and_tone(tmp_path: Path) -> None:
    raw = tmp_path / "call.ulaw"
    raw.write_bytes(pcm16_to_ulaw(tone(8000, 0.5)))
    assert np.array_equal(load_pcm16(raw, 8000), ulaw_to_pcm16(raw.read_bytes()))
    up = load_pcm16(raw, 16000)
    spectrum = np.abs(np.fft.rfft(up.astype(float) * np.hanning(len(up))))
    assert abs(np.argmax(spectrum) * 16000 / len(up) - 440) < 5
    (tmp_path / "empty.ulaw").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_pcm16(tmp_path / "empty.ulaw", 8000)
    with pytest.raises(ValueError, match="rate"):
        load_pcm16(raw, 0)
    assert isinstance(load_audio(raw), bytes)  # μ-law content type: the bytes as they are
    assert load_audio(raw, "audio/x-l16;rate=16000").dtype == np.int16


# --- CLI -----------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bridge")
    commands = parser.add_subparsers(dest="command", required=True)
    cli.add_arguments(commands.add_parser("simulate"))
    return parser.parse_args(["simulate", *argv])


def test_cli_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["vobiz", "--url", "ws://x/s", "--audio", "a.wav"])
    assert (args.url, args.audio, args.second_track, args.pace) == ("ws://x/s", Path("a.wav"), None, 1.0)
    assert (args.content_type, args.byte_order, args.reconnect_after) == (
        "audio/x-mulaw;rate=8000", "big", None
    )  # fmt: skip
    args = parse(
        ["vobiz", "--url", "ws://x/s", "--audio", "a.wav", "--second-track", "b.wav",
         "--content-type", "audio/x-l16;rate=16000", "--byte-order", "little", "--pace", "4",
         "--reconnect-after", "2.5"]
    )  # fmt: skip
    assert (args.second_track, args.content_type, args.byte_order) == (
        Path("b.wav"), "audio/x-l16;rate=16000", "little"
    )  # fmt: skip
    assert (args.pace, args.reconnect_after, args.simulate_runner) == (4.0, 2.5, cli.run_vobiz)
    for bad in (
        ["--content-type", "audio/x-l16;rate=24000"],
        ["--byte-order", "middle"],
        ["--reconnect-after", "0"],
        ["--pace", "fast"],
    ):
        with pytest.raises(SystemExit):
            parse(["vobiz", "--url", "ws://x/s", "--audio", "a.wav", *bad])
    assert "invalid choice" in capsys.readouterr().err
    assert parse(["twilio", "--url", "ws://x/s", "--audio", "a.wav"]).simulate_runner == cli.run_twilio


async def test_cli_run_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audio, second = tmp_path / "in.ulaw", tmp_path / "out.ulaw"
    audio.write_bytes(ramp(400))
    second.write_bytes(ramp(160))
    async with peer() as server:
        args = parse(
            ["vobiz", "--url", server.url, "--audio", str(audio), "--second-track", str(second),
             "--pace", "1000", "--reconnect-after", "0.02"]
        )  # fmt: skip
        with anyio.fail_after(LIMIT_S):
            code = await anyio.to_thread.run_sync(cli.run, args)
        await server.wait_ended(connections=2)
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(out) == 1
    first, second_conn = (c.messages[0]["start"] for c in server.connections)
    line = out[0]
    assert line.startswith(f"call {first['callId']}: stream {first['streamId']}: ")
    assert f"stream {second_conn['streamId']}: inbound 2 frames/240 B, outbound 0 frames/0 B" in line
    assert "inbound 1 frames/160 B, outbound 1 frames/160 B" in line
    assert line.count("simulator closed, server answered 1000") == 2


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audio = tmp_path / "in.ulaw"
    audio.write_bytes(ramp(400))
    code = cli.run(parse(["vobiz", "--url", "ws://127.0.0.1:9/x", "--audio", str(tmp_path / "missing.wav")]))
    assert code == 2 and "cannot read audio" in capsys.readouterr().err
    args = parse(["vobiz", "--url", "ws://127.0.0.1:9/x", "--audio", str(audio), "--reconnect-after", "9"])
    code = cli.run(args)
    assert code == 2 and "reconnect_after_s" in capsys.readouterr().err
