"""Support for end-to-end tests with real processes: `hatchway edge`, `hatchway http`, local apps, curl.

Each edge gets a fresh data dir and port 0 listeners; its ``edge.json`` tells the tests (and agents) where
it listens. Every process is stopped at the end; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import pytest

BIN = Path(sys.executable).parent
HATCHWAY = str(BIN / "hatchway")


def ensure_tool(command: str, package: str, also: str = "") -> str:
    """The path of ``command`` (or of ``also``, a fixed path outside PATH such as /usr/sbin/knotd),
    installing Debian's ``package`` when it is missing. ``scripts/setup --test`` installs them all; this
    covers a test run without it. A missing tool fails the test: it is never a reason to skip."""

    def find() -> str | None:
        return shutil.which(command) or (also if also and os.path.exists(also) else None)

    found = find()
    if found is None and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", package]
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=900)
            subprocess.run(install, env=env, capture_output=True, timeout=900)
        found = find()
    if found is None:
        pytest.fail(f"{command} is missing and could not be installed: run scripts/setup --test ({package})")
    return found


def free_port_range(size: int) -> tuple[int, int]:
    """``size`` consecutive loopback ports below the ephemeral range that can all be bound now."""
    for _ in range(100):
        first = random.randrange(20000, 32000 - size)
        socks: list[socket.socket] = []
        try:
            for port in range(first, first + size):
                socks.append(s := socket.socket())
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return first, first + size - 1
    raise AssertionError("no free port range on loopback")


def wait_for(predicate: Callable[[], object], within: float = 15.0, what: str = "condition") -> object:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


@dataclass
class EdgeProc:
    data_dir: Path
    proc: subprocess.Popen[bytes]
    tunnel_addr: str = ""
    http_port: int = 0
    https_port: int = 0
    ssh_port: int = 0
    args: list[str] = field(default_factory=list)
    log: IO[bytes] | None = None

    @property
    def ca(self) -> Path:
        return self.data_dir / "ca.pem"

    @property
    def token(self) -> str:
        return (self.data_dir / "dev-token").read_text().strip()

    def env(self) -> dict[str, str]:
        return {**os.environ, "HATCHWAY_DATA_DIR": str(self.data_dir)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.log is not None:
            self.log.close()
            self.log = None


def start_edge(data_dir: Path, *extra: str, ports: tuple[int, int, int] = (0, 0, 0)) -> EdgeProc:
    info = data_dir / "edge.json"
    if info.exists():
        info.unlink()
    args = [
        HATCHWAY,
        "edge",
        "--data-dir",
        str(data_dir),
        "--http-addr",
        f"127.0.0.1:{ports[0]}",
        "--https-addr",
        f"127.0.0.1:{ports[1]}",
        "--tunnel-addr",
        f"127.0.0.1:{ports[2]}",
        *extra,
    ]
    if "--ssh-addr" not in extra:
        args += ["--ssh-addr", "127.0.0.1:0"]  # never the default 2222: edges of several tests may overlap
    if "--verify-domains" not in extra and "--skip-domain-verification" not in extra:
        # Tests reserve names like app.example.com that no DNS points at; pass --verify-domains (with
        # --dns-resolver) to check them, as tests/e2e/test_domain_verification.py does.
        args.append("--skip-domain-verification")
    log = open(data_dir / "edge.log", "ab")  # noqa: SIM115 -- closed with the process
    proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    edge = EdgeProc(data_dir, proc, args=args, log=log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"edge exited: {(data_dir / 'edge.log').read_text()}")
        return info.exists() and (data_dir / "dev-token").exists()

    wait_for(ready, what="edge.json")
    doc = json.loads(info.read_text())
    edge.tunnel_addr = doc["tunnel_addr"]
    edge.http_port = urlsplit(doc["http"]).port or 80
    edge.https_port = urlsplit(doc["https"]).port or 443
    edge.ssh_port = int(doc["ssh_addr"].rpartition(":")[2]) if "ssh_addr" in doc else 0
    return edge


@pytest.fixture
def edge_proc(tmp_path: Path) -> Iterator[EdgeProc]:
    edge = start_edge(tmp_path / "edge")
    try:
        yield edge
    finally:
        edge.stop()


@pytest.fixture(autouse=True)
def _data_dir_exists(tmp_path: Path) -> None:
    (tmp_path / "edge").mkdir(exist_ok=True)


@dataclass
class AgentProc:
    proc: subprocess.Popen[bytes]
    url: str
    lines: list[dict[str, object]]

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


class Agents:
    def __init__(self, edge: EdgeProc) -> None:
        self.edge = edge
        self.procs: list[AgentProc] = []

    def start(self, *args: str, urls: int = 1, env: dict[str, str] | None = None) -> AgentProc:
        """Run ``hatchway ARGS --log stdout --log-format json`` and wait for its ``url`` lines."""
        cmd = [HATCHWAY, *args, "--log", "stdout", "--log-format", "json"]
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env or self.edge.env(),
        )
        lines: list[dict[str, object]] = []
        found: list[str] = []
        deadline = time.monotonic() + 20
        assert proc.stdout is not None
        while len(found) < urls:
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"agent printed no url: {lines}")
            raw = proc.stdout.readline()
            if not raw:
                err = proc.stderr.read().decode() if proc.stderr else ""
                code = proc.wait()
                for pipe in (proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()
                raise AssertionError(f"agent exited ({code}): {err}")
            line = json.loads(raw)
            lines.append(line)
            if "url" in line:
                found.append(str(line["url"]))
        agent = AgentProc(proc, found[0], lines)
        agent.lines = lines
        self.procs.append(agent)
        return agent

    def stop_all(self) -> None:
        for a in self.procs:
            a.stop()


@pytest.fixture
def agents(edge_proc: EdgeProc) -> Iterator[Agents]:
    a = Agents(edge_proc)
    try:
        yield a
    finally:
        a.stop_all()


class EchoHandler(BaseHTTPRequestHandler):
    """Answers with the request it saw, as JSON; a few paths behave specially (see do_GET)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", f"http://{self.headers.get('host')}/landed")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        payload = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body_len": len(body),
                "peer": list(self.client_address),  # which upstream connection served it
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("ngrok-error-code", "ERR_FAKE_FROM_UPSTREAM")
        self.send_header("X-Upstream", "yes")
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


