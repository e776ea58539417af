"""Load benchmark: how many live calls one core of the bridge carries, and at what cost.

Run: ``python -m bench.load`` (or ``make bench-load``); ``--find-max`` ramps the call count.
Not a test: it takes a minute, prints figures, and asserts nothing.

Three kinds of process on loopback, each separate: the bridge (``bridge serve``, pinned to
CPU 0 with ``taskset`` where it exists), the EkaScribe emulator (``bridge emulator``, recording
when each upstream frame arrives) and the load generator (bench/loadgen.py), the last two
pinned to the other CPUs so they never take the bridge's core. The same run then repeats the
load against a bare sink on the same server stack (bench/sink.py) on the same core: the floor.

Each run: calls start at ``--ramp-rate`` per second; once all stream, a steady window opens
(1 s later) and closes 0.5 s before the first call stops. In that window:

- CPU: utime+stime of the server process from /proc/<pid>/stat → % of one core, µs per media message;
- RSS: VmRSS under load minus VmRSS at idle before the calls, per call;
- event-loop lag, measured from outside: round trips of ``GET /healthz`` every 50 ms over one
  keep-alive connection. A request waits for the server's loop, so this is loop lag plus a
  loopback round trip (~0.1 ms) plus the prober's own scheduling; the sink's figure is the floor;
- upstream delivery lag: when each ~100 ms batch reached the emulator, minus when the generator
  sent the media message that completed it (so the batching window itself is not counted);
- send-schedule slip of the generator, its CPU and the load CPUs' busy share: whether the
  generator, not the server, was the limit.

Over the whole run: audio frames sent vs *processed* by EkaScribe (loss must be 0), and End
Session latency (the generator's ``stop`` → the emulator receiving End), split into the flush
wait (``stop`` → the emulator closing the stream once its last chunk is in storage: it flushes
1 s after the stream ends, like Eka's server takes real time) and End after that close.

``--workers N`` (N ≥ 2) runs the bridge as a fleet: ``bridge serve --workers N``, N processes
accepting on one port and sharing a ledger on a PostgreSQL server started for the run (the
suite's, tests/postgres.py). Worker k is pinned to CPU k (round robin when there are fewer CPUs
than workers); the load goes on the CPUs left, or, when none are left, on all of them, sharing
the workers' CPUs. Each worker also listens on an internal port of its own (its ``bridge_ready``
log line names it; /proc tells which process holds it), where its own ``/metrics`` and
``/healthz`` answer: per worker, CPU from /proc over the window, the media messages it took
(``bridge_media_frames_total`` at the window's edges), the calls it carried
(``bridge_active_calls``), RSS, and loop lag probed on its internal port. The fleet's figures are
the workers' sums (the supervisor, which only waits, is shown apart); the sinks stay one process,
so the fleet's CPU per message compares with the same floor.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from bench.proc import CoreTimes, cpu_seconds, listening_ports, percentile, rss_kb
from bridge.audio.resample import HALF_SPAN
from tests.postgres import PostgresServer, binaries

HOST = "127.0.0.1"
TWILIO_TOKEN = "bench-twilio-token"
EKA_TOKEN = "bench-static-token"
FRAME_S = 0.020
FRAME_BYTES = 160  # μ-law per 20 ms per track
OUT_BYTES_PER_IN_BYTE = 4  # 8 kHz μ-law byte → two 16 kHz int16 samples
PROBE_INTERVAL_S = 0.05
SETTLE_S = 1.0  # after the last call starts, before the window opens
WINDOW_MARGIN_S = 0.5  # before the first call stops, the window closes
LAG_LIMIT_MS = 50.0  # --find-max: p99 loop lag above this fails a step
SATURATED = 0.90  # share of a core at which a process (or the load CPUs) counts as saturated
SLIP_LIMIT_MS = 10.0  # generator's p99 send slip above this: the generator is the limit
DISTURBED_PCT = 10.0  # other processes' share of the server CPU above which a step is flagged
MEDIA_FRAMES = 'bridge_media_frames_total{provider="twilio"}'  # a worker's media messages, on its /metrics
ACTIVE_CALLS = "bridge_active_calls"


@dataclass
class Plan:
    calls: int
    duration_s: float
    tracks: int
    ramp_rate: float


@dataclass
class Worker:
    """One process of a ``--workers`` fleet, reached on its own internal port."""

    number: int
    pid: int
    url: str  # its internal URL: this process's own /metrics and /healthz
    cpu: int | None  # the CPU it is pinned to
    cpu_s: float = 0.0
    cpu_pct: float = math.nan
    media_messages: int = 0  # in the window, by its bridge_media_frames_total
    calls: tuple[int, int] = (0, 0)  # bridge_active_calls when the window opened, and when it closed
    rss_idle_kb: int = 0
    rss_loaded_kb: int = 0
    loop_lag_ms: tuple[float, float, float] = (math.nan, math.nan, math.nan)

    @property
    def name(self) -> str:
        return f"worker-{self.number}"

    @property
    def us_per_message(self) -> float:
        return 1e6 * self.cpu_s / self.media_messages if self.media_messages else math.nan

    @property
    def rss_per_call_kb(self) -> float:
        return (self.rss_loaded_kb - self.rss_idle_kb) / self.calls[0] if self.calls[0] else math.nan


@dataclass
class Figures:
    """What one run measured; ``None`` where it does not apply (the sink has no upstream)."""

    target: str
    plan: Plan
    processes: int = 1  # the bridge's workers (--workers)
    pinning: str = ""  # what ran where
    window_s: float = 0.0
    media_messages: int = 0
    server_cpu_s: float = 0.0
    cpu_pct: float = math.nan
    us_per_message: float = math.nan
    rss_idle_kb: int = 0
    rss_loaded_kb: int = 0
    loop_lag_ms: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # p50, p99, max
    delivery_lag_ms: tuple[float, float, float] | None = None
    frames_sent: int = 0
    frames_received: int | None = None
    calls_short: int | None = None  # calls whose audio did not all arrive
    end_latency_ms: tuple[float, float, float] | None = None
    flush_wait_ms: tuple[float, float, float] | None = None  # stop → the server's close (flush done)
    end_after_close_ms: tuple[float, float, float] | None = None  # the server's close → End received
    ends_missing: int | None = None
    failed_calls: int = 0
    generator_cpu_pct: float = math.nan
    emulator_cpu_pct: float | None = None
    load_cpus_busy_pct: float = math.nan
    foreign_on_server_cpu_pct: float = math.nan  # other processes (or the kernel for them) on the server's CPU
    slip_ms: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    errors: list[str] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)  # a fleet's processes, each measured
    supervisor_cpu_pct: float = math.nan
    supervisor_rss_kb: int = 0
    load_shares_server: bool = False  # the load runs on the server's CPUs too (more workers than spare CPUs)

    @property
    def label(self) -> str:
        return f"{self.target} ({self.processes} workers)" if self.processes > 1 else self.target

    @property
    def busiest_pct(self) -> float:
        """% of one core of the busiest server process: the fleet's busiest worker, else the server."""
        return max((w.cpu_pct for w in self.workers), default=self.cpu_pct)

    @property
    def rss_per_call_kb(self) -> float:
        return (self.rss_loaded_kb - self.rss_idle_kb) / max(1, self.plan.calls)

    @property
    def lost_frames(self) -> int | None:
        return None if self.frames_received is None else self.frames_sent - self.frames_received

    @property
    def server_saturated(self) -> bool:
        return self.busiest_pct >= SATURATED * 100

    @property
    def generator_limited(self) -> bool:
        """The generator could not keep its schedule: then it, not the server, set the pace."""
        return self.slip_ms[1] > SLIP_LIMIT_MS

    @property
    def load_side_busy(self) -> bool:
        """The load CPUs (generator, emulator, loopback kernel work) were close to full; not
        telling when they are the server's CPUs too."""
        return not self.load_shares_server and self.load_cpus_busy_pct >= SATURATED * 100

    @property
    def passed(self) -> bool:
        """The --find-max criterion: every call ran, nothing lost, p99 loop lag within the limit."""
        return (
            self.failed_calls == 0
            and not self.errors
            and (self.lost_frames or 0) == 0
            and not self.calls_short
            and not self.ends_missing
            and self.loop_lag_ms[1] <= LAG_LIMIT_MS
        )


