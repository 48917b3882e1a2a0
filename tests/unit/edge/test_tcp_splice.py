"""The TCP endpoint's byte splice on real loopback sockets, with an in-process agent.

The edge side is a real ``AgentSession`` on a ``MuxConnection``; the agent side is a ``MuxConnection``
that reads each Proxy stream's header and hands the stream to the test. The registry binds ``tcp`` in
process (as the SSH entry does) and the tests drive a plain TCP client: echo of a large payload,
half-close both ways, backpressure both ways, an agent reset closing the client, a client reset ending
only its stream, the IP restriction at accept, PROXY protocol headers, and going offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from hatchway.edge.registry import Registry
from hatchway.edge.tcp import PortRange, TcpEndpoints
from hatchway.edge.tcp_splice import Splice, proxy_protocol_header
from hatchway.edge.tunnels import AgentSession
from hatchway.errors import SessionClosedError, StreamResetError
from hatchway.net.transport import MuxConnection, MuxStream
from hatchway.wire import messages as m
from hatchway.wire.frames import ErrorCode
from hatchway.wire.mux import DEFAULT_WINDOW, MuxSession

from e2e_support import free_port_range

WAIT = 10.0


@dataclass
class Link:
    registry: Registry
    tcp: TcpEndpoints
    session: AgentSession  # the edge's view of the agent
    agent: MuxConnection
    streams: asyncio.Queue[tuple[m.ProxyHeader, MuxStream]]

    async def bind(self, **opts: Any) -> tuple[str, int]:
        resp = await self.registry.bind(self.session, m.Bind(proto="tcp", opts=opts))
        assert not resp.error, resp.error
        return resp.id, int(resp.url.rpartition(":")[2])

    async def next_stream(self) -> tuple[m.ProxyHeader, MuxStream]:
        async with asyncio.timeout(WAIT):
            return await self.streams.get()

    def splices(self, tunnel_id: str) -> list[Splice]:
        return list(self.tcp._by_tunnel[tunnel_id].conns)


@pytest.fixture
async def link() -> AsyncIterator[Link]:
    loop = asyncio.get_running_loop()
    tcp = TcpEndpoints(free_port_range_of(20), "127.0.0.1")
    registry = Registry({"t"}, tcp=tcp)
    sessions: list[AgentSession] = []

    def edge_side() -> MuxConnection:
        conn = MuxConnection(MuxSession(client=False))
        sessions.append(AgentSession(conn, registry))
        return conn

    streams: asyncio.Queue[tuple[m.ProxyHeader, MuxStream]] = asyncio.Queue()

    async def on_stream(st: MuxStream) -> None:
        (n,) = struct.unpack("<q", await st.readexactly(8))
        streams.put_nowait((m.decode(await st.readexactly(n), m.ProxyHeader), st))

    server = await loop.create_server(edge_side, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, agent = await loop.create_connection(
        lambda: MuxConnection(MuxSession(client=True), on_stream), "127.0.0.1", port
    )
    await until(lambda: bool(sessions), "the edge accepted the agent")
    try:
        yield Link(registry, tcp, sessions[0], agent, streams)
    finally:
        await tcp.aclose()
        agent.close()
        sessions[0].close()
        server.close()


async def until(predicate: Callable[[], bool], what: str) -> None:
    """A bounded wait for a state nothing signals (window sizes, pause flags)."""
    try:
        async with asyncio.timeout(WAIT):
            while not predicate():  # noqa: ASYNC110 - no event exists for these states
                await asyncio.sleep(0.002)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None


async def echo(st: MuxStream) -> None:
    while chunk := await st.read():
        await st.write(chunk)
    await st.write_eof()


async def closed_by_edge(reader: asyncio.StreamReader) -> bool:
    """The edge ended the connection: EOF or RST, within the wait."""
    try:
        async with asyncio.timeout(WAIT):
            return await reader.read(1 << 20) == b""
    except ConnectionError:
        return True


async def test_echo_of_a_large_payload_and_the_proxy_header(link: Link) -> None:
    tid, port = await link.bind()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    header, st = await link.next_stream()
    assert (header.id, header.proto) == (tid, "tcp")
    assert header.client_addr == f"127.0.0.1:{writer.get_extra_info('sockname')[1]}"
    agent = asyncio.ensure_future(echo(st))
    payload = os.urandom(3 * 1024 * 1024 + 17)
    writer.write(payload)
    writer.write_eof()
    async with asyncio.timeout(WAIT):
        back = await reader.read(-1)  # to EOF: the agent's FIN came through
        await agent
    assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest()
    writer.close()
    await until(lambda: not link.splices(tid), "the connection was dropped")


async def test_half_close_in_both_orders(link: Link) -> None:
    _, port = await link.bind()
    # The client finishes first; the agent answers after reading the client's FIN.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _, st = await link.next_stream()
    writer.write(b"question")
    writer.write_eof()
    async with asyncio.timeout(WAIT):
        assert await st.read_all() == b"question"
        await st.write(b"answer", fin=True)
        assert await reader.read(-1) == b"answer"
    writer.close()
    # The agent finishes first; the client can still send, and its FIN ends the stream.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _, st = await link.next_stream()
    await st.write(b"bye", fin=True)
    async with asyncio.timeout(WAIT):
        assert await reader.read(-1) == b"bye"
        writer.write(b"late words")
        writer.write_eof()
        assert await st.read_all() == b"late words"
    writer.close()


async def test_agent_reset_closes_the_client(link: Link) -> None:
    _, port = await link.bind()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _, st = await link.next_stream()
    st.reset(ErrorCode.STREAM_REFUSED)  # what an agent does when its upstream cannot be reached
    assert await closed_by_edge(reader)
    writer.close()


async def test_a_client_reset_ends_only_its_stream(link: Link) -> None:
    _, port = await link.bind()
    rude = socket.create_connection(("127.0.0.1", port))
    _, rude_stream = await link.next_stream()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _, st = await link.next_stream()
    rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    rude.close()  # RST
    with pytest.raises((StreamResetError, SessionClosedError)):
        async with asyncio.timeout(WAIT):
            await rude_stream.read_all()
    assert not link.agent.is_closed and not link.session.conn.is_closed
    agent = asyncio.ensure_future(echo(st))
    writer.write(b"still here")
    writer.write_eof()
    async with asyncio.timeout(WAIT):
        assert await reader.read(-1) == b"still here"
        await agent
    writer.close()


async def test_backpressure_from_a_slow_client(link: Link) -> None:
    tid, port = await link.bind()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
    _, st = await link.next_stream()
    payload = os.urandom(16 * 1024 * 1024)
    sending = asyncio.ensure_future(st.write(payload, fin=True))
    # The client reads nothing: the edge stops taking bytes (its share stays within the window) and the
    # agent's writer waits for window instead of the edge buffering 16 MiB.
    splice = link.splices(tid)[0]
    held = splice.stream
    assert held is not None and splice.transport is not None
    await until(lambda: link.agent.session.send_window(st.id) == 0, "the agent's window ran out")
    await until(lambda: held.buffered > 0, "the edge holds bytes in the stream instead of the socket")
    assert held.buffered <= DEFAULT_WINDOW and splice.transport.get_write_buffer_size() <= 2 << 20
    assert not sending.done()
    async with asyncio.timeout(WAIT):
        got = await reader.read(-1)
        await sending
    assert got == payload
    writer.close()


async def test_backpressure_from_a_slow_agent(link: Link) -> None:
    tid, port = await link.bind()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _, st = await link.next_stream()
    payload = os.urandom(16 * 1024 * 1024)
    writer.write(payload)
    writer.write_eof()
    draining = asyncio.ensure_future(writer.drain())
    # The agent reads nothing: the edge fills one window, then stops reading the client.
    splice = link.splices(tid)[0]
    assert splice.stream is not None
    edge_id = splice.stream.id
    await until(lambda: link.session.conn.session.send_window(edge_id) == 0, "the edge's window ran out")
    await until(lambda: splice._up is not None, "the edge paused the client")
    assert st.buffered <= DEFAULT_WINDOW and not draining.done()
    async with asyncio.timeout(WAIT):
        got = await st.read_all()
        await draining
    assert got == payload
    await st.write_eof()
    assert await reader.read(-1) == b""
    writer.close()


async def test_ip_restriction_is_enforced_at_accept(link: Link) -> None:
    _, denied = await link.bind(IPRestriction={"deny_cidrs": ["127.0.0.0/8"]})
    _, outside = await link.bind(IPRestriction={"allow_cidrs": ["10.0.0.0/8"]})
    _, allowed = await link.bind(IPRestriction={"allow_cidrs": ["127.0.0.1/32"]})
    for port in (denied, outside):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_by_edge(reader)
        writer.close()
    assert link.streams.empty()  # the agent never heard of them
    reader, writer = await asyncio.open_connection("127.0.0.1", allowed)
    _, st = await link.next_stream()
    await st.write(b"welcome", fin=True)
    async with asyncio.timeout(WAIT):
        assert await reader.read(-1) == b"welcome"
    writer.close()


@pytest.mark.parametrize("version", [1, 2])
async def test_proxy_protocol_header_comes_first(link: Link, version: int) -> None:
    _, port = await link.bind(ProxyProto=version)
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _, st = await link.next_stream()
    writer.write(b"payload")
    writer.write_eof()
    client = writer.get_extra_info("sockname")[1]
    want = proxy_protocol_header(version, ("127.0.0.1", client), ("127.0.0.1", port))
    if version == 1:
        assert want == f"PROXY TCP4 127.0.0.1 127.0.0.1 {client} {port}\r\n".encode()
    else:
        assert want[:12] == b"\r\n\r\n\x00\r\nQUIT\n" and want[12:16] == b"\x21\x11\x00\x0c"
        assert want[16:] == bytes([127, 0, 0, 1, 127, 0, 0, 1]) + struct.pack("!HH", client, port)
    async with asyncio.timeout(WAIT):
        assert await st.read_all() == want + b"payload"
    writer.close()


async def test_offline_with_the_session_closes_listener_and_connections(link: Link) -> None:
    tid, port = await link.bind()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await link.next_stream()
    link.registry.session_closed(link.session)
    assert await closed_by_edge(reader)
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    assert tid not in link.registry.tcp_endpoints


async def test_closing_the_agent_session_closes_clients(link: Link) -> None:
    _, port = await link.bind()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await link.next_stream()
    link.agent.close()
    assert await closed_by_edge(reader)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_bytes_and_fin_sent_before_the_stream_opens_are_kept(link: Link) -> None:
    _, port = await link.bind()
    # A blocking client: connect, send and FIN before the edge's loop even accepts, so the bytes and the
    # FIN reach the edge while its Proxy stream is still being opened (uvloop reads at once).
    early = socket.create_connection(("127.0.0.1", port))
    early.sendall(b"early bytes")
    early.shutdown(socket.SHUT_WR)
    try:
        _, st = await link.next_stream()
        async with asyncio.timeout(WAIT):
            assert await st.read_all() == b"early bytes"
    finally:
        early.close()


def free_port_range_of(size: int) -> PortRange:
    return PortRange("127.0.0.1", *free_port_range(size))
