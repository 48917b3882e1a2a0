"""WebSockets and 100 MiB bodies through ``hatchway edge`` + ``hatchway http``, as a user drives them.

A WebSocket echo app (the ``websockets`` library) behind the agent talks to a ``websockets`` client over
``wss://`` (the edge's HTTPS listener, HTTP/1.1 Upgrade) and over ``ws://`` (``--scheme http,https``):
text and binary messages, one of 1 MiB, and a clean close on both sides.

Bulk: a small threaded upstream hashes a 100 MiB upload (Content-Length and chunked) and streams
100 MiB of deterministic pseudo-random bytes for ``GET /download``; curl drives both over HTTPS and the
sha256 must match both ways. The edge's (and the agent's) resident memory is sampled from
``/proc/PID/status`` during the transfers: bodies stream, so it stays far below the body size.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from e2e_support import Agents, EdgeProc, curl, serving

MiB = 1 << 20
BULK = 100 * MiB
RSS_LIMIT = 300 * MiB
RSS_GROWTH_LIMIT = 64 * MiB


# ---- WebSocket -----------------------------------------------------------------------------------------


async def _echo(ws: ServerConnection) -> None:
    """Echo every message; the first answer is the upgrade request the app saw (path and headers).
    On ``/bye`` the app closes first (code 4000) after one echo."""
    req = ws.request
    assert req is not None
    await ws.send(json.dumps({"path": req.path, "headers": [[k, v] for k, v in req.headers.raw_items()]}))
    async for message in ws:
        await ws.send(message)
        if req.path == "/bye":
            await ws.close(4000, "bye from the app")


def _client_ssl(edge: EdgeProc) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(edge.ca))
    ctx.set_alpn_protocols(["http/1.1"])  # as browsers do for WebSockets: never h2 here
    return ctx


def _connect(uri: str, edge: EdgeProc) -> connect:
    """Dial 127.0.0.1 at the URI's port; Host (and SNI for wss) carry the URI's host name."""
    parts = urlsplit(uri)
    kwargs: dict[str, object] = {"host": "127.0.0.1", "port": parts.port, "proxy": None}
    if parts.scheme == "wss":
        kwargs |= {"ssl": _client_ssl(edge), "server_hostname": parts.hostname}
    return connect(uri, max_size=4 * MiB, open_timeout=10, close_timeout=10, **kwargs)  # type: ignore[arg-type]


async def _exchange(uri: str, edge: EdgeProc) -> None:
    """Text, binary and a 1 MiB binary message round trip; then a clean close (1000) from the client."""
    parts = urlsplit(uri)
    async with _connect(uri, edge) as ws:
        seen = json.loads(await _recv(ws))
        assert seen["path"] == parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {k.lower(): v for k, v in seen["headers"]}
        assert headers["host"] == parts.netloc  # the public host, as the client sent it
        assert headers["upgrade"].lower() == "websocket"
        assert headers["x-forwarded-proto"] == ("https" if parts.scheme == "wss" else "http")
        await ws.send("héllo, wörld")
        assert await _recv(ws) == "héllo, wörld"
        small = bytes(range(256))
        await ws.send(small)
        assert await _recv(ws) == small
        big = random.Random(7).randbytes(MiB)
        await ws.send(big)
        assert await _recv(ws) == big
        for i in range(20):  # many small frames back to back, answered in order
            await ws.send(f"n{i}")
        assert [await _recv(ws) for _ in range(20)] == [f"n{i}" for i in range(20)]
        await ws.ping()
    assert ws.close_code == 1000
    assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000  # the app answered


async def _recv(ws: ClientConnection) -> str | bytes:
    async with asyncio.timeout(20):
        return await ws.recv()


async def test_websocket_over_wss_and_ws(edge_proc: EdgeProc, agents: Agents) -> None:
    closes: asyncio.Queue[int | None] = asyncio.Queue()  # the close code each app connection ended with

    async def handler(ws: ServerConnection) -> None:
        try:
            await _echo(ws)
        finally:
            closes.put_nowait(ws.close_code)

    async def next_close() -> int | None:
        async with asyncio.timeout(10):
            return await closes.get()

    async with serve(handler, "127.0.0.1", 0, max_size=4 * MiB) as server:
        port = server.sockets[0].getsockname()[1]
        secure = agents.start("http", str(port))
        wss = secure.url.replace("https://", "wss://")
        await _exchange(wss + "/chat/room-1?x=1", edge_proc)

        both = agents.start("http", str(port), "--scheme", "http,https", urls=2)
        urls = [str(line["url"]) for line in both.lines if "url" in line]
        plain = next(u for u in urls if u.startswith("http://"))
        await _exchange(plain.replace("http://", "ws://") + "/plain", edge_proc)
        tls = next(u for u in urls if u.startswith("https://"))
        await _exchange(tls.replace("https://", "wss://") + "/secure", edge_proc)

        # The app saw each close handshake complete: close code 1000 on its side too.
        assert [await next_close() for _ in range(3)] == [1000, 1000, 1000]

        # The app closes first: its close frame reaches the client, whose answer reaches the app.
        async with _connect(tls.replace("https://", "wss://") + "/bye", edge_proc) as ws:
            await _recv(ws)  # the request echo
            await ws.send("last words")
            assert await _recv(ws) == "last words"
            async with asyncio.timeout(10):
                await ws.wait_closed()
        assert ws.close_code == 4000 and ws.close_reason == "bye from the app"
        assert await next_close() == 4000


# ---- bulk bodies -------------------------------------------------------------------------------------


def _pseudo_random(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


class BulkHandler(BaseHTTPRequestHandler):
    """``POST /upload`` (Content-Length or chunked) answers ``{"sha256", "len"}``; ``GET /download``
    streams ``server.payload`` with a Content-Length."""

    protocol_version = "HTTP/1.1"
    server: BulkServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _json(self, doc: dict[str, object]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunks(self) -> Iterator[bytes]:
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                left = size
                while left:
                    piece = self.rfile.read(min(left, MiB))
                    if not piece:
                        raise ConnectionError("body cut short")
                    left -= len(piece)
                    yield piece
                self.rfile.readline()  # CRLF after the chunk
        else:
            left = int(self.headers.get("content-length") or 0)
            while left:
                piece = self.rfile.read(min(left, MiB))
                if not piece:
                    raise ConnectionError("body cut short")
                left -= len(piece)
                yield piece

    def do_POST(self) -> None:
        digest = hashlib.sha256()
        n = 0
        for piece in self._chunks():
            digest.update(piece)
            n += len(piece)
        self.server.framings.append(
            "chunked" if "chunked" in (self.headers.get("transfer-encoding") or "").lower() else "length"
        )
        self._json({"sha256": digest.hexdigest(), "len": n})

    def do_GET(self) -> None:
        payload = memoryview(self.server.payload)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        for i in range(0, len(payload), 256 * 1024):
            self.wfile.write(payload[i : i + 256 * 1024])


class BulkServer(ThreadingHTTPServer):
    daemon_threads = True
    payload = b""
    framings: list[str]


class RssWatch:
    """Samples VmRSS of some processes every 20 ms in a thread; ``peak[pid]`` is the largest seen (bytes)."""

    def __init__(self, *pids: int) -> None:
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss(pid: int) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for pid in self.pids:
                try:
                    self.peak[pid] = max(self.peak[pid], self.rss(pid))
                except (OSError, ValueError):
                    pass

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def download_payload() -> bytes:
    return _pseudo_random(2, BULK)


@pytest.fixture
def bulk_app(download_payload: bytes) -> Iterator[BulkServer]:
    server = BulkServer(("127.0.0.1", 0), BulkHandler)
    server.payload = download_payload
    server.framings = []
    with serving(server):
        yield server


def _mib(n: int) -> str:
    return f"{n / MiB:.0f} MiB"


@pytest.fixture(scope="module")
def upload_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("bulk") / "upload.bin"
    data = _pseudo_random(1, BULK)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("http", ["1.1", "2"])
def test_100_mib_up_and_down_stream_with_bounded_memory(
    edge_proc: EdgeProc,
    agents: Agents,
    bulk_app: BulkServer,
    upload_file: tuple[Path, str],
    tmp_path: Path,
    http: str,
) -> None:
    agent = agents.start("http", str(bulk_app.server_address[1]))
    upload, up_sha = upload_file
    down_sha = hashlib.sha256(bulk_app.payload).hexdigest()
    download = tmp_path / "download.bin"
    timings: dict[str, float] = {}
    pids = edge_proc.proc.pid, agent.proc.pid
    assert curl(edge_proc, agent.url + "/upload", "-d", "warm-up", http=http).returncode == 0
    baseline = {pid: RssWatch.rss(pid) for pid in pids}

    with RssWatch(*pids) as watch:
        start = time.monotonic()
        res = curl(edge_proc, agent.url + "/upload", "--data-binary", f"@{upload}", timeout=60, http=http)
        timings["upload"] = time.monotonic() - start
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == {"sha256": up_sha, "len": BULK}

        start = time.monotonic()
        res = curl(
            edge_proc,
            agent.url + "/upload",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            f"@{upload}",
            timeout=60,
            http=http,
        )
        timings["chunked upload"] = time.monotonic() - start
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == {"sha256": up_sha, "len": BULK}
        # The upstream saw each framing as the client sent it (over h2 no length means chunked upstream).
        assert bulk_app.framings[1:] == ["length", "chunked"]

        start = time.monotonic()
        res = curl(
            edge_proc,
            agent.url + "/download",
            "-o",
            str(download),
            "-w",
            "%{http_version} %{http_code} %{size_download}",
            timeout=60,
            http=http,
        )
        timings["download"] = time.monotonic() - start
        assert res.returncode == 0, res.stderr
        assert res.stdout.decode().split() == [http, "200", str(BULK)]
        assert download.stat().st_size == BULK
        assert hashlib.sha256(download.read_bytes()).hexdigest() == down_sha

    print(f"\nHTTP/{http} {timings=}")
    for pid, name in zip(pids, ("edge", "agent"), strict=True):
        peak, base = watch.peak[pid], baseline[pid]
        print(f"{name}: RSS {_mib(base)} before, peak {_mib(peak)}")
        assert 0 < peak < RSS_LIMIT, f"{name} RSS peaked at {_mib(peak)}: are bodies buffered?"
        # Buffering one 100 MiB body would add 100 MiB; streaming needs a few windows' worth.
        assert peak - base < RSS_GROWTH_LIMIT, f"{name} RSS grew by {_mib(peak - base)}"
