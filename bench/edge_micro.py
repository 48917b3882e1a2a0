"""Micro-benchmark: the edge's Python cost per small keep-alive request on its fast path, without sockets.

Wires a real ``Http1Connection`` (the HTTP listener's protocol) and a real ``MuxConnection`` (the tunnel's)
to fake transports that only collect bytes, routes through a real ``Registry`` to one endpoint, and replays
what ``bench/http_proxy.py``'s wrk run makes the edge do per request: the client's request bytes in, the
Proxy stream's DATA frame out (one flush), the agent's response frame in, the response bytes out. The agent
side is pre-encoded bytes, so only edge code is timed; syscalls, TLS and the event loop's polling are not
(``bench/http_proxy.py`` measures those). Prints microseconds per request (the best of ``REPEAT`` runs of
``N``; the machine's other work only ever adds time) and, with ``--profile``, a cProfile of one run.

Run: ``.venv/bin/python bench/edge_micro.py [--profile]``. For comparing changes on one machine in one run.
It times whatever the package loads: the mypyc build of the hot modules when it is fresh
(``hatchway/_native.py``), the sources with ``HATCHWAY_PURE=1``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from typing import Any

import uvloop

from hatchway.edge.listeners.http1 import Http1Connection
from hatchway.edge.registry import Endpoint, Registry
from hatchway.edge.tunnels import AgentSession
from hatchway.net.transport import MuxConnection
from hatchway.wire import messages as m
from hatchway.wire import mux
from hatchway.wire.frames import FrameType, header

N = 20000
REPEAT = 7
HOST = "bench.hatchway.localhost"
REQUEST = b"GET /small.bin HTTP/1.1\r\nHost: bench.hatchway.localhost:9080\r\n\r\n"  # what wrk sends
BODY = b"x" * 256
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 15:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 256\r\n"
    b"Last-Modified: Fri, 27 Nov 2026 14:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6740a0b0-100"\r\nAccept-Ranges: bytes\r\n\r\n' + BODY
)  # what nginx answers for the 256 B file


class Sink:
    """A transport that keeps what is written (the listeners only write, check and close)."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.out: list[bytes] = []
        self._peer = peer

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peer if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    abort = close


class Hooks:
    """The session's hooks are not used on the data path."""


async def setup() -> tuple[Http1Connection, MuxConnection, Sink, Sink, int]:
    conn = MuxConnection(mux.MuxSession(client=False))
    tunnel = Sink(("127.0.0.1", 40000))
    conn.connection_made(tunnel)  # type: ignore[arg-type]
    session = AgentSession(conn, Hooks())  # type: ignore[arg-type]
    registry = Registry(set())
    ep = Endpoint("http", HOST, f"http://{HOST}:9080", "tn_bench", session, "acct", m.HttpEndpoint())
    registry.endpoints[("http", HOST)] = [ep]
    client = Http1Connection(registry, "http", lambda c: None)
    wire = Sink(("127.0.0.1", 50000))
    client.connection_made(wire)  # type: ignore[arg-type]
    # The first request takes the general path, which opens the Proxy stream the rest reuse.
    client.data_received(REQUEST)
    for _ in range(20):
        await asyncio.sleep(0)
    stream_id = max(conn._streams)  # the Proxy stream just opened
    conn.data_received(frame(stream_id))
    for _ in range(20):
        await asyncio.sleep(0)
    assert wire.out and wire.out[-1].endswith(BODY), wire.out
    return client, conn, wire, tunnel, stream_id


def frame(stream_id: int) -> bytes:
    return header(len(RESPONSE), FrameType.DATA, 0, stream_id) + RESPONSE


async def run(
    client: Http1Connection, conn: MuxConnection, wire: Sink, tunnel: Sink, sid: int
) -> tuple[float, float, float]:
    """Microseconds per request: in all, then the request half (client bytes in, frame out) and the
    response half (frame in, client bytes out), the halves timed in a second pass."""
    answer = frame(sid)
    wire.out.clear()
    tunnel.out.clear()
    client.data_received(REQUEST)
    conn._flush()
    conn.data_received(answer)
    sent = len(tunnel.out[-1])  # the request's DATA frame; the agent gives its window back in batches
    refill = header(4, FrameType.WNDINC, 0, sid) + (sent * 256).to_bytes(4, "big")
    wire.out.clear()
    start = time.perf_counter()
    for i in range(N):
        client.data_received(REQUEST)
        conn._flush()  # the write the loop's call_soon would make (the scheduled one finds nothing)
        conn.data_received(answer if i % 256 else refill + answer)
    elapsed = time.perf_counter() - start
    await asyncio.sleep(0)
    assert len(wire.out) == N and wire.out[-1].endswith(BODY), "the fast path did not answer every request"
    clock = time.perf_counter
    half = [0.0, 0.0]
    for i in range(N):
        t0 = clock()
        client.data_received(REQUEST)
        conn._flush()
        t1 = clock()
        conn.data_received(answer if i % 256 else refill + answer)
        half[0] += t1 - t0
        half[1] += clock() - t1
    await asyncio.sleep(0)
    wire.out.clear()
    return elapsed / N * 1e6, half[0] / N * 1e6, half[1] / N * 1e6


async def main(profile: bool) -> None:
    client, conn, wire, tunnel, sid = await setup()
    runs = [await run(client, conn, wire, tunnel, sid) for _ in range(REPEAT)]
    best = min(r[0] for r in runs)
    print(f"edge fast path: {best:6.2f} us per request (Python only; best of {REPEAT} x {N})")
    print(
        f"  request half: {min(r[1] for r in runs):6.2f} us, response half: {min(r[2] for r in runs):6.2f} us"
    )
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        await run(client, conn, wire, tunnel, sid)
        prof.disable()
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one run")
    args = parser.parse_args()
    uvloop.run(main(args.profile))