# -- processes --------------------------------------------------------------------------------


class Service:
    """A child process whose output goes to a log file; ``ready`` is the line that says it is up.
    Lines containing ``ready`` or one of ``keep`` are kept, to be waited for."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        cpus: str | None,
        env: dict[str, str],
        log: Path,
        ready: str,
        keep: Sequence[str] = (),
    ):
        self.name, self.ready_text, self.log_path = name, ready, log
        self.keep = (ready, *keep)
        command = ["taskset", "-c", cpus, *argv] if cpus else argv  # taskset execs: same pid
        self.proc = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.lines: list[str] = []
        self.workers: list[int] = []  # processes it started in process groups of their own (a fleet's)
        self._seen = threading.Condition()
        self._ended = False
        self._reader = threading.Thread(target=self._read, name=f"{name}-log", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log_path, "w") as log:
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace")
                log.write(line)
                if any(text in line for text in self.keep):
                    with self._seen:
                        self.lines.append(line)
                        self._seen.notify_all()
        with self._seen:
            self._ended = True
            self._seen.notify_all()

    def seen(self, text: str) -> list[str]:
        with self._seen:
            return [line for line in self.lines if text in line]

    def occurrences(self, text: str) -> int:
        """How often ``text`` was printed: processes sharing one output (a fleet's workers) can
        put two messages on one line, since a print is two writes (the text, then its newline)."""
        with self._seen:
            return sum(line.count(text) for line in self.lines)

    def wait_for(self, text: str, count: int, timeout: float) -> list[str]:
        """The kept lines containing ``text``, once it has been printed ``count`` times."""
        with self._seen:
            self._seen.wait_for(lambda: self.occurrences(text) >= count or self._ended, timeout)
        found = self.occurrences(text)
        if found < count:
            raise RuntimeError(f"{self.name}: {text!r} printed {found} of {count} times (see {self.log_path})")
        return self.seen(text)

    def wait_ready(self, timeout: float) -> str:
        try:
            return self.wait_for(self.ready_text, 1, timeout)[0]
        except RuntimeError:
            raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s (see {self.log_path})") from None

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s: only this process, by its own pid; then SIGKILL to
        any of its ``workers`` still running (by pid, each checked to be a bridge worker)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in self.workers:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:  # gone, as it should be
                continue
            if b"bridge" in argv and b"--fd" in argv:
                os.kill(pid, signal.SIGKILL)
        self._reader.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Cpus:
    """Where each process runs: the server alone on the first CPU, everything else on the rest;
    a fleet's workers one per CPU (``fleet``)."""

    server: str | None = None  # taskset lists; None: not pinned
    load: str | None = None
    load_list: tuple[int, ...] = ()
    server_list: tuple[int, ...] = ()
    workers: tuple[int, ...] = ()  # a fleet: worker k's CPU is workers[k - 1]

    @classmethod
    def split(cls) -> Cpus:
        cpus = sorted(os.sched_getaffinity(0))
        if shutil.which("taskset") is None or len(cpus) < 2:
            return cls()
        return cls(str(cpus[0]), ",".join(map(str, cpus[1:])), tuple(cpus[1:]), (cpus[0],))

    @classmethod
    def fleet(cls, workers: int, cpus: Sequence[int] | None = None) -> Cpus:
        """Worker k on the k-th CPU (round robin when the workers outnumber the CPUs); the load on
        the CPUs left over, or, when none are, on all of them: then it competes with the workers."""
        ordered = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
        if shutil.which("taskset") is None or len(ordered) < 2:
            return cls()
        own, load = ordered[:workers], ordered[workers:] or ordered
        per_worker = tuple(own[k % len(own)] for k in range(workers))
        return cls(",".join(map(str, own)), ",".join(map(str, load)), tuple(load), tuple(own), per_worker)

    @property
    def shared(self) -> bool:
        """The load runs on the server's CPUs too."""
        return bool(set(self.server_list) & set(self.load_list))

    def describe(self) -> str:
        if self.server is None:
            return "not pinned (no taskset, or one CPU): figures mix server and load"
        if not self.workers:
            return f"server pinned to CPU {self.server}, emulator + generator + prober on CPU {self.load}"
        workers = ", ".join(f"worker {k} on CPU {cpu}" for k, cpu in enumerate(self.workers, 1))
        load = f"emulator + generator + prober + PostgreSQL on CPU {self.load}"
        if self.shared:
            load += " (shared with the workers: the load competes with them)"
        return f"{workers}, supervisor on CPU {self.server}; {load}"


def pin(pid: int, cpu: int) -> None:
    """Every thread of ``pid`` to ``cpu`` (threads it starts later inherit it)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), {cpu})
        except ProcessLookupError:  # a thread that just ended
            pass


# -- measuring --------------------------------------------------------------------------------


class Prober(threading.Thread):
    """GET /healthz every 50 ms on one keep-alive connection; keeps the round-trip times."""

    def __init__(self, port: int, until: float) -> None:
        super().__init__(name="healthz-prober", daemon=True)
        self.port, self.until = port, until
        self.rtts_ms: list[float] = []
        self.failures = 0

    def run(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
        next_at = time.monotonic()
        while next_at < self.until:
            began = time.monotonic()
            try:
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                self.rtts_ms.append((time.monotonic() - began) * 1000)
            except (OSError, http.client.HTTPException):
                self.failures += 1
                self.rtts_ms.append((time.monotonic() - began) * 1000)
                conn.close()
                conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
            next_at += PROBE_INTERVAL_S
            time.sleep(max(0.0, next_at - time.monotonic()))
        conn.close()


@dataclass
class Snapshot:
    at: float
    cpu: dict[str, float]
    cores: list[CoreTimes]

    server_cores: list[CoreTimes] = field(default_factory=list)

    @classmethod
    def take(cls, pids: dict[str, int], cpus: Cpus) -> Snapshot:
        return cls(
            time.monotonic(),
            {n: cpu_seconds(p) for n, p in pids.items()},
            [CoreTimes.read(c) for c in cpus.load_list],
            [CoreTimes.read(c) for c in cpus.server_list],
        )


def triple(values: list[float] | np.ndarray) -> tuple[float, float, float]:
    """p50, p99, max."""
    values = list(values)
    return (percentile(values, 50), percentile(values, 99), max(values) if values else math.nan)


def delivery_lags_ms(
    arrivals: list[list[float]], sent: np.ndarray, stop_at: float, window: tuple[float, float]
) -> list[float]:
    """Per upstream frame in the window: arrival minus the send time of the media message that completed it.

    After B bytes of 16 kHz PCM the bridge has needed B/4 input samples plus the resampler's
    look-ahead (HALF_SPAN), i.e. frame ceil(n/160)−1; the tail after ``stop`` is due to ``stop``.
    """
    lags = []
    frames = int(np.count_nonzero(~np.isnan(sent)))
    for at, total in arrivals:
        if not window[0] <= at <= window[1]:
            continue
        needed = total // OUT_BYTES_PER_IN_BYTE + HALF_SPAN
        k = math.ceil(needed / FRAME_BYTES) - 1
        reference = sent[k] if k < frames else stop_at
        lags.append((at - reference) * 1000)
    return lags


# -- one run ----------------------------------------------------------------------------------


def run(target: str, plan: Plan, work: Path, cpus: Cpus, workers: int = 1) -> Figures:
    """Run ``plan`` against ``target`` ("bridge", "sink" or "sink-asgi") with fresh processes;
    ``workers`` > 1: the bridge as that many processes behind one port, on a PostgreSQL ledger."""
    server_cpus, load_cpus = cpus.server, cpus.load
    figures = Figures(target, plan, processes=workers, pinning=cpus.describe(), load_shares_server=cpus.shared)
    work.mkdir(parents=True, exist_ok=True)
    if cpus.load_list:
        os.sched_setaffinity(0, cpus.load_list)  # this process (its probers, PostgreSQL) on the load's CPUs
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    services: list[Service] = []
    postgres: PostgresServer | None = None
    py = sys.executable
    try:
        port = free_port()
        pids: dict[str, int] = {}
        emulator_url = None
        if target == "bridge":
            eka_port = free_port()
            emulator = Service(
                "emulator",
                [py, "-m", "bridge", "emulator", "--host", HOST, "--port", str(eka_port), "--no-audio",
                 "--record-arrivals", "--static-token", EKA_TOKEN, "--processing-s", "0"],
                cpus=load_cpus, env=env, log=work / "emulator.log", ready="emulator listening on",
            )  # fmt: skip
            services.append(emulator)
            emulator.wait_ready(30)
            emulator_url = f"http://{HOST}:{eka_port}"
            pids["emulator"] = emulator.pid
            server_env = {
                **env,
                "EKA_API_BASE_URL": emulator_url,
                "EKA_ACCESS_TOKEN": EKA_TOKEN,
                "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
                "BRIDGE_MAX_CALLS": "100000",
                "BRIDGE_LEDGER_PATH": str(work / "ledger.db"),
                "BRIDGE_LOG_FORMAT": "json",
                "BRIDGE_DRAIN_S": "0",
            }
            fleet_options: list[str] = []
            if workers > 1:  # one ledger for the fleet: a PostgreSQL server of the run's own
                postgres = PostgresServer()
                del server_env["BRIDGE_LEDGER_PATH"]
                server_env["BRIDGE_DATABASE_URL"] = postgres.new_database()
                fleet_options = ["--workers", str(workers)]
            server = Service(
                "bridge",
                [py, "-m", "bridge", "serve", "--host", HOST, "--port", str(port), *fleet_options],
                cpus=server_cpus, env=server_env, log=work / "bridge.log", ready="bridge: listening on",
                keep=(" workers on ", '"bridge_ready"', "starting another"),
            )  # fmt: skip
        else:
            server = Service(
                target, [py, "-m", "bench.sink", "--host", HOST, "--port", str(port),
                         *(["--asgi"] if target == "sink-asgi" else [])],
                cpus=server_cpus, env=env, log=work / f"{target}.log", ready="sink: listening on",
            )  # fmt: skip
        services.append(server)
        server.wait_ready(30)
        fleet: list[Worker] = []
        if workers > 1:
            fleet = fleet_workers(server, workers, port, cpus)
            server.workers = [w.pid for w in fleet]
            figures.workers = fleet
            pids["supervisor"] = server.pid
            pids.update({w.name: w.pid for w in fleet})
        else:
            pids["server"] = server.pid
        measured = [w.pid for w in fleet] or [server.pid]  # the processes whose RSS is the server's
        time.sleep(1.0)
        idle = [rss_kb(pid) for pid in measured]
        figures.rss_idle_kb = sum(idle)
        for w, kb in zip(fleet, idle, strict=False):
            w.rss_idle_kb = kb

        generator = Service(
            "loadgen",
            [py, "-m", "bench.loadgen", "--url", f"ws://{HOST}:{port}/twilio/stream", "--calls", str(plan.calls),
             "--duration", str(plan.duration_s), "--tracks", str(plan.tracks), "--ramp-rate", str(plan.ramp_rate),
             "--token", TWILIO_TOKEN, "--out", str(work / "loadgen")],
            cpus=load_cpus, env=env, log=work / "loadgen.log", ready="loadgen: streaming",
        )  # fmt: skip
        services.append(generator)
        pids["generator"] = generator.pid
        ramp_s = plan.calls / plan.ramp_rate
        streaming = generator.wait_ready(ramp_s + 60)
        first_stop = float(streaming.split("first_stop=")[1])
        opens, closes = time.monotonic() + SETTLE_S, first_stop - WINDOW_MARGIN_S
        window: tuple[float, float] | None = None
        if closes - opens < 2.0:
            figures.errors.append(f"no steady window: lengthen --duration beyond {ramp_s + 4:.0f} s")
        else:
            time.sleep(max(0.0, opens - time.monotonic()))
            for w in fleet:
                if w.cpu is not None:
                    pin(w.pid, w.cpu)  # again: any thread started since
            opened = [scrape(w.url) for w in fleet]  # outside the CPU window: a scrape costs the worker
            before = Snapshot.take(pids, cpus)
            # Loop lag: through the port; a fleet's workers each on their own internal port.
            probe_ports = [urlsplit(w.url).port or 0 for w in fleet] or [port]
            probers = [Prober(p, closes) for p in probe_ports]
            for prober in probers:
                prober.start()
            rss_samples = []
            while time.monotonic() < closes:
                rss_samples.append([rss_kb(pid) for pid in measured])
                time.sleep(min(0.5, max(0.0, closes - time.monotonic())))
            after = Snapshot.take(pids, cpus)
            closed = [scrape(w.url) for w in fleet]
            for prober in probers:
                prober.join(10)
            figures.rss_loaded_kb = max(sum(sample) for sample in rss_samples)
            figures.loop_lag_ms = triple([rtt for prober in probers for rtt in prober.rtts_ms])
            failures = sum(prober.failures for prober in probers)
            if failures:
                figures.errors.append(f"{failures} /healthz probes failed")
            _cpu_figures(figures, before, after, [w.name for w in fleet] or ["server"])
            for k, w in enumerate(fleet):
                w.cpu_s = after.cpu[w.name] - before.cpu[w.name]
                w.cpu_pct = 100 * w.cpu_s / figures.window_s
                w.media_messages = int(closed[k].get(MEDIA_FRAMES, 0) - opened[k].get(MEDIA_FRAMES, 0))
                w.calls = (int(opened[k].get(ACTIVE_CALLS, 0)), int(closed[k].get(ACTIVE_CALLS, 0)))
                w.rss_loaded_kb = max(sample[k] for sample in rss_samples)
                w.loop_lag_ms = triple(probers[k].rtts_ms)
            if fleet:
                supervisor_s = after.cpu["supervisor"] - before.cpu["supervisor"]
                figures.supervisor_cpu_pct = 100 * supervisor_s / figures.window_s
                figures.supervisor_rss_kb = rss_kb(server.pid)
            window = (before.at, after.at)
        if generator.wait(plan.duration_s + ramp_s + 120) != 0:
            figures.errors.append(f"load generator failed (see {generator.log_path})")
            return figures
        _generator_figures(figures, work / "loadgen", window)
        if emulator_url is not None:
            _upstream_figures(figures, emulator_url, work / "loadgen", window)
        if server.seen("starting another"):
            figures.errors.append(f"a worker died and was restarted: its figures are wrong (see {server.log_path})")
        return figures
    finally:
        for service in reversed(services):
            service.stop()
        if postgres is not None:
            postgres.stop()


def fleet_workers(server: Service, count: int, port: int, cpus: Cpus) -> list[Worker]:
    """A ``--workers`` fleet's processes, once all are listening: their pids (the supervisor's
    line), each one's internal URL (its ``bridge_ready`` line, matched to the process by the
    ports /proc says it listens on), each pinned to its CPU."""
    server.wait_for("bridge: listening on", count, 60)
    started = re.search(r"workers on \S+ \(pids ([\d ]+)\)", "".join(server.wait_for(" workers on ", 1, 1)))
    if started is None:
        raise RuntimeError(f"the supervisor named no worker pids (see {server.log_path})")
    pids = [int(pid) for pid in started[1].split()]
    # Not json.loads: another worker's line may share this one (see Service.occurrences).
    urls = set(re.findall(r'"internal_url": "([^"]+)"', "".join(server.wait_for('"bridge_ready"', count, 10))))
    fleet = []
    for k, pid in enumerate(pids):
        ports = listening_ports(pid) - {port}
        url = next((u for u in urls if urlsplit(u).port in ports), None)
        if url is None:
            raise RuntimeError(f"worker {pid}: no bridge_ready line names its ports {sorted(ports)}")
        cpu = cpus.workers[k] if cpus.workers else None
        if cpu is not None:
            pin(pid, cpu)
        fleet.append(Worker(k + 1, pid, url, cpu))
    return fleet


def scrape(url: str) -> dict[str, float]:
    """One process's ``/metrics``: each sample (name with labels) → its value."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def _cpu_figures(figures: Figures, before: Snapshot, after: Snapshot, servers: Sequence[str] = ("server",)) -> None:
    figures.window_s = after.at - before.at
    server_s = sum(after.cpu[name] - before.cpu[name] for name in servers)
    figures.cpu_pct = 100 * server_s / figures.window_s
    figures.generator_cpu_pct = 100 * (after.cpu["generator"] - before.cpu["generator"]) / figures.window_s
    if "emulator" in after.cpu:
        figures.emulator_cpu_pct = 100 * (after.cpu["emulator"] - before.cpu["emulator"]) / figures.window_s
    if after.cores:
        shares = [a.busy_share_since(b) for a, b in zip(after.cores, before.cores, strict=True)]
        figures.load_cpus_busy_pct = 100 * sum(shares) / len(shares)
    if after.server_cores:
        # % of one core, summed over the server's CPUs (one, but for a fleet's)
        cores = zip(after.server_cores, before.server_cores, strict=True)
        core_pct = 100 * sum(a.busy_share_since(b) for a, b in cores)
        figures.foreign_on_server_cpu_pct = max(0.0, core_pct - figures.cpu_pct)
    figures.server_cpu_s = server_s


