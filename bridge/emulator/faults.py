"""Fault injection: make the emulator misbehave on purpose, one knob per failure mode.

Ops are the names used in ``Emulator.requests``: "login", "refresh", "create", "end",
"get", "stream" (the WebSocket), "admin", "health". New knobs belong here, as one
method that records the wish and one ``take_*``/lookup method the app consults.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass
class Failure:
    """Answer the next ``remaining`` requests of an op with ``status``."""

    status: int
    remaining: int
    retry_after: float | None = None


@dataclass
class StreamStall:
    """Stop reading the next stream socket for ``seconds`` once it has received ``after_bytes`` of audio."""

    after_bytes: int
    seconds: float


@dataclass
class StreamDrop:
    """Cut the next ``remaining`` stream sockets once each has received ``after_bytes`` of audio."""

    after_bytes: int
    remaining: int
    keep_registration: bool = False


class Faults:
    """Pending faults, consumed by the app as matching requests arrive."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[Failure]] = {}
        self._delays: dict[str, float] = {}
        self._drops: deque[StreamDrop] = deque()
        self._stalls: deque[StreamStall] = deque()

    def fail(self, op: str, status: int, count: int = 1, retry_after: float | None = None) -> None:
        """Answer the next ``count`` requests of ``op`` with ``status``; queued after earlier ``fail``s.

        For HTTP ops the body is the error shape that endpoint uses, with a
        ``Retry-After`` header when ``retry_after`` is given (fractions are sent as-is,
        which is not standard HTTP but keeps tests fast). For "stream", a status
        below 1000 refuses the WebSocket handshake with that HTTP status; 1000 and
        above accepts, then closes with that close code (e.g. 4000).
        """
        if not isinstance(status, int) or not (100 <= status <= 599 or 1000 <= status <= 4999):
            raise ValueError(f"status must be an HTTP status or a WebSocket close code, not {status!r}")
        if count < 1:
            raise ValueError("count must be >= 1")
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        self._failures.setdefault(op, deque()).append(Failure(status, count, retry_after))

    def delay(self, op: str, seconds: float) -> None:
        """Add ``seconds`` of latency before every request of ``op`` is handled; 0 removes it."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        if seconds:
            self._delays[op] = seconds
        else:
            self._delays.pop(op, None)

    def drop_stream_after(self, n_bytes: int, count: int = 1, *, keep_registration: bool = False) -> None:
        """Close the next ``count`` stream sockets with 1011 after each has received ``n_bytes`` of audio.

        The drop ends the stream like any disconnect (Eka's OSS server deletes the
        registration), so a reconnect gets 4000; ``keep_registration=True`` lets the
        client reconnect instead, to exercise resume logic. The 1011 goes out at once;
        the dropped connection's partial chunk is flushed ``flush_delay_s`` later, with
        no signal to the client (each reconnection keeps and flushes its own).
        """
        if n_bytes < 0 or count < 1:
            raise ValueError("n_bytes must be >= 0 and count >= 1")
        self._drops.append(StreamDrop(n_bytes, count, keep_registration))

    def stall_stream_after(self, n_bytes: int, seconds: float) -> None:
        """Stop reading the next stream socket for ``seconds`` once it has received ``n_bytes`` of
        audio, as a server whose storage stalls does: the client's writes back up in the sockets'
        buffers (a test pairs it with a small receive buffer, or loopback absorbs megabytes)."""
        if n_bytes < 0 or seconds <= 0:
            raise ValueError("n_bytes must be >= 0 and seconds > 0")
        self._stalls.append(StreamStall(n_bytes, seconds))

    def clear(self) -> None:
        """Forget every pending fault and delay."""
        self._failures.clear()
        self._delays.clear()
        self._drops.clear()
        self._stalls.clear()

    # The app's side -------------------------------------------------------------

    def take_failure(self, op: str) -> Failure | None:
        """Consume one pending failure for ``op``, if any."""
        queue = self._failures.get(op)
        if not queue:
            return None
        failure = queue[0]
        failure.remaining -= 1
        if failure.remaining <= 0:
            queue.popleft()
        return Failure(failure.status, 1, failure.retry_after)

    def latency(self, op: str) -> float:
        return self._delays.get(op, 0.0)

    def take_drop(self) -> StreamDrop | None:
        """Consume one pending stream drop, if any."""
        if not self._drops:
            return None
        drop = self._drops[0]
        drop.remaining -= 1
        if drop.remaining <= 0:
            self._drops.popleft()
        return StreamDrop(drop.after_bytes, 1, drop.keep_registration)

    def take_stall(self) -> StreamStall | None:
        """Consume one pending stream stall, if any."""
        return self._stalls.popleft() if self._stalls else None

    def pending(self) -> dict[str, object]:
        """A JSON-able view, for the admin API."""
        return {
            "failures": {
                op: [{"status": f.status, "remaining": f.remaining, "retry_after": f.retry_after} for f in queue]
                for op, queue in self._failures.items()
                if queue
            },
            "delays": dict(self._delays),
            "stream_drops": [
                {"after_bytes": d.after_bytes, "remaining": d.remaining, "keep_registration": d.keep_registration}
                for d in self._drops
            ],
            "stream_stalls": [{"after_bytes": t.after_bytes, "seconds": t.seconds} for t in self._stalls],
        }
