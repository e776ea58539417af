"""The floor for the load benchmark: a bare Twilio stream sink on the bridge's own server stack.

Same starlette + uvicorn (uvloop, httptools, the same WebSocket protocol class and limits) as
``bridge serve``, doing the least any Twilio bridge must: accept the socket, parse each
message's JSON (with orjson, as the bridge does), base64-decode the media payload, and discard
it. Like the bridge, it takes media messages inline as the server parses them
(bridge/server/inline_ws.py). The bridge's cost per message divided by
this one's is the price of everything the bridge does on top (μ-law decode, resampling, mixing,
batching, the upstream socket, bookkeeping).

``--asgi`` reads every message through ASGI ``receive`` instead: the stock starlette + uvicorn
path, i.e. what the same sink costs written the usual way.

Run: ``python -m bench.sink --port P [--asgi]`` (bench/load.py does).
"""

from __future__ import annotations

import argparse
import base64
import socket
import sys

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from bridge.server.inline_ws import EXTENSION, InlineTextProtocol

#: The bridge's default BRIDGE_WS_MAX_BYTES, so both servers run with the same WebSocket limit.
WS_MAX_BYTES = 64 * 1024


def discard_media(text: str) -> bool:
    """The inline path: a media message is parsed, decoded and dropped; anything else declined."""
    event = orjson.loads(text)
    if event.get("event") != "media":
        return False
    base64.b64decode(event["media"]["payload"])
    return True


async def stream(websocket: WebSocket) -> None:
    """Read a Twilio Media Stream to its end; close with 1000 after ``stop``, as the bridge does."""
    await websocket.accept()
    extension = websocket.scope["extensions"].get(EXTENSION)
    if extension is not None and websocket.app.state.inline:
        extension["register"](discard_media)  # never busy between receives, unlike the bridge
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            continue
        event = orjson.loads(text)
        kind = event.get("event")
        if kind == "media":
            base64.b64decode(event["media"]["payload"])
        elif kind == "stop":
            await websocket.close(1000)
            return


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def create_app(*, inline: bool = True) -> Starlette:
    app = Starlette(routes=[Route("/healthz", healthz), WebSocketRoute("/twilio/stream", stream)])
    app.state.inline = inline
    return app


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.sink", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--asgi", action="store_true", help="every message through ASGI receive (stock path)")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    config = uvicorn.Config(
        create_app(inline=not args.asgi),
        log_level="warning",
        ws=InlineTextProtocol,
        ws_max_size=WS_MAX_BYTES,
        ws_per_message_deflate=False,
        lifespan="off",
    )
    print(f"sink: listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
