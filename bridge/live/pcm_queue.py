"""A bounded FIFO of PCM bytes between the telephony reader and the upstream writer.

The reader must never wait on EkaScribe (Twilio drops audio when its socket
backs up), so ``put`` never blocks: past ``max_bytes`` the oldest audio is
dropped and counted. The writer awaits whole batches.

Each ``put`` is stamped with the time it arrived, so the writer learns how long the oldest
audio of each batch waited (``batch_arrived_at``): the relay-lag metric, measured per batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

from bridge.audio.mixer import BlockSource

#: A wanted size no queue reaches: puts never wake a parked writer.
END = 1 << 62


class PcmQueue:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes - max_bytes % 2
        self._buf = bytearray()
        self._closed = False
        self._discarding = False
        self._want = 1
        self._waiter: asyncio.Future[None] | None = None  # the writer's, while it waits
        self.dropped_bytes = 0  # oldest audio dropped because the upstream fell too far behind
        self.discarded_bytes = 0  # audio with nowhere to go (no session could be created)
        self.high_water_bytes = 0
        self.batch_arrived_at: float | None = None  # monotonic arrival of the last batch's oldest byte
        self._head = 0  # bytes ever removed from the front (sent or dropped)
        self._marks: list[tuple[int, float]] = []  # (end offset of a put, its arrival time)

    def __len__(self) -> int:
        return len(self._buf)

    def put(self, pcm: bytes) -> None:
        if self._closed:
            raise RuntimeError("put() after close()")
        if self._discarding:
            self.discarded_bytes += len(pcm)
            return
        self._buf += pcm
        self._marks.append((self._head + len(self._buf), time.monotonic()))
        excess = len(self._buf) - self.max_bytes
        if excess > 0:
            excess += excess % 2  # whole samples only
            del self._buf[:excess]
            self.dropped_bytes += excess
            self._advance(excess)
        self.high_water_bytes = max(self.high_water_bytes, len(self._buf))
        if len(self._buf) >= self._want:
            self.wake()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """No more audio will come; the writer drains what is left."""
        self._closed = True
        self.wake()

    def discard(self) -> None:
        """Nothing will ever read this: count and drop what is held and all that follows."""
        self._discarding = True
        self.discarded_bytes += len(self._buf)
        self._advance(len(self._buf))
        self._buf.clear()

    async def next_batch(self, size: int) -> bytes | None:
        """Wait for ``size`` bytes (fewer only at the end); ``None`` once closed and drained."""
        while len(self._buf) < size and not self._closed:
            self._want = size
            await self._wait()
        return self.take(size)

    def take(self, size: int) -> bytes | None:
        """``size`` bytes now (fewer only once closed), or None if not that many are here."""
        if not self._buf or (len(self._buf) < size and not self._closed):
            return None
        self.batch_arrived_at = self._marks[0][1] if self._marks else None
        with memoryview(self._buf) as view:
            batch = bytes(view[:size])  # one copy (a slice of the bytearray would be a second)
        del self._buf[:size]
        self._advance(len(batch))
        return batch

    def batch_waited_s(self) -> float | None:
        """How long the oldest audio of the batch just taken waited here (None if unknown)."""
        arrived_at = self.batch_arrived_at
        return None if arrived_at is None else time.monotonic() - arrived_at

    async def parked(self) -> None:
        """Wait until the queue is closed or ``wake`` is called; puts do not end the wait
        (while the writer is parked, whoever puts sends the batches: ``take``)."""
        if self._closed:
            return
        self._want = END
        await self._wait()

    def wake(self) -> None:
        """End the writer's wait, if it is waiting (a wake with nobody waiting is not kept)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        """Wait for ``wake``: a future made for each wait, not an ``asyncio.Event`` (and its
        deque of waiters) kept for the whole call, for a queue that is empty in the steady state."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _advance(self, removed: int) -> None:
        """``removed`` bytes left the front: forget the arrival marks of puts now wholly gone."""
        self._head += removed
        marks, gone = self._marks, 0
        while gone < len(marks) and marks[gone][0] <= self._head:
            gone += 1
        del marks[:gone]


class ReplayBuffer:
    """The last ``max_bytes`` of audio sent upstream, re-sent after a reconnect so a seam
    may repeat audio but never lose it.

    A batch that is one block of the mix, whole (the steady state), is kept as what it was
    made from (``BlockSource``: μ-law is a quarter of the PCM per party) and made again only
    if it is replayed; any other batch is kept as sent."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: list[bytes | BlockSource] = []  # a handful: plain lists, not deques
        self._sizes: list[int] = []  # each entry's PCM bytes
        self.size = 0

    def __bool__(self) -> bool:
        return self.size > 0

    def __iter__(self) -> Iterator[bytes]:
        """The batches, oldest first, as they were sent."""
        for entry in list(self._entries):
            yield entry if isinstance(entry, bytes) else entry.render()

    def append(self, batch: bytes, source: BlockSource | None = None) -> None:
        """``batch`` was sent; ``source``, if given, makes it again bit for bit."""
        if self.max_bytes <= 0:
            return
        self._entries.append(batch if source is None else source)
        self._sizes.append(len(batch))
        self.size += len(batch)
        while self._sizes and self.size - self._sizes[0] >= self.max_bytes:
            self.size -= self._sizes.pop(0)
            del self._entries[0]
