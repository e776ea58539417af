"""The ``bridge`` command: ``serve``, ``emulator`` and ``simulate``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from bridge import __version__
from bridge.config import ConfigError, Settings, stream_url
from bridge.logging import configure

DEV_EMULATOR_TOKEN = "dev-emulator-token"
#: Before a worker that died on its own is started again.
RESTART_DELAY_S = 1.0
#: A worker that exits sooner than this after its start failed to start: the supervisor stops
#: (a process manager or Kubernetes restarts it, with its own backoff), rather than loop.
STARTUP_S = 10.0
#: Allocations between young collections (CPython's default: 700; 2000 from 3.13).
GC_YOUNG_THRESHOLD = 10_000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bridge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"eka-phone-bridge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the bridge service")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    serve.add_argument(
        "--dev",
        action="store_true",
        help="development mode: readable logs; without Eka credentials, a local EkaScribe emulator",
    )
    serve.add_argument("--emulator-port", type=int, default=None, help="dev emulator port (default: port+1)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="run N bridge processes on one port, sharing the ledger (needs BRIDGE_DATABASE_URL); one drain on SIGTERM",
    )
    serve.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)  # a worker: the shared socket
    serve.add_argument(
        "--forwarded-allow-ips",
        default=None,
        help="comma-separated proxy addresses (or '*') whose X-Forwarded-Proto/For headers are trusted"
        " (default: $FORWARDED_ALLOW_IPS, else 127.0.0.1); a PaaS router needs '*'",
    )

    from bridge.emulator import cli as emulator_cli
    from bridge.simulator import cli as simulator_cli

    emulator_cli.add_arguments(commands.add_parser("emulator", help="run the EkaScribe emulator"))
    simulator_cli.add_arguments(commands.add_parser("simulate", help="replay a call into the bridge"))

    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_command(args)
    if args.command == "emulator":
        return emulator_cli.run(args)
    return simulator_cli.run(args)


def serve_command(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(os.environ, development=args.dev)
    except ConfigError as exc:
        for problem in exc.problems:
            say(f"bridge: configuration error: {problem}")
        return 2
    configure(settings.log_format)
    if args.workers > 1:
        if not settings.database_url:
            say("bridge: configuration error: --workers needs BRIDGE_DATABASE_URL (a shared ledger)")
            return 2
        if settings.development and not settings.has_eka_credentials:
            say("bridge: configuration error: --workers needs Eka credentials (no dev emulator)")
            return 2
        return Supervisor(args, settings).run()
    if settings.development and not settings.has_eka_credentials:
        emulator_port = args.emulator_port or args.port + 1
        base_url = _start_dev_emulator(args.host, emulator_port)
        settings = replace(settings, eka_base_url=base_url, eka_access_token=DEV_EMULATOR_TOKEN)
        _banner(
            "NO EKA CREDENTIALS SET: this bridge talks to a LOCAL EkaScribe EMULATOR",
            f"emulator at {base_url}; received audio lands in ./emulator-audio/<session_id>.wav",
            "set EKA_CLIENT_ID + EKA_CLIENT_SECRET (or EKA_ACCESS_TOKEN) to use the real API",
        )
    public = settings.public_url or f"http://{args.host}:{args.port}"
    say(f"bridge: Twilio stream URL {stream_url(public, '/twilio/stream')}")
    say(f"bridge: Twilio voice webhook (POST) {public}/twilio/voice")

    from bridge.app import Bridge
    from bridge.server.inline_ws import InlineTextProtocol

    sockets = None
    if args.fd is not None:  # a worker of `--workers`: the shared port, and one of its own
        internal = _bind(internal_host(settings.internal_url, args.host), 0)
        internal_url = "http://{}:{}".format(*internal.getsockname()[:2])
        sockets = [socket.socket(fileno=args.fd), internal]
    else:
        internal_url = settings.internal_url or f"http://{internal_host(None, args.host)}:{args.port}"
    settings = replace(settings, internal_url=internal_url)
    bridge = Bridge(settings)
    config = uvicorn.Config(
        bridge.app,
        host=args.host,
        port=args.port,
        http=bridge.http_protocol(),  # a request must arrive in BRIDGE_REQUEST_TIMEOUT_S
        ws=InlineTextProtocol,  # media messages skip the ASGI queue (bridge/server/inline_ws.py)
        ws_per_message_deflate=False,  # μ-law in base64 barely deflates; zlib state is ~90 KB a socket
        ws_max_size=settings.ws_max_bytes,  # larger messages close the socket with 1009
        log_level="warning",
        proxy_headers=True,
        forwarded_allow_ips=args.forwarded_allow_ips,  # None: uvicorn reads $FORWARDED_ALLOW_IPS
    )
    quiet_collector()
    DrainingServer(config, bridge).run(sockets=sockets)
    return 0


def quiet_collector() -> None:
    """Keep CPython's cycle collector out of the calls' way. A server of long calls holds many
    long-lived objects, and each full collection scanned them all: at 100 calls, a 70–130 ms
    pause every couple of seconds, which set the ceiling of ``bench.load --find-max`` (loop lag).
    Start-up's objects (modules, classes, the app) are frozen out of every collection, and young
    collections are rarer, so a message's garbage dies by reference count before a collection
    can promote it toward the full one."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def say(line: str) -> None:
    """One line to stderr in one write: the workers of ``--workers`` share it, and a line
    written in two pieces could be split by another's."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def internal_host(internal_url: str | None, host: str) -> str:
    """The host other processes reach this one at: BRIDGE_INTERNAL_URL's, else ``--host``
    (loopback when it is a wildcard)."""
    if internal_url:
        return urlsplit(internal_url).hostname or "127.0.0.1"
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY applies
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


class Supervisor:
    """``bridge serve --workers N``: N bridge processes accepting on one listening socket (the
    kernel spreads connections), sharing the ledger. A signal is passed to every worker, so one
    SIGTERM drains them all; a worker that dies on its own is started again, unless it died
    starting (then all stop, with its exit code)."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args = args
        self.settings = settings
        self.stopping = False
        self.workers: list[subprocess.Popen[bytes]] = []
        self.started: dict[int, float] = {}  # pid → when it was started

    def run(self) -> int:
        sock = _bind(self.args.host, self.args.port)
        sock.set_inheritable(True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.workers = [self._start(sock) for _ in range(self.args.workers)]
        say(
            f"bridge: {self.args.workers} workers on {self.args.host}:{self.args.port}"
            f" (pids {' '.join(str(w.pid) for w in self.workers)})"
        )
        codes: list[int] = []
        while self.workers:
            pid, status = os.wait()
            worker = next((w for w in self.workers if w.pid == pid), None)
            if worker is None:
                continue
            self.workers.remove(worker)
            code = os.waitstatus_to_exitcode(status)
            worker.returncode = code
            if self.stopping:
                codes.append(code)
            elif time.monotonic() - self.started[pid] < STARTUP_S:  # it never got going (the database?)
                say(f"bridge: worker {pid} failed at start-up ({code}); stopping")
                codes.append(code or 1)
                self._on_signal(signal.SIGTERM, None)
            else:  # a crash: its calls' sessions are ended by the fleet once its lease runs out
                say(f"bridge: worker {pid} exited ({code}); starting another")
                time.sleep(RESTART_DELAY_S)
                self.workers.append(self._start(sock))
        sock.close()
        return max((abs(c) for c in codes), default=0)

    def _start(self, sock: socket.socket) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "bridge", "serve", "--host", self.args.host, "--port", str(self.args.port)]
        command += ["--fd", str(sock.fileno())]
        if self.args.forwarded_allow_ips:
            command += ["--forwarded-allow-ips", self.args.forwarded_allow_ips]
        if self.args.dev:
            command.append("--dev")
        # Its own process group: a terminal's Ctrl-C reaches the supervisor only, which passes
        # it on once (two would skip the drain).
        worker = subprocess.Popen(command, pass_fds=(sock.fileno(),), process_group=0)
        self.started[worker.pid] = time.monotonic()
        return worker

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.stopping = True
        for worker in self.workers:
            if worker.returncode is None:
                worker.send_signal(sig)


