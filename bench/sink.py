"""The floor for the load benchmark: a bare Twilio stream sink on the bridge's own server stack.

Same starlette + uvicorn (uvloop, httptools, the same WebSocket implementation and limits) as
``bridge serve``, doing the least any Twilio bridge must: accept the socket, parse each message's
JSON, base64-decode the media payload, and discard it. The bridge's cost per message divided by
this one's is the price of everything the bridge does on top (signature, μ-law decode, resampling,
mixing, batching, the upstream socket).

Run: ``python -m bench.sink --port P`` (bench/load.py does).
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

#: The bridge's default BRIDGE_WS_MAX_BYTES, so both servers run with the same WebSocket limit.
WS_MAX_BYTES = 64 * 1024


async def stream(websocket: WebSocket) -> None:
    """Read a Twilio Media Stream to its end; close with 1000 after ``stop``, as the bridge does."""
    await websocket.accept()
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            continue
        event = json.loads(text)
        kind = event.get("event")
        if kind == "media":
            base64.b64decode(event["media"]["payload"])
        elif kind == "stop":
            await websocket.close(1000)
            return


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def create_app() -> Starlette:
    return Starlette(routes=[Route("/healthz", healthz), WebSocketRoute("/twilio/stream", stream)])


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.sink", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    config = uvicorn.Config(create_app(), log_level="warning", ws_max_size=WS_MAX_BYTES, lifespan="off")
    print(f"sink: listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
