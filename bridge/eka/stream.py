"""The EkaScribe stream socket: PCM16LE mono 16 kHz in, nothing back but the final close.

Two wire modes (Eka's stream-audio page): the Media-Streams JSON envelope with
``start``/``media``/``stop`` (default), or raw binary frames. Eka's server dispatches
each frame by its type, so a text ``stop`` after binary audio is understood too.

How a stream finishes (spec §3.6): the server flushes its last, partial VAD chunk to
storage only after its receive loop ends, and after a ``stop`` it closes the socket
only once that flush is done. End Session processes what storage holds when it
arrives, so the server's close is the one signal that End may be called.
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import WebSocketException
from websockets.protocol import State

#: What a broken or refused upstream socket can raise.
UPSTREAM_ERRORS = (OSError, asyncio.TimeoutError, WebSocketException)
#: Bytes a socket may hold unsent before ``send_now`` declines (websockets' own default
#: high-water mark): past it, the relay awaits ``send``, which waits for the drain.
WRITE_LIMIT = 32 * 1024
#: Keepalive: a ping this often, and the connection failed (1011) if its pong is this late.
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
#: Eka's server sends nothing but its close: anything larger fails the connection (1009).
MAX_MESSAGE_BYTES = 1 << 20
_MEDIA_HEAD = b'{"event":"media","media":{"payload":"'
_MEDIA_TAIL = b'"}}'


@functools.cache
def shared_tls_context() -> ssl.SSLContext:
    """The one TLS context every wss:// stream socket uses (verifying, with the system's CAs).
    Why: for ``ssl=True`` asyncio builds a fresh default context per connection, the system's
    CA certificates loaded into each: about 800 KiB a call, more than all the rest of a call."""
    return ssl.create_default_context()


@dataclass(frozen=True)
class Finished:
    """How a stream's finishing handshake went."""

    closed_by_server: bool  # the server closed after our ``stop``: its flush is done
    wait_s: float  # from sending ``stop`` to the server's close (or to giving up)
    close_code: int | None


class UpstreamStream:
    def __init__(self, connection: ClientConnection, wire_format: str, sample_rate: int) -> None:
        self._ws = connection
        self._json = wire_format == "json"
        self._sample_rate = sample_rate

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        wire_format: str = "json",
        sample_rate: int = 16000,
        timeout_s: float = 10.0,
        tls: ssl.SSLContext | None = None,
    ) -> UpstreamStream:
        """Connect to ``upload_url`` exactly as Create Session returned it (``tls``: for a
        wss:// URL, the context to verify it with; ``shared_tls_context()`` if None)."""
        # websockets refuses ``ssl`` for a ws:// URL.
        secure: dict[str, Any] = {"ssl": tls or shared_tls_context()} if url.lower().startswith("wss:") else {}
        connection = await connect(
            url,
            open_timeout=timeout_s,
            close_timeout=timeout_s,
            compression=None,  # PCM does not deflate; save the CPU
            max_size=MAX_MESSAGE_BYTES,
            ping_interval=PING_INTERVAL_S,
            ping_timeout=PING_TIMEOUT_S,
            **secure,
        )
        # Nothing reads the handshake's headers again, and they would be kept for the whole call
        # (websockets' parser holds the response too, so the objects stay and their headers go).
        for message in (connection.request, connection.response):
            if message is not None:
                message.headers = Headers()
        stream = cls(connection, wire_format, sample_rate)
        if stream._json:
            await connection.send(
                json.dumps(
                    {
                        "event": "start",
                        "start": {"mediaFormat": {"encoding": "audio/x-l16", "sampleRate": sample_rate}},
                    }
                )
            )
        return stream

    async def send(self, pcm: bytes) -> None:
        """Send one batch, waiting while the socket's buffer is over its limit."""
        if self._json:
            await self._ws.send(self._media_frame(pcm).decode("ascii"))
        else:
            await self._ws.send(pcm)

    def ready(self) -> bool:
        """Whether ``send_now`` may write a batch: the socket is open and not backed up."""
        ws = self._ws
        return ws.protocol.state is State.OPEN and ws.transport.get_write_buffer_size() <= WRITE_LIMIT

    def backed_up(self) -> bool:
        """Whether the socket holds more unsent than ``WRITE_LIMIT`` (the server is not reading)."""
        return self._ws.transport.get_write_buffer_size() > WRITE_LIMIT

    def send_now(self, pcm: bytes) -> None:
        """Write one batch at once, without waiting (after ``ready``): the media path sends
        the steady state itself, through websockets' sans-I/O protocol, instead of waking a
        task per batch. Raises like ``send`` if the connection has failed."""
        protocol = self._ws.protocol
        if self._json:
            protocol.send_text(self._media_frame(pcm))
        else:
            protocol.send_binary(pcm)
        transport = self._ws.transport
        for data in protocol.data_to_send():
            transport.write(data)

    @staticmethod
    def _media_frame(pcm: bytes) -> bytes:
        """The JSON media envelope, built as bytes: base64 needs no JSON escaping."""
        return b"".join((_MEDIA_HEAD, binascii.b2a_base64(pcm, newline=False), _MEDIA_TAIL))

    async def finish(self, *, flush_wait_s: float, close_timeout_s: float, reason: str = "call ended") -> Finished:
        """Send ``stop`` (a text frame in both wire modes) and wait up to ``flush_wait_s`` for the
        server to close the socket, which it does once its last chunk is in storage. If it does
        not, close it ourselves: the server still flushes on disconnect, but gives no signal."""
        started = time.monotonic()
        try:
            await self._ws.send(json.dumps({"event": "stop", "reason": reason}))
            await asyncio.wait_for(self._ws.wait_closed(), flush_wait_s)
        except UPSTREAM_ERRORS:
            try:
                await asyncio.wait_for(self._ws.close(), close_timeout_s)
            except UPSTREAM_ERRORS:
                self.abort()
        waited = time.monotonic() - started
        protocol = self._ws.protocol
        by_server = protocol.close_rcvd is not None and bool(protocol.close_rcvd_then_sent)
        return Finished(by_server, waited, self._ws.close_code)

    def abort(self) -> None:
        """Drop the connection without a close handshake (only when giving up on it)."""
        self._ws.transport.abort()
