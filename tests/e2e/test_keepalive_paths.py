"""One client connection, many kinds of response: the edge's fast and general paths must agree.

After the first request on a connection, the edge relays bodyless requests from callbacks alone (the
fast path in ``edge/listeners/http1.py``) and hands anything unusual to its general path mid-exchange:
chunked or bodyless responses, interim 1xx heads, ``Connection: close`` from the upstream, a body that
outgrows a slow client, a response cut short, pipelined requests. A scripted raw upstream answers each
path with exact bytes, a real ``hatchway edge`` and ``hatchway http`` sit in between, and h11 reads the
client side, so each response is checked byte for byte on one kept-alive connection. Loopback only.
"""

from __future__ import annotations

import hashlib
import random
import socket
import socketserver
import time
from collections.abc import Iterator
from pathlib import Path

import h11
import pytest

from e2e_support import Agents, EdgeProc, serving

pytestmark = pytest.mark.timeout(60)

BIG = random.Random(3).randbytes(3 << 20)


def _script(path: str) -> tuple[bytes, bool]:
    """The exact bytes the upstream writes for ``path``, and whether it closes afterwards."""
    if path.startswith("/len/"):
        n = int(path[5:])
        body = (BIG * (n // len(BIG) + 1))[:n]
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n" % n + body, False
    if path == "/chunked":
        return (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            False,
        )
    if path == "/empty":
        return b"HTTP/1.1 204 No Content\r\nX-Kind: empty\r\n\r\n", False
    if path == "/hints":
        return (
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        ), False
    if path == "/spoof":
        return b"HTTP/1.1 200 OK\r\nngrok-error-code: ERR_NGROK_1\r\nContent-Length: 2\r\n\r\nhi", False
    if path == "/close":
        return b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye", True
    if path == "/silent-close":
        return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nquit", True
    if path == "/cut":
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000, True
    return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", False


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            method, path = head.split(b" ", 2)[:2]
            out, close = _script(path.decode())
            if path.startswith(b"/echo"):  # the request head as the edge sent it, as the body
                out = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(head) + head
            if method == b"HEAD":
                out = out.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
            sock.sendall(out)
            if close:
                return


@pytest.fixture
def upstream() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
    with serving(server):
        yield int(server.server_address[1])


class Client:
    """A raw keep-alive HTTP/1.1 connection to the edge; h11 reads each response (one h11 connection per
    response, fed what the previous one left over, so pipelined responses parse too)."""

    def __init__(self, edge: EdgeProc, host: str, rcvbuf: int = 0) -> None:
        self.host = host
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(20)
        self.sock.connect(("127.0.0.1", edge.http_port))
        self.methods: list[str] = []
        self.leftover = b""

    def send(self, *paths: str, method: str = "GET", extra: str = "") -> None:
        """Write the requests in one go (pipelined when several); ``extra``: more header lines."""
        raw = b""
        for path in paths:
            raw += f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{extra}\r\n".encode()
        self.sock.sendall(raw)
        self.methods.extend([method] * len(paths))

    def receive(self) -> tuple[int, dict[bytes, bytes], bytes, list[int]]:
        """The next response: status, headers, body, and the statuses of interim responses before it."""
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=self.methods.pop(0), target="/", headers=[("Host", self.host)]))
        conn.send(h11.EndOfMessage())
        if self.leftover:  # h11 reads b"" as the end of the connection
            conn.receive_data(self.leftover)
        interim: list[int] = []
        status, headers, body = 0, {}, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("the edge closed the connection mid-response")
                conn.receive_data(data)
                continue
            if isinstance(event, h11.InformationalResponse):
                interim.append(event.status_code)
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self.leftover = conn.trailing_data[0]
                return status, headers, bytes(body), interim

    def get(
        self, path: str, method: str = "GET", extra: str = ""
    ) -> tuple[int, dict[bytes, bytes], bytes, list[int]]:
        self.send(path, method=method, extra=extra)
        return self.receive()

    def close(self) -> None:
        self.sock.close()


