"""Every kind of upstream ``hatchway http`` forwards to, with real processes on loopback and curl.

An HTTPS app whose certificate comes from a CA nobody trusts (ngrok does not verify upstreams), and the
same port named without ``https://`` (plain HTTP to a TLS port fails); an h2c app written with ``h2``
(``--upstream-protocol http2``); the built-in file server (``file:///abs/dir``: listing, file, byte range;
a relative path is refused); a unix-socket app (``unix:/path``); and a non-local address form
(``127.0.0.2:PORT``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import socketserver
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
import trustme

from e2e_support import HATCHWAY, Agents, EchoHandler, EdgeProc, curl, serving, wait_for


def _split(out: bytes) -> tuple[bytes, bytes]:
    head, _, body = out.partition(b"\r\n\r\n")
    return head, body


# ---- an HTTPS app with a certificate from an unrelated CA ---------------------------------------------
class _TLSServer(ThreadingHTTPServer):
    """The echo app behind TLS; the handshake runs in each connection's thread, failures are recorded."""

    daemon_threads = True

    def __init__(self, ctx: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.ctx = ctx
        self.handshake_errors: list[str] = []

    def finish_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        assert isinstance(request, socket.socket)
        request.settimeout(10)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except OSError as exc:  # ssl.SSLError included
            self.handshake_errors.append(str(exc))
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that went away mid-request is not a test failure


@pytest.fixture
def https_app() -> Iterator[_TLSServer]:
    ca = trustme.CA(organization_name="Unrelated Test CA")  # trusted by nobody: not the edge's CA
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    server = _TLSServer(ctx)
    with serving(server):
        yield server


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_https_upstream_with_an_untrusted_certificate(
    edge_proc: EdgeProc, agents: Agents, https_app: _TLSServer, host: str
) -> None:
    port = https_app.server_address[1]
    agent = agents.start("http", f"https://{host}:{port}")
    started = next(line for line in agent.lines if "url" in line)
    assert started["addr"] == f"https://{host}:{port}"
    for http in ("1.1", "2"):
        res = curl(edge_proc, agent.url + f"/over-tls-{http}", "-i", http=http)
        assert res.returncode == 0, res.stderr
        head, body = _split(res.stdout)
        assert head.split(b" ", 2)[1] == b"200", head
        assert json.loads(body)["path"] == f"/over-tls-{http}"
    assert https_app.handshake_errors == []


def test_plain_address_to_a_tls_port_needs_https(
    edge_proc: EdgeProc, agents: Agents, https_app: _TLSServer
) -> None:
    port = https_app.server_address[1]
    agent = agents.start("http", f"127.0.0.1:{port}")
    started = next(line for line in agent.lines if "url" in line)
    assert started["addr"] == f"http://127.0.0.1:{port}"
    res = curl(edge_proc, agent.url + "/", "-i")
    assert res.returncode == 0, res.stderr
    head, _ = _split(res.stdout)
    assert head.startswith(b"HTTP/1.1 502"), head
    assert b"ngrok-error-code: ERR_NGROK_3004" in head  # the TLS server's answer is not HTTP
    wait_for(lambda: https_app.handshake_errors, within=5, what="the app to see a non-TLS client")


# ---- an h2c (HTTP/2 with prior knowledge) app written with h2 -------------------------------------------
@dataclass
class _H2Seen:
    prefaces: int = 0  # connections that opened with the HTTP/2 preface
    requests: list[dict[str, str]] = field(default_factory=list)


class _H2Handler(socketserver.BaseRequestHandler):
    """One h2c connection: answers every request with JSON describing it (and that it came over h2)."""

    server: _H2Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(15)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        heads: dict[int, dict[str, str]] = {}
        bodies: dict[int, int] = {}
        counted = False
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                return  # not HTTP/2: the agent did not speak h2c
            if not counted:
                counted = True
                self.server.seen.prefaces += 1
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived) and ev.stream_id is not None:
                    heads[ev.stream_id] = {
                        (k.decode() if isinstance(k, bytes) else k): (
                            v.decode() if isinstance(v, bytes) else v
                        )
                        for k, v in ev.headers or []
                    }
                    bodies[ev.stream_id] = 0
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id is not None:
                    bodies[ev.stream_id] += len(ev.data or b"")
                    conn.acknowledge_received_data(ev.flow_controlled_length or 0, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id is not None:
                    req = heads.pop(ev.stream_id)
                    self.server.seen.requests.append(req)
                    payload = json.dumps(
                        {
                            "protocol": "HTTP/2",
                            "method": req[":method"],
                            "path": req[":path"],
                            "authority": req.get(":authority", ""),
                            "body_len": bodies.pop(ev.stream_id),
                        }
                    ).encode()
                    conn.send_headers(
                        ev.stream_id,
                        [
                            (":status", "200"),
                            ("content-type", "application/json"),
                            ("content-length", str(len(payload))),
                            ("x-h2c-app", "yes"),
                        ],
                    )
                    conn.send_data(ev.stream_id, payload, end_stream=True)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    sock.sendall(conn.data_to_send())
                    return
            out = conn.data_to_send()
            if out:
                sock.sendall(out)


class _H2Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _H2Handler)
        self.seen = _H2Seen()