@contextlib.contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[None]:
    """Run ``server`` on a daemon thread (its handlers too, when it has threads) until the block ends."""
    if isinstance(server, socketserver.ThreadingMixIn):
        server.daemon_threads = True
    sock = getattr(server, "socket", None)
    if isinstance(sock, socket.socket):
        # A client that gives up between the selector's "readable" and accept() would leave a blocking
        # accept() waiting for ever, and shutdown() below with it (seen once in a full run). With a
        # timeout, accept() gives up too; sockets it returns are still blocking (socket.accept).
        sock.settimeout(1.0)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        t.join(timeout=5)


@pytest.fixture
def echo_app() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    with serving(server):
        yield int(server.server_address[1])


def curl(
    edge: EdgeProc, url: str, *args: str, timeout: float = 30, http: str = "1.1"
) -> subprocess.CompletedProcess[bytes]:
    """curl ``url`` through the edge: the URL's host resolves to 127.0.0.1, the edge's CA is trusted.
    ``http`` picks the protocol (``"1.1"`` by default, ``"2"`` for ``--http2``)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    cmd = ["curl", "-sS", "--max-time", str(int(timeout)), "--resolve", f"{parts.hostname}:{port}:127.0.0.1"]
    cmd.append("--http2" if http == "2" else "--http1.1")
    if parts.scheme == "https":
        cmd += ["--cacert", str(edge.ca)]
    return subprocess.run([*cmd, *args, url], capture_output=True, timeout=timeout + 5)


@contextlib.contextmanager
def sdk_process(cmd: list[str], env: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Run an SDK script that prints ``{"url", "id"}`` and stays up until its stdin closes."""
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    out, stdin = proc.stdout, proc.stdin
    assert out is not None and stdin is not None
    first: list[bytes] = []
    reader = threading.Thread(target=lambda: first.append(out.readline()), daemon=True)
    reader.start()
    reader.join(timeout=30)
    try:
        if not first or not first[0]:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise AssertionError(f"the SDK printed no URL: {err.decode()}")
        yield json.loads(first[0])
    finally:
        if proc.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


