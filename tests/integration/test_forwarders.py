"""Every kind of upstream behind a real edge and our ``AgentSession``, driven through proxy streams.

Each test starts its upstream on 127.0.0.1 (or a unix socket in a short temporary directory), binds an
endpoint whose handler is ``make_forwarder(upstream)``, and plays the edge: it opens Proxy streams and
writes HTTP/1.1 on them. Covers the raw splice (keep-alive on one stream, half-close, an Upgrade with raw
bytes after it), TLS to an upstream whose certificate the agent does not trust, unix sockets, h2c (the
upstream sees HTTP/2, the edge gets HTTP/1.1; a 1 MiB request body and a 3 MiB response both cross the
flow-control windows), the file server with Range, and an unreachable upstream (STREAM_REFUSED).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h11
import pytest

from hatchway.agent import forward
from hatchway.agent.forward import make_forwarder
from hatchway.agent.session import AgentSession
from hatchway.agent.spec import Upstream
from hatchway.edge.tunnels import AgentSession as EdgeSession
from hatchway.errors import StreamResetError
from hatchway.net import tls
from hatchway.net.transport import MuxStream
from hatchway.wire.frames import ErrorCode

from conftest import TOKEN, Edge

WAIT = 10.0
_names = itertools.count()


# ---- the agent side: bind an endpoint that forwards to `upstream` --------------------------------------
@contextlib.asynccontextmanager
async def endpoint(edge: Edge, upstream: Upstream, **kw: Any) -> AsyncIterator[tuple[EdgeSession, str]]:
    agent = await AgentSession.connect(edge.addr, TOKEN, ssl_context=tls.client_context(edge.ca_pem))
    try:
        name = f"fw{next(_names)}.example.test"
        await agent.bind("https", {"Hostname": name}, make_forwarder(upstream, **kw))
        found = edge.registry.lookup(name)
        assert found is not None
        yield found
    finally:
        await agent.aclose()


async def open_stream(ep: tuple[EdgeSession, str]) -> MuxStream:
    session, tid = ep
    return await session.open_proxy(tid, "203.0.113.7:54321", "https")


class Client:
    """The edge's HTTP/1.1 client on one proxy stream (h11), for several requests in a row."""

    def __init__(self, stream: MuxStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def request(
        self,
        target: str,
        method: str = "GET",
        headers: Iterable[tuple[str, str]] = (),
        body: Iterable[bytes] = (),
    ) -> tuple[h11.Response, bytes]:
        hdrs = [("host", "app.example.test"), *headers]
        await self.stream.write(self.h11.send(h11.Request(method=method, target=target, headers=hdrs)) or b"")
        for chunk in body:
            await self.stream.write(self.h11.send(h11.Data(data=chunk)) or b"")
        await self.stream.write(self.h11.send(h11.EndOfMessage()) or b"")
        async with asyncio.timeout(WAIT):
            response: h11.Response | None = None
            parts: list[bytes] = []
            while True:
                ev = self.h11.next_event()
                if ev is h11.NEED_DATA:
                    self.h11.receive_data(await self.stream.read())
                elif isinstance(ev, h11.Response):
                    response = ev
                elif isinstance(ev, h11.Data):
                    parts.append(bytes(ev.data))
                elif isinstance(ev, h11.EndOfMessage):
                    break
                elif isinstance(ev, h11.InformationalResponse):
                    continue
                else:
                    raise AssertionError(f"unexpected {ev!r}")
        assert response is not None
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        return response, b"".join(parts)


def header(resp: h11.Response, name: str) -> str | None:
    for k, v in resp.headers:
        if k == name.encode():
            return v.decode()
    return None


# ---- HTTP/1.1 upstreams (plain, TLS, unix): keep-alive, echoing the path and connection number ----------
@dataclass
class H1App:
    connections: int = 0
    requests: list[tuple[int, str]] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_no = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((conn_no, f"{method} {target}"))
                if headers.get("upgrade") == "echo":
                    writer.write(
                        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n"
                    )
                    while data := await reader.read(65536):
                        writer.write(data.upper())
                    writer.write_eof()
                    return
                reply = f"conn={conn_no} {method} {target} body={len(body)}".encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(reply), reply))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def h1_app(ssl_ctx: ssl.SSLContext | None = None, unix: str | None = None) -> AsyncIterator[H1App]:
    app = H1App()
    if unix is not None:
        app.server = await asyncio.start_unix_server(app.handle, unix)
    else:
        app.server = await asyncio.start_server(app.handle, "127.0.0.1", 0, ssl=ssl_ctx)
    try:
        yield app
    finally:
        app.server.close()


