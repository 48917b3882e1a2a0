"""Hostile or broken HTTP/1.1 from clients: each gets a clear error with an ``ngrok-error-code`` and its
connection closed, while the edge keeps serving everyone else (a real edge and agent on loopback, raw
sockets for the bad clients, the shared echo upstream)."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from e2e_support import Agents, EdgeProc

pytestmark = pytest.mark.timeout(60)


def _exchange(port: int, chunks: list[bytes]) -> bytes:
    """Send ``chunks`` (stopping early if the edge closes) and read until the edge closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # the edge answered and closed before we were done
        out = b""
        try:
            while data := sock.recv(65536):
                out += data
        except ConnectionResetError:
            pass
        return out


def _still_serving(edge: EdgeProc, host: str) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{edge.http_port}/alive", headers={"Host": host})
    with urllib.request.urlopen(req, timeout=20) as resp:
        assert resp.status == 200 and json.loads(resp.read())["path"] == "/alive"  # the upstream answered


def test_a_malformed_request_gets_400_with_its_code(
    edge_proc: EdgeProc, agents: Agents, echo_app: int
) -> None:
    agent = agents.start("http", str(echo_app), "--scheme", "http")
    out = _exchange(
        edge_proc.http_port, [f"GET / HTTP/1.1\r\nHost: {agent.host}\r\nBad Header\r\n\r\n".encode()]
    )
    head = out.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 400 ")
    assert b"ngrok-error-code: err_ngrok_3001" in head and b"connection: close" in head
    _still_serving(edge_proc, agent.host)


def test_a_request_head_over_1_mib_gets_431(edge_proc: EdgeProc, agents: Agents, echo_app: int) -> None:
    """ngrok's limit on a header block is 1 MB; httptools would otherwise buffer an endless line."""
    agent = agents.start("http", str(echo_app), "--scheme", "http")
    start = f"GET / HTTP/1.1\r\nHost: {agent.host}\r\nX-Big: ".encode()
    out = _exchange(edge_proc.http_port, [start] + [b"a" * 65536] * 24)  # 1.5 MiB of one header value
    head = out.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 431 ")
    assert b"ngrok-error-code: err_ngrok_10087" in head
    # A large head under the limit is still proxied.
    lines = "".join(f"X-Big-{i}: {'a' * 50_000}\r\n" for i in range(8))  # the upstream's lines stop at 64 KiB
    big = f"GET / HTTP/1.1\r\nHost: {agent.host}\r\n{lines}Connection: close\r\n\r\n"
    assert _exchange(edge_proc.http_port, [big.encode()]).startswith(b"HTTP/1.1 200 ")
    _still_serving(edge_proc, agent.host)
