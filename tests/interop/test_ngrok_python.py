"""The official PyPI ``ngrok`` SDK (1.4.0, Rust ngrok 0.14) against an edge built from Hatchway's parts.

These are real clients we did not write: each test drives one step of protocol.md §0.4 and checks what
the SDK and the edge both saw. Everything runs on loopback with a throwaway CA.
"""

from __future__ import annotations

import asyncio

import ngrok
import pytest

from conftest import TOKEN, App, Edge
from hatchway.wire import messages as m
from hatchway.wire.rpc import StreamType
from helpers import proxy_get, wait_until

pytestmark = pytest.mark.interop


def _builder(edge: Edge, token: str = TOKEN) -> ngrok.SessionBuilder:
    return ngrok.SessionBuilder().authtoken(token).server_addr(edge.addr).ca_cert(bytearray(edge.ca_pem))


async def test_forward_serves_a_request_through_the_edge(edge: Edge, http_app: App) -> None:
    listener = await ngrok.forward(
        http_app.port,
        authtoken=TOKEN,
        server_addr=edge.addr,
        session_ca_cert=bytearray(edge.ca_pem),
        domain="py-forward.example.test",
        metadata="listener-meta",
    )
    try:
        # The SDK reports exactly the URL the edge chose (protocol.md §5.2).
        assert listener.url() == "https://py-forward.example.test"
        bind = edge.registry.binds[-1]
        assert bind.proto == "https"
        assert bind.http_opts().requested_domain == "py-forward.example.test"
        assert bind.extra.metadata == "listener-meta"
        auth = edge.registry.auths[-1]
        assert auth.extra.auth_token == TOKEN
        assert auth.extra.client_type == "ngrok-python"
        session, tunnel_id = edge.registry.lookup("py-forward.example.test") or (None, "")
        assert session is not None and tunnel_id == listener.id()
        answer = await proxy_get(session, tunnel_id, "/hello?x=1")
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert answer.endswith(b"hello from the local app: /hello?x=1")
    finally:
        await listener.close()


async def test_bad_authtoken_fails_with_err_ngrok_107(edge: Edge) -> None:
    with pytest.raises(ValueError, match="failed to connect session") as info:
        await _builder(edge, token="not-a-token").connect()
    assert "ERR_NGROK_107" in info.value.args
    # The edge answered with the error, then closed the connection.
    await wait_until(lambda: all(s.conn.is_closed for s in edge.server.sessions))


async def test_forced_reconnect_rebinds_the_same_tunnel(edge: Edge, http_app: App) -> None:
    sess = await _builder(edge).connect()
    listener = (
        await sess.http_endpoint()
        .domain("py-reconnect.example.test")
        .listen_and_forward(f"http://127.0.0.1:{http_app.port}")
    )
    try:
        first, tunnel_id = edge.registry.lookup("py-reconnect.example.test") or (None, "")
        assert first is not None
        old_client_id = first.client_id
        old_token = edge.registry.binds[-1]
        # GOAWAY then close: the SDK redials at once, re-auths with its ClientId and re-binds (§7).
        first.go_away("please reconnect")
        first.close()
        await edge.registry.wait_for(
            lambda: (
                (found := edge.registry.lookup("py-reconnect.example.test")) is not None
                and found[0] is not first
            )
        )
        again, same_id = edge.registry.lookup("py-reconnect.example.test") or (None, "")
        assert again is not None and same_id == tunnel_id
        assert edge.registry.auths[-1].client_id == old_client_id
        assert edge.registry.auths[-1].extra.cookie != ""
        assert edge.registry.binds[-1].id == tunnel_id
        assert edge.registry.binds[-1].extra.token != "" and old_token.extra.token == ""
        answer = await proxy_get(again, same_id, "/after-reconnect")
        assert answer.endswith(b"/after-reconnect")
    finally:
        await listener.close()
        await sess.close()


async def test_labeled_listener_and_idempotent_unbind(edge: Edge) -> None:
    sess = await _builder(edge).metadata("builder-session").connect()
    http = await sess.http_endpoint().domain("py-builder.example.test").listen()
    labeled = await sess.labeled_listener().label("edge", "edghts_test").listen()
    assert labeled.id().startswith("tn_")
    assert edge.registry.auths[-1].extra.metadata == "builder-session"
    tunnel_id = http.id()
    await http.close()
    # The SDK sends Unbind from close() and again later; the edge must answer both without error.
    await edge.registry.wait_for(lambda: tunnel_id in edge.registry.unbinds)
    assert edge.registry.lookup("py-builder.example.test") is None
    await labeled.close()
    await sess.close()


async def test_server_commands_restart_and_stop_tunnel(edge: Edge) -> None:
    sess = await _builder(edge).connect()
    listener = await sess.http_endpoint().domain("py-commands.example.test").listen()
    try:
        session, tunnel_id = edge.registry.lookup("py-commands.example.test") or (None, "")
        assert session is not None
        # No restart handler registered: the SDK answers with its "no callback" error (§6.2).
        resp = await session.command(StreamType.RESTART, m.Restart())
        assert "callback" in resp.error
        # StopTunnel gets no reply, only FIN (§6.3); stop_tunnel returns once the FIN arrived.
        async with asyncio.timeout(10):
            await session.stop_tunnel(tunnel_id, "stopped by the test", "ERR_NGROK_3200")
        assert tunnel_id not in session.tunnels
    finally:
        await listener.close()
        await sess.close()


async def test_heartbeats_reach_the_edge(edge: Edge) -> None:
    sess = await _builder(edge).heartbeat_interval(1).heartbeat_tolerance(3).connect()
    try:
        (session,) = [s for s in edge.server.sessions if s.authenticated]
        # The builder takes seconds; the wire carries nanoseconds (pitfall 17); the edge now expects 1 s.
        assert session.monitor.interval == pytest.approx(1.0)
        assert session.monitor.tolerance == pytest.approx(3.0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await wait_until(lambda: session.monitor.last_seen > start, within=5)
        assert not session.conn.is_closed
    finally:
        await sess.close()
