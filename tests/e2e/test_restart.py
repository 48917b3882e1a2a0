"""Edge restarts under live agents: ``hatchway edge`` killed or stopped, then started on the same ports.

* SIGKILL, restart within about a second on the same ports and data dir (same CA, tokens, state):
  - a running ``hatchway http`` agent reconnects with its short backoff, re-binds with its old tunnel
    id and host, and its random URL serves again within about 5 s, unchanged;
  - a running official PyPI ``ngrok`` SDK agent (Rust, backoff 0, 50 ms, 2.5 s, 125 s: protocol.md §7)
    redials, re-binds with its old tunnel id and serves again within about 5 s.
* SIGTERM: the edge stops accepting clients but lets requests in flight (HTTP/1.1 and HTTP/2) to a slow
  upstream finish, then exits; started again, the agent comes back. A graceful restart under the SDK
  must also fit in its 2.5 s retry window.
* A network blip (a relay drops the agent's connection, the edge keeps running): the agent redials and
  its random URL, the one it reports, serves again; for the official SDK too, which re-binds with its old
  tunnel id and token but no hostname (the edge derives the random name from the tunnel id).

Ports are picked free up front (bind to port 0, close) so the restarted edge can take the same ones.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

import pytest

from e2e_support import Agents, EdgeProc, curl, serving, start_edge, wait_for

RECOVER_WITHIN = 5.0  # seconds from the restarted edge being ready to the endpoint serving again

SDK_SCRIPT = r"""
import sys, time
import ngrok
port, token, addr, ca, domain = sys.argv[1:6]
named = {"domain": domain} if domain else {}  # no domain: the edge picks a random name
listener = ngrok.forward(int(port), authtoken=token, server_addr=addr,
                         session_ca_cert=bytearray(open(ca, "rb").read()), **named)
print(listener.url(), flush=True)
time.sleep(120)
"""


def _free_ports(n: int = 3) -> tuple[int, ...]:
    socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(n)]
    try:
        return tuple(s.getsockname()[1] for s in socks)
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def fixed_edge(tmp_path: Path) -> Iterator[list[EdgeProc]]:
    """An edge on fixed ports; tests replace ``edges[0]`` when they restart it. All are stopped at the end."""
    http, https, tunnel = _free_ports()
    edges = [start_edge(tmp_path / "edge", ports=(http, https, tunnel))]
    started = list(edges)
    try:
        yield edges
    finally:
        for e in {id(e): e for e in [*started, *edges]}.values():
            e.stop()


def _ports(edge: EdgeProc) -> tuple[int, int, int]:
    return edge.http_port, edge.https_port, int(edge.tunnel_addr.rsplit(":", 1)[1])


def _restart(edge: EdgeProc) -> tuple[EdgeProc, float]:
    """Start a new edge on ``edge``'s ports and data dir; returns it and how long it took to be ready."""
    start = time.monotonic()
    new = start_edge(edge.data_dir, ports=_ports(edge))
    assert _ports(new) == _ports(edge)
    return new, time.monotonic() - start


def _kill_and_restart(edges: list[EdgeProc]) -> float:
    old = edges[0]
    old.proc.kill()
    old.proc.wait(timeout=10)
    old.stop()  # closes its log
    edges[0], took = _restart(old)
    assert took < 2.4, f"the edge took {took:.2f}s to start: Rust SDKs would back off for ~2 min"
    return took


def _status(edge: EdgeProc, url: str, http: str = "1.1") -> int:
    res = curl(edge, url, "-o", "/dev/null", "-w", "%{http_code}", timeout=5, http=http)
    return int(res.stdout or b"0")


def _recovers(edge: EdgeProc, url: str) -> float:
    """Seconds until ``url`` answers 200 again (bounded by RECOVER_WITHIN)."""
    start = time.monotonic()
    wait_for(lambda: _status(edge, url) == 200, within=RECOVER_WITHIN, what=f"{url} to serve again")
    return time.monotonic() - start


