"""The Procfile's command and the Dockerfile's HEALTHCHECK, run for real against a bridge process.

A PaaS router connects from addresses that are not fixed, so the Procfile must make the bridge
trust X-Forwarded-Proto from anyone: otherwise a request the platform received over HTTPS looks
like plain HTTP, and Twilio's signature (over the https:// URL) fails. The router is played by a
client bound to 127.0.0.2 (still loopback; not the 127.0.0.1 uvicorn trusts by default).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from bridge.providers.twilio.signature import compute_signature
from tests.test_deploy import dockerfile, procfile_web

pytestmark = pytest.mark.anyio
TWILIO_TOKEN = "procfile-test-token"
PUBLIC_HOST = "bridge.example.test"
ROUTER_ADDRESS = "127.0.0.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def running(words: list[str], tmp_path: Path) -> AsyncIterator[int]:
    """Run ``words`` (a ``bridge serve`` command line) through the shell, as a Procfile runner does."""
    port = free_port()
    command = " ".join(shlex.quote(w) if w != "$PORT" else w for w in words)
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PORT": str(port),
        "EKA_ACCESS_TOKEN": "unused-token",
        "EKA_API_BASE_URL": "http://127.0.0.1:9",  # never contacted: no call is placed
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "BRIDGE_MODE": "dictation",
        "BRIDGE_LEDGER_PATH": str(tmp_path / f"ledger-{port}.db"),
    }
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", f"exec {command}", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(20):
            while b"bridge: listening on" not in (line := await proc.stderr.readline()):
                assert line, "the bridge exited before listening"
        yield port
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def on_loopback(words: list[str]) -> list[str]:
    """The Procfile's words with its all-interfaces host swapped for loopback (nothing else changes)."""
    at = words.index("--host") + 1
    return [*words[:at], "127.0.0.1", *words[at + 1 :]]


async def voice_webhook_via_router(port: int) -> httpx.Response:
    """What the platform's router forwards: HTTPS terminated, X-Forwarded-Proto set, Twilio's signature."""
    public_url = f"https://{PUBLIC_HOST}/twilio/voice"
    fields = {"CallSid": "CA" + "0" * 32, "From": "+15550001111", "To": "+15550003333"}
    headers = {
        "Host": PUBLIC_HOST,
        "X-Forwarded-Proto": "https",
        "X-Forwarded-For": "203.0.113.7",
        "X-Twilio-Signature": compute_signature(TWILIO_TOKEN, public_url, fields),
    }
    transport = httpx.AsyncHTTPTransport(local_address=ROUTER_ADDRESS)
    async with httpx.AsyncClient(transport=transport, timeout=10) as http:
        return await http.post(f"http://127.0.0.1:{port}/twilio/voice", data=fields, headers=headers)


async def test_procfile_command_trusts_the_routers_proxy_headers(tmp_path: Path) -> None:
    async with running(on_loopback(procfile_web()), tmp_path) as port:
        response = await voice_webhook_via_router(port)
    assert response.status_code == 200, response.text
    assert f'url="wss://{PUBLIC_HOST}/twilio/stream"' in response.text


async def test_without_the_procfile_setting_the_same_request_is_refused(tmp_path: Path) -> None:
    words = on_loopback(procfile_web())
    at = words.index("--forwarded-allow-ips")
    del words[at : at + 2]
    async with running(words, tmp_path) as port:
        response = await voice_webhook_via_router(port)
    assert response.status_code == 403  # seen as http://…: the https signature does not match


async def test_dockerfile_healthcheck_command_passes_against_a_live_bridge(tmp_path: Path) -> None:
    (healthcheck,) = [args for keyword, args in dockerfile() if keyword == "HEALTHCHECK"]
    command = json.loads(re.split(r"\bCMD\b", healthcheck, maxsplit=1)[1])
    assert command[0] == "python"
    async with running(on_loopback(procfile_web()), tmp_path) as port:
        check = await asyncio.create_subprocess_exec(
            sys.executable, *command[1:], env={"PORT": str(port)}, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(check.communicate(), 20)
        assert check.returncode == 0, err.decode()
        # And it fails when nothing answers, so a dead bridge is reported unhealthy.
        dead = await asyncio.create_subprocess_exec(
            sys.executable, *command[1:], env={"PORT": str(free_port())}, stderr=asyncio.subprocess.DEVNULL
        )
        assert await asyncio.wait_for(dead.wait(), 20) != 0
