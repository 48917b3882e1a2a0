"""TCP endpoints of a real ``hatchway edge``, opened by the official PyPI ``ngrok`` SDK (1.4.0).

Each SDK runs ``ngrok.forward(port, proto="tcp", ...)`` in a subprocess (one session per process) against
an edge started with ``--tcp-addr-range`` on loopback. The upstream is a plain TCP server that sends a
banner, echoes what it reads and half-closes when the client does. The tests connect to the port of the
printed ``tcp://127.0.0.1:PORT`` URL and check: bytes both ways (a banner first, then a 1.5 MiB payload
with its checksum), half-close, the endpoint offline (connection refused) once the SDK exits, a
requested ``remote_addr`` honoured and refusals with ngrok codes, two endpoints on two ports, the
IP restriction and PROXY protocol options, an unreachable upstream closing the client, and the same
port after an edge restart (the SDK re-binds with its tunnel id and token).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import e2e_support
from e2e_support import (
    TCP_BANNER,
    EdgeProc,
    echo_check,
    free_port_range,
    port_of,
    read_to_eof,
    refused,
    sdk_process,
    start_edge,
    wait_for,
)

# The module-scoped fixtures ``upstream``, ``_tcp_edge``, ``tcp_range`` and ``edge``, shared with the other
# TCP endpoint tests.
tcp_upstream = e2e_support.tcp_upstream
tcp_edge_pair = e2e_support.tcp_edge_pair
tcp_edge_range = e2e_support.tcp_edge_range
tcp_edge_proc = e2e_support.tcp_edge_proc

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]


SDK_SCRIPT = r"""
import json, os, sys
import ngrok
port, token, addr, ca, options = sys.argv[1:6]
try:
    listener = ngrok.forward(int(port), authtoken=token, server_addr=addr, proto="tcp",
                             session_ca_cert=bytearray(open(ca, "rb").read()), **json.loads(options))
except ValueError as exc:  # a refused Bind: ("failed to start listener", message, code)
    print(json.dumps({"error": [str(a) for a in exc.args]}), flush=True)
    sys.stdin.read()
    os._exit(0)
