"""What the load benchmark reads from /proc, and the percentiles it prints.

Readings come from the kernel's own accounting (no sampling profiler inside the measured
process), so measuring costs the measured process nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid`` so far (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (``VmRSS`` in ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass(frozen=True)
class CoreTimes:
    """Busy and total jiffies of one CPU (``/proc/stat``), to tell how loaded a core was."""

    busy: int
    total: int

    @classmethod
    def read(cls, cpu: int | None) -> CoreTimes:
        """One CPU's times; ``None``: all CPUs together."""
        prefix = "cpu " if cpu is None else f"cpu{cpu} "
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(prefix):
                    values = [int(v) for v in line.split()[1:]]
                    idle = values[3] + values[4]  # idle + iowait
                    return cls(busy=sum(values[:8]) - idle, total=sum(values[:8]))
        raise RuntimeError(f"cpu{cpu} not in /proc/stat")

    def busy_share_since(self, before: CoreTimes) -> float:
        total = self.total - before.total
        return (self.busy - before.busy) / total if total else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100), nearest-rank: an observed value, never interpolated."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def listening_ports(pid: int) -> set[int]:
    """The TCP ports ``pid`` has listening sockets on: its socket fds (``/proc/<pid>/fd``) matched
    to the listening entries of ``/proc/net/tcp`` and ``tcp6`` by inode."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)  # the header
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except FileNotFoundError:  # no IPv6
            continue
    return ports
