"""Run ASGI apps as real uvicorn servers on loopback ephemeral ports, inside the test's loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn

from bridge.server.inline_ws import InlineTextProtocol


@asynccontextmanager
async def serve(
    app, *, ws_max_size: int = 1 << 20, http: type | str = "auto", rcvbuf: int | None = None
) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1:<ephemeral>; yields its ``http://`` base URL.

    The socket is bound and listening before the server task starts, so clients
    may connect at once (they wait in the backlog): no polling for readiness.
    ``rcvbuf`` fixes the accepted sockets' kernel receive buffer (no autotuning up to
    megabytes), so a server that stops reading backs its clients up soon.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY applies
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # inherited by accepted sockets
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        http=http,
        ws=InlineTextProtocol,  # as `bridge serve` runs
        ws_per_message_deflate=False,  # μ-law in base64 barely deflates; zlib state is ~90 KB a socket
        ws_max_size=ws_max_size,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout=10)
        finally:
            sock.close()
