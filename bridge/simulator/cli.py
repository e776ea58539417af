"""``bridge simulate <provider>``: replay a recorded call into a running bridge.

One sub-command per provider (``twilio``, ``vobiz``); each registers its own
runner with ``set_defaults``, so ``run`` needs no change per provider.
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
from bridge.simulator.audio import load_ulaw

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
    twilio.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="K=V",
        help="a <Parameter> for start.customParameters (repeatable)",
    )
    twilio.set_defaults(**{RUNNER: run_twilio})

    vobiz = providers.add_parser(
        "vobiz",
        help="replay a call as a Vobiz Audio Stream",
        description="Replay audio files as a Vobiz Audio Stream (start, media…, then the socket closes).",
    )
    _common_arguments(vobiz, outbound="the callee")
    vobiz.add_argument(
        "--content-type",
        choices=CONTENT_TYPES,
        default=DEFAULT_CONTENT_TYPE,
        help=f"inbound format, as <Stream contentType> sets it (default {DEFAULT_CONTENT_TYPE})",
    )
    vobiz.add_argument(
        "--byte-order",
        choices=BYTE_ORDERS,
        default="big",
        help="L16 byte order (default big, as Vobiz documents it)",
    )
    vobiz.add_argument(
        "--reconnect-after",
        type=_pace,
        metavar="S",
        help="close the socket after S s of audio and go on in a new stream (new streamId, same callId)",
    )
    vobiz.set_defaults(**{RUNNER: run_vobiz})


def run(args: argparse.Namespace) -> int:
    """Run the chosen sub-command; returns the process exit code."""
    runner: Callable[[argparse.Namespace], int] = getattr(args, RUNNER)
    return runner(args)


def run_twilio(args: argparse.Namespace) -> int:
    """Replay the files, print one summary line; non-zero if it could not connect or finish."""
    prog = "bridge simulate twilio"
    try:
        inbound = load_ulaw(args.audio)
        outbound = load_ulaw(args.second_track) if args.second_track is not None else None
    except (OSError, ValueError) as exc:
        return _fail(prog, f"cannot read audio: {exc}", 2)
    call = TwilioCall(
        tracks=["inbound", "outbound"] if outbound is not None else ["inbound"],
        custom_parameters=dict(args.param),
    )
    plan = plan_messages(call, inbound, outbound)
    result, failed = _replay(prog, args.url, replay(args.url, plan, pace=args.pace, auth_token=args.twilio_auth_token))
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
    prog = "bridge simulate vobiz"
    try:
        inbound = load_audio(args.audio, args.content_type)
        outbound = load_audio(args.second_track, args.content_type) if args.second_track is not None else None
    except (OSError, ValueError) as exc:
        return _fail(prog, f"cannot read audio: {exc}", 2)
    call = VobizCall(tracks=["inbound", "outbound"] if outbound is not None else ["inbound"])
    try:
        connections = plan_connections(
            call,
            inbound,
            outbound,
            content_type=args.content_type,
            l16_byte_order=args.byte_order,
            reconnect_after_s=args.reconnect_after,
        )
    except ValueError as exc:
        return _fail(prog, str(exc), 2)
    results, failed = _replay(prog, args.url, replay_connections(args.url, connections, pace=args.pace))
    if results is None:
        return failed if failed is not None else 1
    print(summary_vobiz(connections, results))
    for result in results:
        if not result.completed or result.close_code not in (1000, 1001):
            return _fail(prog, f"replay did not finish cleanly: {_how_closed(result)}", 1)
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
    tracks = ", ".join(
        f"{track} {result.frames_sent.get(track, 0)} frames/{result.bytes_sent.get(track, 0)} B"
        for track in call.tracks
    )
    return (
        f"call {call.call_sid} stream {call.stream_sid}: {tracks}; "
        f"{result.messages_sent} messages in {result.elapsed_s:.2f} s; {_how_closed(result)}"
    )


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