class LineReader:
    """Lines of a pipe, read in a thread, so each wait for one is bounded."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe: IO[bytes]) -> None:
        for line in iter(pipe.readline, b""):
            self.lines.put(line)

    def next(self, within: float) -> bytes:
        try:
            return self.lines.get(timeout=within)
        except queue.Empty:
            raise AssertionError(f"no line within {within}s") from None


@contextlib.contextmanager
def sdk_agent(edge: EdgeProc, port: int, domain: str, tmp_path: Path, server_addr: str = "") -> Iterator[str]:
    """The official PyPI SDK forwarding to ``port`` in a subprocess; yields the URL it printed."""
    err_path = tmp_path / f"sdk-{domain or 'random'}.log"
    addr = server_addr or edge.tunnel_addr
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", SDK_SCRIPT, str(port), edge.token, addr, str(edge.ca), domain],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    try:
        assert proc.stdout is not None
        try:
            url = LineReader(proc.stdout).next(within=30).decode().strip()
        except AssertionError:
            raise AssertionError(f"the SDK printed no URL: {err_path.read_text()}") from None
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_sigkill_restart_our_agent_keeps_its_random_url(
    fixed_edge: list[EdgeProc], echo_app: int, tmp_path: Path
) -> None:
    agents = Agents(fixed_edge[0])
    try:
        agent = agents.start("http", str(echo_app))
        assert agent.host.endswith(".hatchway.localhost")  # a random name
        assert _status(fixed_edge[0], agent.url) == 200
        took = _kill_and_restart(fixed_edge)
        recovered = _recovers(fixed_edge[0], agent.url)
        print(f"\nedge restart {took:.2f}s, our agent serving again {recovered:.2f}s later")
        res = curl(fixed_edge[0], agent.url + "/after-restart")
        assert json.loads(res.stdout)["path"] == "/after-restart"
        # The agent said so, with the same URL.
        agent.proc.send_signal(signal.SIGINT)
        out, _ = agent.proc.communicate(timeout=10)
        lines = [json.loads(raw) for raw in out.splitlines() if raw.startswith(b"{")]
        assert any(line.get("msg") == "session closed, reconnecting" for line in lines), lines
        again = [line for line in lines if line.get("msg") == "reconnected"]
        assert again and again[-1]["urls"] == agent.url, lines
    finally:
        agents.stop_all()


def test_sigkill_restart_official_sdk_reconnects(
    fixed_edge: list[EdgeProc], echo_app: int, tmp_path: Path
) -> None:
    edge = fixed_edge[0]
    with sdk_agent(edge, echo_app, "sdk-restart.hatchway.localhost", tmp_path) as url:
        assert url == f"https://sdk-restart.hatchway.localhost:{edge.https_port}"
        assert _status(edge, url) == 200
        took = _kill_and_restart(fixed_edge)
        recovered = _recovers(fixed_edge[0], url)
        print(f"\nedge restart {took:.2f}s, the SDK serving again {recovered:.2f}s later")
        res = curl(fixed_edge[0], url + "/after-restart", http="2")
        assert json.loads(res.stdout)["path"] == "/after-restart"
    # Both edges logged the endpoint with the same tunnel id: the SDK re-bound with its old Id.
    log = (edge.data_dir / "edge.log").read_text()
    tunnels = re.findall(r"endpoint online https://sdk-restart\.hatchway\.localhost:\d+ \(tunnel (\S+),", log)
    assert len(tunnels) == 2 and tunnels[0] == tunnels[1], log


class SlowHandler(BaseHTTPRequestHandler):
    """``GET /slow…`` answers after ``server.delay`` seconds; ``server.arrived`` counts requests seen."""

    protocol_version = "HTTP/1.1"
    server: SlowServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        with self.server.cond:
            self.server.arrived += 1
            self.server.cond.notify_all()
        if self.path.startswith("/slow"):
            time.sleep(self.server.delay)
        body = f"done {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class SlowServer(ThreadingHTTPServer):
    daemon_threads = True
    delay = 2.5
    arrived = 0
    cond: threading.Condition


@pytest.fixture
def slow_app() -> Iterator[SlowServer]:
    server = SlowServer(("127.0.0.1", 0), SlowHandler)
    server.cond = threading.Condition()
    with serving(server):
        yield server


def test_sigterm_drains_requests_in_flight_then_restarts(
    fixed_edge: list[EdgeProc], slow_app: SlowServer
) -> None:
    edge = fixed_edge[0]
    agents = Agents(edge)
    try:
        agent = agents.start("http", str(slow_app.server_address[1]), "--scheme", "http,https", urls=2)
        urls = {str(line["url"]).split("://")[0]: str(line["url"]) for line in agent.lines if "url" in line}
        slow_app.delay = 0
        assert _status(edge, urls["https"]) == 200
        slow_app.delay = 2.5
        base = slow_app.arrived

        # Three requests to the slow upstream: HTTPS over HTTP/1.1 and HTTP/2, plain HTTP.
        in_flight = []
        for url, http in ((urls["https"], "1.1"), (urls["https"], "2"), (urls["http"], "1.1")):
            cmd = ["curl", "-sS", "--max-time", "20", f"--http{'2' if http == '2' else '1.1'}"]
            port = edge.https_port if url.startswith("https") else edge.http_port
            cmd += ["--resolve", f"{agent.host}:{port}:127.0.0.1", "--cacert", str(edge.ca)]
            cmd += ["-w", "\n%{http_code} %{http_version}", f"{url}/slow-{http}"]
            in_flight.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        with slow_app.cond:
            assert slow_app.cond.wait_for(lambda: slow_app.arrived - base == 3, timeout=10)

        sigterm_at = time.monotonic()
        edge.proc.send_signal(signal.SIGTERM)
        # It stops accepting at once: new clients are refused while the slow requests still run.
        wait_for(
            lambda: curl(edge, urls["https"], timeout=2).returncode == 7,  # 7: could not connect
            within=2,
            what="the listener to close",
        )
        assert all(p.poll() is None for p in in_flight)
        answers = []
        for p in in_flight:
            out, err = p.communicate(timeout=20)
            answers.append((p.returncode, out.decode(), err.decode()))
        assert answers == [
            (0, "done /slow-1.1\n200 1.1", ""),
            (0, "done /slow-2\n200 2", ""),
            (0, "done /slow-1.1\n200 1.1", ""),
        ]
        assert edge.proc.wait(timeout=10) == 0
        drained = time.monotonic() - sigterm_at
        assert 2.0 < drained < 8.0, drained  # waited for the slow upstream, within the 5 s drain
        edge.stop()

        fixed_edge[0], took = _restart(edge)
        slow_app.delay = 0
        recovered = _recovers(fixed_edge[0], urls["https"])
        assert _status(fixed_edge[0], urls["http"]) == 200
        print(
            f"\ndrained and exited in {drained:.2f}s, restart {took:.2f}s, "
            f"serving again {recovered:.2f}s later"
        )
    finally:
        agents.stop_all()


def test_sigterm_restart_official_sdk_reconnects(
    fixed_edge: list[EdgeProc], echo_app: int, tmp_path: Path
) -> None:
    """A graceful restart (GOAWAY, then exit) must also fit in the Rust SDK's 2.5 s retry window."""
    edge = fixed_edge[0]
    with sdk_agent(edge, echo_app, "sdk-graceful.hatchway.localhost", tmp_path) as url:
        assert _status(edge, url) == 200
        sigterm_at = time.monotonic()
        edge.proc.send_signal(signal.SIGTERM)
        assert edge.proc.wait(timeout=10) == 0
        exited = time.monotonic() - sigterm_at
        edge.stop()
        fixed_edge[0], took = _restart(edge)
        recovered = _recovers(fixed_edge[0], url)
        print(
            f"\nexited {exited:.2f}s after SIGTERM, restart {took:.2f}s, SDK serving {recovered:.2f}s later"
        )