def port_of(app: H1App | asyncio.Server) -> int:
    server = app.server if isinstance(app, H1App) else app
    assert server is not None
    return int(server.sockets[0].getsockname()[1])


async def test_http_splice_keeps_one_upstream_connection_for_two_requests(edge: Edge) -> None:
    async with h1_app() as app, endpoint(edge, Upstream("http", "127.0.0.1", port_of(app))) as ep:
        stream = await open_stream(ep)
        client = Client(stream)
        r1, b1 = await client.request("/one")
        r2, b2 = await client.request("/two", "POST", [("content-length", "5")], [b"hello"])
        assert (r1.status_code, b1) == (200, b"conn=1 GET /one body=0")
        assert (r2.status_code, b2) == (200, b"conn=1 POST /two body=5")
        await stream.write_eof()  # the edge is done: the upstream sees EOF, closes, and we see FIN
        async with asyncio.timeout(WAIT):
            assert await stream.read_all() == b""
        assert app.connections == 1
        assert [r for _, r in app.requests] == ["GET /one", "POST /two"]


async def test_http_splice_carries_an_upgrade_then_raw_bytes_and_half_close(edge: Edge) -> None:
    async with h1_app() as app, endpoint(edge, Upstream("http", "127.0.0.1", port_of(app))) as ep:
        stream = await open_stream(ep)
        await stream.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n")
        async with asyncio.timeout(WAIT):
            got = b""
            while b"\r\n\r\n" not in got:
                got += await stream.read()
            assert got.startswith(b"HTTP/1.1 101 ")
            rest = got.partition(b"\r\n\r\n")[2]
            await stream.write(b"raw bytes ")
            await stream.write(b"after the upgrade", fin=True)  # FIN -> TCP half-close -> upstream EOF
            rest += await stream.read_all()
        assert rest == b"RAW BYTES AFTER THE UPGRADE"


