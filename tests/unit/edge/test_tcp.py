"""TCP endpoint addresses: range and ``Addr`` parsing, the port search, and ``TcpEndpoints`` /
``Registry`` deciding ports on real loopback sockets (requested ports, ports in use, re-binds, refusals
with their ngrok codes, listeners closed with their tunnel). The byte splice is in test_tcp_splice.py."""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Any, cast

import pytest
import typer

from hatchway.edge import tcp
from hatchway.edge.registry import Registry
from hatchway.edge.tcp import PortRange, TcpEndpoints, TcpRefused, candidates, parse_range, parse_requested
from hatchway.edge.tunnels import AgentSession
from hatchway.wire import messages as m

from e2e_support import free_port_range


class _Conn:
    is_closed = False


class _Session:
    def __init__(self) -> None:
        self.conn = _Conn()


def _session() -> AgentSession:
    return cast(AgentSession, _Session())


def refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex(("127.0.0.1", port)) != 0


def port_of(url: str) -> int:
    return int(url.rpartition(":")[2])


def opts(**kw: Any) -> m.TcpEndpoint:
    return m.TcpEndpoint(**kw)


# ---- parsing -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1:10000-10099", PortRange("127.0.0.1", 10000, 10099)),
        ("0.0.0.0:20000-20000", PortRange("0.0.0.0", 20000, 20000)),
        ("[::1]:3000-3010", PortRange("::1", 3000, 3010)),
        ("::1:3000-3010", PortRange("::1", 3000, 3010)),
        ("12345", PortRange("127.0.0.1", 12345, 12345)),
        (":5000-5001", PortRange("127.0.0.1", 5000, 5001)),
    ],
)
def test_parse_range(text: str, want: PortRange) -> None:
    assert parse_range(text) == want


@pytest.mark.parametrize(
    "text", ["127.0.0.1:abc", "127.0.0.1:2000-1000", "host:0-10", "host:1-70000", "x:1-"]
)
def test_bad_ranges_are_refused_with_the_key_named(text: str) -> None:
    with pytest.raises(ValueError, match="tcp_addr_range"):
        parse_range(text)


def test_url_host_defaults() -> None:
    assert tcp.default_url_host(parse_range("127.0.0.1:1-2"), "edge.test") == "127.0.0.1"
    assert tcp.default_url_host(parse_range("0.0.0.0:1-2"), "edge.test") == "edge.test"
    assert tcp.default_url_host(parse_range("[::]:1-2"), "edge.test") == "edge.test"
    assert TcpEndpoints(parse_range("[::1]:1-2"), "::1").url(5) == "tcp://[::1]:5"


