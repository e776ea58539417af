"""A stream that lands on the wrong process is relayed to the one that owns its call.

Vobiz reconnects a dropped stream with a new ``streamId`` for the same ``callId``; behind a load
balancer it may reach any process. The process that owns the call holds its Eka session and its
audio timeline, so the receiving process pipes the stream's messages, verbatim, to the owner's
internal endpoint; the owner takes them as the call's reconnect (or refuses a duplicate), and
its close is passed back to the provider. One call, one Eka session, wherever it lands.

The internal endpoint takes only sockets that carry the fleet's relay token (created in the
shared ledger, so every process that can read the ledger has it and nobody else does).
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass

from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from bridge.providers.events import StreamStart

PATH = "/fleet/stream/{provider}"
TOKEN_HEADER = "x-bridge-relay-token"
#: To reach the owner; a process that cannot be reached this fast is treated as gone.
CONNECT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class RelayToOwner:
    """A stream's ``start`` names a call another live process carries."""

    owner_url: str
    start: StreamStart
    text: str  # the start message as the provider sent it


def authentic(websocket: WebSocket, token: str) -> bool:
    offered = websocket.headers.get(TOKEN_HEADER, "")
    return bool(token) and hmac.compare_digest(offered.encode(), token.encode())


async def pipe(websocket: WebSocket, target: RelayToOwner, provider: str, token: str, max_size: int) -> bool:
    """Relay the rest of the stream to the owner; False if the owner could not be reached (the
    caller then carries the call itself). The provider's socket is closed as the owner closed."""
    url = target.owner_url.replace("http", "ws", 1) + PATH.format(provider=provider)
    try:
        owner = await connect(
            url,
            additional_headers={TOKEN_HEADER: token},
            open_timeout=CONNECT_TIMEOUT_S,
            compression=None,
            max_size=max_size,
        )
    except (OSError, TimeoutError, WebSocketException):
        return False
    async with owner:
        await owner.send(target.text)
        forward = asyncio.create_task(_forward(websocket, owner))
        back = asyncio.create_task(owner.wait_closed())
        await asyncio.wait({forward, back}, return_when=asyncio.FIRST_COMPLETED)
        if back.done():  # the owner ended it (stop, hang-up, a refusal): the provider hears the same
            forward.cancel()
            code = owner.close_code or 1000
            try:
                await websocket.close(code if code != 1006 else 1011, owner.close_reason or "")
            except Exception:  # already closed by the provider
                pass
        else:  # the provider's socket closed: the owner sees the same
            await owner.close()
            back.cancel()
        await asyncio.gather(forward, back, return_exceptions=True)
    return True


async def _forward(websocket: WebSocket, owner: ClientConnection) -> None:
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes")
            if data is not None:
                await owner.send(data)
    except (WebSocketDisconnect, ConnectionClosed, RuntimeError):
        return
