"""The call simulator: exact Twilio message shapes, pacing, drops, audio loading, CLI.

The server side is a plain ``websockets`` peer that records what arrives; every
wait is bounded with ``anyio.fail_after``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import struct
import time
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed

from bridge.audio.codec import pcm16_to_ulaw, ulaw_to_pcm16
from bridge.providers.twilio.signature import compute_signature
from bridge.providers.twilio.simulator import TwilioCall, plan_messages, replay, simulate_twilio
from bridge.simulator import cli
from bridge.simulator.audio import load_ulaw
from tests import SAMPLES

pytestmark = pytest.mark.anyio


LIMIT_S = 5  # upper bound for any single network wait in this file


# --- test peer ---------------------------------------------------------------------------


@dataclass
class Peer:
    url: str
    messages: list[str | bytes] = field(default_factory=list)
    headers: list[Headers] = field(default_factory=list)
    close_frames: list[Any] = field(default_factory=list)  # the client's close frame (None = none)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(m) for m in self.messages]

    async def wait_ended(self, connections: int = 1) -> None:
        """Until ``connections`` clients have gone (the handler has seen their close)."""
        with anyio.fail_after(LIMIT_S):
            while len(self.close_frames) < connections:
                await self.ended.wait()
                self.ended.clear()


@asynccontextmanager
async def peer(*, reject: HTTPStatus | None = None, close_after: int | None = None) -> AsyncIterator[Peer]:
    """A WebSocket server on 127.0.0.1 that records messages, headers and how the client left.

    ``close_after=n`` closes with 4001 after the n-th message; ``reject`` refuses the upgrade.
    """
    recorded: Peer | None = None

    async def handler(ws: ServerConnection) -> None:
        assert recorded is not None
        recorded.headers.append(ws.request.headers)
        try:
            async for message in ws:
                recorded.messages.append(message)
                if close_after is not None and len(recorded.messages) >= close_after:
                    await ws.close(4001, "enough")
                    break
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        recorded.close_frames.append(ws.protocol.close_rcvd)
        recorded.ended.set()

    def process_request(ws: ServerConnection, request: Any) -> Any:
        assert recorded is not None
        if reject is not None:
            recorded.headers.append(request.headers)
            return ws.respond(reject, "no\n")
        return None

    async with serve(handler, "127.0.0.1", 0, process_request=process_request) as server:
        port = server.sockets[0].getsockname()[1]
        recorded = Peer(f"ws://127.0.0.1:{port}/twilio/stream")
        yield recorded


# --- helpers -------------------------------------------------------------------------------


def ramp(n: int, start: int = 0) -> bytes:
    """Distinct μ-law bytes, so any reordering or loss shows."""
    return bytes((start + i) % 256 for i in range(n))


def payloads(messages: list[dict[str, Any]], track: str) -> bytes:
    return b"".join(
        base64.b64decode(m["media"]["payload"])
        for m in messages
        if m["event"] == "media" and m["media"]["track"] == track
    )


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


def write_pcm_wav(path: Path, samples: np.ndarray, rate: int, width: int) -> None:
    """``samples``: float (frames, channels) in [-1, 1); written as ``width``-byte PCM."""
    frames = np.atleast_2d(samples.T).T
    if width == 1:
        data = np.clip(np.rint(frames * 127 + 128), 0, 255).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.clip(np.rint(frames * (1 << 23)), -(1 << 23), (1 << 23) - 1).astype("<i4")
        data = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        dtype, scale = {2: ("<i2", 1 << 15), 4: ("<i4", 1 << 31)}[width]
        data = np.clip(np.rint(frames * scale), -scale, scale - 1).astype(dtype).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(frames.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)


def riff(tag: int, channels: int, rate: int, bits: int, data: bytes, extensible: bool = False) -> bytes:
    """A WAV the stdlib ``wave`` module cannot write (μ-law, A-law, float, EXTENSIBLE)."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, channels, rate, rate * block, block, bits)
    if extensible:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", tag) + guid_tail
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def dominant_hz(ulaw: bytes, rate: int = 8000) -> float:
    pcm = ulaw_to_pcm16(ulaw).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * rate / len(pcm))


