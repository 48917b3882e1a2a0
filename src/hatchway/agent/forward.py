"""Proxy streams to upstreams: ``make_forwarder(upstream)`` gives the handler a bound tunnel runs per stream.

By upstream kind:

* ``http`` / ``https`` / ``unix`` / ``tcp``: a raw splice. Bytes are copied both ways between the stream
  and one upstream connection (TCP, TLS or a unix socket), with backpressure in both directions and half-close
  carried across (the edge's FIN becomes a TCP half-close; the upstream's EOF becomes the stream's FIN).
  HTTP is never parsed, so keep-alive and WebSocket upgrades pass through untouched. TLS has no
  half-close, so over ``https`` the edge's FIN is not passed on: the upstream connection then ends when
  the upstream closes it (or the session does).
* ``https``: TLS to the upstream *without* certificate verification unless ``verify_tls`` is set (ngrok's
  rule for port 443 and ``https://``); SNI carries the upstream host name (never an IP literal).
* ``tcp``: the splice over a plain TCP connection, for TCP endpoints (any protocol, never parsed).
* ``h2c``: HTTP/1.1 translated to HTTP/2 with prior knowledge (``h2c.py``).
* ``file``: the built-in file server (``fileserver.py``).

Convention with the edge: **a stream reset with STREAM_REFUSED before any response byte means the agent
could not reach the upstream** (connection refused, DNS failure, TLS handshake failure, or no connection
within 10 s). Nothing is written on the stream in that case; the edge answers the client with its own
ERR_NGROK_8012 page. A stream reset with STREAM_RESET means the upstream connection broke with an error.

Rules: this module moves bytes and never looks inside them (the edge already rewrote the request), and it
talks to the edge only through the stream. Every upstream connection is closed when its stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import cast

from hatchway.agent.fileserver import serve_files
from hatchway.agent.h2c import serve_h2c
from hatchway.agent.session import ProxyHandler
from hatchway.agent.spec import Upstream
from hatchway.errors import LocalProtocolError, SessionClosedError, StreamResetError
from hatchway.net.sockets import tune
from hatchway.net.transport import MuxStream
from hatchway.wire import messages as m
from hatchway.wire.frames import ErrorCode

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
#: Stop reading the upstream once this much waits for the stream's window (resumed as it drains).
HIGH_WATER = 256 * 1024

Dial = Callable[[Callable[[], asyncio.Protocol]], Awaitable[object]]


class _Upstream(asyncio.Protocol):
    """The upstream socket's side of a splice: holds what it sent until the pump writes it to the stream."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.error: Exception | None = None  # why the connection was lost, if it broke
        self._chunks: list[bytes] = []
        self._size = 0
        self._eof = False
        self._tls = False
        self._reading_paused = False
        self._writing_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        # Fast path: while nothing is queued and the pump is not mid-write, upstream bytes go straight
        # into the stream's send window from this callback (no task wake-up per response).
        self.stream: MuxStream | None = None
        self.pumping = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._tls = transport.get_extra_info("sslcontext") is not None
        tune(transport)  # TCP_NODELAY: a small response must not wait for a delayed ACK

    def data_received(self, data: bytes) -> None:
        stream = self.stream
        if stream is not None and not self._chunks and not self.pumping:
            try:
                sent = stream.write_nowait(data)
            except (SessionClosedError, StreamResetError, LocalProtocolError):
                sent = 0  # the pump meets the same error and ends the splice
            if sent == len(data):
                return
            data = data[sent:]
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= HIGH_WATER and not self._reading_paused:
            tr = self.transport
            if tr is not None and not tr.is_closing():
                self._reading_paused = True
                tr.pause_reading()
        _wake(self._waiter)

    def eof_received(self) -> bool:
        self._eof = True
        _wake(self._waiter)
        # Keep a plain socket half-open so the rest of the request can still go up (TLS cannot).
        return not self._tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self.error = exc
        _wake(self._waiter)
        _wake(self._drain_waiter)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        _wake(self._drain_waiter)

    async def take(self) -> list[bytes]:
        """Everything received since the last call; ``[]`` once the upstream has finished sending."""
        while not self._chunks:
            if self._eof:
                return []
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        self._chunks = []
        self._size = 0
        # The caller writes these next. Data that arrives before it has (an SSH channel's
        # resume_reading below delivers its backlog at once) must queue behind them, not take the
        # direct path in data_received and overtake them.
        self.pumping = True
        if self._reading_paused:
            self._reading_paused = False
            tr = self.transport
            if tr is not None and not tr.is_closing():
                tr.resume_reading()
        return chunks

    async def drain(self) -> None:
        """Wait while the upstream socket's write buffer is over its high-water mark."""
        tr = self.transport
        while self._writing_paused and tr is not None and not tr.is_closing():
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None


