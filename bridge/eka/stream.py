"""The EkaScribe stream socket: PCM16LE mono 16 kHz in, nothing back.

Two wire modes (Eka's stream-audio page): raw binary frames (default), or the
Media-Streams JSON envelope with ``start``/``media``/``stop``. The server sends
no messages; closing (or ``stop``) only flushes, End Session finalizes.
"""

from __future__ import annotations

import asyncio
import base64
import json

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

#: What a broken or refused upstream socket can raise.
UPSTREAM_ERRORS = (OSError, asyncio.TimeoutError, WebSocketException)


class UpstreamStream:
    def __init__(self, connection: ClientConnection, wire_format: str, sample_rate: int) -> None:
        self._ws = connection
        self._json = wire_format == "json"
        self._sample_rate = sample_rate

    @classmethod
    async def open(
        cls, url: str, *, wire_format: str = "binary", sample_rate: int = 16000, timeout_s: float = 10.0
    ) -> UpstreamStream:
        """Connect to ``upload_url`` exactly as Create Session returned it."""
        connection = await connect(
            url,
            open_timeout=timeout_s,
            close_timeout=timeout_s,
            compression=None,  # PCM does not deflate; save the CPU
            max_size=1 << 20,
            ping_interval=20,
            ping_timeout=20,
        )
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
        if self._json:
            payload = base64.b64encode(pcm).decode("ascii")
            await self._ws.send(json.dumps({"event": "media", "media": {"payload": payload}}))
        else:
            await self._ws.send(pcm)

    async def close(self, timeout_s: float) -> int | None:
        """Send ``stop`` (JSON mode only), close, and wait at most ``timeout_s`` for the close."""
        try:
            if self._json:
                await self._ws.send(json.dumps({"event": "stop", "reason": "call ended"}))
            await asyncio.wait_for(self._ws.close(), timeout_s)
        except UPSTREAM_ERRORS:
            pass
        return self._ws.close_code

    def abort(self) -> None:
        """Drop the connection without a close handshake (only when giving up on it)."""
        self._ws.transport.abort()