class DrainingServer(uvicorn.Server):
    """uvicorn, but a signal never cuts a live call.

    uvicorn's own shutdown closes open WebSockets at once (1012), which would cut
    hour-long consultations. Here the first SIGTERM/SIGINT starts a drain: readiness
    answers 503 and new calls are refused while active ones run on for up to
    ``BRIDGE_DRAIN_S``; then whatever remains is finalized (flush, close upstream,
    End Session) and only then does uvicorn stop. A second signal skips the wait.
    """

    def __init__(self, config: uvicorn.Config, bridge: Any) -> None:
        super().__init__(config)
        self.bridge = bridge
        self._loop: asyncio.AbstractEventLoop | None = None
        self._skip_wait = asyncio.Event()
        self._draining: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # the port is bound: say so (process supervisors and tests wait for this)
            say(f"bridge: listening on {self.config.host}:{self.config.port}")

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is None:
            self.should_exit = True
            return
        self._loop.call_soon_threadsafe(self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        if self._draining is None:
            say(f"bridge: signal {sig}: draining calls (a second signal finalizes them now)")
            self._draining = asyncio.create_task(self._drain_then_exit())
        else:
            say(f"bridge: signal {sig}: finalizing active calls now")
            self._skip_wait.set()

    async def _drain_then_exit(self) -> None:
        drain = asyncio.create_task(self.bridge.drain(self.bridge.settings.drain_s))
        skip = asyncio.create_task(self._skip_wait.wait())
        await asyncio.wait({drain, skip}, return_when=asyncio.FIRST_COMPLETED)
        drain.cancel()
        skip.cancel()
        await self.bridge.finalize_all("shutdown")
        self.should_exit = True


def _start_dev_emulator(host: str, port: int) -> str:
    """Run the emulator in a daemon thread (uvicorn leaves signals to the main thread's server)."""
    from bridge.emulator import Emulator, EmulatorOptions

    emulator = Emulator(
        EmulatorOptions(audio_dir=Path("emulator-audio"), static_tokens=frozenset({DEV_EMULATOR_TOKEN}))
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY applies
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(emulator.app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="emulator").start()
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}"


def _banner(*lines: str) -> None:
    width = max(len(line) for line in lines) + 4
    say("!" * width)
    for line in lines:
        say(f"! {line.ljust(width - 4)} !")
    say("!" * width)