# ---- TCP endpoints ----------------------------------------------------------------------------------------

TCP_BANNER = b"hello from upstream\n"


class BannerEcho(socketserver.BaseRequestHandler):
    """A TCP upstream: a banner, then echo until the client's FIN, then FIN."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.sendall(TCP_BANNER)
        while data := sock.recv(1 << 16):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def banner_echo_server() -> Iterator[int]:
    """A ``BannerEcho`` server on loopback; yields its port."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), BannerEcho)
    with serving(server):
        yield int(server.server_address[1])


@contextlib.contextmanager
def tcp_edge(data_dir: Path, size: int) -> Iterator[tuple[EdgeProc, tuple[int, int]]]:
    """An edge taking TCP endpoint ports from a free loopback range of ``size``; yields it and the range."""
    first, last = free_port_range(size)
    proc = start_edge(data_dir, "--tcp-addr-range", f"127.0.0.1:{first}-{last}")
    try:
        yield proc, (first, last)
    finally:
        proc.stop()


# ---- TCP endpoint checks (test_tcp_endpoints, test_agent_tcp) ----
def port_of(url: str) -> int:
    """The port of a ``tcp://127.0.0.1:PORT`` endpoint URL."""
    assert url.startswith("tcp://127.0.0.1:"), url
    return int(url.rpartition(":")[2])


def read_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def read_to_eof(sock: socket.socket) -> bytes:
    buf = bytearray()
    while chunk := sock.recv(1 << 16):
        buf += chunk
    return bytes(buf)


def echo_check(port: int, payload: bytes, *, before_echo: bytes = b"", header_len: int = 0) -> None:
    """Banner first, then (``before_echo``, e.g. a PROXY header) and ``payload`` echoed; the client's FIN
    comes back as EOF (the half-close crosses both ways). ``header_len``: the whole header's length."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        assert read_exactly(sock, len(TCP_BANNER)) == TCP_BANNER
        sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        got = read_to_eof(sock)
        sender.join(timeout=20)
    assert got.startswith(before_echo), got[:200]
    body = got[header_len or len(before_echo) :]
    assert len(body) == len(payload)
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(payload).hexdigest()


def refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex(("127.0.0.1", port)) != 0


# Module-scoped fixtures of the TCP endpoint tests (test_tcp_endpoints, test_agent_tcp), which import them:
# one banner/echo upstream and one edge with its own port range per test module.
@pytest.fixture(scope="module", name="upstream")
def tcp_upstream() -> Iterator[int]:
    with banner_echo_server() as port:
        yield port


@pytest.fixture(scope="module", name="_tcp_edge")
def tcp_edge_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EdgeProc, tuple[int, int]]]:
    with tcp_edge(tmp_path_factory.mktemp("tcp-edge"), 32) as both:
        yield both


@pytest.fixture(scope="module", name="tcp_range")
def tcp_edge_range(_tcp_edge: tuple[EdgeProc, tuple[int, int]]) -> tuple[int, int]:
    return _tcp_edge[1]


@pytest.fixture(scope="module", name="edge")
def tcp_edge_proc(_tcp_edge: tuple[EdgeProc, tuple[int, int]]) -> EdgeProc:
    return _tcp_edge[0]