@pytest.fixture
def h2c_app() -> Iterator[_H2Server]:
    server = _H2Server()
    with serving(server):
        yield server


def test_h2c_upstream_with_upstream_protocol_http2(
    edge_proc: EdgeProc, agents: Agents, h2c_app: _H2Server
) -> None:
    port = h2c_app.server_address[1]
    agent = agents.start("http", f"127.0.0.1:{port}", "--upstream-protocol", "http2")
    for http in ("1.1", "2"):
        res = curl(edge_proc, agent.url + f"/h2c?via={http}", "-i", "-w", "\n%{http_version}", http=http)
        assert res.returncode == 0, res.stderr
        rest, _, version = res.stdout.rpartition(b"\n")
        head, body = _split(rest)
        assert version.decode() == ("2" if http == "2" else "1.1")
        assert head.split(b" ", 2)[1] == b"200", head
        assert b"x-h2c-app: yes" in head.lower()
        answer = json.loads(body)
        assert answer["protocol"] == "HTTP/2" and answer["path"] == f"/h2c?via={http}"
        assert answer["authority"] == f"{agent.host}:{edge_proc.https_port}"
    assert h2c_app.seen.prefaces >= 1
    assert [r[":path"] for r in h2c_app.seen.requests] == ["/h2c?via=1.1", "/h2c?via=2"]
    # A POST body crosses to HTTP/2 too.
    res = curl(edge_proc, agent.url + "/upload", "--data-binary", "x" * 5000)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["body_len"] == 5000


def test_h2c_app_without_upstream_protocol_is_not_http2(
    edge_proc: EdgeProc, agents: Agents, h2c_app: _H2Server
) -> None:
    """Without ``--upstream-protocol http2`` the agent speaks HTTP/1.1, which an h2c-only app refuses."""
    port = h2c_app.server_address[1]
    agent = agents.start("http", f"127.0.0.1:{port}")
    head, _ = _split(curl(edge_proc, agent.url + "/", "-i").stdout)
    assert head.startswith(b"HTTP/1.1 502"), head
    assert b"ngrok-error-code: ERR_NGROK_3004" in head
    assert h2c_app.seen.requests == []


# ---- the built-in file server -----------------------------------------------------------------------
CONTENT = b"0123456789abcdefghijklmnopqrstuvwxyz"


