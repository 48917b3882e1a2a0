"""HTTP/2 clients on the edge's HTTPS listener, end to end in one process.

A real ``Edge`` (all listeners on 127.0.0.1:0), our ``AgentSession`` forwarding to a local HTTP/1.1 app
(h11), and an HTTP/2 client written here with the h2 library over TLS (ALPN h2, SNI, the dev CA
verified). Covers concurrent streams, a 5 MiB request body streamed through and echoed back (both
directions crossing the flow-control windows), the offline page, header rules (``ngrok-error-code``
and hop-by-hop headers never reach the client, cookies joined, a length-less body sent chunked), the
unreachable-upstream page, interim responses, a client reset of one stream while others finish (the
agent drops that upstream), a client that stops reading holding the upstream back, clients vanishing
mid-response with the tunnel staying up, h2 protocol errors, and ALPN (h2 for clients, also on
certificates issued by SNI; none on the tunnel listener; HTTP/1.1 still served on the same listener).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest

from hatchway.agent.forward import make_forwarder
from hatchway.agent.session import AgentSession
from hatchway.agent.spec import parse_upstream
from hatchway.edge.app import Edge, EdgeConfig
from hatchway.edge.listeners.http2 import Http2Connection, request_from_h2, split_host
from hatchway.http.h1 import ChunkedScanner
from hatchway.net import tls

from h2_client import H2Client

WAIT = 20.0
HOST = "h2.hatchway.localhost"
DOWN_HOST = "h2down.hatchway.localhost"
KEPT_HOST = "h2kept.hatchway.localhost"


# ---- the local app (HTTP/1.1, one request per connection: the edge opens a Proxy stream per h2 request) --
@dataclass
class App:
    port: int = 0
    slow_closed: asyncio.Event = field(default_factory=asyncio.Event)
    slow_started: asyncio.Event = field(default_factory=asyncio.Event)
    heads: list[h11.Request] = field(default_factory=list)
    open: int = 0  # upstream connections open right now
    big_sent: int = 0  # bytes of /big bodies written so far


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
            continue
        return ev


async def _serve(app: App, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h11.Connection(h11.SERVER)
    app.open += 1
    try:
        req = await _next_event(conn, reader)
        if not isinstance(req, h11.Request):
            return
        app.heads.append(req)
        path = req.target.decode()

        def send(ev: h11.Event) -> None:
            writer.write(conn.send(ev) or b"")

        if path.startswith("/echo"):
            # Stream the body straight back, chunked, as it arrives.
            send(h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")]))
            while isinstance(ev := await _next_event(conn, reader), h11.Data):
                send(h11.Data(data=ev.data))
                await writer.drain()
            send(h11.EndOfMessage())
        elif path.startswith("/slow"):
            send(h11.Response(status_code=200, headers=[("content-length", "1000000")]))
            send(h11.Data(data=b"x" * 1000))
            await writer.drain()
            app.slow_started.set()
            if not await reader.read(1):  # the edge's reset makes the agent drop this connection
                app.slow_closed.set()
            return
        elif path.startswith("/big"):
            size = int(path.partition("=")[2])
            send(h11.Response(status_code=200, headers=[("content-length", str(size))]))
            block = b"b" * (1 << 16)
            while app.big_sent < size:
                piece = block[: size - app.big_sent]
                send(h11.Data(data=piece))
                app.big_sent += len(piece)
                await writer.drain()
            send(h11.EndOfMessage())
        elif path.startswith("/interim"):
            send(h11.InformationalResponse(status_code=103, headers=[("link", "</s.css>; rel=preload")]))
            send(h11.Response(status_code=204, headers=[]))
            send(h11.EndOfMessage())
        elif path.startswith("/close"):
            # HTTP/1.0 style: no length, the body ends when the connection closes.
            writer.write(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end")
        elif path.startswith("/broken"):
            writer.write(b"this is not HTTP at all\r\n\r\n")
        else:
            body = json.dumps(
                {
                    "method": req.method.decode(),
                    "path": path,
                    "headers": [[k.decode(), v.decode()] for k, v in req.headers],
                }
            ).encode()
            send(
                h11.Response(
                    status_code=200,
                    headers=[
                        ("content-type", "application/json"),
                        ("content-length", str(len(body))),
                        ("ngrok-error-code", "ERR_FAKE_FROM_UPSTREAM"),
                        ("connection", "keep-alive, x-hop"),
                        ("x-hop", "must-not-pass"),
                        ("keep-alive", "timeout=5"),
                        ("x-upstream", "yes"),
                    ],
                )
            )
            send(h11.Data(data=body))
            send(h11.EndOfMessage())
        await writer.drain()
    except (ConnectionError, h11.ProtocolError):
        pass
    finally:
        app.open -= 1
        writer.close()


# ---- a keep-alive app (bodyless requests only): the edge keeps Proxy streams, the fast path answers ----
@dataclass
class KeptApp:
    port: int = 0
    connections: int = 0  # upstream connections accepted so far
    open: int = 0
    served: list[tuple[int, str]] = field(default_factory=list)  # (connection number, path) per request
    head_sent: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    hanging: asyncio.Event = field(default_factory=asyncio.Event)
    hang_over: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: set[str] = field(default_factory=set)  # /drop paths seen once (closed without a response)
    heads: list[bytes] = field(default_factory=list)  # every request head, as the agent wrote it


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"


async def _serve_kept(app: KeptApp, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    app.connections += 1
    number = app.connections
    app.open += 1
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            app.served.append((number, path))
            app.heads.append(head)
            if path.startswith("/small"):
                extra = b"connection: keep-alive\r\nx-kept: yes\r\n"
                writer.write(_ok(f"{path} on connection {number}".encode(), extra))
            elif path.startswith("/split"):
                # The head, then (once the test says so) the body: two reads for the agent.
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n")
                await writer.drain()
                app.head_sent.set()
                await app.release.wait()
                app.release.clear()
                writer.write(b"second half")
            elif path.startswith("/chunked"):
                writer.write(CHUNKED)
            elif path.startswith("/big"):
                writer.write(_ok(bytes(range(256)) * int(path.partition("=")[2])))
            elif path.startswith("/interim"):
                writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n" + _ok(b"after hints"))
            elif path.startswith("/last"):
                # A whole response, then the app closes the connection without announcing it.
                writer.write(_ok(b"last"))
                await writer.drain()
                return
            elif path.startswith("/drop") and path not in app.dropped:
                # A kept-alive connection the app closes as a request arrives (its keep-alive timeout).
                app.dropped.add(path)
                return
            elif path.startswith("/drop"):
                writer.write(_ok(b"second try"))
            elif path.startswith("/hang"):
                app.hanging.set()
                await reader.read(1)  # until the agent drops this connection
                app.hang_over.set()
                return
            else:
                writer.write(b"this is not HTTP at all\r\n\r\n")
                await writer.drain()
                return
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        app.open -= 1
        writer.close()


# ---- fixtures --------------------------------------------------------------------------------------------
@dataclass
class Setup:
    edge: Edge
    app: App
    agent: AgentSession
    kept: KeptApp

    @property
    def https_port(self) -> int:
        return self.edge.addresses["https"][1]

    async def client(self) -> H2Client:
        return await H2Client.connect(self.https_port, self.edge.certs.ca_pem, HOST)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    app = App()
    server = await asyncio.start_server(lambda r, w: _serve(app, r, w), "127.0.0.1", 0)
    app.port = server.sockets[0].getsockname()[1]
    kept = KeptApp()
    kept_server = await asyncio.start_server(lambda r, w: _serve_kept(kept, r, w), "127.0.0.1", 0)
    kept.port = kept_server.sockets[0].getsockname()[1]
    edge = Edge(
        EdgeConfig(
            data_dir=tmp_path / "edge",
            http_addr="127.0.0.1:0",
            https_addr="127.0.0.1:0",
            tunnel_addr="127.0.0.1:0",
        )
    )
    await edge.start()
    assert edge.store is not None
    token = edge.store.create_token()[1]
    agent = await AgentSession.connect(
        f"localhost:{edge.addresses['tunnel'][1]}", token, ssl_context=tls.client_context(edge.certs.ca_pem)
    )
    try:
        await agent.bind("https", {"Hostname": HOST}, make_forwarder(parse_upstream(str(app.port))))
        await agent.bind("https", {"Hostname": DOWN_HOST}, make_forwarder(parse_upstream("127.0.0.1:1")))
        await agent.bind("https", {"Hostname": KEPT_HOST}, make_forwarder(parse_upstream(str(kept.port))))
        yield Setup(edge, app, agent, kept)
    finally:
        await agent.aclose()
        await edge.aclose(drain=1.0)
        server.close()
        kept_server.close()


# ---- tests -----------------------------------------------------------------------------------------------
async def test_concurrent_gets_and_header_rules(setup: Setup) -> None:
    async with asyncio.timeout(WAIT):
        client = await setup.client()
        try:
            sids = [
                await client.start(
                    f"/hello?i={i}",
                    headers=[("cookie", "a=1"), ("cookie", "b=2"), ("x-forwarded-for", "198.51.100.1")],
                )
                for i in range(12)
            ]
            assert len({sid for sid in sids}) == 12
            responses = await asyncio.gather(*(client.response(sid) for sid in sids))
        finally:
            await client.aclose()
    for i, r in enumerate(responses):
        assert r.reset is None and r.status == 200
        seen = json.loads(r.body)
        assert seen["path"] == f"/hello?i={i}"
        upstream = {}
        for k, v in seen["headers"]:
            upstream.setdefault(k, []).append(v)
        assert upstream["host"] == [HOST]
        assert upstream["cookie"] == ["a=1; b=2"]  # RFC 9113 §8.2.3: split cookies joined for HTTP/1.1
        assert upstream["x-forwarded-for"] == ["198.51.100.1, 127.0.0.1"]
        assert upstream["x-forwarded-proto"] == ["https"]
        assert upstream["x-forwarded-host"] == [HOST]
        assert "transfer-encoding" not in upstream  # no body: none framed
        names = {k for k, _ in r.headers}
        assert r.header(b"x-upstream") == [b"yes"]
        assert r.header(b"content-length") == [str(len(r.body)).encode()]
        for forbidden in (b"ngrok-error-code", b"connection", b"keep-alive", b"x-hop", b"transfer-encoding"):
            assert forbidden not in names, forbidden


async def test_post_5mib_streamed_and_echoed(setup: Setup) -> None:
    total = 5 << 20
    piece = os.urandom(1 << 16)
    sent = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for i in range(total // len(piece)):
            chunk = piece[i % 7 :] + piece[: i % 7]
            sent.update(chunk)
            yield chunk

    async with asyncio.timeout(WAIT):
        client = await setup.client()
        try:
            r = await client.request("/echo", method="POST", body=body())
        finally:
            await client.aclose()
    assert r.reset is None and r.status == 200
    assert len(r.body) == total
    assert hashlib.sha256(r.body).hexdigest() == sent.hexdigest()
    assert r.header(b"transfer-encoding") == []
    head = setup.app.heads[-1]
    assert (b"transfer-encoding", b"chunked") in head.headers  # no content-length: framed for HTTP/1.1


async def test_post_with_length_and_close_delimited_response(setup: Setup) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"0123456789" * 100

    async with asyncio.timeout(WAIT):
        client = await setup.client()
        try:
            r = await client.request(
                "/echo", method="POST", headers=[("content-length", "1000")], body=body()
            )
            closed = await client.request("/close")
        finally:
            await client.aclose()
    assert r.status == 200 and bytes(r.body) == b"0123456789" * 100
    head = setup.app.heads[0]
    assert (b"content-length", b"1000") in head.headers
    assert all(k != b"transfer-encoding" for k, _ in head.headers)
    assert closed.status == 200 and bytes(closed.body) == b"until the end"


async def test_offline_unreachable_and_invalid_pages(setup: Setup) -> None:
    async with asyncio.timeout(WAIT):
        client = await setup.client()
        try:
            offline = await client.request("/", authority="nobody.hatchway.localhost")
            as_json = await client.request(
                "/", authority="nobody.hatchway.localhost", headers=[("accept", "application/json")]
            )
            refused = await client.request("/", authority=DOWN_HOST)
            broken = await client.request("/broken")
            connect = await client.start("", method="CONNECT", authority="example.com:443")
            connect_r = await client.response(connect)
        finally:
            await client.aclose()
    assert offline.status == 404
    assert offline.header(b"ngrok-error-code") == [b"ERR_NGROK_3200"]
    assert b"is offline" in offline.body and b"<html" in offline.body
    assert json.loads(as_json.body)["error_code"] == "ERR_NGROK_3200"
    assert refused.status == 502 and refused.header(b"ngrok-error-code") == [b"ERR_NGROK_8012"]
    assert broken.status == 502 and broken.header(b"ngrok-error-code") == [b"ERR_NGROK_3004"]
    assert connect_r.status == 501


async def test_client_reset_of_one_stream_while_others_complete(setup: Setup) -> None:
    async with asyncio.timeout(WAIT):
        client = await setup.client()
        try:
            slow = await client.start("/slow")
            await setup.app.slow_started.wait()
            others = [await client.start(f"/hello?n={i}") for i in range(4)]
            await client.responses[slow].got_headers.wait()
            client.reset(slow)
            # The edge resets the Proxy stream; the agent drops its upstream connection.
            await setup.app.slow_closed.wait()
            done = await asyncio.gather(*(client.response(s) for s in others))
            assert all(r.status == 200 and r.reset is None for r in done)
            # The connection still works after the reset.
            again = await client.request("/hello?after=1")
            assert again.status == 200
        finally:
            await client.aclose()
    # The tunnel is untouched by one client's reset.
    assert not setup.agent.conn.is_closed


async def test_protocol_error_closes_only_that_client(setup: Setup) -> None:
    async with asyncio.timeout(WAIT):
        ctx = tls.client_context(setup.edge.certs.ca_pem)
        ctx.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", setup.https_port, ssl=ctx, server_hostname=HOST
        )
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not the h2 preface
        data = b""
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while chunk := await reader.read(65536):
                data += chunk
        writer.close()
        # Frames in answer: our SETTINGS, then GOAWAY with PROTOCOL_ERROR; then the close.
        assert frame_types(data)[-1] == (7, (1).to_bytes(4, "big"))
        client = await setup.client()
        try:
            assert (await client.request("/hello")).status == 200
        finally:
            await client.aclose()


async def test_http11_still_served_by_alpn(setup: Setup) -> None:
    async with asyncio.timeout(WAIT):
        ctx = tls.client_context(setup.edge.certs.ca_pem)
        ctx.set_alpn_protocols(["http/1.1"])
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", setup.https_port, ssl=ctx, server_hostname=HOST
        )
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        writer.write(f"GET /hello HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while chunk := await reader.read(65536):
                data += chunk
        writer.close()
    assert data.startswith(b"HTTP/1.1 200")


async def test_interim_response_and_bodyless_status(setup: Setup) -> None:
    async with asyncio.timeout(WAIT):
        client = await setup.client()
        try:
            r = await client.request("/interim")
            head = await client.request("/hello", method="HEAD")
        finally:
            await client.aclose()
    assert r.informational == [[(b":status", b"103"), (b"link", b"</s.css>; rel=preload")]]
    assert r.status == 204 and not r.body
    assert head.status == 200 and not head.body and head.header(b"content-length") != []


async def test_slow_client_holds_the_upstream(setup: Setup) -> None:
    """A client that stops reading (its h2 window closed) stops the edge reading the Proxy stream, which
    stops the agent and then the app: far less than the 64 MiB body is ever written."""
    async with asyncio.timeout(WAIT):
        client = await setup.client()
        try:
            # Stop giving the window back: the edge may send 64 KiB on this stream and no more.
            client.acknowledge = False
            sid = await client.start(f"/big?n={64 << 20}")
            await client.responses[sid].got_headers.wait()
            last = -1
            while setup.app.big_sent != last:  # wait until the app is blocked
                last = setup.app.big_sent
                await asyncio.sleep(0.3)
            assert setup.app.big_sent < 24 << 20
            assert len(client.responses[sid].body) <= 65535
            # Reading again lets the whole body through.
            client.acknowledge = True
            client.conn.acknowledge_received_data(len(client.responses[sid].body), sid)
            client.flush()
            r = await client.response(sid)
            assert r.reset is None and len(r.body) == 64 << 20
        finally:
            await client.aclose()


async def test_clients_vanishing_mid_response_leave_the_tunnel_up(setup: Setup) -> None:
    async with asyncio.timeout(WAIT):
        clients = [await setup.client() for _ in range(6)]
        sids = [await c.start(f"/big?n={16 << 20}") for c in clients]
        for c, sid in zip(clients, sids, strict=True):
            await c.responses[sid].got_headers.wait()
            c.writer.transport.abort()
        for c in clients:
            await c.aclose()
        # Every upstream connection is dropped by the agent once the edge resets the Proxy streams.
        while setup.app.open:  # noqa: ASYNC110 -- the app's counter has no event to wait on
            await asyncio.sleep(0.05)
        client = await setup.client()
        try:
            assert (await client.request("/hello")).status == 200
        finally:
            await client.aclose()
    assert not setup.agent.conn.is_closed


async def test_alpn_h2_for_clients_none_for_the_tunnel(setup: Setup) -> None:
    async def negotiated(port: int, sni: str) -> str | None:
        ctx = tls.client_context(setup.edge.certs.ca_pem)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni)
        proto: str | None = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
        return proto

    async with asyncio.timeout(WAIT):
        assert await negotiated(setup.https_port, HOST) == "h2"
        assert await negotiated(setup.https_port, "custom.example.com") == "h2"  # a leaf issued by SNI
        assert await negotiated(setup.edge.addresses["tunnel"][1], "localhost") is None


def frame_types(data: bytes) -> list[tuple[int, bytes]]:
    """(type, bytes 4..8 of the payload) of each HTTP/2 frame in ``data`` (GOAWAY: its error code)."""
    out = []
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        out.append((data[pos + 3], data[pos + 13 : pos + 17]))
        pos += 9 + length
    return out


def test_dechunker_splits_and_trailers() -> None:
    wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT"
    for step in (1, 2, 3, 7, len(wire)):
        d = ChunkedScanner()
        out = bytearray()
        used_total = 0
        for i in range(0, len(wire), step):
            if d.done:
                break
            pieces: list[memoryview] = []
            used = d.feed(memoryview(wire[i : i + step]), pieces)
            out += b"".join(pieces)
            used_total += used
        assert d.done and bytes(out) == b"hello world"
        assert wire[used_total:] == b"NEXT"


def test_request_from_h2() -> None:
    req = request_from_h2(
        [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", b"App.Example.com:8443"),
            (b":path", b"/p?q=1"),
            (b"cookie", b"a=1"),
            (b"host", b"ignored.example"),
            (b"cookie", b"b=2"),
        ],
        body_length=None,
        ip="192.0.2.1",
        port=5,
    )
    assert req.method == b"POST" and req.target == b"/p?q=1" and req.version == "2"
    assert req.host == "app.example.com"
    assert req.headers[0] == (b"host", b"App.Example.com:8443")
    assert (b"cookie", b"a=1; b=2") in req.headers
    assert all(v != b"ignored.example" for _, v in req.headers)
    assert req.has_body and req.chunked
    # Names and Connection tokens come known, so ``upstream_head`` can write the head straight out.
    assert req.lower == [k for k, _ in req.headers] and req.connection == frozenset()
    odd = request_from_h2([(b":method", b"GET"), (b":path", b"/"), (b"connection", b"X-A, close")], 0, "", 0)
    assert odd.connection == {b"x-a", b"close"}
    whole = request_from_h2([(b":method", b"POST"), (b":path", b"/")], 3, "192.0.2.1", 5)
    assert not whole.chunked and whole.has_body and (b"content-length", b"3") in whole.headers
    empty = request_from_h2([(b":method", b"GET"), (b":path", b"/")], 0, "192.0.2.1", 5)
    assert not empty.has_body and not empty.chunked
    assert split_host(b"[::1]:8443") == "::1"
    assert split_host(b"example.com") == "example.com"


# ---- the fast path (kept Proxy streams, answered from the receive callbacks) ---------------------------
async def _kept_client(setup: Setup) -> H2Client:
    return await H2Client.connect(setup.https_port, setup.edge.certs.ca_pem, KEPT_HOST)


def _count_spawns(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every exchange the general path runs as a task (the fast path runs none) is recorded here."""
    spawned: list[int] = []
    original = Http2Connection._spawn

    def spy(self: Http2Connection, st: Any, resume: bytes | None = None) -> None:
        spawned.append(st.sid)
        original(self, st, resume)

    monkeypatch.setattr(Http2Connection, "_spawn", spy)
    return spawned


