"""Many clients drop their connections mid-response while the tunnel and every other request stay up.

A real ``hatchway edge`` and ``hatchway http --scheme http,https`` front a local upstream that streams a
20 MiB response in small, slightly paced writes. Fifty raw HTTP/1.1 clients (plain and TLS) each read a
part of that response and then go away abruptly: a FIN, an abort, or an RST (``SO_LINGER`` 0); a few leave
before the response head. Meanwhile other clients make ordinary keep-alive requests whose bodies must
arrive intact (SHA-256 checked). Afterwards the upstream sees every abandoned response stopped (the edge
must reset those streams, not leave them parked on a full window), the same agent session still serves
new requests on the unchanged URLs, the agent never logged a reconnect, and the edge is alive with no
traceback in its log. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO
from urllib.parse import parse_qs, urlsplit

import pytest

from e2e_support import AgentProc, Agents, EdgeProc, wait_for

STREAM_SIZE = 20 << 20
STREAM_CHUNK = 64 << 10
PATTERN = random.Random(7).randbytes(STREAM_CHUNK)  # the streamed body is this block over and over
N_DROPPERS = 50
N_NORMAL_WORKERS = 8
REQUESTS_PER_WORKER = 6
SCENARIO_LIMIT = 40.0

pytestmark = pytest.mark.timeout(60)


def body_for(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


class Upstream:
    """The local app: ``/stream`` (20 MiB, paced) and ``/data?size=N&seed=S`` (deterministic bytes)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.streaming = 0  # /stream responses still being written
        self.streams_started = 0
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/stream":
                    upstream.stream(self)
                    return
                q = parse_qs(url.query)
                body = body_for(int(q["size"][0]), int(q["seed"][0]))
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def stream(self, h: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.streaming += 1
            self.streams_started += 1
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/octet-stream")
            h.send_header("Content-Length", str(STREAM_SIZE))
            h.end_headers()
            for _ in range(STREAM_SIZE // STREAM_CHUNK):
                h.wfile.write(PATTERN)
                time.sleep(0.002)
        except OSError:
            h.close_connection = True  # the agent dropped the upstream connection: what we want to see
        finally:
            with self.lock:
                self.streaming -= 1

    def __enter__(self) -> Upstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


class Drain:
    """Reads an agent's stdout and stderr in threads so its pipes never fill, keeping every line."""

    def __init__(self, agent: AgentProc) -> None:
        self.lines: list[str] = [json.dumps(line) for line in agent.lines]
        self.threads = [
            threading.Thread(target=self._pump, args=(pipe,), daemon=True)
            for pipe in (agent.proc.stdout, agent.proc.stderr)
            if pipe is not None
        ]
        for t in self.threads:
            t.start()

    def _pump(self, pipe: IO[bytes]) -> None:
        try:
            for raw in iter(pipe.readline, b""):
                self.lines.append(raw.decode(errors="replace").rstrip())
        except (OSError, ValueError):
            pass  # the fixture closed the pipe


# ---- the raw HTTP/1.1 client ----------------------------------------------------------------------------
@dataclass
class Target:
    host: str  # the endpoint's name (Host header and SNI)
    port: int
    tls: ssl.SSLContext | None

    @property
    def authority(self) -> bytes:
        return f"{self.host}:{self.port}".encode()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.tls is None:
            return await asyncio.open_connection("127.0.0.1", self.port)
        return await asyncio.open_connection("127.0.0.1", self.port, ssl=self.tls, server_hostname=self.host)

    def request(self, path: str) -> bytes:
        return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + self.authority + b"\r\n\r\n"


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, t: Target, path: str) -> bytes:
    writer.write(t.request(path))
    status, headers = await read_head(reader)
    assert status == 200, (status, headers)
    return await reader.readexactly(int(headers["content-length"]))


def close_abruptly(writer: asyncio.StreamWriter, how: str) -> None:
    if how == "rst":
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    elif how == "abort":
        writer.transport.abort()  # unread data in the receive buffer: the kernel sends an RST too
    else:
        writer.close()  # FIN (for TLS: close_notify, then FIN)


@dataclass
class Outcome:
    dropped: list[str] = field(default_factory=list)
    checked: int = 0
    failures: list[str] = field(default_factory=list)


async def dropper(i: int, t: Target, out: Outcome) -> None:
    """Start the 20 MiB response, read part of it (checking the bytes), then vanish."""
    rnd = random.Random(i)
    await asyncio.sleep(rnd.uniform(0, 2.0))  # spread over the normal traffic
    how = ("fin", "abort", "rst")[i % 3]
    reader, writer = await t.connect()
    try:
        writer.write(t.request("/stream"))
        if i % 10 == 9:
            await asyncio.sleep(0.05)  # leave before (or just as) the response head arrives
        else:
            status, headers = await read_head(reader)
            assert status == 200 and int(headers["content-length"]) == STREAM_SIZE, (status, headers)
            want = rnd.randint(1, 48) * 64 << 10  # 64 KiB .. 3 MiB of the 20 MiB
            got = 0
            while got < want:
                chunk = await reader.read(min(256 << 10, want - got))
                assert chunk, f"dropper {i}: EOF after {got} bytes"
                off = got % STREAM_CHUNK
                expect = (PATTERN[off:] + PATTERN * (len(chunk) // STREAM_CHUNK + 1))[: len(chunk)]
                assert chunk == expect, f"dropper {i}: corrupt body at {got}"
                got += len(chunk)
        out.dropped.append(f"{'tls' if t.tls else 'tcp'}-{how}")
    finally:
        close_abruptly(writer, how)
        if how == "fin":
            # Let the close finish (TLS sends close_notify first) so no transport outlives the loop.
            try:
                async with asyncio.timeout(5):
                    await writer.wait_closed()
            except Exception:
                writer.transport.abort()


async def normal_worker(w: int, t: Target, out: Outcome) -> None:
    """Keep-alive requests of assorted sizes on one connection, each body checked."""
    rnd = random.Random(1000 + w)
    reader, writer = await t.connect()
    try:
        for k in range(REQUESTS_PER_WORKER):
            size = rnd.choice([0, 1, 300, 16 << 10, 200 << 10, 1 << 20, 3 << 20])
            seed = w * 100 + k
            body = await get(reader, writer, t, f"/data?size={size}&seed={seed}")
            if hashlib.sha256(body).digest() != hashlib.sha256(body_for(size, seed)).digest():
                out.failures.append(f"worker {w} request {k}: checksum mismatch ({len(body)} bytes)")
            out.checked += 1
            await asyncio.sleep(rnd.uniform(0, 0.3))
    finally:
        writer.close()
        await writer.wait_closed()


async def scenario(plain: Target, secure: Target) -> Outcome:
    out = Outcome()
    async with asyncio.timeout(SCENARIO_LIMIT):
        droppers = [dropper(i, secure if i % 4 == 3 else plain, out) for i in range(N_DROPPERS)]
        workers = [normal_worker(w, secure if w % 2 else plain, out) for w in range(N_NORMAL_WORKERS)]
        results = await asyncio.gather(*droppers, *workers, return_exceptions=True)
        await asyncio.sleep(0.1)  # aborted transports finish closing
    for r in results:
        if isinstance(r, BaseException):
            out.failures.append(f"{type(r).__name__}: {r}")
    return out


async def after(plain: Target, secure: Target) -> int:
    """Fresh connections on both schemes after the storm: all must work."""
    checked = 0
    async with asyncio.timeout(15):
        for t in (plain, secure, plain, secure):
            reader, writer = await t.connect()
            try:
                for size, seed in ((1234, 1), (2 << 20, 2)):
                    assert await get(reader, writer, t, f"/data?size={size}&seed={seed}") == body_for(
                        size, seed
                    )
                    checked += 1
            finally:
                writer.close()
                await writer.wait_closed()
    return checked


def test_clients_disconnecting_mid_response_leave_tunnel_and_others_up(
    edge_proc: EdgeProc, agents: Agents, upstream: Upstream
) -> None:
    started = time.monotonic()
    agent = agents.start("http", f"127.0.0.1:{upstream.port}", "--scheme", "http,https", urls=2)
    urls = {u.split("://")[0]: u for u in (str(line["url"]) for line in agent.lines if "url" in line)}
    assert set(urls) == {"http", "https"}, urls
    log = Drain(agent)
    tls_ctx = ssl.create_default_context(cafile=str(edge_proc.ca))
    tls_ctx.set_alpn_protocols(["http/1.1"])
    plain = Target(agent.host, edge_proc.http_port, None)
    secure = Target(agent.host, edge_proc.https_port, tls_ctx)
    assert urlsplit(urls["http"]).port == plain.port and urlsplit(urls["https"]).port == secure.port

    out = asyncio.run(scenario(plain, secure))
    assert not out.failures, out.failures
    assert out.checked == N_NORMAL_WORKERS * REQUESTS_PER_WORKER
    assert len(out.dropped) == N_DROPPERS
    assert {"tcp-fin", "tcp-abort", "tcp-rst", "tls-fin", "tls-abort", "tls-rst"} <= set(out.dropped)
    assert upstream.streams_started >= N_DROPPERS * 0.8  # the early leavers may not reach the upstream

    # Every abandoned 20 MiB response must stop at the upstream: the edge resets the stream, the agent
    # drops the upstream connection. A stream left half-closed would hold its upstream connection forever.
    wait_for(lambda: upstream.streaming == 0, within=10, what="abandoned upstream responses to stop")

    # The same session still serves both URLs; nothing reconnected, nothing crashed.
    assert asyncio.run(after(plain, secure)) == 8
    assert edge_proc.proc.poll() is None, "the edge exited"
    assert agent.proc.poll() is None, "the agent exited"
    lines = list(log.lines)
    assert not [line for line in lines if "reconnect" in line], lines
    assert not [line for line in lines if '"lvl": "error"' in line or "Traceback" in line], lines
    edge_log = (edge_proc.data_dir / "edge.log").read_text(errors="replace")
    assert "Traceback" not in edge_log, edge_log[-4000:]
    assert "closing tunnel session" not in edge_log, edge_log[-4000:]
    assert time.monotonic() - started < 60
