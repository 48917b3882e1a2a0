"""TCP endpoints opened by our own agent: ``hatchway tcp``, ``hatchway start`` (v2 and v3 files) and the SDK.

A real ``hatchway edge`` with ``--tcp-addr-range`` on a free loopback range; a local TCP upstream that
sends a banner, echoes what it reads and half-closes when the client does. Checks: 1 MiB both ways with
its checksum and the half-close, ``--remote-addr``/``--url`` honoured, config tunnels and endpoints, the
SDK's ``forward(proto="tcp")`` and ``tcp_endpoint()``, the PROXY protocol and CIDR options, the same port
after an edge restart, and bad flags named before anything connects.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import hatchway

import e2e_support
from e2e_support import (
    HATCHWAY,
    TCP_BANNER,
    Agents,
    EdgeProc,
    echo_check,
    free_port_range,
    port_of,
    read_exactly,
    read_to_eof,
    refused,
    start_edge,
    wait_for,
)

# The module-scoped fixtures ``upstream``, ``_tcp_edge``, ``tcp_range`` and ``edge``, shared with the other
# TCP endpoint tests.
tcp_upstream = e2e_support.tcp_upstream
tcp_edge_pair = e2e_support.tcp_edge_pair
tcp_edge_range = e2e_support.tcp_edge_range
tcp_edge_proc = e2e_support.tcp_edge_proc

pytestmark = pytest.mark.timeout(120)

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


@pytest.fixture
def run(edge: EdgeProc) -> Iterator[Agents]:
    a = Agents(edge)
    try:
        yield a
    finally:
        a.stop_all()


def hatchway_cmd(edge: EdgeProc, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HATCHWAY, *args],
        capture_output=True,
        text=True,
        env=edge.env(),
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_tcp_command_carries_a_mebibyte_both_ways(
    run: Agents, upstream: int, tcp_range: tuple[int, int]
) -> None:
    agent = run.start("tcp", str(upstream))
    port = port_of(agent.url)
    assert tcp_range[0] <= port <= tcp_range[1]
    started = [line for line in agent.lines if line.get("msg") == "started tunnel"]
    assert started and started[0]["url"] == agent.url
    payload = bytes(i * 7 % 251 for i in range(1 << 20))
    echo_check(port, payload)
    echo_check(port, b"second connection")
    agent.stop()
    wait_for(lambda: refused(port), within=10, what="the endpoint to go offline")


def test_remote_addr_and_url_are_honoured(run: Agents, upstream: int, tcp_range: tuple[int, int]) -> None:
    wanted = tcp_range[0] + 5
    agent = run.start("tcp", f"127.0.0.1:{upstream}", "--remote-addr", f"127.0.0.1:{wanted}")
    assert agent.url == f"tcp://127.0.0.1:{wanted}"
    echo_check(wanted, b"remote addr")
    other = tcp_range[0] + 6
    by_url = run.start("tcp", str(upstream), "--url", f"tcp://127.0.0.1:{other}")
    assert by_url.url == f"tcp://127.0.0.1:{other}"
    echo_check(other, b"by url")


def test_proxy_protocol_and_cidr_options(run: Agents, upstream: int) -> None:
    agent = run.start("tcp", str(upstream), "--proxy-proto", "1")
    port = port_of(agent.url)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        assert read_exactly(sock, len(TCP_BANNER)) == TCP_BANNER
        sock.shutdown(socket.SHUT_WR)
        echoed = read_to_eof(sock)
    # The upstream echoes what it got: the edge's PROXY v1 header came first.
    assert echoed.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 "), echoed
    denied = run.start("tcp", str(upstream), "--cidr-deny", "127.0.0.0/8")
    with socket.create_connection(("127.0.0.1", port_of(denied.url)), timeout=20) as sock:
        try:
            assert sock.recv(1 << 16) == b""  # closed without reaching the upstream's banner
        except ConnectionError:
            pass


def test_bad_flags_are_named_before_connecting(edge: EdgeProc) -> None:
    res = hatchway_cmd(
        edge,
        "tcp",
        "http://localhost:80",
        "--remote-addr",
        "nope",
        "--cidr-allow",
        "300.1.1.1/8",
        "--proxy-proto",
        "3",
    )
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert lines[0].startswith("ERROR: ADDR: 'http://localhost:80' is not a TCP address"), lines
    assert any(x.startswith("ERROR: --remote-addr: 'nope' has no port") for x in lines), lines
    assert any(x.startswith("ERROR: --cidr-allow[0]: not an IPv4 or IPv6 CIDR") for x in lines), lines
    assert "ERROR: --proxy-proto: must be 1 or 2" in lines
    res = hatchway_cmd(edge, "tcp", "file:///tmp")
    assert res.returncode == 1 and res.stderr.startswith("ERROR: ADDR: 'file:///tmp' is not a TCP address")
    res = hatchway_cmd(edge, "tcp", "22", "--url", "https://x.example")
    assert res.returncode == 1 and "ERROR: --url: a TCP endpoint's URL is tcp://HOST:PORT" in res.stderr


def test_edge_refusal_is_printed_with_its_code(edge: EdgeProc, upstream: int) -> None:
    res = hatchway_cmd(edge, "tcp", str(upstream), "--remote-addr", "127.0.0.1:1", "--log", "false")
    assert res.returncode == 1
    assert res.stderr.startswith("ERROR: ") and "[ERR_NGROK_" in res.stderr, res.stderr


def test_config_files_v2_tunnel_and_v3_endpoint(
    run: Agents, upstream: int, tcp_range: tuple[int, int], tmp_path: Path
) -> None:
    v2 = tmp_path / "v2.yml"
    v2.write_text(
        textwrap.dedent(
            f"""
            version: 2
            tunnels:
              ssh:
                proto: tcp
                addr: {upstream}
                remote_addr: "127.0.0.1:{tcp_range[0] + 10}"
                ip_restriction: {{allow_cidrs: [127.0.0.0/8]}}
                metadata: from-v2
            """
        )
    )
    v3 = tmp_path / "v3.yml"
    v3.write_text(
        textwrap.dedent(
            f"""
            version: 3
            endpoints:
              - name: db
                url: "tcp://127.0.0.1:{tcp_range[0] + 11}"
                upstream: {{url: "127.0.0.1:{upstream}"}}
              - name: any
                url: "tcp://"
                upstream: {{url: {upstream}, proxy_protocol: 2}}
            """
        )
    )
    check = hatchway_cmd(run.edge, "config", "check", "--config", str(v2), "--config", str(v3))
    assert check.returncode == 0, check.stderr
    ssh = run.start("start", "ssh", "--config", str(v2))
    assert ssh.url == f"tcp://127.0.0.1:{tcp_range[0] + 10}"
    echo_check(tcp_range[0] + 10, b"v2 tunnel")
    both = run.start("start", "--all", "--config", str(v3), urls=2)
    urls = [str(line["url"]) for line in both.lines if "url" in line]
    assert urls[0] == f"tcp://127.0.0.1:{tcp_range[0] + 11}"
    echo_check(tcp_range[0] + 11, b"v3 endpoint")
    # proxy_protocol: 2 sends the binary v2 header (PROXY, TCP over IPv4: 16 + 12 bytes) first.
    echo_check(port_of(urls[1]), b"x", before_echo=V2_SIGNATURE + b"\x21\x11\x00\x0c", header_len=28)


def test_config_check_names_bad_tcp_keys(edge: EdgeProc, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "version: 2\ntunnels:\n  ssh: {proto: tcp, addr: 'http://x', remote_addr: abc, basic_auth: [a:b]}\n"
    )
    res = hatchway_cmd(edge, "config", "check", "--config", str(bad))
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        f"{bad}: tunnels.ssh.basic_auth: unknown key 'basic_auth'",
        f"{bad}: tunnels.ssh.addr: 'http://x' is not a TCP address: give a port or host:port "
        "(http: addresses are for http endpoints)",
        f"{bad}: tunnels.ssh.remote_addr: 'abc' has no port: use HOST:PORT or :PORT",
    ]


def _session_options(edge: EdgeProc) -> dict[str, object]:
    return {"authtoken": edge.token, "server_addr": edge.tunnel_addr, "session_ca_cert": edge.ca.read_bytes()}


async def test_sdk_forward_tcp(edge: EdgeProc, upstream: int, tcp_range: tuple[int, int]) -> None:
    wanted = tcp_range[0] + 15
    async with asyncio.timeout(20):
        listener = await hatchway.forward(
            upstream,
            proto="tcp",
            remote_addr=f"127.0.0.1:{wanted}",
            allow_cidr="127.0.0.0/8",
            deny_cidr=["10.0.0.0/8"],
            **_session_options(edge),
        )
    try:
        assert listener.url() == f"tcp://127.0.0.1:{wanted}" and listener.proto() == "tcp"
        await asyncio.to_thread(echo_check, wanted, b"from the sdk" * 1000)
    finally:
        async with asyncio.timeout(20):
            await listener.close()
    with pytest.raises(ValueError, match="proxy_proto: must be 1 or 2"):
        hatchway.forward(upstream, proto="tcp", proxy_proto="7", **_session_options(edge))
    with pytest.raises(ValueError, match="basic_auth: is an HTTP option"):
        hatchway.forward(upstream, proto="tcp", basic_auth=["a:password1"], **_session_options(edge))


async def test_sdk_tcp_endpoint_builder(edge: EdgeProc, upstream: int, tcp_range: tuple[int, int]) -> None:
    wanted = tcp_range[0] + 16
    async with asyncio.timeout(20):
        session = await (
            hatchway.SessionBuilder()
            .authtoken(edge.token)
            .server_addr(edge.tunnel_addr)
            .ca_cert(edge.ca.read_bytes())
            .connect()
        )
        listener = await session.tcp_endpoint().remote_addr(f":{wanted}").listen()
    try:
        assert listener.url() == f"tcp://127.0.0.1:{wanted}"
        listener.forward(f"127.0.0.1:{upstream}")
        await asyncio.to_thread(echo_check, wanted, b"from the builder")
    finally:
        async with asyncio.timeout(20):
            await listener.close()
            await session.close()


def test_same_port_after_an_edge_restart(tmp_path: Path, upstream: int) -> None:
    first, last = free_port_range(32)
    ports = []
    for _ in range(3):
        with socket.create_server(("127.0.0.1", 0)) as s:
            ports.append(s.getsockname()[1])
    args = ("--tcp-addr-range", f"127.0.0.1:{first}-{last}")
    edge = start_edge(tmp_path / "edge", *args, ports=(ports[0], ports[1], ports[2]))
    agents = Agents(edge)
    try:
        agent = agents.start("tcp", str(upstream))
        port = port_of(agent.url)
        echo_check(port, b"before")
        edge.proc.kill()
        edge.proc.wait(timeout=10)
        edge.stop()
        wait_for(lambda: refused(port), within=10, what="the port to close with the edge")
        start = time.monotonic()
        edge = start_edge(tmp_path / "edge", *args, ports=(ports[0], ports[1], ports[2]))
        assert time.monotonic() - start < 10
        # The agent redials and re-binds with its tunnel id: the edge gives the same port back.
        wait_for(lambda: not refused(port), within=15, what=f"port {port} to listen again")
        echo_check(port, b"after")
        assert agent.proc.stdout is not None
        reconnected = False
        deadline = time.monotonic() + 10
        while not reconnected and time.monotonic() < deadline:
            reconnected = b'"reconnected"' in agent.proc.stdout.readline()
        assert reconnected
    finally:
        agents.stop_all()
        edge.stop()