@pytest.mark.parametrize(
    ("addr", "want"),
    [
        ("", ("", 0)),
        (":10005", ("", 10005)),
        ("10005", ("", 10005)),
        ("1.tcp.Example.test:12345", ("1.tcp.example.test", 12345)),
        ("tcp://127.0.0.1:10005", ("127.0.0.1", 10005)),
        ("[::1]:10005", ("::1", 10005)),
        ("localhost", ("localhost", 0)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_requested(addr: str, want: tuple[str, int]) -> None:
    assert parse_requested(addr) == want


@pytest.mark.parametrize("addr", ["host:abc", "host:70000", ":-1"])
def test_a_requested_port_that_is_not_one_is_refused(addr: str) -> None:
    with pytest.raises(TcpRefused) as err:
        parse_requested(addr)
    assert err.value.code == "ERR_NGROK_4502"


def test_candidates_cover_the_range_once_starting_where_the_seed_says() -> None:
    rng = PortRange("127.0.0.1", 100, 109)
    order = list(candidates(rng, seed=13))
    assert sorted(order) == list(range(100, 110)) and order[0] == 103
    assert list(candidates(rng, seed=13)) == order  # the same seed, the same order
    remembered = list(candidates(rng, seed=13, remembered=107))
    assert remembered[0] == 107 and sorted(remembered) == list(range(100, 110))
    assert list(candidates(rng, seed=13, remembered=5)) == order  # outside the range: ignored


# ---- TcpEndpoints on real sockets ----------------------------------------------------------------------
async def test_requested_port_is_honoured_and_listens() -> None:
    rng = free_port_range_of(4)
    eps = TcpEndpoints(rng, "127.0.0.1")
    try:
        want = rng.first + 2
        url = await eps.listen(_session(), "tn_a", opts(addr=f":{want}"), seed=0)
        assert url == f"tcp://127.0.0.1:{want}" and eps.port_of("tn_a") == want
        assert not refused(want)
        for addr in (f"localhost:{rng.first}", f"127.0.0.1:{rng.first + 1}", f"tcp://127.0.0.1:{rng.last}"):
            await eps.listen(_session(), f"tn_{addr}", opts(addr=addr), seed=0)
        assert eps.ports == set(range(rng.first, rng.last + 1))
    finally:
        await eps.aclose()
    assert all(refused(p) for p in range(rng.first, rng.last + 1))


async def test_refusals_carry_ngrok_codes() -> None:
    rng = free_port_range_of(2)
    eps = TcpEndpoints(rng, "127.0.0.1")

    async def code(addr: str = "", **kw: Any) -> str:
        with pytest.raises(TcpRefused) as err:
            await eps.listen(_session(), f"tn_{random.random()}", opts(addr=addr, **kw), seed=0)
        return err.value.code

    try:
        assert await code(f":{rng.last + 1}") == "ERR_NGROK_4502"  # outside the range
        assert await code(f"1.tcp.ngrok.io:{rng.first}") == "ERR_NGROK_4504"  # not this edge's host
        await eps.listen(_session(), "tn_first", opts(addr=f":{rng.first}"), seed=0)
        assert await code(f":{rng.first}") == "ERR_NGROK_334"  # online already
        assert await code(ip_restriction=m.IPRestriction(allow_cidrs=["10.0.0.0/33"])) == "ERR_NGROK_362"
        assert await code(traffic_policy='{"on_tcp_connect": []}') == "ERR_NGROK_9027"
        assert await code(proxy_proto=3) == "ERR_NGROK_100"
        await eps.listen(_session(), "tn_second", opts(), seed=0)
        assert await code() == "ERR_NGROK_324"  # the range is full
        assert eps.ports == {rng.first, rng.last}  # no refusal left a socket behind
    finally:
        await eps.aclose()
    assert await code() == "ERR_NGROK_9017"  # shut down


async def test_ports_held_by_another_program_are_skipped_or_refused() -> None:
    rng = free_port_range_of(3)
    eps = TcpEndpoints(rng, "127.0.0.1")
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", rng.first))
    squatter.listen()
    try:
        with pytest.raises(TcpRefused) as err:
            await eps.listen(_session(), "tn_a", opts(addr=f":{rng.first}"), seed=0)
        assert err.value.code == "ERR_NGROK_334" and "cannot be opened" in err.value.message
        # The port search starts at rng.first (seed 0) and moves on past the squatter.
        url = await eps.listen(_session(), "tn_b", opts(), seed=0)
        assert port_of(url) == rng.first + 1
    finally:
        squatter.close()
        await eps.aclose()


async def test_two_endpoints_get_different_ports_and_a_rebind_gets_its_port_back() -> None:
    rng = free_port_range_of(50)
    eps = TcpEndpoints(rng, "127.0.0.1")
    try:
        a = port_of(await eps.listen(_session(), "tn_a", opts(), seed=7))
        b = port_of(await eps.listen(_session(), "tn_b", opts(), seed=7))
        assert a != b and {a, b} <= set(range(rng.first, rng.last + 1))
        # The same tunnel from a new session while the old one lingers: the listener moves, same port.
        newer = _session()
        assert port_of(await eps.listen(newer, "tn_b", opts(), seed=7)) == b
        eps.close("tn_b")
        assert refused(b)
        # tn_b got the port after its seeded one (tn_a had that). Both close; tn_b comes back first:
        # it gets the port it had, not the seeded one that is free now.
        eps.close("tn_a")
        assert port_of(await eps.listen(_session(), "tn_b", opts(), seed=7)) == b
        assert port_of(await eps.listen(_session(), "tn_a", opts(), seed=7)) == a
    finally:
        await eps.aclose()


async def test_a_port_held_by_a_dead_session_is_taken_over() -> None:
    rng = free_port_range_of(2)
    eps = TcpEndpoints(rng, "127.0.0.1")
    old = _session()
    try:
        await eps.listen(old, "tn_old", opts(addr=f":{rng.first}"), seed=0)
        old.conn.is_closed = True  # gone, but the registry has not been told yet
        await eps.listen(_session(), "tn_new", opts(addr=f":{rng.first}"), seed=0)
        assert eps.port_of("tn_new") == rng.first and eps.port_of("tn_old") is None
    finally:
        await eps.aclose()


# ---- through the Registry (the in-process path the SSH entry uses) --------------------------------------
async def test_registry_binds_tcp_and_takes_it_offline_with_the_session() -> None:
    rng = free_port_range_of(20)
    key = b"k" * 32
    eps = TcpEndpoints(rng, "tcp.edge.test")
    reg = Registry({"t"}, base_domain="edge.test", key=key, tcp=eps)
    try:
        first = _session()
        resp = await reg.bind(first, m.Bind(proto="tcp", opts={"Addr": "", "ProxyProto": 0}))
        assert not resp.error and resp.proto == "tcp" and resp.extra.token
        assert resp.url.startswith("tcp://tcp.edge.test:") and resp.opts == {"Addr": "", "ProxyProto": 0}
        port = port_of(resp.url)
        assert not refused(port)
        reg.session_closed(first)
        assert refused(port) and not reg.tcp_endpoints
        # The agent reconnects and re-binds with its tunnel id and token: the same port.
        again = await reg.bind(
            _session(), m.Bind(id=resp.id, proto="tcp", extra=m.BindExtra(token=resp.extra.token))
        )
        assert (again.id, again.url) == (resp.id, resp.url)
        # A re-bind that beats the old session's close keeps the listener when that close comes.
        second = reg.tcp_endpoints[resp.id].session
        third = _session()
        assert (
            await reg.bind(third, m.Bind(id=resp.id, proto="tcp", extra=m.BindExtra(token=resp.extra.token)))
        ).url == resp.url
        reg.session_closed(second)
        assert not refused(port)
        await reg.unbind(third, resp.id)
        assert refused(port)
    finally:
        await eps.aclose()
    # After an edge restart (same key, fresh listeners) the tunnel's seed still finds the same port.
    eps2 = TcpEndpoints(rng, "tcp.edge.test")
    try:
        reg2 = Registry({"t"}, base_domain="edge.test", key=key, tcp=eps2)
        restarted = await reg2.bind(
            _session(), m.Bind(id=resp.id, proto="tcp", extra=m.BindExtra(token=resp.extra.token))
        )
        assert restarted.url == resp.url
    finally:
        await eps2.aclose()


async def test_registry_refusals() -> None:
    no_tcp = Registry({"t"})
    resp = await no_tcp.bind(_session(), m.Bind(proto="tcp"))
    assert "ERR_NGROK_9017" in resp.error
    rng = free_port_range_of(1)
    eps = TcpEndpoints(rng, "127.0.0.1")
    reg = Registry({"t"}, tcp=eps)
    try:
        bad = await reg.bind(_session(), m.Bind(proto="tcp", opts={"Addr": f":{rng.first + 1}"}))
        assert "ERR_NGROK_4502" in bad.error and not reg.tcp_endpoints
        malformed = await reg.bind(_session(), m.Bind(proto="tcp", opts={"ProxyProto": "x"}))
        assert "ERR_NGROK_100" in malformed.error
        assert "ERR_NGROK_9017" in (await reg.bind(_session(), m.Bind(proto="tls"))).error
    finally:
        await eps.aclose()


async def test_edge_config_plumbing(tmp_path: Path) -> None:
    from hatchway.cli.edge_cmd import load_edge_config
    from hatchway.edge.app import Edge, EdgeConfig

    cfg_file = tmp_path / "edge.yml"
    cfg_file.write_text("tcp_addr_range: 0.0.0.0:20000-20010\n")
    cfg = load_edge_config(cfg_file, tcp_host="tcp.example.test")
    assert (cfg.tcp_addr_range, cfg.tcp_host) == ("0.0.0.0:20000-20010", "tcp.example.test")
    assert EdgeConfig().tcp_addr_range == "127.0.0.1:10000-10999"
    with pytest.raises(typer.BadParameter, match="tcp_addr_range"):
        load_edge_config(None, tcp_addr_range="127.0.0.1:9-1")
    wildcard = Edge(
        EdgeConfig(data_dir=tmp_path / "w", base_domain="edge.test", tcp_addr_range="0.0.0.0:20000-20010")
    )
    assert wildcard.tcp.url_host == "edge.test" and wildcard.registry.tcp is wildcard.tcp
    # A started edge serves TCP binds through its registry and closes their sockets on shutdown.
    rng = free_port_range_of(3)
    edge = Edge(
        EdgeConfig(
            data_dir=tmp_path / "d",
            http_addr="127.0.0.1:0",
            https_addr="127.0.0.1:0",
            tunnel_addr="127.0.0.1:0",
            tcp_addr_range=str(rng),
        )
    )
    await edge.start()
    try:
        resp = await edge.registry.bind(_session(), m.Bind(proto="tcp", opts={"Addr": f":{rng.last}"}))
        assert resp.url == f"tcp://127.0.0.1:{rng.last}" and not refused(rng.last)
    finally:
        await edge.aclose(drain=0.1)
    assert refused(rng.last)


def free_port_range_of(size: int) -> PortRange:
    return PortRange("127.0.0.1", *free_port_range(size))