async def test_http_splice_moves_large_bodies_both_ways(edge: Edge) -> None:
    """4 MiB up and back through a byte-echo upstream: windows and backpressure on both sides."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        async with endpoint(edge, Upstream("http", "127.0.0.1", port_of(server))) as ep:
            stream = await open_stream(ep)
            blob = os.urandom(4 * 1024 * 1024)

            async def send() -> None:
                for i in range(0, len(blob), 100_000):
                    await stream.write(blob[i : i + 100_000])
                await stream.write_eof()

            async with asyncio.timeout(WAIT * 3):
                sender = asyncio.ensure_future(send())
                echoed = await stream.read_all(limit=8 << 20)
                await sender
            assert echoed == blob
    finally:
        server.close()


async def test_https_upstream_with_an_untrusted_certificate_still_works(edge: Edge) -> None:
    other_ca = tls.create_ca("A CA the agent has never heard of")
    ctx = tls.server_context(tls.issue_cert(other_ca, ["localhost", "127.0.0.1"]))
    seen_sni: list[str | None] = []
    ctx.sni_callback = lambda _sock, name, _ctx: seen_sni.append(name)  # type: ignore[assignment,func-returns-value]
    async with h1_app(ctx) as app:
        port = port_of(app)
        async with endpoint(edge, Upstream("https", "localhost", port)) as ep:
            client = Client(await open_stream(ep))
            for i in range(2):
                resp, body = await client.request(f"/tls/{i}")
                assert (resp.status_code, body) == (200, f"conn=1 GET /tls/{i} body=0".encode())
        async with endpoint(edge, Upstream("https", "127.0.0.1", port)) as ep:
            resp, _ = await Client(await open_stream(ep)).request("/by-ip")
            assert resp.status_code == 200
        assert seen_sni == ["localhost", None]  # SNI carries the host name, never an IP literal

        # With verification asked for, the same certificate is refused (and the stream is refused)...
        async with endpoint(edge, Upstream("https", "localhost", port), verify_tls=True) as ep:
            await assert_refused(await open_stream(ep))
        # ...unless its CA is the one given.
        with tempfile.NamedTemporaryFile("wb", suffix=".pem") as ca_file:
            ca_file.write(other_ca.cert_pem)
            ca_file.flush()
            upstream = Upstream("https", "localhost", port)
            async with endpoint(edge, upstream, verify_tls=True, ca_file=ca_file.name) as ep:
                resp, _ = await Client(await open_stream(ep)).request("/verified")
                assert resp.status_code == 200


@pytest.fixture
def short_dir() -> Iterable[str]:
    """A short directory for unix sockets (sun_path is limited to about 100 bytes)."""
    path = tempfile.mkdtemp(prefix="hw", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_unix_socket_upstream_serves_keep_alive(edge: Edge, short_dir: str) -> None:
    sock_path = os.path.join(short_dir, "app.sock")
    async with h1_app(unix=sock_path) as app, endpoint(edge, Upstream("unix", path=sock_path)) as ep:
        client = Client(await open_stream(ep))
        for target in ("/u1", "/u2"):
            resp, body = await client.request(target)
            assert (resp.status_code, body) == (200, f"conn=1 GET {target} body=0".encode())
        assert app.connections == 1


# ---- h2c: an HTTP/2 server written with h2, flow control included ----------------------------------------
@dataclass
class H2Request:
    headers: dict[bytes, bytes]
    header_names: list[bytes]
    body_size: int = 0
    ended: bool = False


class H2App(asyncio.Protocol):
    """A prior-knowledge HTTP/2 server: ``/big?n=N`` sends N bytes (no content-length), else a summary."""

    def __init__(self, log: list[H2Request], conns: list[int]) -> None:
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.log = log
        self.conns = conns
        self.reqs: dict[int, H2Request] = {}
        self.pending: dict[int, bytearray] = {}
        self.closing = False  # after "/bye": GOAWAY and close once the answer is out
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        self.conns.append(1)
        self.h2.initiate_connection()
        transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        for ev in self.h2.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                assert ev.stream_id is not None and ev.headers is not None
                hdrs = [(bytes(k), bytes(v)) for k, v in ev.headers]
                req = H2Request(dict(hdrs), [k for k, _ in hdrs])
                self.reqs[ev.stream_id] = req
                self.log.append(req)
            elif isinstance(ev, h2.events.DataReceived):
                assert ev.stream_id is not None and ev.data is not None
                self.reqs[ev.stream_id].body_size += len(ev.data)
                self.h2.acknowledge_received_data(ev.flow_controlled_length or 0, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                assert ev.stream_id is not None
                self.respond(ev.stream_id, self.reqs[ev.stream_id])
            self.send_more()
        if self.closing and not self.pending:
            self.h2.close_connection()
        assert self.transport is not None
        self.transport.write(self.h2.data_to_send())
        if self.closing and not self.pending:
            self.transport.close()

    def respond(self, sid: int, req: H2Request) -> None:
        path = req.headers[b":path"].decode()
        self.closing = path == "/bye"
        if path.startswith("/big?n="):
            body = bytearray(b"z" * int(path.partition("=")[2]))
            self.h2.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/x-big")])
        else:
            body = bytearray(f"{req.headers[b':method'].decode()} {path} got {req.body_size} bytes".encode())
            self.h2.send_headers(
                sid, [(b":status", b"201"), (b"content-length", b"%d" % len(body)), (b"x-h2", b"yes")]
            )
        self.pending[sid] = body

    def send_more(self) -> None:
        for sid, buf in list(self.pending.items()):
            while buf:
                n = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size, len(buf))
                if n <= 0:
                    break
                self.h2.send_data(sid, bytes(buf[:n]))
                del buf[:n]
            if not buf:
                self.h2.end_stream(sid)
                del self.pending[sid]


@contextlib.asynccontextmanager
async def h2_app() -> AsyncIterator[tuple[int, list[H2Request], list[int]]]:
    log: list[H2Request] = []
    conns: list[int] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: H2App(log, conns), "127.0.0.1", 0)
    try:
        yield port_of(server), log, conns
    finally:
        server.close()


def chunks(total: int, size: int = 64 * 1024) -> Iterable[bytes]:
    for i in range(0, total, size):
        yield b"b" * min(size, total - i)


async def test_h2c_upstream_gets_http2_and_the_edge_gets_http11(edge: Edge) -> None:
    async with h2_app() as (port, log, conns), endpoint(edge, Upstream("h2c", "127.0.0.1", port)) as ep:
        stream = await open_stream(ep)
        client = Client(stream)
        resp, body = await client.request(
            "/hello?x=1", headers=[("x-custom", "1"), ("connection", "keep-alive")]
        )
        assert resp.http_version == b"1.1"
        assert (resp.status_code, body) == (201, b"GET /hello?x=1 got 0 bytes")
        assert header(resp, "x-h2") == "yes"
        assert header(resp, "content-length") == str(len(body))

        mib = 1024 * 1024  # a 1 MiB body with Content-Length, streamed in 64 KiB pieces
        resp, body = await client.request("/upload", "POST", [("content-length", str(mib))], chunks(mib))
        assert (resp.status_code, body) == (201, b"POST /upload got 1048576 bytes")

        # Chunked up, and a 3 MiB answer without Content-Length (chunked down): more than any window.
        resp, body = await client.request(
            "/big?n=3145728", "PUT", [("transfer-encoding", "chunked")], chunks(300_000)
        )
        assert resp.status_code == 200
        assert header(resp, "transfer-encoding") == "chunked"
        assert body == b"z" * 3145728

        # Upgrade requests cannot cross to HTTP/2: 501, and the stream stays usable.
        resp, body = await client.request(
            "/ws", headers=[("upgrade", "websocket"), ("connection", "upgrade")]
        )
        assert resp.status_code == 501
        resp, _ = await client.request("/after")
        assert resp.status_code == 201

        # The upstream says goodbye after one answer: the next request goes on a new HTTP/2 connection.
        resp, body = await client.request("/bye")
        assert (resp.status_code, body) == (201, b"GET /bye got 0 bytes")
        resp, body = await client.request("/again")
        assert (resp.status_code, body) == (201, b"GET /again got 0 bytes")

        await stream.write_eof()
        async with asyncio.timeout(WAIT):
            assert await stream.read_all() == b""
        assert len(conns) == 2  # one HTTP/2 connection per proxy stream (re-dialled after "/bye")
        first = log[0]
        assert first.header_names[:4] == [b":method", b":scheme", b":authority", b":path"]
        assert first.headers[b":authority"] == b"app.example.test"
        assert first.headers[b"x-custom"] == b"1"
        assert b"connection" not in first.headers and b"host" not in first.headers
        assert [r.body_size for r in log] == [0, 1048576, 300_000, 0, 0, 0]


async def test_h2c_upstream_unreachable_is_refused(edge: Edge) -> None:
    async with endpoint(edge, Upstream("h2c", "127.0.0.1", 1)) as ep:
        await assert_refused(await open_stream(ep))


async def test_h2c_to_an_http1_upstream_is_refused(edge: Edge) -> None:
    """An upstream that does not speak HTTP/2 fails the connection preface: refused like a dead one."""
    async with h1_app() as app, endpoint(edge, Upstream("h2c", "127.0.0.1", port_of(app))) as ep:
        await assert_refused(await open_stream(ep))


# ---- file:// ----------------------------------------------------------------------------------------------
async def test_file_upstream_with_range_through_the_tunnel(edge: Edge, tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_bytes(b"0123456789" * 10)
    async with endpoint(edge, Upstream("file", path=str(tmp_path))) as ep:
        client = Client(await open_stream(ep))
        resp, body = await client.request("/data.txt", headers=[("range", "bytes=10-19")])
        assert resp.status_code == 206
        assert header(resp, "content-range") == "bytes 10-19/100"
        assert body == b"0123456789"
        resp, body = await client.request("/")
        assert resp.status_code == 200 and b'<a href="data.txt">data.txt</a>' in body
        resp, _ = await client.request("/%2e%2e/etc/passwd")
        assert resp.status_code == 404


# ---- unreachable upstreams --------------------------------------------------------------------------------
async def assert_refused(stream: MuxStream) -> None:
    with contextlib.suppress(StreamResetError):
        await stream.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(StreamResetError) as info:
        async with asyncio.timeout(WAIT):
            await stream.read()
    assert info.value.mux_code == ErrorCode.STREAM_REFUSED


async def test_refused_connection_resets_with_stream_refused(edge: Edge) -> None:
    async with endpoint(edge, Upstream("http", "127.0.0.1", 1)) as ep:  # nothing listens on port 1
        await assert_refused(await open_stream(ep))


async def test_missing_unix_socket_is_refused(edge: Edge, short_dir: str) -> None:
    async with endpoint(edge, Upstream("unix", path=os.path.join(short_dir, "none.sock"))) as ep:
        await assert_refused(await open_stream(ep))


async def test_tls_handshake_failure_is_refused(edge: Edge) -> None:
    async def not_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Not TLS\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(not_tls, "127.0.0.1", 0)
    try:
        async with endpoint(edge, Upstream("https", "127.0.0.1", port_of(server))) as ep:
            await assert_refused(await open_stream(ep))
    finally:
        server.close()


async def test_connect_timeout_is_refused(edge: Edge, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upstream that never answers the connect: refused once CONNECT_TIMEOUT passes (shortened here)."""
    monkeypatch.setattr(forward, "CONNECT_TIMEOUT", 0.2)

    async def never(factory: Callable[[], asyncio.Protocol]) -> object:
        await asyncio.sleep(3600)
        return None

    agent = await AgentSession.connect(edge.addr, TOKEN, ssl_context=tls.client_context(edge.ca_pem))
    try:

        async def stalled(header: Any, stream: MuxStream, first: bytes) -> None:
            await forward.splice(stream, first, never)

        await agent.bind("https", {"Hostname": "stall.example.test"}, stalled)
        found = edge.registry.lookup("stall.example.test")
        assert found is not None
        await assert_refused(await open_stream(found))
    finally:
        await agent.aclose()