def _generator_figures(figures: Figures, out: Path, window: tuple[float, float] | None) -> None:
    summary = json.loads((out / "calls.json").read_text())
    sent = np.load(out / "send_times.npy")
    calls = summary["calls"]
    figures.failed_calls = sum(1 for c in calls if c["started_at"] is None or c["error"])
    figures.errors += sorted({c["error"] for c in calls if c["error"]})[:3]
    figures.frames_sent = int(np.count_nonzero(~np.isnan(sent)))
    slips = []
    for i, call in enumerate(calls):
        if call["started_at"] is None:
            continue
        row = sent[i][~np.isnan(sent[i])]
        due = call["started_at"] + FRAME_S * np.arange(1, len(row) + 1)
        slips.append((row - due) * 1000)
    if slips:
        figures.slip_ms = triple(np.concatenate(slips))
    if window is not None:
        in_window = np.count_nonzero((sent >= window[0]) & (sent <= window[1]))
        figures.media_messages = int(in_window) * len(summary["tracks"])
        figures.us_per_message = 1e6 * figures.server_cpu_s / max(1, figures.media_messages)


def _upstream_figures(figures: Figures, emulator_url: str, out: Path, window: tuple[float, float] | None) -> None:
    """Wait for every call's End at the emulator, then compare what arrived with what was sent."""
    summary = json.loads((out / "calls.json").read_text())
    sent = np.load(out / "send_times.npy")
    calls = {c["call_sid"]: (i, c) for i, c in enumerate(summary["calls"]) if c["started_at"] is not None}
    deadline = time.monotonic() + 60 + len(calls) / 20
    while True:
        with urllib.request.urlopen(f"{emulator_url}/_emulator/arrivals", timeout=30) as response:
            sessions = json.loads(response.read())["sessions"]
        ended = {s["call_sid"] for s in sessions if s["ended_at"] is not None}
        if set(calls) <= ended or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    (out.parent / "arrivals.json").write_text(json.dumps(sessions))  # for a look afterwards (--keep)
    received: dict[str, int] = {}
    for s in sessions:
        # What EkaScribe processed, not what merely arrived: an End that raced the flush loses audio.
        received[s["call_sid"]] = received.get(s["call_sid"], 0) + (s["processed_bytes"] or 0)
    figures.frames_received = 0
    figures.calls_short = 0
    lags: list[float] = []
    ends: list[float] = []
    flushes: list[float] = []
    after_close: list[float] = []
    for s in sessions:
        if s["call_sid"] not in calls:
            continue
        i, call = calls[s["call_sid"]]
        if s["ended_at"] is not None and call["stop_at"] is not None:
            ends.append((s["ended_at"] - call["stop_at"]) * 1000)
            if s["server_closed_at"] is not None:
                flushes.append((s["server_closed_at"] - call["stop_at"]) * 1000)
                after_close.append((s["ended_at"] - s["server_closed_at"]) * 1000)
        if window is not None:
            lags += delivery_lags_ms(s["arrivals"], sent[i], call["stop_at"] or math.inf, window)
    for sid, (_, call) in calls.items():
        expected = call["frames_sent"] * FRAME_BYTES * OUT_BYTES_PER_IN_BYTE
        got = received.get(sid, 0)
        figures.frames_received += min(got, expected) // (FRAME_BYTES * OUT_BYTES_PER_IN_BYTE)
        figures.calls_short += got < expected
    figures.frames_sent = sum(c["frames_sent"] for _, c in calls.values())
    figures.end_latency_ms = triple(ends)
    figures.flush_wait_ms = triple(flushes) if flushes else None
    figures.end_after_close_ms = triple(after_close) if after_close else None
    figures.ends_missing = len(calls) - len(ends)
    figures.delivery_lag_ms = triple(lags) if lags else None


