"""Hatchway's own agent session against the edge's tunnel listener, over TLS on loopback.

Covers Auth (accepted and refused), Bind/Unbind, proxying to a local app, a refused duplicate domain,
GOAWAY on edge shutdown, and heartbeats: a silent peer is detected within interval + tolerance on
both sides.
"""

from __future__ import annotations

import asyncio

import pytest

from hatchway.agent.forward import make_forwarder
from hatchway.agent.session import AgentSession, ProxyHandler
from hatchway.agent.spec import Upstream
from hatchway.errors import RpcError, StreamResetError
from hatchway.net import tls
from hatchway.net.transport import MuxConnection, MuxStream
from hatchway.wire import messages as m
from hatchway.wire.frames import ErrorCode
from hatchway.wire.mux import MuxSession
from hatchway.wire.rpc import StreamType

from conftest import TOKEN, App, Edge
from helpers import proxy_get


def _forward_to(app: App) -> ProxyHandler:
    return make_forwarder(Upstream("http", "127.0.0.1", app.port))


async def _connect(edge: Edge, token: str = TOKEN, **kw: float) -> AgentSession:
    return await AgentSession.connect(edge.addr, token, ssl_context=tls.client_context(edge.ca_pem), **kw)


async def test_agent_binds_and_serves(edge: Edge, http_app: App) -> None:
    agent = await _connect(edge)
    try:
        tunnel = await agent.bind("https", {"Hostname": "own.example.test"}, _forward_to(http_app))
        assert tunnel.url == "https://own.example.test"
        session, tid = edge.registry.lookup("own.example.test") or (None, "")
        assert session is not None and tid == tunnel.id
        for i in range(3):
            answer = await proxy_get(session, tid, f"/n/{i}")
            assert answer.endswith(f"/n/{i}".encode())
        await agent.unbind(tunnel.id)
        assert edge.registry.lookup("own.example.test") is None
    finally:
        await agent.aclose()


async def test_wrong_token_is_refused_with_its_code(edge: Edge) -> None:
    with pytest.raises(RpcError) as info:
        await _connect(edge, token="wrong")
    assert info.value.ngrok_code == "ERR_NGROK_107"
    assert "not valid" in info.value.message


async def test_domain_online_elsewhere_is_refused(edge: Edge, http_app: App) -> None:
    a = await _connect(edge)
    b = await _connect(edge)
    try:
        await a.bind("https", {"Hostname": "taken.example.test"}, _forward_to(http_app))
        with pytest.raises(RpcError) as info:
            await b.bind("https", {"Hostname": "taken.example.test"}, _forward_to(http_app))
        assert info.value.ngrok_code == "ERR_NGROK_334"
    finally:
        await a.aclose()
        await b.aclose()


async def test_upstream_down_refuses_the_stream(edge: Edge) -> None:
    """The agent writes nothing and resets with STREAM_REFUSED; the edge turns that into its 502 page."""
    agent = await _connect(edge)
    try:
        forward = make_forwarder(Upstream("http", "127.0.0.1", 1))  # nothing listens on port 1
        tunnel = await agent.bind("https", {}, forward)
        assert tunnel.url.endswith(".hatchway.localhost")
        host = tunnel.url.removeprefix("https://")
        session, tid = edge.registry.lookup(host) or (None, "")
        assert session is not None
        with pytest.raises(StreamResetError) as info:
            await proxy_get(session, tid)
        assert info.value.mux_code == ErrorCode.STREAM_REFUSED
    finally:
        await agent.aclose()


async def test_edge_shutdown_sends_goaway(dev_ca: tls.KeyPair, edge: Edge) -> None:
    agent = await _connect(edge)
    await edge.server.aclose(drain=1.0)
    async with asyncio.timeout(5):
        await agent.conn.wait_closed()
    assert agent.conn.goaway is not None and agent.conn.goaway.message == b"edge shutting down"


async def test_edge_detects_a_silent_agent(edge: Edge) -> None:
    """An agent that announces 0.2 s + 0.3 s and then never beats is closed within that, plus slack."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: MuxConnection(MuxSession(client=True), None),
        "127.0.0.1",
        edge.port,
        ssl=tls.client_context(edge.ca_pem),
        server_hostname="localhost",
    )
    from hatchway.net import rpc

    auth = m.Auth(
        extra=m.AuthExtra(auth_token=TOKEN, heartbeat_interval=200_000_000, heartbeat_tolerance=300_000_000)
    )
    await rpc.call(conn, StreamType.AUTH, auth, m.AuthResp)
    authed_at = loop.time()
    async with asyncio.timeout(3):
        await conn.wait_closed()
    elapsed = loop.time() - authed_at
    # Detected after interval + tolerance (0.5 s), with slack for a loaded CI machine.
    assert 0.4 <= elapsed <= 0.5 + 1.5, elapsed
    assert conn.goaway is not None and conn.goaway.message == b"heartbeat timeout"


async def test_agent_detects_a_silent_edge(dev_ca: tls.KeyPair) -> None:
    """An edge that answers Auth but never echoes a beat: the agent closes after interval + tolerance."""
    from hatchway.net import rpc

    async def deaf_edge(stream: MuxStream) -> None:
        if stream.stream_type == StreamType.AUTH:
            await rpc.read_json(stream)
            await rpc.reply(stream, m.AuthResp(client_id="deaf"))
        else:
            await stream.read_all()  # swallow heartbeats, never echo

    loop = asyncio.get_running_loop()
    ctx = tls.server_context(tls.issue_cert(dev_ca, ["localhost"]))
    server = await loop.create_server(
        lambda: MuxConnection(MuxSession(client=False), deaf_edge), "127.0.0.1", 0, ssl=ctx
    )
    port = server.sockets[0].getsockname()[1]
    try:
        start = loop.time()
        agent = await AgentSession.connect(
            f"localhost:{port}",
            TOKEN,
            ssl_context=tls.client_context(dev_ca.cert_pem),
            heartbeat_interval=0.2,
            heartbeat_tolerance=0.3,
        )
        async with asyncio.timeout(3):
            await agent.conn.wait_closed()
        elapsed = loop.time() - start
        assert agent.latency is None
        assert 0.45 <= elapsed <= 0.2 + 0.3 + 1.5, elapsed
    finally:
        server.close()