def _wake(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


async def splice(stream: MuxStream, first: bytes, dial: Dial) -> None:
    """Connect with ``dial`` and copy bytes both ways until both directions have ended."""
    pipe = _Upstream()
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await dial(lambda: pipe)
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: a host name IDNA cannot encode
        logger.info("upstream unreachable: %s", str(exc) or type(exc).__name__)
        stream.reset(ErrorCode.STREAM_REFUSED)
        return
    transport = pipe.transport
    assert transport is not None
    up = asyncio.ensure_future(_to_upstream(stream, first, pipe, transport))
    try:
        await _to_edge(stream, pipe, transport)
        await up
    finally:
        if not up.done():
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await up
        transport.close()


async def _to_upstream(stream: MuxStream, first: bytes, pipe: _Upstream, tr: asyncio.Transport) -> None:
    def sink(data: bytes) -> bool:
        # Straight from the tunnel's receive path to the upstream socket, unless it is full.
        if tr.is_closing():
            return True  # the upstream is gone: drop, as the loop below does
        if pipe._writing_paused:
            return False
        tr.write(data)
        return True

    try:
        if first:
            tr.write(first)
        stream.set_sink(sink)
        while chunk := await stream.read():
            if tr.is_closing():
                continue  # the upstream is gone: drop the rest until the edge finishes too
            tr.write(chunk)
            await pipe.drain()  # backpressure: stop reading the stream while the upstream is full
        if not tr.is_closing() and tr.can_write_eof():
            tr.write_eof()
    except (SessionClosedError, StreamResetError):
        tr.abort()
    finally:
        stream.set_sink(None)


async def _to_edge(stream: MuxStream, pipe: _Upstream, tr: asyncio.Transport) -> None:
    pipe.stream = stream
    try:
        while chunks := await pipe.take():
            pipe.pumping = True
            for chunk in chunks:
                await stream.write(chunk)  # waits for the stream's window: the upstream's backpressure
            pipe.pumping = False
        if pipe.error is not None:
            logger.info("upstream connection broke: %s", pipe.error)
            stream.reset(ErrorCode.STREAM_RESET)
        else:
            await stream.write_eof()
    except (SessionClosedError, StreamResetError):
        tr.abort()
    finally:
        pipe.stream = None  # no fast-path writes once our side of the stream is finished
        pipe.pumping = False


def upstream_tls_context(verify: bool = False, ca_file: str | None = None) -> ssl.SSLContext:
    """The client context for ``https`` upstreams: unverified unless ``verify``."""
    if verify:
        ctx = ssl.create_default_context(cafile=ca_file)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])  # the splice carries HTTP/1.1 from the edge
    return ctx


def _dialer(upstream: Upstream, ctx: ssl.SSLContext | None) -> Dial:
    async def dial(factory: Callable[[], asyncio.Protocol]) -> object:
        loop = asyncio.get_running_loop()
        if upstream.kind == "unix":
            return await loop.create_unix_connection(factory, upstream.path)
        # Python's ssl never puts an IP literal in SNI, so server_hostname=host is right for both.
        hostname = upstream.host if ctx is not None else None
        return await loop.create_connection(
            factory, upstream.host, upstream.port, ssl=ctx, server_hostname=hostname
        )

    return dial


def make_forwarder(
    upstream: Upstream, *, verify_tls: bool = False, ca_file: str | None = None
) -> ProxyHandler:
    """The proxy handler for ``upstream`` (see the module docstring for each kind)."""
    kind = upstream.kind
    if kind == "file":
        root = upstream.path

        async def serve_directory(header: m.ProxyHeader, stream: MuxStream, first: bytes) -> None:
            await serve_files(root, stream, first)

        return serve_directory
    if kind == "h2c":
        serve = partial(serve_h2c, upstream.host, upstream.port, connect_timeout=CONNECT_TIMEOUT)

        async def relay_h2c(header: m.ProxyHeader, stream: MuxStream, first: bytes) -> None:
            await serve(stream, first)

        return relay_h2c
    if kind not in ("http", "https", "unix", "tcp"):
        raise ValueError(f"unknown upstream kind {kind!r}")
    ctx = upstream_tls_context(verify_tls, ca_file) if kind == "https" else None
    dial = _dialer(upstream, ctx)

    async def forward(header: m.ProxyHeader, stream: MuxStream, first: bytes) -> None:
        await splice(stream, first, dial)

    return forward
