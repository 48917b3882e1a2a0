"""HTTP/1.1 client connections at the edge: parse requests (httptools), send each through a tunnel, stream
the response back.

One client connection maps to one Proxy stream at a time (ngrok's "one stream per public connection"),
reused for keep-alive requests to the same endpoint, so the agent keeps one upstream connection per
client. Bodies stream both ways under backpressure: a slow client holds the stream's window, which holds
the agent. This module owns the client socket; header decisions come from ``edge/proxy.py``. It never
buffers a whole body and never lets one client's failure touch the tunnel.

Two paths run an exchange. The general one is a task per connection (``_serve``) that handles
everything: bodies, upgrades, errors, retries, backpressure. The fast one covers the commonest case, a
bodyless keep-alive request on a connection whose Proxy stream is open, with a response whose head
``h1.passthrough_head`` accepts: it runs from callbacks alone (the request head is written from the
parser callback, the response is relayed from the tunnel's receive callback), with no task wake-up and
no header rebuild, which is most of the edge's cost per small request. Whenever the fast path meets
anything else it hands the exchange, bytes already taken included, to the general path (``_Fast`` is
put at the front of the queue and ``_serve`` resumes it), so both give the same answers. Per connection
it also keeps what repeats between keep-alive requests: the parsed Host and its route (until the
registry's ``generation`` moves), and the Proxy stream's sink. A request head is capped at ``MAX_HEAD``
(431), since httptools would buffer an endless header line.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import cast

import httptools

from hatchway.edge import errors
from hatchway.edge.policy_run import (
    MAX_POLICY_BODY,
    PolicyRun,
    connection_info,
    reply_bytes,
    shortcut,
)
from hatchway.edge.proxy import Request, client_head, upstream_head
from hatchway.edge.registry import Endpoint, Registry
from hatchway.edge.upstream import NoResponse, read_response_head
from hatchway.errors import SessionClosedError, StreamResetError
from hatchway.http import headers as hh
from hatchway.http import websocket as ws
from hatchway.http.h1 import (
    LAST_CHUNK,
    MAX_HEAD,
    BodyDecoder,
    ChunkedScanner,
    Framing,
    ResponseHead,
    encode_chunk,
    general_path_pattern,
    passthrough_head,
)
from hatchway.net.sockets import tune
from hatchway.net.transport import MuxStream
from hatchway.policy.compress import Encoder
from hatchway.policy.model import Conn, Reply
from hatchway.wire.frames import ErrorCode

logger = logging.getLogger(__name__)

ACME_CHALLENGE = b"/.well-known/acme-challenge/"  # HTTP-01 (RFC 8555 §8.3)
BODY_HIGH_WATER = 1 << 20  # pause reading a client whose body is not being consumed past this


# Request headers the listener reads for its own decisions (first value kept).
_NOTED = frozenset({b"host", b"transfer-encoding", b"content-length", b"connection"})
_NO_TOKENS: frozenset[bytes] = frozenset()


def _host_name(host_value: bytes) -> str:
    """The host of a Host header value: port cut off, IPv6 brackets removed, lowercased."""
    host = host_value.decode("latin-1")
    if host.startswith("["):  # an IPv6 literal, maybe with a port after the bracket
        end = host.find("]")
        return (host[1:end] if end > 0 else host[1:]).lower()
    return host.rsplit(":", 1)[0].lower()


class ClientGone(Exception):
    """The client closed or reset its connection; the exchange stops quietly."""


class Body:
    """A request body (or post-upgrade bytes) from the client, consumed by the task that feeds the tunnel."""

    __slots__ = ("_chunks", "_conn", "_waiter", "aborted", "eof", "size")

    def __init__(self, conn: Http1Connection) -> None:
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self.size = 0
        self.eof = False
        self.aborted = False

    def abort(self) -> None:
        """The client went away before the body ended: readers get ``ClientGone``, never a short body."""
        self.aborted = True
        self._wake()

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self.size += len(data)
        if self.size > BODY_HIGH_WATER:
            self._conn._pause_reading()
        self._wake()

    def feed_eof(self) -> None:
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def peek_all(self, limit: int) -> bytes | None:
        """The whole body without consuming it (for a policy action that must see it), or None when it
        grows past ``limit``; reading stays paused meanwhile only if the client outruns ``limit``."""
        while not self.eof:
            if self.size > limit:
                return None
            if self.aborted or self._conn.closed:
                raise ClientGone()
            self._conn._resume_reading()  # the body must arrive whole before anything is sent
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return None if self.size > limit else b"".join(self._chunks)

    async def read(self) -> bytes:
        while not self._chunks:
            if self.eof:
                return b""
            if self.aborted or self._conn.closed:
                # A truncated body must never look complete upstream (a chunked one would end cleanly).
                raise ClientGone()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self.size -= len(chunk)
        if self.size <= BODY_HIGH_WATER // 2:
            self._conn._resume_reading()
        return chunk


class _Fast:
    """A fast-path exchange in flight, or one handed to the general path (``remaining`` < 0: the
    response head has not been passed on yet and ``buf`` holds what arrived of it; otherwise ``buf``
    holds body bytes not yet written and ``remaining`` counts the body bytes still due)."""

    __slots__ = ("buf", "ep", "remaining", "req", "run", "sent_host", "stream", "waiter")

    def __init__(
        self, req: Request, ep: Endpoint, stream: MuxStream, sent_host: bytes, run: PolicyRun | None
    ) -> None:
        self.req = req
        self.run = run
        self.ep = ep
        self.stream = stream
        self.sent_host = sent_host
        self.buf = b""
        self.remaining = -1
        self.waiter: asyncio.Future[None] | None = None  # created only when a draining edge asks


class Http1Connection(asyncio.Protocol):
    """One client connection on the HTTP or HTTPS listener."""

    def __init__(
        self,
        registry: Registry,
        scheme: str,
        on_close: Callable[[Http1Connection], None],
        acme: Callable[[str], bytes | None] | None = None,
        sni: str = "",
    ) -> None:
        self.registry = registry
        self.sni = sni  # the server name of the TLS ClientHello (conn.tls.sni), "" for plain HTTP
        self.scheme = scheme
        self._on_close = on_close
        # HTTP-01 answers (token -> key authorization) of the edge's ACME manager; None: ACME is off.
        self._acme = acme
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.client_port = 0
        self._parser = httptools.HttpRequestParser(self)
        self._queue: collections.deque[tuple[Request, Body, _Fast | None]] = collections.deque()
        self._current: tuple[Request, Body] | None = None
        self._url = b""
        # Bytes received while a request head is incomplete (-1: not inside one); over MAX_HEAD is a 431.
        self._head_bytes = -1
        self._headers: hh.Headers = []
        self._lower: list[bytes] = []
        self._noted: dict[bytes, bytes] = {}
        self._connection: set[bytes] | None = None  # made when a Connection header comes
        # The last Host value and what it parsed to: keep-alive clients send the same one every time.
        self._host_raw: bytes | None = None
        self._host = ""
        # The route of the last host, valid while the registry's generation stays the same.
        self._route_host = ""
        self._route_gen = -1
        self._route_ep: Endpoint | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.Future[None] | None = None  # resolved when a request arrives
        self._busy: asyncio.Future[None] | None = None  # resolved when the current exchange ends
        self._upgraded: Body | None = None
        self._held = b""  # a response head waiting to go out with the first body bytes
        self._paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.last_active = self._loop.time()  # for the edge's idle timeout
        # The Proxy stream this connection uses and the endpoint it belongs to (reused for keep-alive).
        self._stream: MuxStream | None = None
        self._stream_ep: Endpoint | None = None
        self._fast: _Fast | None = None
        self.conn_info: Conn | None = None  # conn.* for policies (connection_made)

    # ---- asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.client_ip, self.client_port = tune(transport)
        self.conn_info = connection_info(transport, self.client_ip, self.client_port, time.time(), self.sni)

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        if self._upgraded is not None:
            self._upgraded.feed(data)
            return
        try:
            self._parser.feed_data(data)
            if self._head_bytes >= 0:
                # httptools keeps an unfinished header line itself, without bound: cap the whole head.
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD:
                    self._head_bytes = -1
                    self._reject(errors.head_too_large(MAX_HEAD))
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else len(data)
            # Bytes after an Upgrade request's head are the client's side of the new protocol.
            assert self._current is not None
            self._upgraded = self._current[1]
            if offset < len(data):
                self._upgraded.feed(data[offset:])
        except httptools.HttpParserError as exc:
            self._reject(errors.bad_request(str(exc) or type(exc).__name__))

    def eof_received(self) -> bool | None:
        if self._upgraded is not None:
            self._upgraded.feed_eof()
            return True  # keep our side open: the upstream may still answer
        if self._current is not None:
            self._current[1].abort()  # EOF in the middle of a request body
        if self.transport is not None and self.transport.get_extra_info("sslcontext") is not None:
            return False  # TLS has no half-close; returning True would only draw a warning
        # Keep our side open while an exchange is in flight so its response can still be written.
        return self.busy

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ClientGone())
        for _req, body, _resume in self._queue:
            body.abort()
        if self._current is not None:
            self._current[1].abort()
        busy = self.busy
        fast, self._fast = self._fast, None
        if fast is not None and fast.waiter is not None and not fast.waiter.done():
            fast.waiter.set_result(None)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        # Mid-exchange the stream must be reset, not finished: otherwise the agent would keep writing a
        # response nobody reads, held by the window for ever.
        self._drop_stream(graceful=not busy)
        self._on_close(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # ---- httptools callbacks -------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._head_bytes = 0
        self._url = b""
        self._headers = []
        self._lower = []
        self._noted = {}  # first value of the few headers the edge reads itself
        self._connection = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        self._headers.append((name, value))
        self._lower.append(lname)
        if lname in _NOTED:
            self._noted.setdefault(lname, value)
            if lname == b"connection":
                if self._connection is None:
                    self._connection = set()
                self._connection.update(t.strip().lower() for t in value.split(b",") if t.strip())

    def on_headers_complete(self) -> None:
        self._head_bytes = -1
        p = self._parser
        noted = self._noted
        host_value = noted.get(b"host", b"")
        if host_value == self._host_raw:
            host = self._host
        else:
            host = _host_name(host_value)
            self._host_raw, self._host = host_value, host
        te = noted.get(b"transfer-encoding")
        # Positional: this runs per request and keyword arguments cost twice as much here.
        req = Request(
            p.get_method(),
            self._url,
            self._headers,
            p.get_http_version(),
            host,
            self.client_ip,
            self.client_port,
            self.scheme,
            p.should_keep_alive(),
            p.should_upgrade(),
            te is not None and b"chunked" in te.lower(),  # chunked
            te is not None or noted.get(b"content-length", b"0").strip() not in (b"0", b""),  # has_body
            self._lower,
            frozenset(self._connection) if self._connection else _NO_TOKENS,
        )
        # ACME HTTP-01 validation of a token the edge published: answered by the edge, before routing.
        acme = self._acme is not None and self._url.startswith(ACME_CHALLENGE) and self._acme_reply(req)
        if (
            self._stream is not None  # the fast path only reuses an open Proxy stream
            and self._fast is None
            and not req.has_body
            and req.keep_alive
            and not req.upgrade
            and req.version == "1.1"
            and req.method != b"HEAD"  # its response announces a length it never sends
            and not self._queue
            and (self._busy is None or self._busy.done())  # with the two above: not ``self.busy``
            and not acme
            and self._fast_start(req)
        ):
            return
        body = Body(self)
        self._current = (req, body)
        self._queue.append((req, body, None))
        self._kick()

    def _acme_reply(self, req: Request) -> bool:
        """Attach the edge's answer to an HTTP-01 request for a token it published; False: not ours (the
        request is routed like any other). The answer goes out through the queue, in order."""
        assert self._acme is not None
        token = bytes(self._url[len(ACME_CHALLENGE) :]).partition(b"?")[0].decode("latin-1")
        answer = self._acme(token)
        if answer is None:
            return False
        req.extra["edge_reply"] = Reply(200, [("content-type", "application/octet-stream")], answer)
        return True

    def _kick(self) -> None:
        """Make the general path look at the queue (unless a fast exchange must finish first)."""
        if self._fast is not None:
            return
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._serve())
        elif self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._current is not None:
            self._current[1].feed(body)

    def on_message_complete(self) -> None:
        if self._current is not None and not self._current[0].upgrade:
            self._current[1].feed_eof()
            self._current = None

    # ---- the fast path (see the module docstring) ------------------------------------------------------
    def _route(self, host: str) -> Endpoint | None:
        """``registry.route`` for this connection's host, remembered while the registry is unchanged
        (only for a host with a single endpoint: a pool picks one at random per request)."""
        registry = self.registry
        if host == self._route_host and registry.generation == self._route_gen:
            return self._route_ep
        ep = registry.route(self.scheme, host)
        if ep is not None and registry.single(self.scheme, host):
            self._route_host, self._route_gen, self._route_ep = host, registry.generation, ep
        return ep

    def _fast_start(self, req: Request) -> bool:
        """Send a bodyless request on the open Proxy stream from this callback; False: use the queue."""
        st = self._stream
        if st is None or not req.host:
            return False
        ep = self._route(req.host)
        if ep is None or ep is not self._stream_ep or ep.fast_add is None or st.at_eof():
            return False
        conn = ep.session.conn
        if conn.is_closed:
            return False
        run: PolicyRun | None = None
        if ep.policy is not None:
            # Request-phase rules only (``Endpoint.fast_add`` is None otherwise): they run here as well,
            # or a static phase is settled without them (``policy_run.shortcut``).
            reply = None
            settled, key = shortcut(ep.policy, ep, req)
            if not settled:
                run = PolicyRun(ep, ep.policy, req, self.conn_info)
                reply = run.answer(req, b"")
                if key is not None and reply is None:
                    run.remember(ep, key)
            if reply is not None:
                accept = hh.get(req.headers, b"accept")
                try:
                    self._write(reply_bytes(reply, accept, close=False, head_only=req.method == b"HEAD"))
                except ClientGone:
                    pass
                return True
        head, sent_host = upstream_head(ep, req)
        # The whole head must fit the window now, or order could break against a later write.
        if conn.session.send_window(st.id) < len(head):
            if ep.policy is not None:
                # The general path must not run the rules a second time (True: they were replayed).
                req.extra["policy_run"] = run if run is not None else True
            return False
        try:
            st.write_nowait(head)
        except (SessionClosedError, StreamResetError):
            return False
        self._fast = _Fast(req, ep, st, sent_host, run)
        if not st.has_sink:
            # Set once per stream: while no fast exchange is in flight it declines everything, which
            # then waits for ``read()`` as if there were no sink.
            st.set_sink(self._fast_data, self._fast_end)
        return True

    def _fast_data(self, data: bytes) -> bool:
        """Response bytes from the tunnel's receive callback. Never raises: the tunnel must not feel it."""
        fast = self._fast
        if fast is None:
            return False
        try:
            if fast.remaining < 0:
                self._fast_head(fast, fast.buf + data if fast.buf else data)
            elif len(data) > fast.remaining or self._write_paused:
                # More than announced, or a client that cannot keep up: the general path deals with it.
                fast.buf = data
                self._fast_handover(fast)
            else:
                self._write(data)
                fast.remaining -= len(data)
                if fast.remaining == 0:
                    self._fast_done(fast)
        except ClientGone:
            self._fast = None
            self._drop_stream(graceful=False)
        except Exception:
            logger.exception("edge fast path failed")
            self._fast = None
            self._drop_stream(graceful=False)
            if self.transport is not None:
                self.transport.abort()
        return True

    def _fast_head(self, fast: _Fast, buf: bytes) -> None:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            fast.buf = buf
            if len(buf) > MAX_HEAD:
                self._fast_handover(fast)
            return
        ep, req = fast.ep, fast.req
        pattern = ep.fast_pattern
        if (ep.rewrite_host or ep.request_add) and fast.sent_host.lower() != (
            hh.get(req.headers, b"host") or b""
        ).lower():
            # Host was rewritten: a Location header needs the general path's rewrite.
            pattern = general_path_pattern(frozenset({*ep.response_remove, b"location"}))
        out = passthrough_head(buf[: end + 4], pattern, ep.fast_add or b"")
        body_len = len(buf) - end - 4
        if out is None or body_len > out[1]:
            fast.buf = buf
            self._fast_handover(fast)
            return
        head, length = out
        if fast.run is not None:
            fast.run.finish(int(head[9:12]))
        self._write(head + buf[end + 4 :] if body_len else head)
        fast.buf = b""
        fast.remaining = length - body_len
        if fast.remaining == 0:
            self._fast_done(fast)

    def _fast_end(self) -> None:
        """The stream ended or was reset during a fast exchange."""
        fast = self._fast
        if fast is None:
            return
        if fast.remaining < 0:
            self._fast_handover(fast)  # no response yet: the general path reports it (or retries)
            return
        # The body was cut short after its head went out: the client must see a broken connection.
        self._fast = None
        self._drop_stream(graceful=False)
        if self.transport is not None:
            self.transport.abort()

    def _fast_done(self, fast: _Fast) -> None:
        self._fast = None
        if fast.waiter is not None and not fast.waiter.done():
            fast.waiter.set_result(None)
        if self._queue:
            self._kick()

    def _fast_handover(self, fast: _Fast) -> None:
        """Give the exchange to the general path, which resumes it where the fast path stopped."""
        fast.stream.set_sink(None)
        self._fast = None
        body = Body(self)
        body.feed_eof()
        self._queue.appendleft((fast.req, body, fast))
        self._kick()

    # ---- flow control helpers -----------------------------------------------------------------------------
    def _pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        tr = self.transport
        if self.closed or tr is None or tr.is_closing():
            raise ClientGone()
        if self._held:
            # The response head rides with the first body bytes: one write, one syscall/TLS record.
            data = self._held + data if data else self._held
            self._held = b""
        tr.write(data)

    def _flush_held(self) -> None:
        if self._held:
            self._write(b"")

    async def _drain(self) -> None:
        self._flush_held()
        if self._write_paused and not self.closed:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self.closed:
            raise ClientGone()

    def _reject(self, err: errors.EdgeError) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(errors.render(err, close=True))
            self.transport.close()

    def _drop_stream(self, graceful: bool) -> None:
        st, self._stream, self._stream_ep = self._stream, None, None
        if st is None:
            return
        if graceful:
            st.send_eof()
        else:
            st.reset(ErrorCode.STREAM_CANCELLED)

    # ---- the exchange loop -----------------------------------------------------------------------------
    async def _serve(self) -> None:
        """One task per connection, waiting for each request in turn (a task per request costs more)."""
        try:
            while not self.closed:
                if not self._queue:
                    if self._paused:
                        self._resume_reading()
                    self._idle = self._loop.create_future()
                    await self._idle
                    continue
                req, body, resume = self._queue.popleft()
                self._busy = self._loop.create_future()
                try:
                    keep = await self._exchange(req, body, resume)
                finally:
                    if not self._busy.done():
                        self._busy.set_result(None)
                    if resume is not None and resume.waiter is not None and not resume.waiter.done():
                        resume.waiter.set_result(None)
                if not keep:
                    self._drop_stream(graceful=True)
                    if self.transport is not None:
                        self.transport.close()
                    return
        except ClientGone:
            self._drop_stream(graceful=False)
        except asyncio.CancelledError:
            self._drop_stream(graceful=False)
            raise
        except Exception:
            logger.exception("edge exchange failed")
            self._drop_stream(graceful=False)
            if self.transport is not None:
                self.transport.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def busy(self) -> bool:
        """An exchange is in flight (a response is being relayed)."""
        return (
            self._fast is not None
            or (self._busy is not None and not self._busy.done())
            or (bool(self._queue) and self._queue[0][2] is not None)
        )

    def in_flight(self) -> list[asyncio.Future[None]]:
        """What a draining edge waits for: the exchange in progress, if any."""
        waiting: list[asyncio.Future[None]] = []
        fast = self._fast or (self._queue[0][2] if self._queue else None)
        if fast is not None:
            if fast.waiter is None:
                fast.waiter = self._loop.create_future()
            waiting.append(fast.waiter)
        if self._busy is not None and not self._busy.done():
            waiting.append(self._busy)
        return waiting

    async def _send_error(self, err: errors.EdgeError, req: Request, body: Body) -> bool:
        close = not req.keep_alive or not body.eof or req.upgrade
        self._write(
            errors.render(err, hh.get(req.headers, b"accept"), close=close, head_only=req.method == b"HEAD")
        )
        await self._drain()
        return not close

    async def _send_reply(self, reply: Reply, req: Request, body: Body) -> bool:
        """An answer the policy made (deny, custom-response, basic-auth's 401...)."""
        close = not req.keep_alive or not body.eof or req.upgrade
        raw = reply_bytes(reply, hh.get(req.headers, b"accept"), close=close, head_only=req.method == b"HEAD")
        self._write(raw)
        await self._drain()
        return not close

    async def _policy_request(
        self, ep: Endpoint, req: Request, body: Body
    ) -> tuple[PolicyRun | None, Reply | None]:
        """Run the endpoint's connect and request phases (reading a bounded body first if asked); no run
        when a static request phase was settled without one (``policy_run.shortcut``)."""
        assert ep.policy is not None
        settled, key = shortcut(ep.policy, ep, req)
        if settled:
            return None, None
        run = PolicyRun(ep, ep.policy, req, self.conn_info)
        reply = run.tcp_connect()
        if reply is None:
            data = await body.peek_all(MAX_POLICY_BODY) if run.needs_body and req.has_body else b""
            reply = run.answer(req, data)
            if key is not None and reply is None:
                run.remember(ep, key)
        return run, reply

    async def _exchange(self, req: Request, body: Body, resume: _Fast | None = None) -> bool:
        """Proxy one request; True when the client connection may carry another. ``resume``: a fast-path
        exchange to finish (its request is already on the stream)."""
        self._held = b""
        if resume is not None:
            if resume.remaining >= 0:
                return await self._finish_fast_body(resume)
            try:
                return await self._exchange_on(
                    resume.ep, req, body, resume.sent_host, b"", resume, resume.run
                )
            finally:
                if resume.run is not None:
                    resume.run.finish(0)  # no-op when the response was reported already
        if req.extra:
            reply = req.extra.pop("edge_reply", None)
            if isinstance(reply, Reply):  # an ACME HTTP-01 answer (``_acme_reply``)
                return await self._send_reply(reply, req, body)
        if not req.host:
            return await self._send_error(errors.bad_request("missing Host header"), req, body)
        ep = self.registry.route(self.scheme, req.host)
        if ep is None:
            return await self._send_error(
                errors.offline(self.registry.url_for(self.scheme, req.host)), req, body
            )
        run: PolicyRun | None = None
        if ep.policy is not None:
            prior = req.extra.pop("policy_run", None)
            if prior is not None:  # the fast path ran the rules (or replayed them: True)
                run, reply = (prior if isinstance(prior, PolicyRun) else None), None
            else:
                run, reply = await self._policy_request(ep, req, body)
            if reply is not None:
                if run is not None and run.closes_connection:
                    return False
                return await self._send_reply(reply, req, body)
        if ep.ws_tcp:
            return await self._websocket_to_tcp(ep, req, body)
        head, sent_host = upstream_head(ep, req)
        try:
            return await self._exchange_on(ep, req, body, sent_host, head, None, run)
        finally:
            if run is not None:
                run.finish(0)  # no-op when the response was reported already

    async def _exchange_on(
        self,
        ep: Endpoint,
        req: Request,
        body: Body,
        sent_host: bytes,
        head: bytes,
        resume: _Fast | None,
        run: PolicyRun | None = None,
    ) -> bool:
        for attempt in (0, 1):
            reused = self._stream is not None and self._stream_ep is ep
            try:
                if resume is not None and attempt == 0:
                    # The fast path sent the request and may have taken part of the response already.
                    stream = resume.stream
                    return await self._relay_response(ep, req, body, stream, sent_host, resume.buf, run)
                if not head:
                    head, sent_host = upstream_head(ep, req)
                stream = await self._acquire(ep)
            except (SessionClosedError, StreamResetError):
                return await self._send_error(errors.agent_unavailable(ep.url), req, body)
            except NoResponse as exc:
                self._drop_stream(graceful=False)
                if not req.has_body and not exc.refused:
                    continue  # the kept-alive stream's upstream went away: retry once on a fresh one
                return await self._send_error(self._no_response_error(ep, exc), req, body)
            try:
                return await self._round_trip(ep, req, body, stream, head, sent_host, run)
            except NoResponse as exc:
                self._drop_stream(graceful=False)
                # A kept-alive stream whose upstream went away: retry once on a fresh one, if nothing of the
                # request body was consumed (bodyless requests only).
                if reused and attempt == 0 and not req.has_body and not exc.refused:
                    continue
                return await self._send_error(self._no_response_error(ep, exc), req, body)
        return False  # pragma: no cover - the loop always returns

    @staticmethod
    def _no_response_error(ep: Endpoint, exc: NoResponse) -> errors.EdgeError:
        if exc.refused:
            return errors.upstream_unreachable(ep.url)
        return errors.invalid_upstream_response(ep.url, exc.detail)

    async def _finish_fast_body(self, fast: _Fast) -> bool:
        """The rest of a fast exchange's body, whose head already went out."""
        reusable = await self._relay_body(fast.stream, Framing.LENGTH, fast.remaining, memoryview(fast.buf))
        if not reusable:
            self._drop_stream(graceful=True)
        return True

    async def _acquire(self, ep: Endpoint) -> MuxStream:
        st = self._stream
        if st is not None and self._stream_ep is ep and not st.at_eof() and not ep.session.conn.is_closed:
            return st
        self._drop_stream(graceful=True)
        st = await ep.session.open_proxy(ep.tunnel_id, f"{self.client_ip}:{self.client_port}", self.scheme)
        self._stream, self._stream_ep = st, ep
        return st

    async def _round_trip(
        self,
        ep: Endpoint,
        req: Request,
        body: Body,
        stream: MuxStream,
        head: bytes,
        sent_host: bytes,
        run: PolicyRun | None = None,
    ) -> bool:
        sender: asyncio.Task[None] | None = None
        try:
            if req.has_body or req.upgrade:
                await stream.write(head)
                sender = self._loop.create_task(self._send_body(req, body, stream))
            else:
                await stream.write(head)
        except (SessionClosedError, StreamResetError) as exc:
            raise NoResponse(refused=False, detail=str(exc)) from exc
        try:
            return await self._relay_response(ep, req, body, stream, sent_host, run=run)
        finally:
            if sender is not None and not sender.done():
                sender.cancel()

    async def _send_body(self, req: Request, body: Body, stream: MuxStream) -> None:
        raw = req.upgrade or not req.chunked
        try:
            while chunk := await body.read():
                await stream.write(chunk if raw else encode_chunk(chunk))
            if req.upgrade:
                await stream.write_eof()
            elif req.chunked:
                await stream.write(LAST_CHUNK)
        except (SessionClosedError, StreamResetError):
            return
        except ClientGone:
            stream.reset(ErrorCode.STREAM_CANCELLED)

    async def _relay_response(
        self,
        ep: Endpoint,
        req: Request,
        body: Body,
        stream: MuxStream,
        sent_host: bytes,
        prefix: bytes = b"",
        run: PolicyRun | None = None,
    ) -> bool:
        def interim(head: ResponseHead) -> None:
            # Interim responses (100 Continue, 103 Early Hints) pass through, cleaned like finals.
            if req.version != "1.0":
                cleaned = hh.strip_error_code(hh.strip_hop_by_hop(head.headers))
                self._write(hh.serialize_response_head(head.status, head.reason or b"-", cleaned))

        rhead, framing, length, buf = await read_response_head(stream, req.method, interim, prefix)
        rest = memoryview(buf)[rhead.size :]
        if rhead.status == 101:
            if not req.upgrade:
                raise NoResponse(refused=False, detail="101 without an upgrade request")
            self._write(client_head(ep, req, rhead, Framing.NONE, sent_host, close=False))
            if rest:
                self._write(rest)
            await self._splice_upgraded(stream)
            return False
        encoder = None
        if run is not None:
            reply = run.response(rhead, req.method)
            run.finish(rhead.status)
            if reply is not None:
                # The policy replaced the response: its body is never read, so the stream cannot be reused.
                self._drop_stream(graceful=False)
                return await self._send_reply(reply, req, body)
            encoder = run.encoder
        unframed_for_client = req.version != "1.1" and (
            framing in (Framing.CLOSE, Framing.CHUNKED) or encoder is not None
        )
        close_after = not req.keep_alive or req.upgrade or unframed_for_client
        if encoder is not None:
            # Compressed: the length changes, so HTTP/1.1 clients get it chunked, HTTP/1.0 ones until close.
            self._held = client_head(ep, req, rhead, Framing.CHUNKED, sent_host, close=close_after)
            reusable = await self._relay_encoded(stream, framing, length, rest, encoder, req.version == "1.1")
        else:
            self._held = client_head(ep, req, rhead, framing, sent_host, close=close_after)
            reusable = await self._relay_body(stream, framing, length, rest, dechunk=req.version != "1.1")
        self._flush_held()
        if not reusable or rhead.connection & {b"close"}:
            self._drop_stream(graceful=True)
        if not body.eof:
            # The upstream answered before the whole request body arrived: this connection is out of sync.
            return False
        return not close_after

    async def _relay_body(
        self, stream: MuxStream, framing: Framing, length: int, first: memoryview, dechunk: bool = False
    ) -> bool:
        """Copy the response body to the client; True when the stream ended cleanly and can be reused.

        Chunked bodies pass through as they are, except to HTTP/1.0 clients (``dechunk``), which get the
        chunk data alone and a closed connection at the end.
        """
        if framing is Framing.NONE:
            return not first
        if framing is Framing.LENGTH:
            remaining = length
            data: bytes | memoryview = first
            while True:
                if data:
                    take = min(len(data), remaining)
                    self._write(data[:take])
                    remaining -= take
                    if take < len(data):
                        return False  # the upstream sent more than it announced
                if remaining == 0:
                    return True
                if self._write_paused:
                    await self._drain()
                data = await self._read_body(stream)
        if framing is Framing.CHUNKED:
            scanner = ChunkedScanner()
            data = first
            while True:
                if data:
                    if dechunk:
                        pieces: list[memoryview] = []
                        used = scanner.feed(data, pieces)
                        for piece in pieces:
                            self._write(piece)
                    else:
                        used = scanner.feed(data)
                        self._write(data[:used])
                    if scanner.done:
                        return used == len(data)
                if self._write_paused:
                    await self._drain()
                data = await self._read_body(stream)
        # Close-delimited: re-frame as chunked for HTTP/1.1 clients; the stream cannot be reused.
        data = first
        while True:
            if data:
                self._write(bytes(data) if dechunk else encode_chunk(bytes(data)))
            if self._write_paused:
                await self._drain()
            self._flush_held()
            try:
                data = await stream.read()
            except (StreamResetError, SessionClosedError):
                raise ClientGone() from None
            if not data:
                if not dechunk:
                    self._write(LAST_CHUNK)
                return False

    async def _relay_encoded(
        self,
        stream: MuxStream,
        framing: Framing,
        length: int,
        first: memoryview,
        encoder: Encoder,
        chunked: bool,
    ) -> bool:
        """Relay the response body through ``encoder`` (compress-response); True when the stream ended
        cleanly and can be reused. The upstream's framing is decoded, the client's is ours."""

        def out(data: bytes) -> None:
            if data:
                self._write(encode_chunk(data) if chunked else data)

        decoder = BodyDecoder(framing, length)
        data: bytes | memoryview = first
        while True:
            for piece in decoder.feed(data):
                out(encoder.feed(piece))
            if decoder.done:
                break
            if self._write_paused:
                await self._drain()
            if framing is Framing.CLOSE:
                self._flush_held()
                try:
                    data = await stream.read()
                except (StreamResetError, SessionClosedError):
                    raise ClientGone() from None
                if not data:
                    decoder.feed_eof()
            else:
                data = await self._read_body(stream)  # a cut body aborts the client (ClientGone)
        out(encoder.finish())
        if chunked:
            self._write(LAST_CHUNK)
        return decoder.clean

    async def _read_body(self, stream: MuxStream) -> bytes:
        self._flush_held()
        try:
            data = await stream.read()
        except (StreamResetError, SessionClosedError):
            data = b""
        if not data:
            # The response was cut short after its head went out: the client must see a broken connection.
            if self.transport is not None:
                self.transport.abort()
            raise ClientGone()
        return data

    async def _websocket_to_tcp(self, ep: Endpoint, req: Request, body: Body) -> bool:
        """The WebSocket-TCP converter: answer the handshake here, then carry binary message payloads as a
        raw byte stream to the upstream (through a fresh Proxy stream, so the agent dials a new connection)
        and upstream bytes back as binary frames."""
        if not req.upgrade:
            return await self._send_error(errors.websocket_expected("no Connection: upgrade"), req, body)
        try:
            accept = ws.accept_handshake(req.method, req.headers)
        except ws.HandshakeError as exc:
            return await self._send_error(errors.websocket_expected(str(exc)), req, body)
        self._drop_stream(graceful=True)
        try:
            stream = await self._acquire(ep)
        except (SessionClosedError, StreamResetError):
            return await self._send_error(errors.agent_unavailable(ep.url), req, body)
        self._write(accept)
        codec = ws.ServerConnection()

        async def client_to_upstream() -> None:
            try:
                while chunk := await body.read():
                    for event in codec.receive(chunk):
                        if isinstance(event, ws.BinaryData):
                            await stream.write(event.data)
                        elif isinstance(event, ws.ProtocolFailure):
                            stream.reset(ErrorCode.STREAM_CANCELLED)
                    if reply := codec.data_to_send():
                        self._write(reply)  # pongs, the close echo, a failure's close frame
                    if codec.closed:
                        break
                stream.send_eof()
            except (SessionClosedError, StreamResetError, ClientGone):
                stream.reset(ErrorCode.STREAM_CANCELLED)

        sender = self._loop.create_task(client_to_upstream())
        try:
            with contextlib.suppress(StreamResetError, SessionClosedError):
                while data := await stream.read():
                    if frame := codec.send_data(data):
                        self._write(frame)
                    if self._write_paused:
                        await self._drain()
            if closing := codec.close(1000):
                self._write(closing)
        finally:
            if not sender.done():
                sender.cancel()
            self._stream = self._stream_ep = None  # a converted stream is never reused for HTTP
        return False

    async def _splice_upgraded(self, stream: MuxStream) -> None:
        """After 101 both directions are raw bytes until each side closes."""
        with contextlib.suppress(StreamResetError, SessionClosedError):
            while data := await stream.read():
                self._write(data)
                if self._write_paused:
                    await self._drain()
        if self.transport is not None and not self.transport.is_closing():
            if self.transport.can_write_eof():
                self.transport.write_eof()
            else:
                self.transport.close()