print(json.dumps({"url": listener.url(), "id": listener.id()}), flush=True)
sys.stdin.read()  # until the test closes stdin
os._exit(0)
"""


@contextlib.contextmanager
def sdk_tcp(edge: EdgeProc, port: int, **options: object) -> Iterator[dict[str, str]]:
    cmd = [sys.executable, "-c", SDK_SCRIPT, str(port), edge.token, edge.tunnel_addr, str(edge.ca)]
    with sdk_process([*cmd, json.dumps(options)]) as info:
        yield info


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=20)


def ended(sock: socket.socket) -> bool:
    """The far side closed (EOF or RST) before sending anything."""
    try:
        return sock.recv(1 << 16) == b""
    except ConnectionError:
        return True


def test_bytes_both_ways_half_close_and_offline_after_exit(
    edge: EdgeProc, upstream: int, tcp_range: tuple[int, int]
) -> None:
    with sdk_tcp(edge, upstream) as info:
        port = port_of(info["url"])
        assert tcp_range[0] <= port <= tcp_range[1]
        echo_check(port, b"ping")
        echo_check(port, os.urandom(1536 * 1024 + 7))
        # Half-close with bytes still to come: the client's FIN reaches the upstream only after its data,
        # and the answer still arrives on the half-closed connection.
        with connect(port) as sock:
            sock.sendall(b"last words")
            sock.shutdown(socket.SHUT_WR)
            assert read_to_eof(sock) == TCP_BANNER + b"last words"
    # The SDK process has exited: its session, and with it the listening socket, is gone.
    wait_for(lambda: refused(port), within=10, what=f"port {port} to refuse connections")


def test_requested_port_two_endpoints_and_refusals(
    edge: EdgeProc, upstream: int, tcp_range: tuple[int, int]
) -> None:
    first, last = tcp_range
    wanted = first + 5
    with (
        sdk_tcp(edge, upstream, remote_addr=f"127.0.0.1:{wanted}") as fixed,
        sdk_tcp(edge, upstream) as random_port,
    ):
        assert fixed["url"] == f"tcp://127.0.0.1:{wanted}"
        other = port_of(random_port["url"])
        assert other != wanted and first <= other <= last
        echo_check(wanted, b"to the fixed port")
        echo_check(other, b"to the random port")
        with sdk_tcp(edge, upstream, remote_addr=f"127.0.0.1:{wanted}") as taken:
            assert taken.get("error", [])[1:] == [
                f"The endpoint 'tcp://127.0.0.1:{wanted}' is already online.",
                "ERR_NGROK_334",
            ]
    with sdk_tcp(edge, upstream, remote_addr=f"127.0.0.1:{last + 1}") as outside:
        assert outside.get("error", [""])[-1] == "ERR_NGROK_4502", outside
    with sdk_tcp(edge, upstream, remote_addr=f"1.tcp.ngrok.io:{wanted}") as foreign:
        assert foreign.get("error", [""])[-1] == "ERR_NGROK_4504", foreign


def test_ip_restriction_and_proxy_protocol(edge: EdgeProc, upstream: int) -> None:
    with (
        sdk_tcp(edge, upstream, allow_cidr=["0.0.0.0/0"], deny_cidr=["127.0.0.1/32"]) as info,
        connect(port_of(info["url"])) as sock,
    ):
        assert ended(sock)  # closed by the edge before the upstream's banner
    with sdk_tcp(edge, upstream, allow_cidr=["127.0.0.0/8"]) as info:
        echo_check(port_of(info["url"]), b"allowed")
    with sdk_tcp(edge, upstream, proxy_proto="1") as info:
        port = port_of(info["url"])
        with connect(port) as sock:
            client_port = sock.getsockname()[1]
            sock.sendall(b"after the header")
            sock.shutdown(socket.SHUT_WR)
            got = read_to_eof(sock)
        # The SDK passes the edge's PROXY header on to the upstream, which echoes it.
        header = f"PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {port}\r\n".encode()
        assert got == TCP_BANNER + header + b"after the header"


def test_unreachable_upstream_closes_the_client(edge: EdgeProc) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        dead = s.getsockname()[1]  # closed again: nothing listens there
    with sdk_tcp(edge, dead) as info, connect(port_of(info["url"])) as sock:
        sock.sendall(b"anyone?")
        assert ended(sock)


def test_same_port_after_an_edge_restart(tmp_path: Path, upstream: int) -> None:
    first, last = free_port_range(64)
    ports = []
    for _ in range(3):
        with socket.create_server(("127.0.0.1", 0)) as s:
            ports.append(s.getsockname()[1])
    args = ("--tcp-addr-range", f"127.0.0.1:{first}-{last}")
    edge = start_edge(tmp_path / "edge", *args, ports=(ports[0], ports[1], ports[2]))
    try:
        with sdk_tcp(edge, upstream) as info:
            port = port_of(info["url"])
            echo_check(port, b"before")
            edge.proc.kill()
            edge.proc.wait(timeout=10)
            edge.stop()
            start = time.monotonic()
            edge = start_edge(tmp_path / "edge", *args, ports=(ports[0], ports[1], ports[2]))
            assert time.monotonic() - start < 2.4, "the Rust SDK would back off for minutes"
            # The SDK redials and re-binds with its tunnel id and token: the edge gives the same port.
            wait_for(lambda: not refused(port), within=10, what=f"port {port} to listen again")
            echo_check(port, b"after")
    finally:
        edge.stop()
    log = (tmp_path / "edge" / "edge.log").read_text()
    assert log.count(f"endpoint online tcp://127.0.0.1:{port} (tunnel {info['id']},") == 2, log