def test_file_server_listing_file_and_range(edge_proc: EdgeProc, agents: Agents, tmp_path: Path) -> None:
    root = tmp_path / "site files"
    (root / "docs").mkdir(parents=True)
    (root / "hello.txt").write_bytes(CONTENT)
    (root / "docs" / "guide.md").write_text("# Guide\n")
    agent = agents.start("http", f"file://{root}")
    started = next(line for line in agent.lines if "url" in line)
    assert started["addr"] == f"file://{root}"

    head, body = _split(curl(edge_proc, agent.url + "/", "-i").stdout)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b'href="hello.txt"' in body and b'href="docs/"' in body

    head, body = _split(curl(edge_proc, agent.url + "/docs/", "-i").stdout)
    assert head.startswith(b"HTTP/1.1 200") and b'href="guide.md"' in body

    head, body = _split(curl(edge_proc, agent.url + "/hello.txt", "-i").stdout)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == CONTENT
    assert f"content-length: {len(CONTENT)}".encode() in head.lower()
    assert b"content-type: text/plain" in head.lower()

    res = curl(edge_proc, agent.url + "/hello.txt", "-i", "-r", "10-19")
    head, body = _split(res.stdout)
    assert head.startswith(b"HTTP/1.1 206"), head
    assert body == CONTENT[10:20] == b"abcdefghij"
    assert f"content-range: bytes 10-19/{len(CONTENT)}".encode() in head.lower()

    res = curl(edge_proc, agent.url + "/hello.txt", "-r", "10-19", http="2", timeout=20)
    assert res.returncode == 0 and res.stdout == b"abcdefghij", res

    head, _ = _split(curl(edge_proc, agent.url + "/hello.txt", "-i", "-r", "40-50").stdout)
    assert head.startswith(b"HTTP/1.1 416"), head
    assert f"content-range: bytes */{len(CONTENT)}".encode() in head.lower()

    head, _ = _split(curl(edge_proc, agent.url + "/docs", "-i").stdout)
    assert head.startswith(b"HTTP/1.1 301") and b"location: /docs/" in head.lower(), head

    head, _ = _split(curl(edge_proc, agent.url + "/nope.txt", "-i").stdout)
    assert head.startswith(b"HTTP/1.1 404"), head
    head, _ = _split(curl(edge_proc, agent.url + "/../../etc/passwd", "-i", "--path-as-is").stdout)
    assert head.startswith(b"HTTP/1.1 404"), head


def test_file_server_relative_path_is_refused(edge_proc: EdgeProc, tmp_path: Path) -> None:
    (tmp_path / "relative" / "dir").mkdir(parents=True)
    res = subprocess.run(
        [HATCHWAY, "http", "file://relative/dir", "--log", "stdout"],
        capture_output=True,
        timeout=30,
        text=True,
        cwd=tmp_path,
        env=edge_proc.env(),
    )
    assert res.returncode != 0
    assert "must be absolute" in res.stderr, res.stderr
    assert "url" not in res.stdout


# ---- a unix-socket app --------------------------------------------------------------------------------
class _UnixEchoServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@pytest.fixture
def unix_app() -> Iterator[str]:
    short = tempfile.mkdtemp(prefix="hw-", dir="/tmp")  # AF_UNIX paths are limited to ~100 bytes
    path = os.path.join(short, "app.sock")
    server = _UnixEchoServer(path, EchoHandler)
    try:
        with serving(server):
            yield path
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_unix_socket_upstream(edge_proc: EdgeProc, agents: Agents, unix_app: str) -> None:
    agent = agents.start("http", f"unix:{unix_app}")
    started = next(line for line in agent.lines if "url" in line)
    assert started["addr"] == f"unix:{unix_app}"
    for http in ("1.1", "2"):
        res = curl(edge_proc, agent.url + f"/over-unix-{http}", "-i", http=http)
        assert res.returncode == 0, res.stderr
        head, body = _split(res.stdout)
        assert head.split(b" ", 2)[1] == b"200", head
        assert json.loads(body)["path"] == f"/over-unix-{http}"


# ---- a non-local address form -------------------------------------------------------------------------
@pytest.fixture
def echo_on_127_0_0_2() -> Iterator[int]:
    try:
        server = ThreadingHTTPServer(("127.0.0.2", 0), EchoHandler)
    except OSError as exc:  # 127.0.0.0/8 is all loopback on Linux, not everywhere
        pytest.skip(f"cannot listen on 127.0.0.2: {exc}")
    server.daemon_threads = True
    with serving(server):
        yield server.server_address[1]


def test_non_local_address_form(edge_proc: EdgeProc, agents: Agents, echo_on_127_0_0_2: int) -> None:
    port = echo_on_127_0_0_2
    agent = agents.start("http", f"127.0.0.2:{port}")
    started = next(line for line in agent.lines if "url" in line)
    assert started["addr"] == f"http://127.0.0.2:{port}"
    head, body = _split(curl(edge_proc, agent.url + "/far-away", "-i").stdout)
    assert head.startswith(b"HTTP/1.1 200"), head
    answer = json.loads(body)
    assert answer["path"] == "/far-away"
    hosts = [v for k, v in answer["headers"] if k.lower() == "host"]
    assert hosts == [f"{agent.host}:{edge_proc.https_port}"]  # Host is not rewritten by default