def assert_strings(message: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert isinstance(message[key], str), (key, message)


# --- message shapes ------------------------------------------------------------------------


async def test_one_track_exact_shapes_and_order() -> None:
    call = TwilioCall(custom_parameters={"tenant": "acme", "patient_oid": "p-1"})
    inbound = ramp(400)  # 160 + 160 + a short 80-byte last frame
    async with peer() as server:
        result = await replay(server.url, plan_messages(call, inbound), pace=1000)
        await server.wait_ended()
    got = server.json()
    assert [m["event"] for m in got] == ["connected", "start", "media", "media", "media", "stop"]
    assert got[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert got[1] == {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": call.account_sid,
            "streamSid": call.stream_sid,
            "callSid": call.call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"tenant": "acme", "patient_oid": "p-1"},
        },
        "streamSid": call.stream_sid,
    }
    media = got[2:5]
    for m in media:
        assert set(m) == {"event", "sequenceNumber", "media", "streamSid"}
        assert set(m["media"]) == {"track", "chunk", "timestamp", "payload"}
        assert_strings(m, "sequenceNumber", "streamSid")
        assert_strings(m["media"], "track", "chunk", "timestamp", "payload")
        assert m["streamSid"] == call.stream_sid and m["media"]["track"] == "inbound"
    assert [m["sequenceNumber"] for m in media] == ["2", "3", "4"]
    assert [m["media"]["chunk"] for m in media] == ["1", "2", "3"]
    assert [m["media"]["timestamp"] for m in media] == ["0", "20", "40"]
    assert [len(base64.b64decode(m["media"]["payload"])) for m in media] == [160, 160, 80]
    assert got[5] == {
        "event": "stop",
        "sequenceNumber": "5",
        "stop": {"accountSid": call.account_sid, "callSid": call.call_sid},
        "streamSid": call.stream_sid,
    }
    assert payloads(got, "inbound") == inbound
    assert (result.messages_sent, result.media_sent, result.bytes_sent) == (6, 3, {"inbound": 400})
    assert result.completed and result.closed_by == "client" and result.close_code == 1000
    assert server.close_frames[0].code == 1000


async def test_two_tracks_interleave_per_tick() -> None:
    call = TwilioCall(tracks=["inbound", "outbound"])
    inbound, outbound = ramp(480), ramp(250, start=100)  # 3 frames; 2 frames (160 + 90)
    async with peer() as server:
        result = await replay(server.url, plan_messages(call, inbound, outbound), pace=1000)
        await server.wait_ended()
    got = server.json()
    assert got[1]["start"]["tracks"] == ["inbound", "outbound"]
    media = [m for m in got if m["event"] == "media"]
    assert [(m["media"]["track"], m["media"]["chunk"], m["media"]["timestamp"]) for m in media] == [
        ("outbound", "1", "0"),
        ("inbound", "1", "0"),
        ("outbound", "2", "20"),
        ("inbound", "2", "20"),
        ("inbound", "3", "40"),
    ]
    sequence = [m["sequenceNumber"] for m in got[1:]]
    assert sequence == [str(n) for n in range(1, len(got))]
    assert "sequenceNumber" not in got[0]
    assert got[-1]["event"] == "stop"
    assert payloads(got, "inbound") == inbound and payloads(got, "outbound") == outbound
    assert result.bytes_sent == {"inbound": 480, "outbound": 250}
    assert result.frames_sent == {"inbound": 3, "outbound": 2}


def test_plan_timing_shared_chunks_and_no_stop() -> None:
    call = TwilioCall(tracks=["inbound", "outbound"])
    plan = plan_messages(call, ramp(330), ramp(160), shared_chunk_counter=True, send_stop=False)
    times = [t for t, _ in plan]
    assert times == sorted(times) and times[:2] == [0.0, 0.0]
    media = [m for _, m in plan if m["event"] == "media"]
    assert [m["media"]["chunk"] for m in media] == ["1", "2", "3", "4"]
    # Sent when the frame's audio is complete; the short last frame at the end of the audio.
    assert times[2:] == [0.02, 0.02, 0.04, 330 / 8000]
    assert plan[-1][1]["event"] == "media"
    stop_at, stop = plan_messages(call, ramp(330))[-1]
    assert stop["event"] == "stop" and stop_at == 330 / 8000
    with pytest.raises(ValueError, match="outbound"):
        plan_messages(TwilioCall(), ramp(160), ramp(160))


def test_sids_look_like_twilio() -> None:
    call = TwilioCall()
    for sid, prefix in ((call.account_sid, "AC"), (call.call_sid, "CA"), (call.stream_sid, "MZ")):
        assert len(sid) == 34 and sid.startswith(prefix) and int(sid[2:], 16) >= 0
    assert TwilioCall().call_sid != call.call_sid


# --- headers, parameters, raw input --------------------------------------------------------


async def test_signature_header_and_custom_parameters(tmp_path: Path) -> None:
    audio = tmp_path / "a.ulaw"
    audio.write_bytes(ramp(320))
    async with peer() as server:
        await simulate_twilio(server.url, audio, pace=1000, auth_token="12345", params={"k": "v"})
        await replay(server.url, [(0.0, {"event": "connected"})], pace=1000)
        await server.wait_ended(connections=2)
    signed, unsigned = server.headers
    assert signed["X-Twilio-Signature"] == compute_signature("12345", server.url)
    assert "X-Twilio-Signature" not in unsigned
    assert server.json()[1]["start"]["customParameters"] == {"k": "v"}


