"""The upstream stream socket (bridge/eka/stream.py) against a loopback WebSocket peer whose every
answer a test controls: a sans-I/O websockets server on a raw transport, so it can stay silent,
stop reading, close first, refuse, or send what Eka never sends.

What the live tests (tests/live) cannot provoke through the emulator: keepalive failing a silent
peer, TLS, backpressure on its own, the server-closes-first signal against both other endings,
and the errors the call maps (``_close_reason``)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from bridge.eka import stream as stream_module
from bridge.eka.stream import UPSTREAM_ERRORS, UpstreamStream, shared_tls_context
from bridge.live.call import _close_reason

pytestmark = pytest.mark.anyio
BOUND_S = 10.0  # every test finishes within this, or fails


class Peer:
    """A WebSocket server for one test. ``status``: the handshake's answer (101 accepts);
    ``close_on_connect``: a close code sent right after accepting; ``on_stop``: the close code
    sent when a ``stop`` arrives (None: say nothing); ``silent``: after the handshake, write
    nothing at all (no pong, no close echo); ``reading``: whether it reads its socket;
    ``send_after_accept``: a binary message sent right after accepting (Eka sends none)."""

    def __init__(self) -> None:
        self.status = 101
        self.close_on_connect: int | None = None
        self.on_stop: int | None = 1000
        self.silent = False
        self.reading = True
        self.send_after_accept: bytes | None = None
        self.frames: list[Frame] = []
        self.closed = False
        self.connections: list[PeerConnection] = []
        self._changed = asyncio.Event()

    def changed(self) -> None:
        self._changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    def received(self, opcode: Opcode) -> list[Frame]:
        return [f for f in self.frames if f.opcode is opcode]

    def resume_reading(self) -> None:
        self.reading = True
        for connection in self.connections:
            connection.transport.resume_reading()


class PeerConnection(asyncio.Protocol):
    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.ws = ServerProtocol(max_size=None)
        self.accepted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer.connections.append(self)

    def data_received(self, data: bytes) -> None:
        peer, ws = self.peer, self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                if peer.status == 101:
                    response = ws.accept(event)
                    self.accepted = True
                else:
                    response = ws.reject(peer.status, "refused\n")
                ws.send_response(response)
                if self.accepted and peer.send_after_accept is not None:
                    ws.send_binary(peer.send_after_accept)
                if self.accepted and peer.close_on_connect is not None:
                    ws.send_close(peer.close_on_connect)
                self.write(handshake=True)
                if self.accepted and not peer.reading:
                    self.transport.pause_reading()
                continue
            assert isinstance(event, Frame)
            peer.frames.append(event)
            if event.opcode is Opcode.TEXT and json.loads(bytes(event.data))["event"] == "stop" and peer.on_stop:
                ws.send_close(peer.on_stop)
        self.write()
        peer.changed()

    def write(self, *, handshake: bool = False) -> None:
        output = self.ws.data_to_send()
        if self.peer.silent and not handshake:
            return
        for data in output:
            if data:
                self.transport.write(data)
            else:
                self.transport.close()

    def eof_received(self) -> None:
        self.ws.receive_eof()
        self.write()

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer.closed = True
        self.peer.changed()


@asynccontextmanager
async def serving(peer: Peer, tls: ssl.SSLContext | None = None, rcvbuf: int | None = None) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: PeerConnection(peer), "127.0.0.1", 0, ssl=tls)
    if rcvbuf is not None:
        for sock in server.sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{'wss' if tls else 'ws'}://{'localhost' if tls else '127.0.0.1'}:{port}/v1/stream/s1"
    finally:
        for connection in peer.connections:
            connection.transport.abort()
        server.close()
        await server.wait_closed()


async def test_the_server_closing_after_stop_is_the_flush_signal() -> None:
    peer = Peer()
    async with asyncio.timeout(BOUND_S), serving(peer) as url:
        upstream = await UpstreamStream.open(url, timeout_s=2.0)
        await upstream.send(b"\x01\x02" * 1600)
        done = await upstream.finish(flush_wait_s=5.0, close_timeout_s=2.0)

    assert done.closed_by_server and done.close_code == 1000
    start, media, stop = (json.loads(bytes(f.data)) for f in peer.received(Opcode.TEXT))
    assert start["event"] == "start" and start["start"]["mediaFormat"]["sampleRate"] == 16000
    assert media["event"] == "media" and stop == {"event": "stop", "reason": "call ended"}
    assert peer.received(Opcode.CLOSE)[0].data == b"\x03\xe8"  # our echo of its 1000


async def test_a_server_that_does_not_close_after_stop_is_closed_by_us_and_gives_no_signal() -> None:
    peer = Peer()
    peer.on_stop = None
    async with asyncio.timeout(BOUND_S), serving(peer) as url:
        upstream = await UpstreamStream.open(url, wire_format="binary", timeout_s=2.0)
        await upstream.send(b"\x00" * 3200)
        done = await upstream.finish(flush_wait_s=0.2, close_timeout_s=2.0)

    assert not done.closed_by_server
    assert done.close_code == 1000  # it answered our close
    assert 0.2 <= done.wait_s < 2.0
    assert [f.opcode for f in peer.frames] == [Opcode.BINARY, Opcode.TEXT, Opcode.CLOSE]


async def test_a_silent_server_that_never_answers_our_close_is_aborted_at_the_close_timeout() -> None:
    peer = Peer()
    peer.on_stop = None
    peer.silent = True
    async with asyncio.timeout(BOUND_S), serving(peer) as url:
        upstream = await UpstreamStream.open(url, timeout_s=0.3)
        done = await upstream.finish(flush_wait_s=0.1, close_timeout_s=5.0)
        await peer.until(lambda: peer.closed)

    assert not done.closed_by_server
    assert 0.3 <= done.wait_s < 2.0  # the socket's own close deadline, not close_timeout_s
    assert done.close_code == 1006


async def test_keepalive_pings_are_answered_and_a_silent_peer_fails_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream_module, "PING_INTERVAL_S", 0.05)
    monkeypatch.setattr(stream_module, "PING_TIMEOUT_S", 1.0)  # generous: a loaded machine still pongs in time
    answering = Peer()
    silent = Peer()
    silent.silent = True
    async with asyncio.timeout(BOUND_S), serving(answering) as url, serving(silent) as silent_url:
        kept = await UpstreamStream.open(url, timeout_s=0.5)
        await answering.until(lambda: len(answering.received(Opcode.PING)) >= 3)  # each ponged in time
        assert kept.ready()

        failing = await UpstreamStream.open(silent_url, timeout_s=0.5)
        await silent.until(lambda: bool(silent.received(Opcode.CLOSE)))
        assert len(silent.received(Opcode.PING)) == 1  # no second ping while the first has no pong
        assert not failing.ready()
        with pytest.raises(ConnectionClosedError) as failed:
            await failing.send(b"\x00" * 320)  # waits out the close deadline, then aborts
        await silent.until(lambda: silent.closed)
        done = await kept.finish(flush_wait_s=5.0, close_timeout_s=1.0)

    assert failed.value.sent is not None and failed.value.sent.code == 1011  # keepalive ping timeout
    assert failed.value.rcvd is None
    assert isinstance(failed.value, UPSTREAM_ERRORS)
    assert done.closed_by_server


async def test_send_waits_while_the_server_does_not_read() -> None:
    peer = Peer()
    peer.reading = False
    chunk = bytes(16_000)
    async with asyncio.timeout(BOUND_S), serving(peer, rcvbuf=4096) as url:
        upstream = await UpstreamStream.open(url, wire_format="binary", timeout_s=2.0)
        sent = 0
        while upstream.ready():  # the kernel's buffers fill, then the socket's own
            upstream.send_now(chunk)
            sent += 1
            assert sent < 10_000
        assert upstream.backed_up()
        sending = asyncio.create_task(upstream.send(chunk))
        done, _ = await asyncio.wait({sending}, timeout=0.1)
        assert not done  # a send past the limit waits for the drain...
        peer.resume_reading()
        await sending  # ...which comes once the server reads again
        sent += 1
        await peer.until(lambda: len(peer.received(Opcode.BINARY)) == sent)
        assert upstream.ready() and not upstream.backed_up()
        finished = await upstream.finish(flush_wait_s=5.0, close_timeout_s=1.0)

    assert finished.closed_by_server
    assert all(f.data == chunk for f in peer.received(Opcode.BINARY))


async def test_a_close_4000_refusal_and_a_refused_handshake_raise_what_the_call_maps() -> None:
    refusing = Peer()
    refusing.close_on_connect = 4000
    denying = Peer()
    denying.status = 503
    async with asyncio.timeout(BOUND_S), serving(refusing) as url, serving(denying) as denied_url:
        with pytest.raises(ConnectionClosedError) as closed:
            await UpstreamStream.open(url, timeout_s=2.0)  # its start is refused with the close
        with pytest.raises(InvalidStatus) as refused:
            await UpstreamStream.open(denied_url, timeout_s=2.0)

    assert _close_reason(closed.value) == "close_4000"
    assert _close_reason(refused.value) == "http_503"
    assert isinstance(closed.value, UPSTREAM_ERRORS) and isinstance(refused.value, UPSTREAM_ERRORS)


async def test_a_connection_lost_mid_stream_fails_the_next_send() -> None:
    peer = Peer()
    async with asyncio.timeout(BOUND_S), serving(peer) as url:
        upstream = await UpstreamStream.open(url, wire_format="binary", timeout_s=2.0)
        await upstream.send(b"\x00" * 320)
        await peer.until(lambda: bool(peer.frames))
        peer.connections[0].transport.abort()  # a reset, no close frame
        with pytest.raises(ConnectionClosedError) as lost:
            while True:  # the sends before the loss is seen succeed
                await upstream.send(b"\x00" * 320)
                await asyncio.sleep(0)

    assert lost.value.rcvd is None and _close_reason(lost.value) == "ConnectionClosedError"


async def test_a_message_from_the_server_over_the_limit_fails_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    peer = Peer()
    peer.send_after_accept = bytes(2048)
    small = Peer()
    small.send_after_accept = bytes(1024)
    monkeypatch.setattr(stream_module, "MAX_MESSAGE_BYTES", 1024)
    async with asyncio.timeout(BOUND_S), serving(peer) as url, serving(small) as small_url:
        with pytest.raises(ConnectionClosedError) as too_big:
            await UpstreamStream.open(url, timeout_s=2.0)
        upstream = await UpstreamStream.open(small_url, wire_format="binary", timeout_s=2.0)  # dropped, not kept
        done = await upstream.finish(flush_wait_s=5.0, close_timeout_s=1.0)

    assert too_big.value.sent is not None and too_big.value.sent.code == 1009
    assert done.closed_by_server


async def test_an_unreachable_or_silent_server_fails_open_within_its_timeout() -> None:
    loop = asyncio.get_running_loop()
    mute = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)  # accepts, never answers
    port = mute.sockets[0].getsockname()[1]
    async with asyncio.timeout(BOUND_S):
        with pytest.raises(TimeoutError, match="opening handshake"):
            await UpstreamStream.open(f"ws://127.0.0.1:{port}/s", timeout_s=0.2)
        mute.close()
        await mute.wait_closed()
        with pytest.raises(OSError):
            await UpstreamStream.open(f"ws://127.0.0.1:{port}/s", timeout_s=2.0)


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh self-signed certificate for localhost, and a client
    context that trusts exactly that certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


async def test_wss_verifies_the_server_and_streams_over_tls(tmp_path: Path) -> None:
    server_tls, client_tls = self_signed(tmp_path)
    peer = Peer()
    async with asyncio.timeout(BOUND_S), serving(peer, tls=server_tls) as url:
        with pytest.raises(ssl.SSLCertVerificationError):  # the default context does not trust it
            await UpstreamStream.open(url, timeout_s=2.0)
        upstream = await UpstreamStream.open(url, wire_format="binary", timeout_s=2.0, tls=client_tls)
        for _ in range(20):
            await upstream.send(b"\x05" * 3200)
        done = await upstream.finish(flush_wait_s=5.0, close_timeout_s=2.0)
        await peer.until(lambda: peer.closed)

    assert done.closed_by_server and done.close_code == 1000
    assert sum(len(f.data) for f in peer.received(Opcode.BINARY)) == 20 * 3200
    assert isinstance(ssl.SSLCertVerificationError(), UPSTREAM_ERRORS)


async def test_every_wss_socket_shares_one_tls_context(tmp_path: Path) -> None:
    """asyncio would build a default context (the system's CAs loaded into it, ~800 KiB) per
    connection; every stream socket uses the one ``shared_tls_context`` instead."""
    server_tls, _ = self_signed(tmp_path)
    shared_tls_context.cache_clear()  # a context of this test's own, trusting its CA
    try:
        context = shared_tls_context()
        context.load_verify_locations(tmp_path / "cert.pem")
        async with asyncio.timeout(BOUND_S), serving(Peer(), tls=server_tls) as url:
            streams = [await UpstreamStream.open(url, timeout_s=2.0) for _ in range(3)]
            used = [s._ws.transport.get_extra_info("sslcontext") for s in streams]
            for s in streams:
                s.abort()
    finally:
        shared_tls_context.cache_clear()
    assert all(u is context for u in used)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname


async def test_the_socket_goes_through_the_http_proxy_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    connects: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        connects.append(head.split(b"\r\n", 1)[0])
        host, port = head.split()[1].decode().rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    proxy_server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    proxy_port = proxy_server.sockets[0].getsockname()[1]
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ws_proxy", f"http://127.0.0.1:{proxy_port}")
    peer = Peer()
    async with asyncio.timeout(BOUND_S), serving(peer) as url:
        upstream = await UpstreamStream.open(url, timeout_s=2.0)
        await upstream.send(b"\x00" * 320)
        done = await upstream.finish(flush_wait_s=5.0, close_timeout_s=2.0)
        proxy_server.close()
        await proxy_server.wait_closed()

    port = url.split(":")[2].split("/")[0]
    assert connects == [f"CONNECT 127.0.0.1:{port} HTTP/1.1".encode()]
    assert done.closed_by_server
