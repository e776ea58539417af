"""``bridge simulate <provider>``: replay a recorded call into a running bridge.

One sub-command per provider (``twilio``, ``vobiz``, ``plivo``, ``signalwire``, ``exotel``,
``telnyx``); each registers its own runner with ``set_defaults``, so ``run`` needs no change
per provider.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from bridge.providers.exotel import simulator as exotel_simulator
from bridge.providers.plivo import simulator as plivo_simulator
from bridge.providers.signalwire import simulator as signalwire_simulator
from bridge.providers.telnyx import simulator as telnyx_simulator
from bridge.providers.twilio.simulator import ReplayResult, TwilioCall, plan_messages, replay
from bridge.providers.vobiz.simulator import (
    BYTE_ORDERS,
    CONTENT_TYPES,
    DEFAULT_CONTENT_TYPE,
    Connection,
    VobizCall,
    load_audio,
    plan_connections,
    replay_connections,
)
from bridge.simulator.audio import load_pcm16, load_ulaw

T = TypeVar("T")

#: Namespace attribute holding the chosen sub-command's runner (namespaced to avoid clashes).
RUNNER = "simulate_runner"


def _common_arguments(parser: argparse.ArgumentParser, *, outbound: str) -> None:
    """What every provider's replay takes: where, what, and how fast."""
    parser.add_argument("--url", required=True, metavar="WS_URL", help="the bridge's stream URL (ws:// or wss://)")
    parser.add_argument(
        "--audio", required=True, type=Path, metavar="FILE", help="inbound track (caller): WAV or raw μ-law"
    )
    parser.add_argument("--second-track", type=Path, metavar="FILE", help=f"outbound track ({outbound})")
    parser.add_argument(
        "--pace", type=_pace, default=1.0, metavar="N", help="1 = real time (default), 10 = ten times faster"
    )


