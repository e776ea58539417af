"""The inline text path of bridge/server/inline_ws.py on a real uvicorn server: messages a handler takes
never pass through ASGI, the ones it declines do, and nothing overtakes anything."""

from __future__ import annotations

import asyncio

import pytest
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from bridge.server.inline_ws import EXTENSION, Flag, Inbox
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


async def test_a_client_that_stops_reading_holds_the_apps_sends_until_it_reads_again() -> None:
    """uvicorn's ``writable`` flag (here a slim ``Flag``): sends wait while the client's socket
    is backed up, and all resume, in order, once it reads again."""
    count, size = 400, 65536  # 25 MiB: more than loopback's socket buffers hold
    sent = 0

    async def endpoint(websocket: WebSocket) -> None:
        nonlocal sent
        await websocket.accept()
        for i in range(count):
            await websocket.send_bytes(i.to_bytes(2, "big") * (size // 2))
            sent += 1
        await websocket.close(1000)

    async with serve(Starlette(routes=[WebSocketRoute("/ws", endpoint)])) as url:
        async with websockets.connect(url.replace("http", "ws") + "/ws", max_queue=1, max_size=None) as ws:
            got = [await asyncio.wait_for(ws.recv(), 10)]
            # The client's queue is full and it has stopped reading: wait for the server to stall
            # (no send completes for 100 ms), within a bound.
            last, still = -1, 0
            for _ in range(500):
                still = still + 1 if sent == last else 0
                if still >= 10:
                    break
                last = sent
                await asyncio.sleep(0.01)
            held = sent
            got += [await asyncio.wait_for(ws.recv(), 10) for _ in range(count - 1)]
            await asyncio.wait_for(ws.wait_closed(), 10)
    assert held < count  # the server's sends were held while nothing was read
    assert [int.from_bytes(m[:2], "big") for m in got] == list(range(count))
    assert all(len(m) == size for m in got)


async def test_the_inbox_and_flag_keep_asyncio_semantics() -> None:
    inbox = Inbox()
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("a")
    inbox.put_nowait("b")
    assert await asyncio.wait_for(getter, 1) == "a" and inbox.qsize() == 1 and not inbox.empty()
    assert await inbox.get() == "b" and inbox.empty()
    cancelled = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    inbox.put_nowait("c")  # not lost to the cancelled getter
    assert await asyncio.wait_for(inbox.get(), 1) == "c"

    flag = Flag()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters) and not flag.is_set()
    flag.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [True] * 3
    assert await flag.wait() and flag.is_set()
    flag.clear()
    late = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    late.cancel()
    await asyncio.gather(late, return_exceptions=True)
    assert not flag._waiters  # a cancelled wait leaves nothing behind
