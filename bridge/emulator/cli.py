"""``bridge emulator``: run the EkaScribe emulator under uvicorn for humans."""

from __future__ import annotations

import argparse
import asyncio
import socket
from pathlib import Path

import uvicorn

from bridge.emulator.app import Emulator
from bridge.emulator.faults import Faults
from bridge.emulator.options import EmulatorOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = EmulatorOptions()
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8001, help="port to listen on, 0 = any free (default: %(default)s)")
    parser.add_argument(
        "--audio-dir",
        type=Path,
        default=Path("emulator-audio"),
        help="where each session's audio is written as <session_id>.wav: what reached storage, and from End"
        " on exactly what End processed (default: %(default)s)",
    )
    parser.add_argument("--no-audio", action="store_true", help="do not write WAV files")
    parser.add_argument(
        "--record-arrivals",
        action="store_true",
        help="keep each stream frame's arrival time, served at GET /_emulator/arrivals (for bench/load.py)",
    )
    parser.add_argument(
        "--processing-s",
        type=float,
        default=defaults.processing_s,
        help="seconds from End Session until Get Session returns completed (default: %(default)s)",
    )
    parser.add_argument(
        "--token-ttl-s",
        type=float,
        default=defaults.token_ttl_s,
        help="access token lifetime in seconds (default: %(default)s)",
    )
    parser.add_argument("--client-id", default=None, help="require this client_id at login (default: accept any)")
    parser.add_argument("--client-secret", default=None, help="require this client_secret at login")
    parser.add_argument(
        "--static-token",
        action="append",
        default=[],
        metavar="TOKEN",
        help="a long-lived token accepted as Bearer; repeatable",
    )
    parser.add_argument(
        "--repeat-end",
        choices=("error", "reprocess"),
        default=defaults.repeat_end,
        help="a repeated End Session: 400 as documented, or 202 again like Eka's OSS server (default: %(default)s)",
    )
    parser.add_argument(
        "--outcome",
        choices=("completed", "partial", "failed"),
        default=defaults.outcome,
        help="how processing ends: 200 completed, 206 partial (the last template fails), 200 failed"
        " (default: %(default)s)",
    )
    parser.add_argument(
        "--long-poll-s",
        type=float,
        default=defaults.long_poll_s,
        help="hold a Get Session on a processing session up to this long, like Eka's server (~14 s)"
        " (default: %(default)s)",
    )
    parser.add_argument(
        "--session-ttl-s",
        type=float,
        default=defaults.session_ttl_s,
        help="a session not ended this long after creation expires: End then answers 410 and a stream"
        " connect is closed with 4000 (default: %(default)s)",
    )
    parser.add_argument(
        "--expires-format",
        choices=("iso", "unix"),
        default=defaults.expires_format,
        help="Create Session's expires_at: ISO 8601 as documented, or integer Unix seconds like Eka's"
        " OSS server (default: %(default)s)",
    )
    parser.add_argument(
        "--chunk-s",
        type=float,
        default=defaults.chunk_s,
        help="each stream connection's audio reaches storage in chunks this long, like Eka's VAD chunks"
        " (~10-25 s); End processes only what storage holds (default: %(default)s)",
    )
    parser.add_argument(
        "--flush-delay-s",
        type=float,
        default=defaults.flush_delay_s,
        help="the final flush of a connection's partial chunk takes this long after stop or disconnect;"
        " after stop the server closes only then, and an End before it loses that audio (default: %(default)s)",
    )
    parser.add_argument(
        "--webhook-url", default=None, help="POST a v2rx.completed notification here when a session completes"
    )
    parser.add_argument("--webhook-signing-key", default=None, help="sign those notifications (Eka-Webhook-Signature)")

    faults = parser.add_argument_group("faults (for failure drills)")
    faults.add_argument(
        "--fail",
        action="append",
        default=[],
        metavar="OP:STATUS[:COUNT[:RETRY_AFTER]]",
        help="answer the next COUNT (default 1) requests of OP (login, refresh, create, end, get, stream)"
        " with STATUS, e.g. create:503:5 or end:429:3:2; repeatable",
    )
    faults.add_argument(
        "--delay", action="append", default=[], metavar="OP:SECONDS", help="added latency for every OP request"
    )
    faults.add_argument(
        "--drop-stream-after",
        type=int,
        metavar="BYTES",
        help="close the next stream socket with 1011 after BYTES of audio (a reconnect then gets 4000)",
    )
    faults.add_argument(
        "--keep-stream-on-drop", action="store_true", help="with --drop-stream-after: let the client reconnect"
    )