class Relay:
    """A TCP relay to ``target`` on loopback; ``cut()`` drops every connection through it (a network
    blip: both ends see the connection end while the edge keeps running and the relay keeps listening)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.accepted += 1
            self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


def _online_urls(edge: EdgeProc) -> list[str]:
    log = (edge.data_dir / "edge.log").read_text()
    return [
        line.split("endpoint online ", 1)[1].split()[0]
        for line in log.splitlines()
        if "endpoint online" in line
    ]


@pytest.mark.parametrize("who", ["hatchway", "sdk"])
def test_connection_drop_keeps_a_random_url(
    edge_proc: EdgeProc, echo_app: int, tmp_path: Path, who: str
) -> None:
    """A network blip (the edge keeps running): the agent redials and re-binds; its random URL, the one
    it reports, must serve again (peers.md item 9: reconnect without losing the URL)."""
    relay = Relay(int(edge_proc.tunnel_addr.rsplit(":", 1)[1]))
    server_addr = f"localhost:{relay.port}"  # the edge certificate names localhost
    agents = Agents(edge_proc)
    try:
        with contextlib.ExitStack() as stack:
            if who == "hatchway":
                agent = agents.start(
                    "http",
                    str(echo_app),
                    "--server-addr",
                    server_addr,
                    "--root-cas",
                    str(edge_proc.ca),
                    "--authtoken",
                    edge_proc.token,
                )
                url = agent.url
            else:
                url = stack.enter_context(sdk_agent(edge_proc, echo_app, "", tmp_path, server_addr))
            assert url.endswith(f".hatchway.localhost:{edge_proc.https_port}")  # a random name
            assert _status(edge_proc, url) == 200
            assert relay.accepted == 1
            relay.cut()
            wait_for(lambda: len(_online_urls(edge_proc)) == 2, within=RECOVER_WITHIN, what="the re-bind")
            assert relay.accepted == 2
            assert _online_urls(edge_proc) == [url, url]  # re-bound under the same name
            _recovers(edge_proc, url)
    finally:
        agents.stop_all()
        relay.close()