def _expect_len(resp: tuple[int, dict[bytes, bytes], bytes, list[int]], n: int) -> None:
    status, headers, body, _ = resp
    assert status == 200
    assert int(headers[b"content-length"]) == n == len(body)
    assert hashlib.sha256(body).digest() == hashlib.sha256((BIG * (n // len(BIG) + 1))[:n]).digest()


def test_every_kind_of_response_on_one_connection(edge_proc: EdgeProc, agents: Agents, upstream: int) -> None:
    agent = agents.start("http", str(upstream), "--scheme", "http")
    c = Client(edge_proc, agent.host)
    try:
        _expect_len(c.get("/len/10"), 10)  # the first request opens the Proxy stream (general path)
        _expect_len(c.get("/len/11"), 11)  # fast path from here on
        status, headers, body, _ = c.get("/chunked")
        assert (status, body) == (200, b"hello world")
        status, headers, body, _ = c.get("/empty")
        assert (status, headers.get(b"x-kind"), body) == (204, b"empty", b"")
        _expect_len(c.get("/len/300000"), 300000)  # many tunnel frames
        status, headers, body, interim = c.get("/hints")
        assert (status, body, interim) == (200, b"ok", [103])
        status, headers, body, _ = c.get("/spoof")
        assert (status, body) == (200, b"hi")
        assert b"ngrok-error-code" not in headers  # only the edge may set it
        status, headers, body, _ = c.get("/len/10", method="HEAD")
        assert (status, headers[b"content-length"], body) == (200, b"10", b"")
        _expect_len(c.get("/len/0"), 0)
        status, headers, body, _ = c.get("/close")  # the upstream closes: a new stream serves what follows
        assert (status, body) == (200, b"bye")
        _expect_len(c.get("/len/12"), 12)
        status, _, body, _ = c.get("/silent-close")
        assert (status, body) == (200, b"quit")
        _expect_len(c.get("/len/13"), 13)
        _expect_len(c.get("/len/14"), 14)
    finally:
        c.close()


def test_pipelined_requests_come_back_in_order(edge_proc: EdgeProc, agents: Agents, upstream: int) -> None:
    agent = agents.start("http", str(upstream), "--scheme", "http")
    c = Client(edge_proc, agent.host)
    try:
        _expect_len(c.get("/len/1"), 1)
        c.send("/len/5", "/chunked", "/len/200000", "/empty", "/len/7")
        _expect_len(c.receive(), 5)
        assert c.receive()[2] == b"hello world"
        _expect_len(c.receive(), 200000)
        assert c.receive()[0] == 204
        _expect_len(c.receive(), 7)
    finally:
        c.close()


def test_a_slow_reader_gets_a_large_body_whole(edge_proc: EdgeProc, agents: Agents, upstream: int) -> None:
    agent = agents.start("http", str(upstream), "--scheme", "http")
    # A small receive buffer makes the edge's writes back up, so the fast path must hand the body over.
    c = Client(edge_proc, agent.host, rcvbuf=8192)
    try:
        _expect_len(c.get("/len/3"), 3)
        for _ in range(3):
            _expect_len(c.get(f"/len/{3 << 20}"), 3 << 20)
        _expect_len(c.get("/len/9"), 9)
    finally:
        c.close()


def test_a_response_cut_short_breaks_only_its_connection(
    edge_proc: EdgeProc, agents: Agents, upstream: int
) -> None:
    agent = agents.start("http", str(upstream), "--scheme", "http")
    c = Client(edge_proc, agent.host)
    try:
        _expect_len(c.get("/len/2"), 2)
        with pytest.raises((ConnectionError, h11.RemoteProtocolError, OSError)):
            c.get("/cut")
    finally:
        c.close()
    fresh = Client(edge_proc, agent.host)
    try:
        _expect_len(fresh.get("/len/4"), 4)
        _expect_len(fresh.get("/len/5"), 5)
    finally:
        fresh.close()
    log = (edge_proc.data_dir / "edge.log").read_bytes()
    assert b"Traceback" not in log, log.decode()


def test_request_rules_run_once_per_request_on_either_path(
    edge_proc: EdgeProc, agents: Agents, upstream: int, tmp_path: Path
) -> None:
    """Request-phase rules also run on the fast path; each request is counted exactly once."""
    policy = tmp_path / "policy.yml"
    policy.write_text(
        "on_http_request:\n"
        "  - expressions: [\"req.url.path.startsWith('/len/9')\"]\n"
        "    actions: [{type: deny, config: {status_code: 451}}]\n"
        "  - actions:\n"
        "      - type: rate-limit\n"
        "        config: {name: once, algorithm: sliding_window, capacity: 5, rate: 60s,"
        " bucket_key: [conn.client_ip]}\n"
    )
    agent = agents.start("http", str(upstream), "--scheme", "http", "--traffic-policy-file", str(policy))
    c = Client(edge_proc, agent.host)
    try:
        _expect_len(c.get("/len/1"), 1)  # general path (opens the stream)
        _expect_len(c.get("/len/2"), 2)  # fast path
        assert c.get("/len/9")[0] == 451  # answered by the edge, from the fast path
        assert c.get("/chunked")[2] == b"hello world"  # handed over mid-exchange
        _expect_len(c.get("/len/3"), 3)
        _expect_len(c.get("/len/4"), 4)  # the 5th counted (the denied one is not: deny comes first)
        status, headers, _, _ = c.get("/len/5")
        assert status == 429 and int(headers[b"retry-after"]) > 0
    finally:
        c.close()


def test_a_static_policy_answers_each_request_by_its_rules(
    edge_proc: EdgeProc, agents: Agents, upstream: int, tmp_path: Path
) -> None:
    """A request phase that depends on the request alone is replayed from memory for a repeated request
    (``policy_run.remembered``); interleaved requests must still each get what their rules say."""
    policy = tmp_path / "policy.yml"
    policy.write_text(
        "on_http_request:\n"
        "  - expressions: [\"'x-debug' in req.headers\"]\n"
        "    actions: [{type: custom-response, config: {status_code: 418, body: debug}}]\n"
        "  - expressions: [\"req.url.path.startsWith('/echo/tagged')\"]\n"
        "    actions: [{type: add-headers, config: {headers: {x-tag: tagged}}}]\n"
        "  - actions: [{type: add-headers, config: {headers: {x-policy: seen}}}]\n"
    )
    agent = agents.start("http", str(upstream), "--scheme", "http", "--traffic-policy-file", str(policy))
    c = Client(edge_proc, agent.host)
    try:
        for _ in range(3):  # the first round fills the memo (on the general path, then the fast one)
            status, _, body, _ = c.get("/echo/plain")
            assert status == 200 and body.count(b"x-policy: seen") == 1 and b"x-tag" not in body
            status, _, body, _ = c.get("/echo/tagged")
            assert status == 200 and body.count(b"x-tag: tagged") == 1 and body.count(b"x-policy") == 1
            status, _, body, _ = c.get("/echo/plain", extra="X-Debug: 1\r\n")
            assert (status, body) == (418, b"debug")
    finally:
        c.close()


def test_conn_ts_start_is_the_connections_start_for_each_of_its_requests(
    edge_proc: EdgeProc, agents: Agents, upstream: int, tmp_path: Path
) -> None:
    """``conn.ts.start`` is when the client connection started (ngrok's meaning): every request on one
    kept-alive connection sees the same value, on the general path and the fast one, and a later
    connection its own."""
    policy = tmp_path / "policy.yml"
    policy.write_text(
        "on_http_request:\n"
        "  - actions: [{type: add-headers, config: {headers: {x-start: '${conn.ts.start}'}}}]\n"
    )
    agent = agents.start("http", str(upstream), "--scheme", "http", "--traffic-policy-file", str(policy))

    def start_seen(c: Client, path: str) -> str:
        status, _, body, _ = c.get(path)
        assert status == 200, body
        (line,) = [ln for ln in body.split(b"\r\n") if ln.lower().startswith(b"x-start:")]
        return line.split(b":", 1)[1].strip().decode()

    def stamp(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    before = time.time()
    c = Client(edge_proc, agent.host)
    after = time.time()
    try:
        first = start_seen(c, "/echo/1")  # the general path opens the stream
        assert first in {stamp(before), stamp(after)}
        # Let the clock pass into a later second (bounded), so a per-request time would differ.
        deadline = after + 3
        while int(time.time()) <= int(after) and time.time() < deadline:
            time.sleep(0.01)
        assert int(time.time()) > int(after)
        assert start_seen(c, "/echo/2") == first  # the fast path
        assert start_seen(c, "/echo/3") == first
        d = Client(edge_proc, agent.host)
        try:
            assert start_seen(d, "/echo/4") > first
        finally:
            d.close()
    finally:
        c.close()