def apply_faults(faults: Faults, args: argparse.Namespace) -> None:
    """Queue the faults given on the command line; ValueError names the bad one."""
    for spec in args.fail:
        parts = spec.split(":")
        try:
            op, status = parts[0], int(parts[1])
            count = int(parts[2]) if len(parts) > 2 else 1
            retry_after = float(parts[3]) if len(parts) > 3 else None
            if len(parts) > 4 or not op:
                raise IndexError
        except (IndexError, ValueError):
            raise ValueError(f"--fail {spec!r}: expected OP:STATUS[:COUNT[:RETRY_AFTER]]") from None
        faults.fail(op, status, count, retry_after)
    for spec in args.delay:
        op, _, seconds = spec.partition(":")
        try:
            faults.delay(op, float(seconds))
        except ValueError:
            raise ValueError(f"--delay {spec!r}: expected OP:SECONDS") from None
    if args.drop_stream_after is not None:
        faults.drop_stream_after(args.drop_stream_after, keep_registration=args.keep_stream_on_drop)


def options_from(args: argparse.Namespace) -> EmulatorOptions:
    defaults = EmulatorOptions(audio_dir=None)
    return EmulatorOptions(
        audio_dir=None if getattr(args, "no_audio", False) else args.audio_dir,
        client_id=args.client_id,
        client_secret=args.client_secret,
        static_tokens=frozenset(args.static_token or ()),
        token_ttl_s=args.token_ttl_s,
        processing_s=args.processing_s,
        repeat_end=getattr(args, "repeat_end", "error"),
        record_arrivals=getattr(args, "record_arrivals", False),
        outcome=getattr(args, "outcome", "completed"),
        long_poll_s=getattr(args, "long_poll_s", 0.0),
        webhook_url=getattr(args, "webhook_url", None),
        webhook_signing_key=getattr(args, "webhook_signing_key", None),
        session_ttl_s=getattr(args, "session_ttl_s", defaults.session_ttl_s),
        expires_format=getattr(args, "expires_format", defaults.expires_format),
        chunk_s=getattr(args, "chunk_s", defaults.chunk_s),
        flush_delay_s=getattr(args, "flush_delay_s", defaults.flush_delay_s),
    )


def run(args: argparse.Namespace) -> int:
    """Bind first (so a busy port fails loudly before we claim to listen), then serve until Ctrl-C."""
    try:
        options = options_from(args)
    except ValueError as exc:
        print(f"emulator: {exc}")
        return 2
    emulator = Emulator(options)
    try:
        apply_faults(emulator.faults, args)
    except ValueError as exc:
        print(f"emulator: {exc}")
        return 2
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(f"emulator: cannot listen on {args.host}:{args.port}: {exc}")
        return 1
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    where = f"WAVs in {options.audio_dir.resolve()}" if options.audio_dir else "WAVs not written"
    print(f"EkaScribe emulator listening on http://{host}:{port} (streams on ws://{host}:{port}); {where}", flush=True)
    server = uvicorn.Server(uvicorn.Config(emulator.app, host=args.host, port=port, log_level="warning"))
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket with TCP_NODELAY.

    ``proto=IPPROTO_TCP`` matters: asyncio only sets TCP_NODELAY on accepted sockets
    whose proto says TCP, and without it uvicorn's separate header and body writes
    meet Nagle plus delayed ACK, costing ~40 ms per response on Linux.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock
