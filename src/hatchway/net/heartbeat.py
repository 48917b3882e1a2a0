"""Heartbeat drivers for both rims: the agent beats, the edge echoes and watches for silence.

The decisions (is the echo right, is the peer silent) are in ``hatchway.wire.heartbeat``; this module
only owns the timers and the stream. It never closes anything itself: it calls ``on_dead`` and lets the
session owner decide (Rust SDKs keep a silent session, Go closes it; protocol.md §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from hatchway.errors import SessionClosedError, StreamResetError
from hatchway.net.transport import MuxConnection, MuxStream
from hatchway.wire.heartbeat import Heartbeater, HeartbeatMonitor
from hatchway.wire.rpc import StreamType


async def run_beats(
    conn: MuxConnection,
    hb: Heartbeater,
    on_dead: Callable[[], None],
    on_latency: Callable[[float], None] | None = None,
) -> None:
    """Agent side: open the heartbeat stream, beat every ``hb.interval``, report silence once."""
    loop = asyncio.get_running_loop()
    stream = await conn.open_stream(StreamType.HEARTBEAT)
    reader = conn.spawn(_read_echoes(stream, hb, on_latency), name="heartbeat-echo")
    hb.start(loop.time())
    try:
        while not conn.is_closed:
            now = loop.time()
            if hb.is_dead(now):
                on_dead()
                return
            if hb.due(now):
                await stream.write(hb.beat(os.urandom(4), now))
            # Wake for the next beat or the deadline, whichever is first; a late echo is noticed within
            # half an interval. The floor keeps a tiny interval from spinning.
            wake = min(hb.deadline(), hb.next_due()) - loop.time()
            await asyncio.sleep(min(max(0.01, wake), hb.interval / 2))
    except (SessionClosedError, StreamResetError):
        return
    finally:
        reader.cancel()


async def _read_echoes(
    stream: MuxStream, hb: Heartbeater, on_latency: Callable[[float], None] | None
) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(SessionClosedError, StreamResetError):
        while chunk := await stream.read():
            latency = hb.receive(chunk, loop.time())
            if latency is not None and on_latency is not None:
                on_latency(latency)


async def echo_beats(stream: MuxStream, monitor: HeartbeatMonitor) -> None:
    """Edge side: echo every 4-byte group unchanged (protocol.md §4) and note when beats arrive."""
    loop = asyncio.get_running_loop()
    monitor.start(loop.time())
    with contextlib.suppress(SessionClosedError, StreamResetError):
        while chunk := await stream.read():
            out = monitor.receive(chunk, loop.time())
            if out:
                await stream.write(out)


async def watch_silence(conn: MuxConnection, monitor: HeartbeatMonitor, on_dead: Callable[[], None]) -> None:
    """Edge side: call ``on_dead`` when no beat arrived for interval + tolerance."""
    loop = asyncio.get_running_loop()
    while not conn.is_closed:
        now = loop.time()
        if monitor.is_dead(now):
            on_dead()
            return
        await asyncio.sleep(max(0.01, monitor.last_seen + monitor.interval + monitor.tolerance - now + 0.001))