async def test_fast_path_answers_on_kept_streams(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first request opened a Proxy stream, bodyless requests are answered without a task, on
    the same upstream connection, with the same header rules as the general path."""
    spawned = _count_spawns(monkeypatch)
    async with asyncio.timeout(WAIT):
        client = await _kept_client(setup)
        try:
            first = await client.request("/small?n=0")
            assert spawned == [1]  # no kept stream yet: the general path opened one
            rs = [await client.request(f"/small?n={i}") for i in range(1, 21)]
            sequential = list(spawned)
            both = await asyncio.gather(*(client.request(f"/small?pair={i}") for i in range(2)))
        finally:
            await client.aclose()
    assert sequential == [1]
    for i, r in enumerate([first, *rs]):
        assert r.status == 200 and r.reset is None
        assert r.body == f"/small?n={i} on connection 1".encode()
        assert r.header(b"x-kept") == [b"yes"] and r.header(b"connection") == []
        assert r.header(b"content-length") == [str(len(r.body)).encode()]
    assert all(r.status == 200 and r.body.startswith(b"/small?pair=") for r in both)
    # One kept stream served all 21 sequential requests over one upstream connection.
    assert {n for n, p in setup.kept.served if "?n=" in p} == {1}


async def test_fast_path_hands_over_what_it_cannot_finish(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head split from its body, a chunked or larger-than-window body, an interim response and an
    invalid response all start on the fast path; each ends as the general path would end it. A small
    body that comes after its head is still answered on the fast path."""
    spawned = _count_spawns(monkeypatch)
    async with asyncio.timeout(WAIT):
        client = await _kept_client(setup)
        try:
            assert (await client.request("/small")).status == 200  # a kept stream now exists
            sid = await client.start("/split")
            await setup.kept.head_sent.wait()
            setup.kept.release.set()
            split = await client.response(sid)
            assert spawned == [1]
            chunked = await client.request("/chunked")
            big = await client.request("/big?n=1024")  # 256 KiB: over the client's 64 KiB window
            interim = await client.request("/interim")
            broken = await client.request("/broken")
            after = await client.request("/small?after=broken")
        finally:
            await client.aclose()
    assert split.status == 200 and split.body == b"second half"
    assert (
        chunked.status == 200 and chunked.body == b"hello world" and chunked.header(b"content-length") == []
    )
    assert big.status == 200 and big.reset is None and big.body == bytes(range(256)) * 1024
    assert interim.informational == [[(b":status", b"103"), (b"link", b"</a.css>")]]
    assert interim.status == 200 and interim.body == b"after hints"
    assert broken.status == 502 and broken.header(b"ngrok-error-code") == [b"ERR_NGROK_3004"]
    assert after.status == 200


async def test_fast_path_retries_a_kept_stream_whose_upstream_left(setup: Setup) -> None:
    """The app closes a kept-alive connection right after a response, or as the next request arrives: the
    request still succeeds (on a fresh Proxy stream and upstream connection), never a 502."""
    async with asyncio.timeout(WAIT):
        client = await _kept_client(setup)
        try:
            for i in range(5):
                last = await client.request(f"/last?i={i}")
                assert last.status == 200 and last.body == b"last"
                r = await client.request(f"/small?i={i}")
                assert r.status == 200 and r.reset is None, r.headers
                dropped = await client.request(f"/drop?i={i}")
                assert dropped.status == 200 and dropped.body == b"second try", dropped.headers
        finally:
            await client.aclose()
    assert [p for _, p in setup.kept.served if p.startswith("/drop")] == [
        f"/drop?i={i}" for i in range(5) for _ in (0, 1)
    ]


async def test_fast_path_client_reset_drops_the_upstream(setup: Setup) -> None:
    """A client reset of a request waiting on the fast path resets its Proxy stream: the agent drops that
    upstream connection, and the client connection and the tunnel go on serving."""
    async with asyncio.timeout(WAIT):
        client = await _kept_client(setup)
        try:
            assert (await client.request("/small")).status == 200
            sid = await client.start("/hang")
            await setup.kept.hanging.wait()
            client.reset(sid)
            await setup.kept.hang_over.wait()
            assert (await client.request("/small?after=reset")).status == 200
        finally:
            await client.aclose()
    assert not setup.agent.conn.is_closed


async def test_edge_shutdown_drains_a_fast_exchange(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exchange waiting on the fast path counts as in flight: a closing edge lets it finish."""
    asked = asyncio.Event()
    original = Http2Connection.in_flight

    def spy(self: Http2Connection) -> list[asyncio.Future[None]]:
        asked.set()
        return original(self)

    monkeypatch.setattr(Http2Connection, "in_flight", spy)
    async with asyncio.timeout(WAIT):
        client = await _kept_client(setup)
        try:
            assert (await client.request("/small")).status == 200
            sid = await client.start("/split")
            await setup.kept.head_sent.wait()
            closing = asyncio.ensure_future(setup.edge.aclose(drain=WAIT))
            await asyncio.wait_for(asked.wait(), WAIT)  # the edge has listed what it will wait for
            setup.kept.release.set()
            r = await client.response(sid)
            await closing
        finally:
            await client.aclose()
    assert r.status == 200 and r.body == b"second half"


STATIC_POLICY = json.dumps(
    {
        "on_http_request": [
            {"expressions": ["req.url.path.startsWith('/deny')"], "actions": [{"type": "deny"}]},
            {"actions": [{"type": "add-headers", "config": {"headers": {"x-policy": "fixed"}}}]},
        ]
    }
)


async def test_fast_path_with_a_static_policy(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """A static request phase settled without a run (memo or static function) keeps h2 requests on the
    fast path, with its headers added; a request the phase answers still gets the phase's answer."""
    host = "h2policy.hatchway.localhost"
    forward = make_forwarder(parse_upstream(str(setup.kept.port)))
    await setup.agent.bind("https", {"Hostname": host, "TrafficPolicy": STATIC_POLICY}, forward)
    spawned = _count_spawns(monkeypatch)
    async with asyncio.timeout(WAIT):
        client = await H2Client.connect(setup.https_port, setup.edge.certs.ca_pem, host)
        try:
            rs = [await client.request(f"/small?n={i}") for i in range(10)]
            denied = await client.request("/deny/this")
            after = await client.request("/small?after=deny")
        finally:
            await client.aclose()
    assert all(r.status == 200 and r.body.startswith(b"/small?n=") for r in rs)
    assert denied.status == 403 and after.status == 200
    # Only the first request (no kept stream yet) and the denied one ran as tasks.
    assert len(spawned) == 2
    sent = [h for h in setup.kept.heads if b"/small" in h]
    assert len(sent) == 11 and all(b"\r\nx-policy: fixed\r\n" in h for h in sent)
    assert not any(b"/deny" in h for h in setup.kept.heads)