async def test_raw_text_and_binary_are_sent_as_given() -> None:
    async with peer() as server:
        result = await replay(server.url, [(0, "not json {"), (0, b"\x00\x01")], pace=1000)
        await server.wait_ended()
    assert server.messages == ["not json {", b"\x00\x01"]
    assert result.messages_sent == 2 and result.media_sent == 0


async def test_rejects_bad_pace() -> None:
    with pytest.raises(ValueError, match="pace"):
        await replay("ws://127.0.0.1:1/", [], pace=0)


# --- pacing, server close, drops -----------------------------------------------------------


async def test_pacing_real_time_and_fast() -> None:
    plan = plan_messages(TwilioCall(), ramp(4000))  # 0.5 s of audio
    async with peer() as server:
        started = time.monotonic()
        slow = await replay(server.url, plan, pace=1)
        slow_wall = time.monotonic() - started
        started = time.monotonic()
        fast = await replay(server.url, plan, pace=100)
        fast_wall = time.monotonic() - started
    assert slow.elapsed_s >= 0.45 and slow_wall >= 0.45
    assert slow.elapsed_s < 1.5
    assert fast.elapsed_s < 0.2 and fast_wall < 0.3
    assert slow.bytes_sent == fast.bytes_sent == {"inbound": 4000}


async def test_server_closing_first_ends_replay() -> None:
    plan = plan_messages(TwilioCall(), ramp(80_000))  # 10 s at real time: must not wait for it
    async with peer(close_after=3) as server:
        with anyio.fail_after(LIMIT_S):
            result = await replay(server.url, plan, pace=1)
    assert (result.close_code, result.close_reason, result.closed_by) == (4001, "enough", "server")
    assert not result.completed and result.messages_sent < 10


async def test_drop_after_aborts_without_close_frame() -> None:
    plan = plan_messages(TwilioCall(), ramp(8000))  # 1 s
    async with peer() as server:
        result = await replay(server.url, plan, pace=10, drop_after_s=0.3)
        await server.wait_ended()
    assert server.close_frames == [None]  # TCP went away with no close frame
    assert result.closed_by == "abort" and result.close_code is None and not result.completed
    media = [m for m in server.json() if m["event"] == "media"]
    assert len(media) == 15  # frames whose audio ends by 0.3 s
    assert all(m["event"] != "stop" for m in server.json())


async def test_drop_after_the_last_message_when_the_plan_ends_first() -> None:
    plan = plan_messages(TwilioCall(), ramp(320), send_stop=False)  # a call that just vanishes
    async with peer() as server:
        result = await replay(server.url, plan, pace=1000, drop_after_s=60)
        await server.wait_ended()
    assert server.close_frames == [None] and len(server.messages) == 4
    assert result.completed and result.closed_by == "abort"


async def test_wait_for_server_close_when_not_closing() -> None:
    plan = plan_messages(TwilioCall(), ramp(160))
    async with peer(close_after=len(plan)) as server:  # closes once stop arrives
        result = await replay(server.url, plan, pace=1000, close_after=False, server_close_timeout=LIMIT_S)
    assert result.completed and result.closed_by == "server" and result.close_code == 4001


# --- audio loading -------------------------------------------------------------------------


