"""The inline text path of bridge/server/inline_ws.py on a real uvicorn server: messages a handler takes
never pass through ASGI, the ones it declines do, and nothing overtakes anything."""

from __future__ import annotations

import asyncio

import pytest
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from bridge.server.inline_ws import EXTENSION
from tests.servers import serve

pytestmark = pytest.mark.anyio


def recording_app(seen: list[tuple[str, str]], done: asyncio.Event) -> Starlette:
    """Takes messages starting with "m" inline, declines the rest; "boom" raises inline."""

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        waiting = False

        def inline(text: str) -> bool:
            if text == "boom":
                raise ValueError("a handler bug")
            if not waiting or not text.startswith("m"):
                return False
            seen.append(("inline", text))
            return True

        extension = websocket.scope["extensions"].get(EXTENSION)
        if extension is not None:
            extension["register"](inline)
        while True:
            waiting = True
            message = await websocket.receive()
            waiting = False
            if message["type"] == "websocket.disconnect":
                break
            text = message["text"]
            seen.append(("asgi", text))
            if text.startswith("slow"):
                await asyncio.sleep(0.05)  # busy: media arriving now must wait its turn
            if text == "stop":
                await websocket.close(1000)
                break
        done.set()

    return Starlette(routes=[WebSocketRoute("/ws", endpoint)])


async def test_taken_messages_skip_asgi_and_order_is_kept() -> None:
    seen: list[tuple[str, str]] = []
    done = asyncio.Event()
    sent = ["start", *(f"m{i}" for i in range(20)), "slow1", *(f"m{i}" for i in range(20, 40)), "boom", "m40", "stop"]
    async with serve(recording_app(seen, done)) as url:
        async with websockets.connect(url.replace("http", "ws") + "/ws") as ws:
            for i, text in enumerate(sent):
                await ws.send(text)
                if i % 7 == 0:
                    await asyncio.sleep(0.002)  # let some arrive while the app waits, some in bursts
            await asyncio.wait_for(done.wait(), 10)
    assert [text for _, text in seen] == sent  # nothing lost, duplicated or reordered
    paths = dict((text, path) for path, text in seen)
    assert paths["start"] == paths["slow1"] == paths["stop"] == paths["boom"] == "asgi"
    assert sum(path == "inline" for path, _ in seen) >= 20  # most media skipped the queue


async def test_without_registration_the_protocol_is_plain_asgi() -> None:
    seen: list[tuple[str, str]] = []

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        while (message := await websocket.receive())["type"] != "websocket.disconnect":
            seen.append(("asgi", message["text"]))
            if message["text"] == "stop":
                await websocket.close(1000)
                return

    async with serve(Starlette(routes=[WebSocketRoute("/ws", endpoint)])) as url:
        async with websockets.connect(url.replace("http", "ws") + "/ws") as ws:
            for text in ("a", "m1", "stop"):
                await ws.send(text)
            await asyncio.wait_for(ws.wait_closed(), 10)
    assert seen == [("asgi", "a"), ("asgi", "m1"), ("asgi", "stop")]
