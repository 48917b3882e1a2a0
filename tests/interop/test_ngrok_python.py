"""The official PyPI ``ngrok`` SDK (1.4.0, Rust ngrok 0.14) against an edge built from Hatchway's parts.

These are real clients we did not write: each test drives one step of protocol.md §0.4 and checks what
the SDK and the edge both saw. Everything runs on loopback with a throwaway CA.
"""

from __future__ import annotations

import asyncio

import ngrok
import pytest

from hatchway.net import tls
from hatchway.wire import messages as m
from hatchway.wire.rpc import StreamType

from conftest import TOKEN, App, Edge
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


async def test_ip_literal_server_addr_uses_the_ip_san(edge: Edge) -> None:
    """``127.0.0.1:PORT`` makes the SDK send no SNI and check an IP SAN (protocol.md §1)."""
    sess = await (
        ngrok.SessionBuilder()
        .authtoken(TOKEN)
        .server_addr(f"127.0.0.1:{edge.port}")
        .ca_cert(bytearray(edge.ca_pem))
        .connect()
    )
    try:
        listener = await sess.http_endpoint().domain("py-ip.example.test").listen()
        assert listener.url() == "https://py-ip.example.test"
    finally:
        await sess.close()


async def test_every_http_option_arrives_decoded(edge: Edge) -> None:
    """The builder's middleware options land in ``Opts`` and decode into the typed HttpEndpoint.

    OAuth is among them, which this edge refuses at Bind (ERR_NGROK_9027) rather than publish an
    endpoint without the protection asked for: the SDK must report that refusal."""
    sess = await _builder(edge).connect()
    try:
        with pytest.raises(ValueError, match="ERR_NGROK_9027"):
            await (
                sess.http_endpoint()
                .domain("py-options.example.test")
                .basic_auth("alice", "s3cr3tpassw0rd")
                .allow_cidr("0.0.0.0/0")
                .deny_cidr("10.1.1.1/32")
                .compression()
                .circuit_breaker(0.5)
                .request_header("X-Probe", "yes")
                .remove_response_header("Server")
                .allow_user_agent("^curl")
                .deny_user_agent("bot")
                .oauth("google", allow_emails=["a@example.com"])
                .webhook_verification("github", "whsecret")
                .websocket_tcp_conversion()
                .mutual_tlsca(bytearray(edge.ca_pem))
                .proxy_proto("1")
                .traffic_policy('{"on_http_request":[{"actions":[{"type":"deny"}]}]}')
                .metadata("opts-meta")
                .listen()
            )
        opts = edge.registry.binds[-1].http_opts()
        assert opts.basic_auth is not None and opts.basic_auth.credentials[0].username == "alice"
        assert opts.basic_auth.credentials[0].cleartext_password == "s3cr3tpassw0rd"
        assert opts.ip_restriction is not None
        assert opts.ip_restriction.allow_cidrs == ["0.0.0.0/0"] and opts.ip_restriction.deny_cidrs == [
            "10.1.1.1/32"
        ]
        assert opts.compression is not None
        assert opts.circuit_breaker is not None and opts.circuit_breaker.error_threshold == 0.5
        assert opts.request_headers is not None and opts.request_headers.add == ["x-probe:yes"]
        assert opts.response_headers is not None and opts.response_headers.remove == ["server"]
        assert opts.user_agent_filter is not None
        assert opts.user_agent_filter.allow == ["^curl"] and opts.user_agent_filter.deny == ["bot"]
        assert opts.oauth is not None and opts.oauth.provider == "google"
        assert opts.oauth.allow_emails == ["a@example.com"]
        assert opts.webhook_verification is not None and opts.webhook_verification.provider == "github"
        assert opts.websocket_tcp_converter is not None
        assert opts.mutual_tls_ca is not None and opts.mutual_tls_ca.mutual_tls_ca != ""
        assert opts.proxy_proto == 1
        assert opts.traffic_policy is not None and '"deny"' in opts.traffic_policy
        assert edge.registry.binds[-1].extra.metadata == "opts-meta"
    finally:
        await sess.close()


async def test_tcp_and_tls_endpoint_options_arrive_decoded(edge: Edge) -> None:
    sess = await _builder(edge).connect()
    try:
        tcp = await sess.tcp_endpoint().remote_addr("1.tcp.example.test:12345").proxy_proto("1").listen()
        assert tcp.url() == "tcp://1.tcp.example.test:12345"
        tcp_opts = edge.registry.binds[-1].tcp_opts()
        assert edge.registry.binds[-1].proto == "tcp"
        assert tcp_opts.addr == "1.tcp.example.test:12345" and tcp_opts.proxy_proto == 1
        pair = tls_pair(edge)
        tls_l = await (
            sess.tls_endpoint()
            .domain("tls.example.test")
            .termination(bytearray(pair.cert_pem), bytearray(pair.key_pem))
            .allow_cidr("127.0.0.0/8")
            .listen()
        )
        assert tls_l.url() == "tls://tls.example.test"
        tls_opts = edge.registry.binds[-1].tls_opts()
        assert tls_opts.requested_domain == "tls.example.test"
        assert tls_opts.tls_termination is not None and tls_opts.tls_termination.cert != ""
        assert tls_opts.ip_restriction is not None and tls_opts.ip_restriction.allow_cidrs == ["127.0.0.0/8"]
    finally:
        await sess.close()


def tls_pair(edge: Edge) -> tls.KeyPair:
    return tls.issue_cert(edge.ca, ["tls.example.test"])