# -- reporting --------------------------------------------------------------------------------


def _or_na(value: float | int | None, style: str = "{}") -> str:
    return "n/a" if value is None else style.format(value)


def _ms(values: tuple[float, float, float] | None) -> str:
    return "n/a" if values is None else f"{values[0]:.1f} / {values[1]:.1f} / {values[2]:.1f}"


def report(runs: list[Figures], cpus: Cpus, out: Callable[[str], None] = print) -> None:
    """The figures side by side, then the verdicts."""
    plan = runs[0].plan
    where = cpus.describe()
    if any(f.processes > 1 for f in runs):  # the fleet and the sinks were pinned differently
        pinnings: dict[str, list[str]] = {}
        for f in runs:
            pinnings.setdefault(f.pinning, []).append(f.label)
        where = "; ".join(f"{', '.join(labels)}: {pinning}" for pinning, labels in pinnings.items())
    out(f"\n{plan.calls} calls × {plan.duration_s:g} s, {plan.tracks} track(s) × 50 media messages/s, "
        f"started at {plan.ramp_rate:g}/s; {os.cpu_count()} CPUs, {where}")  # fmt: skip
    rows: list[tuple[str, Callable[[Figures], str]]] = [
        ("steady window (s)", lambda f: f"{f.window_s:.1f}"),
        ("media messages in window", lambda f: f"{f.media_messages}"),
        ("server CPU (% of one core)", lambda f: f"{f.cpu_pct:.1f}"),
        ("CPU per media message (µs)", lambda f: f"{f.us_per_message:.1f}"),
        ("RSS idle → loaded (MiB)", lambda f: f"{f.rss_idle_kb / 1024:.1f} → {f.rss_loaded_kb / 1024:.1f}"),
        ("RSS per call (KiB)", lambda f: f"{f.rss_per_call_kb:.1f}"),
        ("loop lag via /healthz p50/p99/max (ms)", lambda f: _ms(f.loop_lag_ms)),
        ("upstream lag beyond batch p50/p99/max (ms)", lambda f: _ms(f.delivery_lag_ms)),
        ("audio frames sent → received (20 ms)", lambda f: f"{f.frames_sent} → {_or_na(f.frames_received)}"),
        ("lost frames / short calls", lambda f: f"{_or_na(f.lost_frames)} / {_or_na(f.calls_short)}"),
        ("End Session after stop p50/p99/max (ms)", lambda f: _ms(f.end_latency_ms)),
        ("  of which flush wait p50/p99/max (ms)", lambda f: _ms(f.flush_wait_ms)),
        ("  of which End after close p50/p99/max (ms)", lambda f: _ms(f.end_after_close_ms)),
        ("failed calls", lambda f: f"{f.failed_calls}"),
        ("generator CPU (% of one core)", lambda f: f"{f.generator_cpu_pct:.1f}"),
        ("emulator CPU (% of one core)", lambda f: _or_na(f.emulator_cpu_pct, "{:.1f}")),
        ("load CPUs busy (%)", lambda f: f"{f.load_cpus_busy_pct:.1f}"),
        ("other work on the server's CPU (%)", lambda f: f"{f.foreign_on_server_cpu_pct:.1f}"),
        ("generator send slip p50/p99/max (ms)", lambda f: _ms(f.slip_ms)),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    out(f"{'':{width}}  " + "  ".join(f"{f.label:>24}" for f in runs))
    for name, cell in rows:
        out(f"{name:{width}}  " + "  ".join(f"{cell(f):>24}" for f in runs))
    for f in runs:
        if f.workers:
            fleet_report(f, out)
    by = {f.target: f for f in runs}
    for sink, what in (("sink", "the same stack"), ("sink-asgi", "the stock ASGI receive path")):
        if "bridge" in by and sink in by:
            bridge = by["bridge"]
            ratio = bridge.us_per_message / by[sink].us_per_message
            fleet = f"; the {bridge.processes} workers' CPU in all against one sink process" * (bridge.processes > 1)
            out(f"{bridge.label}/{sink} CPU per message: {ratio:.2f}× (bare sink on {what}{fleet})")
    for f in runs:
        out(f"{f.label}: {verdict(f)}")
        for error in f.errors:
            out(f"{f.label}: error: {error}")


def fleet_report(f: Figures, out: Callable[[str], None]) -> None:
    """Per worker of a fleet, then their totals: what each process carried and what it cost."""

    def calls(w: Worker) -> str:
        return f"{w.calls[0]}" if w.calls[0] == w.calls[1] else f"{w.calls[0]} → {w.calls[1]}"

    def mib(idle: int, loaded: int) -> str:
        return f"{idle / 1024:.1f} → {loaded / 1024:.1f}"

    header = ["", "pid", "on CPU", "calls carried", "media messages", "CPU (% of one core)", "CPU per message (µs)",
              "RSS idle → loaded (MiB)", "RSS per call (KiB)", "loop lag p50/p99/max (ms)"]  # fmt: skip
    rows = [
        [f"worker {w.number}", f"{w.pid}", _or_na(w.cpu), calls(w), f"{w.media_messages}", f"{w.cpu_pct:.1f}",
         f"{w.us_per_message:.1f}", mib(w.rss_idle_kb, w.rss_loaded_kb), f"{w.rss_per_call_kb:.1f}",
         _ms(w.loop_lag_ms)]
        for w in f.workers
    ]  # fmt: skip
    messages = sum(w.media_messages for w in f.workers)
    rows.append(
        ["all workers", "", "", f"{sum(w.calls[0] for w in f.workers)}", f"{messages}", f"{f.cpu_pct:.1f}",
         f"{1e6 * f.server_cpu_s / messages if messages else math.nan:.1f}", mib(f.rss_idle_kb, f.rss_loaded_kb),
         f"{f.rss_per_call_kb:.1f}", _ms(f.loop_lag_ms)]
    )  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    out(f"\n{f.label}, per process (messages and calls from each worker's own /metrics, on its internal port):")
    for row in [header, *rows]:
        cells = zip(row, widths, strict=True)
        out("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(cells)))
    out(f"supervisor: CPU {f.supervisor_cpu_pct:.1f} % of one core, RSS {f.supervisor_rss_kb / 1024:.1f} MiB "
        "(not in the fleet's figures)\n")  # fmt: skip


def verdict(f: Figures) -> str:
    load = f"load CPUs {f.load_cpus_busy_pct:.0f}% busy, generator slip p99 {f.slip_ms[1]:.1f} ms"
    if f.load_shares_server:
        load += " (the load CPUs are the workers' too)"
    server = f"busiest worker {f.busiest_pct:.0f}% of its core" if f.workers else f"{f.cpu_pct:.0f}% of its core"
    if f.generator_limited:
        return f"the LOAD GENERATOR fell behind first ({load}): the server's figures are not its limit"
    if f.server_saturated:
        side = "; the load CPUs were near full too" if f.load_side_busy else ""
        return f"the {f.label} saturated first ({server}; generator on schedule: {load}{side})"
    if f.load_side_busy:
        return f"the LOAD SIDE is near full ({load}) while the server is at {f.cpu_pct:.0f}%: not a server limit"
    return f"nothing saturated ({'' if f.workers else 'server '}{server}; {load})"


# -- find-max ---------------------------------------------------------------------------------


def find_max(base: Plan, work: Path, cpus: Cpus, step_s: float, limit: int) -> None:
    """Double the calls until a step fails, then bisect; prints the most that passed."""

    def step(calls: int) -> Figures:
        ramp_s = calls / base.ramp_rate
        plan = Plan(calls, max(step_s, ramp_s + SETTLE_S + 6), base.tracks, base.ramp_rate)
        f = run("bridge", plan, work / f"max-{calls}", cpus)
        disturbed = f.foreign_on_server_cpu_pct > DISTURBED_PCT
        print(
            f"  {calls:5d} calls: CPU {f.cpu_pct:5.1f}%  {f.us_per_message:6.1f} µs/msg  "
            f"loop lag p99 {f.loop_lag_ms[1]:8.1f} ms  "
            f"upstream lag p99 {(f.delivery_lag_ms or (math.nan,) * 3)[1]:8.1f} ms  "
            f"lost {f.lost_frames}  failed {f.failed_calls}  gen slip p99 {f.slip_ms[1]:.1f} ms  "
            f"load CPUs {f.load_cpus_busy_pct:.0f}%  other on server CPU {f.foreign_on_server_cpu_pct:.0f}%  "
            f"→ {'pass' if f.passed else 'FAIL'}{' (generator-limited)' if f.generator_limited else ''}"
            f"{' (disturbed: other processes on the server CPU)' if disturbed else ''}",
            flush=True,
        )  # fmt: skip
        return f

    print(f"find-max: {base.tracks}-track calls, pass = no loss, no failed call, p99 loop lag ≤ {LAG_LIMIT_MS:g} ms")
    best, worst, calls = 0, None, 10
    while calls <= limit:
        f = step(calls)
        if f.generator_limited:
            print(f"find-max: stopped: the load generator is the limit at {calls} calls")
            break
        if not f.passed:
            worst = calls
            break
        best, calls = calls, calls * 2
    while worst is not None and worst - best > max(5, best // 20):
        middle = (best + worst) // 2
        f = step(middle)
        if f.generator_limited:
            print(f"find-max: stopped: the load generator is the limit at {middle} calls")
            break
        best, worst = (middle, worst) if f.passed else (best, middle)
    print(f"find-max: maximum concurrent {base.tracks}-track calls per core: {best}"
          + (f" (fails at {worst})" if worst else f" (no failure up to {limit})"))  # fmt: skip


# -- command line -----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20, help="concurrent calls (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of audio per call (default: %(default)s)")
    parser.add_argument("--tracks", type=int, choices=(1, 2), default=1, help="1: inbound only; 2: both parties")
    parser.add_argument(
        "--ramp-rate", type=float, default=100.0, help="calls started per second (default: %(default)s)"
    )
    parser.add_argument("--no-sink", action="store_true", help="skip the bare-sink floor runs")
    parser.add_argument(
        "--find-max", action="store_true", help="ramp calls until p99 loop lag > 50 ms or a frame is lost"
    )
    parser.add_argument(
        "--step-duration", type=float, default=15.0, help="--find-max: seconds per step (at least ramp + 7)"
    )
    parser.add_argument("--max-calls", type=int, default=5000, help="--find-max: stop doubling here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, ledgers, send times)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="run the bridge as N processes behind one port (bridge serve --workers N) on a PostgreSQL ledger "
        "started for the run; per-process figures (default: %(default)s)",
    )
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.workers > 1 and args.find_max:
        parser.error("--find-max ramps one process; not with --workers")
    if args.workers > 1 and binaries() is None:
        print("bench.load: --workers needs PostgreSQL's server binaries (initdb, pg_ctl): `make postgres`"
              " installs them", file=sys.stderr)  # fmt: skip
        return 2

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up children on SIGTERM too
    cpus = Cpus.split()
    fleet = Cpus.fleet(args.workers)  # before this process leaves the server's CPU
    if cpus.load_list:
        os.sched_setaffinity(0, cpus.load_list)  # this process (and its prober) stays off the server's core
    idle_before = CoreTimes.read(None)
    time.sleep(1.0)
    busy = 100 * CoreTimes.read(None).busy_share_since(idle_before)
    if busy > 10:
        print(f"bench.load: WARNING: the machine is {busy:.0f}% busy before the run (other processes):"
              " figures will be noisy and pessimistic", flush=True)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    plan = Plan(args.calls, args.duration, args.tracks, args.ramp_rate)
    try:
        if args.find_max:
            find_max(plan, work, cpus, args.step_duration, args.max_calls)
        else:
            if args.workers > 1:
                print(f"bench.load: {plan.calls} calls × {plan.duration_s:g} s against the bridge as {args.workers}"
                      " workers behind one port (ledger on a PostgreSQL started for the run)"
                      + ("" if args.no_sink else ", then the bare sinks (one process each)")
                      + f"; bridge: {fleet.describe()}" + ("" if args.no_sink else f"; sinks: {cpus.describe()}"),
                      flush=True)  # fmt: skip
                runs = [run("bridge", plan, work / "bridge", fleet, workers=args.workers)]
            else:
                print(f"bench.load: {plan.calls} calls × {plan.duration_s:g} s against the bridge"
                      + ("" if args.no_sink else ", then the bare sinks") + f"; {cpus.describe()}",
                      flush=True)  # fmt: skip
                runs = [run("bridge", plan, work / "bridge", cpus)]
            if not args.no_sink:
                runs.append(run("sink", plan, work / "sink", cpus))
                runs.append(run("sink-asgi", plan, work / "sink-asgi", cpus))
            report(runs, cpus)
    except KeyboardInterrupt:
        print("interrupted; child processes stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