def _param_argument(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--param", type=_param, action="append", default=[], metavar="K=V", help=help)


def _plivo_family_arguments(parser: argparse.ArgumentParser) -> None:
    """Vobiz's and Plivo's replay options: the same Audio Streams."""
    _common_arguments(parser, outbound="the callee")
    parser.add_argument(
        "--content-type",
        choices=CONTENT_TYPES,
        default=DEFAULT_CONTENT_TYPE,
        help=f"inbound format, as <Stream contentType> sets it (default {DEFAULT_CONTENT_TYPE})",
    )
    parser.add_argument(
        "--byte-order",
        choices=BYTE_ORDERS,
        default="big",
        help="L16 byte order (default big, as Vobiz documents it)",
    )
    parser.add_argument(
        "--reconnect-after",
        type=_pace,
        metavar="S",
        help="close the socket after S s of audio and go on in a new stream (new streamId, same callId)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the provider sub-commands to ``parser`` (mounted as ``bridge simulate``)."""
    providers = parser.add_subparsers(dest="simulate_provider", metavar="PROVIDER", required=True)
    twilio = providers.add_parser(
        "twilio",
        help="replay a call as a Twilio Media Stream",
        description="Replay audio files as a Twilio Media Stream (connected, start, media…, stop).",
    )
    _common_arguments(twilio, outbound="the other party")
    twilio.add_argument(
        "--twilio-auth-token",
        default=os.environ.get("TWILIO_AUTH_TOKEN"),
        metavar="T",
        help="sign the upgrade with X-Twilio-Signature over the exact --url (default: $TWILIO_AUTH_TOKEN)",
    )
    _param_argument(twilio, "a <Parameter> for start.customParameters (repeatable)")
    twilio.set_defaults(**{RUNNER: run_twilio})

    vobiz = providers.add_parser(
        "vobiz",
        help="replay a call as a Vobiz Audio Stream",
        description="Replay audio files as a Vobiz Audio Stream (start, media…, then the socket closes).",
    )
    _plivo_family_arguments(vobiz)
    vobiz.set_defaults(**{RUNNER: run_vobiz})

    plivo = providers.add_parser(
        "plivo",
        help="replay a call as a Plivo Audio Stream",
        description="Replay audio files as a Plivo Audio Stream (start, media…, then the socket closes).",
    )
    _plivo_family_arguments(plivo)
    plivo.add_argument(
        "--plivo-auth-token",
        default=os.environ.get("PLIVO_AUTH_TOKEN"),
        metavar="T",
        help="append the stream token the bridge derives from it to --url, as its answer XML does"
        " (default: $PLIVO_AUTH_TOKEN)",
    )
    plivo.set_defaults(**{RUNNER: run_plivo})

    signalwire = providers.add_parser(
        "signalwire",
        help="replay a call as a SignalWire stream",
        description="Replay audio files as a SignalWire stream: Twilio's messages (connected, start, media…, stop).",
    )
    _common_arguments(signalwire, outbound="the other party")
    signalwire.add_argument(
        "--signalwire-stream-token",
        default=os.environ.get("SIGNALWIRE_STREAM_TOKEN"),
        metavar="T",
        help="send Authorization: Bearer T on the upgrade, as <Stream authBearerToken> makes SignalWire do"
        " (default: $SIGNALWIRE_STREAM_TOKEN)",
    )
    _param_argument(signalwire, "a <Parameter> for start.customParameters (repeatable)")
    signalwire.set_defaults(**{RUNNER: run_signalwire})

    exotel = providers.add_parser(
        "exotel",
        help="replay a call as an Exotel AgentStream",
        description="Replay audio files as an Exotel Stream/Voicebot applet stream (connected, start, media…, stop).",
    )
    _common_arguments(exotel, outbound="the other party, with a track field as Exotel's extension sends")
    exotel.add_argument(
        "--sample-rate",
        type=int,
        choices=exotel_simulator.SAMPLE_RATES,
        default=8000,
        help="raw PCM rate, as the stream URL's ?sample-rate= asks (default 8000)",
    )
    exotel.add_argument(
        "--exotel-basic-auth",
        default=os.environ.get("EXOTEL_BASIC_AUTH"),
        metavar="USER:PASSWORD",
        help="send Authorization: Basic on the upgrade, as Exotel does for wss://user:password@… URLs"
        " (default: $EXOTEL_BASIC_AUTH)",
    )
    _param_argument(exotel, "a custom parameter for start.custom_parameters (repeatable; Exotel allows 3)")
    exotel.set_defaults(**{RUNNER: run_exotel})

    telnyx = providers.add_parser(
        "telnyx",
        help="replay a call as a Telnyx media stream",
        description="Replay audio files as a Telnyx media stream (connected, start, media…, stop).",
    )
    _common_arguments(telnyx, outbound="the other party")
    telnyx.add_argument(
        "--codec",
        choices=sorted(telnyx_simulator.FORMATS),
        default="PCMU",
        help="the stream's codec: PCMU (8 kHz) or L16 (big-endian; default PCMU)",
    )
    telnyx.add_argument(
        "--sample-rate", type=int, choices=(8000, 16000), default=8000, help="L16's rate (default 8000)"
    )
    telnyx.add_argument(
        "--reorder",
        type=int,
        default=0,
        metavar="N",
        help="swap N pairs of neighbouring frames per track, as Telnyx may deliver them out of order",
    )
    telnyx.add_argument(
        "--telnyx-stream-auth-token",
        default=os.environ.get("TELNYX_STREAM_AUTH_TOKEN"),
        metavar="T",
        help="send x-telnyx-streaming-auth-token: T on the upgrade, as Telnyx does for a stream_auth_token"
        " (default: $TELNYX_STREAM_AUTH_TOKEN)",
    )
    _param_argument(telnyx, "a <Parameter> for start.custom_parameters (repeatable)")
    telnyx.set_defaults(**{RUNNER: run_telnyx})


def run(args: argparse.Namespace) -> int:
    """Run the chosen sub-command; returns the process exit code."""
    runner: Callable[[argparse.Namespace], int] = getattr(args, RUNNER)
    return runner(args)


def run_twilio(args: argparse.Namespace) -> int:
    """Replay the files, print one summary line; non-zero if it could not connect or finish."""
    return _run_twilio_format(args, "bridge simulate twilio", TwilioCall, auth_token=args.twilio_auth_token)


def run_signalwire(args: argparse.Namespace) -> int:
    """As ``run_twilio`` (the same messages), with SignalWire's ids and bearer token."""
    headers = signalwire_simulator.bearer(args.signalwire_stream_token)
    return _run_twilio_format(args, "bridge simulate signalwire", signalwire_simulator.SignalWireCall, headers=headers)


def _run_twilio_format(
    args: argparse.Namespace,
    prog: str,
    new_call: Callable[..., TwilioCall],
    *,
    auth_token: str | None = None,
    headers: dict[str, str] | None = None,
) -> int:
    try:
        inbound = load_ulaw(args.audio)
        outbound = load_ulaw(args.second_track) if args.second_track is not None else None
    except (OSError, ValueError) as exc:
        return _fail(prog, f"cannot read audio: {exc}", 2)
    call = new_call(
        tracks=["inbound", "outbound"] if outbound is not None else ["inbound"],
        custom_parameters=dict(args.param),
    )
    plan = plan_messages(call, inbound, outbound)
    work = replay(args.url, plan, pace=args.pace, auth_token=auth_token, extra_headers=headers)
    result, failed = _replay(prog, args.url, work)
    if result is None:
        return failed if failed is not None else 1
    print(summary(call, result))
    if not result.completed or result.close_code not in (1000, 1001):
        return _fail(prog, f"replay did not finish cleanly: {_how_closed(result)}", 1)
    return 0


def _replay(prog: str, url: str, work: Coroutine[Any, Any, T]) -> tuple[T | None, int | None]:
    """Run a replay; on a connection problem, one line on stderr and the exit code instead."""
    try:
        return asyncio.run(work), None
    except InvalidURI as exc:
        return None, _fail(prog, f"invalid WebSocket URL: {exc}", 2)
    except InvalidStatus as exc:
        return None, _fail(prog, f"handshake refused by {url}: HTTP {exc.response.status_code}", 1)
    except (OSError, InvalidHandshake) as exc:  # TimeoutError is an OSError
        return None, _fail(prog, f"cannot connect to {url}: {exc or type(exc).__name__}", 1)
    except KeyboardInterrupt:
        return None, _fail(prog, "interrupted", 130)


def run_vobiz(args: argparse.Namespace) -> int:
    """Replay the files over one socket (two with --reconnect-after), print one summary line."""
    return _run_plivo_family(args, "bridge simulate vobiz", VobizCall, plan_connections, args.url)


def run_plivo(args: argparse.Namespace) -> int:
    """As ``run_vobiz``, in Plivo's shapes, to the URL with the stream token when one is given."""
    url = plivo_simulator.stream_url(args.url, args.plivo_auth_token)
    prog = "bridge simulate plivo"
    return _run_plivo_family(args, prog, plivo_simulator.PlivoCall, plivo_simulator.plan_connections, url)


def run_exotel(args: argparse.Namespace) -> int:
    """Replay the files as an Exotel stream, print one summary line."""
    prog = "bridge simulate exotel"
    try:
        inbound = load_pcm16(args.audio, args.sample_rate)
        outbound = load_pcm16(args.second_track, args.sample_rate) if args.second_track is not None else None
    except (OSError, ValueError) as exc:
        return _fail(prog, f"cannot read audio: {exc}", 2)
    call = exotel_simulator.ExotelCall(
        tracks=["inbound", "outbound"] if outbound is not None else ["inbound"],
        custom_parameters=dict(args.param),
        sample_rate=args.sample_rate,
    )
    plan = exotel_simulator.plan_messages(call, inbound, outbound)
    headers = exotel_simulator.basic(args.exotel_basic_auth)
    result, failed = _replay(prog, args.url, replay(args.url, plan, pace=args.pace, extra_headers=headers))
    if result is None:
        return failed if failed is not None else 1
    print(_summary_line(call.call_sid, call.stream_sid, call.tracks, result))
    return _finished_cleanly(prog, result)


def run_telnyx(args: argparse.Namespace) -> int:
    """Replay the files as a Telnyx media stream, print one summary line."""
    prog = "bridge simulate telnyx"
    if args.sample_rate not in telnyx_simulator.FORMATS[args.codec]:
        return _fail(prog, f"{args.codec} is {telnyx_simulator.FORMATS[args.codec][0]} Hz only", 2)
    try:
        inbound = load_pcm16(args.audio, args.sample_rate)
        outbound = load_pcm16(args.second_track, args.sample_rate) if args.second_track is not None else None
    except (OSError, ValueError) as exc:
        return _fail(prog, f"cannot read audio: {exc}", 2)
    call = telnyx_simulator.TelnyxCall(
        tracks=["inbound", "outbound"] if outbound is not None else ["inbound"],
        custom_parameters=dict(args.param),
        encoding=args.codec,
        sample_rate=args.sample_rate,
    )
    plan = telnyx_simulator.plan_messages(call, inbound, outbound, reorder=max(args.reorder, 0))
    headers = telnyx_simulator.auth_header(args.telnyx_stream_auth_token)
    result, failed = _replay(prog, args.url, replay(args.url, plan, pace=args.pace, extra_headers=headers))
    if result is None:
        return failed if failed is not None else 1
    print(_summary_line(call.call_control_id, call.stream_id, call.tracks, result))
    return _finished_cleanly(prog, result)


def _run_plivo_family(
    args: argparse.Namespace,
    prog: str,
    new_call: Callable[..., VobizCall],
    plan: Callable[..., list[Connection]],
    url: str,
) -> int:
    try:
        inbound = load_audio(args.audio, args.content_type)
        outbound = load_audio(args.second_track, args.content_type) if args.second_track is not None else None
    except (OSError, ValueError) as exc:
        return _fail(prog, f"cannot read audio: {exc}", 2)
    call = new_call(tracks=["inbound", "outbound"] if outbound is not None else ["inbound"])
    try:
        connections = plan(
            call,
            inbound,
            outbound,
            content_type=args.content_type,
            l16_byte_order=args.byte_order,
            reconnect_after_s=args.reconnect_after,
        )
    except ValueError as exc:
        return _fail(prog, str(exc), 2)
    results, failed = _replay(prog, url, replay_connections(url, connections, pace=args.pace))
    if results is None:
        return failed if failed is not None else 1
    print(summary_vobiz(connections, results))
    for result in results:
        if code := _finished_cleanly(prog, result):
            return code
    return 0


def summary_vobiz(connections: list[Connection], results: list[ReplayResult]) -> str:
    """One line: the call, then per connection its stream, what each track sent, how it ended."""
    parts = []
    for connection, result in zip(connections, results, strict=True):
        tracks = ", ".join(
            f"{track} {result.frames_sent.get(track, 0)} frames/{result.bytes_sent.get(track, 0)} B"
            for track in connection.call.tracks
        )
        parts.append(f"stream {connection.call.stream_id}: {tracks}; {_how_closed(result)}")
    messages = sum(r.messages_sent for r in results)
    elapsed = sum(r.elapsed_s for r in results)
    streams = " | ".join(parts)
    return f"call {connections[0].call.call_id}: {streams}; {messages} messages in {elapsed:.2f} s"


def summary(call: TwilioCall, result: ReplayResult) -> str:
    """One line: who, what was sent per track, how long, how the connection ended."""
    return _summary_line(call.call_sid, call.stream_sid, call.tracks, result)


def _summary_line(call_sid: str, stream_sid: str, tracks: list[str], result: ReplayResult) -> str:
    sent = ", ".join(
        f"{track} {result.frames_sent.get(track, 0)} frames/{result.bytes_sent.get(track, 0)} B" for track in tracks
    )
    return (
        f"call {call_sid} stream {stream_sid}: {sent}; "
        f"{result.messages_sent} messages in {result.elapsed_s:.2f} s; {_how_closed(result)}"
    )


def _finished_cleanly(prog: str, result: ReplayResult) -> int:
    if not result.completed or result.close_code not in (1000, 1001):
        return _fail(prog, f"replay did not finish cleanly: {_how_closed(result)}", 1)
    return 0


def _how_closed(result: ReplayResult) -> str:
    code = f"{result.close_code}" + (f" {result.close_reason!r}" if result.close_reason else "")
    if result.closed_by == "server":
        return f"server closed first with {code}"
    if result.closed_by == "client":
        return f"simulator closed, server answered {code}"
    if result.closed_by == "abort":
        return "connection dropped by the simulator"
    return "connection lost without a close frame"


def _fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def _pace(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected K=V, got {text!r}")
    return key.strip(), value