def test_load_44k1_stereo_wav(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    write_pcm_wav(path, np.stack([tone(1000, 44100, 1.0), tone(1000, 44100, 1.0, 0.3)], axis=1), 44100, 2)
    ulaw = load_ulaw(path)
    assert abs(len(ulaw) - 8000) <= 1
    assert abs(dominant_hz(ulaw) - 1000) < 5
    level = np.sqrt(np.mean(ulaw_to_pcm16(ulaw).astype(float) ** 2)) / 32768
    assert 0.25 < level < 0.32  # the downmix of 0.5 and 0.3 peaks is 0.4 peak, 0.28 rms


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_load_pcm_widths(tmp_path: Path, width: int) -> None:
    path = tmp_path / f"w{width}.wav"
    write_pcm_wav(path, tone(1000, 16000, 0.5), 16000, width)
    ulaw = load_ulaw(path)
    assert abs(len(ulaw) - 4000) <= 1 and abs(dominant_hz(ulaw) - 1000) < 5


def test_load_other_wav_encodings(tmp_path: Path) -> None:
    ulaw_8k = pcm16_to_ulaw(np.rint(tone(1000, 8000, 0.5) * 20000))
    (tmp_path / "mulaw.wav").write_bytes(riff(7, 1, 8000, 8, ulaw_8k))
    assert load_ulaw(tmp_path / "mulaw.wav") == ulaw_8k  # untouched passthrough
    floats = tone(1000, 22050, 0.5).astype("<f4").tobytes()
    (tmp_path / "float.wav").write_bytes(riff(3, 1, 22050, 32, floats, extensible=True))
    assert abs(dominant_hz(load_ulaw(tmp_path / "float.wav")) - 1000) < 5
    alaw = bytes([0xD5]) * 800  # A-law code for (near) zero
    (tmp_path / "alaw.wav").write_bytes(riff(6, 1, 8000, 8, alaw))
    assert np.abs(ulaw_to_pcm16(load_ulaw(tmp_path / "alaw.wav"))).max() < 16


def test_raw_ulaw_passthrough_and_errors(tmp_path: Path) -> None:
    for suffix in (".ulaw", ".mulaw", ".ul", ".raw", ".ULAW"):
        raw = tmp_path / f"call{suffix}"
        raw.write_bytes(ramp(999))
        assert load_ulaw(raw) == ramp(999)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a WAV"):
        load_ulaw(tmp_path / "notes.txt")
    (tmp_path / "adpcm.wav").write_bytes(riff(2, 1, 8000, 8, b"\x00" * 100))
    with pytest.raises(ValueError, match="unsupported WAV encoding"):
        load_ulaw(tmp_path / "adpcm.wav")
    (tmp_path / "empty.ulaw").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_ulaw(tmp_path / "empty.ulaw")


def test_samples_are_an_interleaved_conversation() -> None:
    caller, clinician = load_ulaw(SAMPLES / "caller.wav"), load_ulaw(SAMPLES / "clinician.wav")
    for path, audio in ((SAMPLES / "caller.wav", caller), (SAMPLES / "clinician.wav", clinician)):
        with wave.open(str(path)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        assert 8 * 8000 <= len(audio) <= 12 * 8000
        assert path.stat().st_size < 250_000

    def active(audio: bytes) -> np.ndarray:  # per 20 ms frame: someone speaking?
        pcm = ulaw_to_pcm16(audio[: len(audio) // 160 * 160]).reshape(-1, 160)
        return np.abs(pcm.astype(int)).max(axis=1) > 600

    a, b = active(caller), active(clinician)
    n = min(len(a), len(b))
    assert a.sum() > 100 and b.sum() > 100  # both parties talk for > 2 s
    assert (a[:n] & b[:n]).sum() == 0  # never at the same time


# --- CLI -----------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bridge")
    commands = parser.add_subparsers(dest="command", required=True)
    cli.add_arguments(commands.add_parser("simulate"))
    return parser.parse_args(["simulate", *argv])


def test_cli_arguments(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "from-env")
    args = parse(["twilio", "--url", "ws://x/s", "--audio", "a.wav", "--param", "a=1", "--param", "b=x=y"])
    assert (args.url, args.audio, args.second_track, args.pace) == ("ws://x/s", Path("a.wav"), None, 1.0)
    assert args.twilio_auth_token == "from-env" and dict(args.param) == {"a": "1", "b": "x=y"}
    for bad in (["--param", "novalue"], ["--pace", "0"], ["--pace", "fast"]):
        with pytest.raises(SystemExit):
            parse(["twilio", "--url", "ws://x/s", "--audio", "a.wav", *bad])
    assert "expected K=V" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse([])  # a provider is required


async def test_cli_run_summary_and_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audio, second = tmp_path / "in.ulaw", tmp_path / "out.ulaw"
    audio.write_bytes(ramp(400))
    second.write_bytes(ramp(160))
    async with peer() as server:
        args = parse(
            ["twilio", "--url", server.url, "--audio", str(audio), "--second-track", str(second),
             "--pace", "1000", "--twilio-auth-token", "t", "--param", "tenant=acme"]
        )  # fmt: skip
        with anyio.fail_after(LIMIT_S):
            code = await anyio.to_thread.run_sync(cli.run, args)
    out = capsys.readouterr().out
    assert code == 0
    assert "inbound 3 frames/400 B" in out and "outbound 1 frames/160 B" in out
    assert server.json()[1]["start"]["callSid"] in out and "server answered 1000" in out
    assert server.headers[0]["X-Twilio-Signature"] == compute_signature("t", server.url)

    async with peer(reject=HTTPStatus.FORBIDDEN) as server:
        args = parse(["twilio", "--url", server.url, "--audio", str(audio)])
        with anyio.fail_after(LIMIT_S):
            code = await anyio.to_thread.run_sync(cli.run, args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "HTTP 403" in err[0]
