"""Benchmark: bulk throughput of the muxado transport over TLS against a plain TLS socket copy.

Run it as ``.venv/bin/python bench/mux_throughput.py [--mib N]``. In one run it measures, over loopback
on 127.0.0.1 only, with the same TLS settings (``hatchway.net.tls`` dev CA, ``server_context`` /
``client_context``) and the same event loop (uvloop when installed):

* ``plain-tls``: the baseline - a client ``asyncio.Protocol`` writes N MiB into one TLS connection
  (1 MiB / 256 KiB write-buffer limits, like ``MuxConnection``), the server counts and discards them;
* ``mux-1``: one muxado stream over one TLS tunnel (``MuxConnection`` both ends) carrying N MiB;
* ``mux-64``: 64 muxado streams over one TLS tunnel carrying N MiB in total.

Client and server run in separate processes (spawned fresh for every measurement, so neither end shares
an event loop or a core with the other; this is a 2-core machine). Rounds are interleaved (a, b, c, a,
b, c, ...) and the table reports medians, each case's ratio to the plain TLS copy, the CPU each side
used (a side near 100% is the bottleneck) and whether the targets are met: mux-1 >= 0.60 and mux-64 >=
0.50 of plain-tls. ``--profile client|server`` runs that side of the mux cases under cProfile and
prints where its time goes. Every wait is bounded; the benchmark stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import multiprocessing
import os
import pstats
import resource
import socket
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from hatchway.net import tls
from hatchway.net.transport import MuxConnection, MuxStream
from hatchway.wire.mux import MuxSession

HOST = "127.0.0.1"
SERVER_NAME = "localhost"
CASES = ("plain-tls", "mux-1", "mux-64")
TARGETS = {"mux-1": 0.60, "mux-64": 0.50}
STREAM_TYPE = 1
PAYLOAD_SIZE = 4 << 20  # one random buffer, sent again and again through memoryview slices
RUN_LIMIT = 120.0  # seconds for one measurement, connection to last byte
START_LIMIT = 60.0  # seconds for a child process to start and report its port


@dataclass(frozen=True)
class Options:
    case: str
    total: int
    streams: int
    chunk: int
    loop: str
    profile: bool


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def runner(loop: str) -> asyncio.Runner:
    if loop == "uvloop":
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def profiled(enabled: bool, fn: Callable[[], Any]) -> tuple[Any, str]:
    """Run ``fn``; under cProfile when ``enabled``, returning the top of the report as text."""
    if not enabled:
        return fn(), ""
    prof = cProfile.Profile()
    result = prof.runcall(fn)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(22)
    return result, out.getvalue()


# ---- baseline: a plain TLS copy ------------------------------------------------------------------------
class SinkProtocol(asyncio.Protocol):
    """Server of the baseline: counts and discards; one byte back once everything has arrived."""

    def __init__(self, total: int, finished: asyncio.Future[int]) -> None:
        self.total = total
        self.received = 0
        self.finished = finished
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= self.total and self.transport is not None:
            self.transport.write(b"\x01")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_result(self.received)


class SourceProtocol(asyncio.Protocol):
    """Client of the baseline: writes ``total`` bytes in ``chunk``-sized slices, obeying pause_writing."""

    def __init__(self, total: int, chunk: int, payload: bytes, acked: asyncio.Future[None]) -> None:
        self.total = total
        self.chunk = chunk
        self.view = memoryview(payload)
        self.sent = 0
        self.paused = False
        self.acked = acked
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_nodelay(transport)
        # The same limits MuxConnection uses, so both cases buffer alike.
        self.transport.set_write_buffer_limits(high=1 << 20, low=256 * 1024)

    def pump(self) -> None:
        tr = self.transport
        assert tr is not None
        size = len(self.view)
        while self.sent < self.total and not self.paused:
            off = self.sent % size
            n = min(self.chunk, self.total - self.sent, size - off)
            tr.write(self.view[off : off + n])
            self.sent += n

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    def data_received(self, data: bytes) -> None:
        if not self.acked.done():
            self.acked.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.acked.done():
            self.acked.set_exception(ConnectionError(f"connection lost before the ack: {exc}"))


# ---- server process --------------------------------------------------------------------------------------
async def serve(opts: Options, pair: tls.KeyPair, pipe: Connection) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[int] = loop.create_future()
    received = 0

    if opts.case == "plain-tls":

        def factory() -> asyncio.Protocol:
            return SinkProtocol(opts.total, finished)

    else:

        async def handler(st: MuxStream) -> None:
            nonlocal received
            n = 0
            while chunk := await st.read():
                n += len(chunk)
            received += n
            await st.write(n.to_bytes(8, "big"), fin=True)

        def factory() -> asyncio.Protocol:
            conn = MuxConnection(MuxSession(client=False), handler)
            conn.closed.add_done_callback(lambda _: finished.done() or finished.set_result(received))
            return conn

    server = await loop.create_server(factory, HOST, 0, ssl=tls.server_context(pair))
    try:
        cpu0 = cpu_seconds()
        pipe.send(("port", server.sockets[0].getsockname()[1]))
        async with asyncio.timeout(RUN_LIMIT):
            got = await finished  # the client closes once it has every reply
        return {"cpu": cpu_seconds() - cpu0, "received": got}
    finally:
        server.close()


def server_main(opts: Options, pair: tls.KeyPair, pipe: Connection) -> None:
    try:
        with runner(opts.loop) as r:
            result, report = profiled(opts.profile, lambda: r.run(serve(opts, pair, pipe)))
        pipe.send(("result", {**result, "profile": report}))
    except BaseException:
        pipe.send(("error", traceback.format_exc()))


# ---- client process --------------------------------------------------------------------------------------
async def send_mux(conn: MuxConnection, size: int, chunk: int, payload: memoryview) -> None:
    st = await conn.open_stream(STREAM_TYPE)
    sent = 0
    psize = len(payload)
    while sent < size:
        off = sent % psize
        n = min(chunk, size - sent, psize - off)
        sent += n
        await st.write(payload[off : off + n], fin=sent == size)
    reply = await st.readexactly(8)
    if int.from_bytes(reply, "big") != size:
        raise AssertionError(f"server counted {int.from_bytes(reply, 'big')} bytes, sent {size}")


async def run_client(opts: Options, ca_pem: bytes, port: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    ctx = tls.client_context(ca_pem)
    payload = os.urandom(PAYLOAD_SIZE)
    async with asyncio.timeout(RUN_LIMIT):
        if opts.case == "plain-tls":
            acked: asyncio.Future[None] = loop.create_future()
            tr, proto = await loop.create_connection(
                lambda: SourceProtocol(opts.total, opts.chunk, payload, acked),
                HOST,
                port,
                ssl=ctx,
                server_hostname=SERVER_NAME,
            )
            t0, cpu0 = time.perf_counter(), cpu_seconds()
            proto.pump()
            await acked
            elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
            tr.close()
        else:
            _, conn = await loop.create_connection(
                lambda: MuxConnection(MuxSession(client=True)),
                HOST,
                port,
                ssl=ctx,
                server_hostname=SERVER_NAME,
            )
            streams = 1 if opts.case == "mux-1" else opts.streams
            shares = [opts.total // streams] * streams
            shares[0] += opts.total - sum(shares)
            view = memoryview(payload)
            t0, cpu0 = time.perf_counter(), cpu_seconds()
            await asyncio.gather(*(send_mux(conn, s, opts.chunk, view) for s in shares))
            elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
            conn.close()
            await conn.wait_closed()
    return {"elapsed": elapsed, "cpu": cpu}


def client_main(opts: Options, ca_pem: bytes, port: int, pipe: Connection) -> None:
    try:
        with runner(opts.loop) as r:
            result, report = profiled(opts.profile, lambda: r.run(run_client(opts, ca_pem, port)))
        pipe.send(("result", {**result, "profile": report}))
    except BaseException:
        pipe.send(("error", traceback.format_exc()))


# ---- orchestration -----------------------------------------------------------------------------------------
def receive(pipe: Connection, what: str, limit: float) -> Any:
    if not pipe.poll(limit):
        raise TimeoutError(f"{what}: no answer within {limit:.0f}s")
    kind, value = pipe.recv()
    if kind == "error":
        raise RuntimeError(f"{what} failed:\n{value}")
    return value


def measure(
    mpctx: Any, opts: Options, server_opts: Options, pair: tls.KeyPair, ca_pem: bytes
) -> dict[str, Any]:
    """One measurement: a fresh server process and a fresh client process."""
    s_parent, s_child = mpctx.Pipe()
    c_parent, c_child = mpctx.Pipe()
    server = mpctx.Process(target=server_main, args=(server_opts, pair, s_child), daemon=True)
    client = None
    try:
        server.start()
        port = receive(s_parent, f"{opts.case} server start", START_LIMIT)
        client = mpctx.Process(target=client_main, args=(opts, ca_pem, port, c_child), daemon=True)
        client.start()
        c = receive(c_parent, f"{opts.case} client", START_LIMIT + RUN_LIMIT)
        s = receive(s_parent, f"{opts.case} server", RUN_LIMIT)
    finally:
        for proc in (client, server):
            if proc is not None:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
                    proc.join(10)
    if s["received"] != opts.total:
        raise AssertionError(f"{opts.case}: server received {s['received']} of {opts.total} bytes")
    return {
        "mbps": opts.total / c["elapsed"] / 1e6,
        "client_cpu": c["cpu"] / c["elapsed"],
        "server_cpu": s["cpu"] / c["elapsed"],
        "client_profile": c["profile"],
        "server_profile": s["profile"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB per measurement (default 256)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--streams", type=int, default=64, help="streams of the many-stream case")
    parser.add_argument("--chunk-kib", type=int, default=256, help="application write size (KiB)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default=None, help="default: uvloop")
    parser.add_argument("--profile", choices=("client", "server"), help="cProfile one side of the mux cases")
    args = parser.parse_args()
    loop = args.loop
    if loop is None:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            loop = "asyncio"
        else:
            loop = "uvloop"

    ca = tls.create_ca()
    pair = tls.issue_cert(ca, [SERVER_NAME, HOST])
    mpctx = multiprocessing.get_context("spawn")
    total = args.mib << 20
    mux_streams = f"{args.streams} streams" if args.streams != 64 else "64 streams"
    print(
        f"{args.mib} MiB per case, {args.rounds} interleaved rounds, loop={loop}, "
        f"writes of {args.chunk_kib} KiB, {os.cpu_count()} CPUs; mux-64 uses {mux_streams}",
        flush=True,
    )

    results: dict[str, list[dict[str, Any]]] = {c: [] for c in CASES}
    t_start = time.perf_counter()
    for rnd in range(args.rounds):
        line = []
        for case in CASES:
            common = {"total": total, "streams": args.streams, "chunk": args.chunk_kib << 10, "loop": loop}
            prof = args.profile is not None and case != "plain-tls" and rnd == args.rounds - 1
            client_opts = Options(case=case, profile=prof and args.profile == "client", **common)
            server_opts = Options(case=case, profile=prof and args.profile == "server", **common)
            r = measure(mpctx, client_opts, server_opts, pair, ca.cert_pem)
            results[case].append(r)
            line.append(f"{case} {r['mbps']:7.1f}")
            for side in ("client", "server"):
                if r[f"{side}_profile"]:
                    print(f"\n---- cProfile, {case}, {side} side (top by own time) ----")
                    print(r[f"{side}_profile"])
        print(f"round {rnd + 1}: " + "  ".join(line) + "  MB/s", flush=True)

    base = statistics.median(r["mbps"] for r in results["plain-tls"])
    print()
    heads = ("MB/s", "ratio", "target", "met", "client CPU", "server CPU")
    print(
        f"{'case':<10} {heads[0]:>8} {heads[1]:>6} {heads[2]:>8} {heads[3]:>4}  {heads[4]:>10} {heads[5]:>10}"
    )
    all_met = True
    for case in CASES:
        rs = results[case]
        mbps = statistics.median(r["mbps"] for r in rs)
        ratio = mbps / base
        target = TARGETS.get(case)
        met = "" if target is None else ("yes" if ratio >= target else "NO")
        all_met &= met != "NO"
        target_text = "" if target is None else f">= {target:.2f}"
        print(
            f"{case:<10} {mbps:8.1f} {ratio:6.2f} {target_text:>8} {met:>4}  "
            f"{statistics.median(r['client_cpu'] for r in rs):10.0%} "
            f"{statistics.median(r['server_cpu'] for r in rs):10.0%}"
        )
    print(f"\n(MB = 10^6 bytes; medians of {args.rounds} rounds; took {time.perf_counter() - t_start:.0f}s)")
    print(
        "(CPU = a side's user+system time over the transfer's wall time; on loopback the kernel's work "
        "of sending\n queued data is often charged to the receiver, so a fast sender makes its server "
        "look busier)"
    )
    print("all targets met" if all_met else "TARGETS MISSED")
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
