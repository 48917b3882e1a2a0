"""HTTP/2 client connections at the edge (HTTPS clients that chose ``h2`` by ALPN).

One ``Http2Connection`` drives an ``h2`` server connection for one client socket. Each h2 request gets a
Proxy stream of its own: a kept one that ended its last exchange cleanly (so the agent reuses its upstream
connection), or a new one. The agent side stays HTTP/1.1, so the request is written as an HTTP/1.1 head
(``edge/proxy.upstream_head``) plus its body (chunk-encoded when its length is not known), and the
HTTP/1.1 response read back from the stream is turned into HEADERS and DATA frames (chunked bodies
decoded, close-delimited bodies read to the stream's end). The general path runs each exchange as a task
(owned by the connection, cancelled when it closes). The fast path answers the commonest exchange (a
bodyless request on a kept stream, a small whole response, no policy) from the receive callbacks with
no task at all, and hands anything else to the general path mid-exchange. Flow control holds both ways:
client DATA is acknowledged only once the Proxy stream took it, and response bytes are read from the
Proxy stream only while the client's h2 window and socket buffer have room. All frames one loop
iteration produces go out in one ``transport.write``.

This module must not parse HTTP/1.1 requests, share a Proxy stream between two h2 requests at once,
buffer whole bodies (the fast path holds at most ``MAX_FAST_RESPONSE``), or let one client's failure (a
reset, a protocol error, a dropped socket) touch the tunnel or any other client. Extended CONNECT
(WebSockets over h2) is not offered; CONNECT gets 501.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from hatchway.edge import errors
from hatchway.edge.policy_run import (
    MAX_POLICY_BODY,
    PolicyRun,
    connection_info,
    reply_bytes,
    shortcut,
)
from hatchway.edge.proxy import Request, response_headers, upstream_head
from hatchway.edge.registry import Endpoint, Registry
from hatchway.edge.upstream import NoResponse, read_response_head
from hatchway.errors import LocalProtocolError, SessionClosedError, StreamResetError
from hatchway.http import headers as hh
from hatchway.http.h1 import (
    LAST_CHUNK,
    BodyDecoder,
    ChunkedScanner,
    Framing,
    H1Error,
    ResponseHead,
    encode_chunk,
    parse_response_head,
    response_framing,
)
from hatchway.net.sockets import tune
from hatchway.net.transport import MuxStream
from hatchway.policy.compress import Encoder
from hatchway.policy.model import Conn, Reply
from hatchway.wire.frames import ErrorCode

logger = logging.getLogger(__name__)

STREAM_WINDOW = 1 << 20  # per-stream receive window we advertise (performance.md: at least 256 KiB)
CONNECTION_WINDOW = 16 << 20  # connection receive window: one slow stream must not stall the others
MAX_FRAME = 1 << 16  # largest DATA frame we accept
MAX_CONCURRENT_STREAMS = 256
MAX_HEADER_LIST = 1 << 20  # ngrok's header block limit (ngrok-reference.md §11)
_DEFAULT_WINDOW = 65535

H2Headers = list[tuple[bytes, bytes]]


MAX_IDLE_STREAMS = 16  # kept Proxy streams per endpoint and client connection
# The fast path keeps a response head, or a whole small body, until it has come in full; beyond this the
# general path relays it.
MAX_FAST_RESPONSE = 64 * 1024


class _ClientGone(Exception):
    """The client reset the stream or closed the connection; the exchange stops quietly."""


class _Cut(Exception):
    """The response broke after its head went out: the client must see a reset stream."""


def split_host(authority: bytes) -> str:
    """``Host``/``:authority`` without its port, lowercased; brackets of an IPv6 literal removed."""
    text = authority.decode("latin-1").strip()
    if text.startswith("["):
        end = text.find("]")
        return (text[1:end] if end > 0 else text[1:]).lower()
    return text.rsplit(":", 1)[0].lower() if ":" in text else text.lower()


def request_from_h2(
    headers: Iterable[tuple[bytes, bytes]],
    body_length: int | None,
    ip: str,
    port: int,
    scheme: str = "https",
) -> Request:
    """An ``edge.proxy.Request`` from an h2 header block: pseudo-headers become method, target and Host
    (``:authority`` wins over ``Host``); split ``cookie`` fields are joined with ``"; "`` (RFC 9113
    §8.2.3). ``body_length`` is the body's size when all of it has already arrived (0: none), else None.
    A body of unknown length without ``content-length`` is marked chunked, so the upstream head frames it;
    a whole body that came without ``content-length`` gets one."""
    method = path = authority = b""
    host_field: bytes | None = None
    regular: H2Headers = []
    cookies: list[bytes] = []
    for k, v in headers:
        if k[:1] == b":":
            if k == b":method":
                method = v
            elif k == b":path":
                path = v
            elif k == b":authority":
                authority = v
        elif k == b"cookie":
            cookies.append(v)
        elif k == b"host":
            host_field = v
        else:
            regular.append((k, v))
    authority = authority or host_field or b""
    if cookies:
        regular.append((b"cookie", b"; ".join(cookies)))
    if authority:
        regular.insert(0, (b"host", authority))
    has_body = body_length != 0
    has_length = hh.get(regular, b"content-length") is not None
    if body_length and not has_length:
        regular.append((b"content-length", b"%d" % body_length))
        has_length = True
    lower = [k.lower() for k, _ in regular]  # h2 names are lowercase already: this is a copy in effect
    return Request(
        method=method,
        target=path or b"/",
        headers=regular,
        version="2",
        host=split_host(authority) if authority else "",
        client_ip=ip,
        client_port=port,
        scheme=scheme,
        chunked=has_body and not has_length,
        has_body=has_body,
        lower=lower,
        # h2 refuses a Connection header in a request (RFC 9113 §8.2.2), so this is nearly always empty,
        # and ``upstream_head`` may then write the head straight out.
        connection=frozenset(hh.connection_tokens(regular)) if b"connection" in lower else frozenset(),
    )


def h2_response_headers(
    ep: Endpoint, req: Request, head: ResponseHead, framing: Framing, sent_host: bytes
) -> H2Headers:
    """The h2 header block for an upstream response: ``proxy.response_headers`` with names lowercased,
    ``:status`` first, and no Content-Length when the body was not length-delimited upstream."""
    drop_length = framing in (Framing.CHUNKED, Framing.CLOSE)
    out: H2Headers = [(b":status", b"%d" % head.status)]
    for k, v in response_headers(ep, req, head, sent_host):
        lk = k.lower()
        if drop_length and lk == b"content-length":
            continue
        out.append((lk, v))
    return out


def error_response(err: errors.EdgeError, accept: bytes | None, head_only: bool) -> tuple[H2Headers, bytes]:
    """The edge's own error page (``errors.render``) as an h2 header block and body."""
    raw = errors.render(err, accept, head_only=head_only)
    head = parse_response_head(raw)
    assert head is not None
    hdrs: H2Headers = [(b":status", b"%d" % head.status)]
    hdrs += [(k.lower(), v) for k, v in head.headers]
    return hdrs, raw[head.size :]


class _Stream:
    """One client request: its body as it arrives, and the task that proxies it."""

    __slots__ = (
        "body",
        "buf",
        "complete",
        "ended",
        "endpoint",
        "fast",
        "headers",
        "proxy",
        "readable",
        "replied",
        "req",
        "reset",
        "reusable",
        "sent_host",
        "sid",
        "task",
        "upstream_done",
        "waiter",
        "window",
    )

    def __init__(self, sid: int, headers: H2Headers, ended: bool) -> None:
        self.sid = sid
        self.headers = headers
        self.body: collections.deque[tuple[bytes, int]] = collections.deque()
        self.ended = ended  # the client sent END_STREAM
        self.reset = False  # the client sent RST_STREAM
        self.replied = False  # our response HEADERS went out
        self.complete = False  # our END_STREAM went out
        self.upstream_done = ended  # the whole request body reached the Proxy stream
        self.readable: asyncio.Future[None] | None = None
        self.window: asyncio.Future[None] | None = None
        self.proxy: MuxStream | None = None
        self.reusable = False  # the response ended exactly where its framing said: the stream can serve again
        self.endpoint: Endpoint | None = None
        self.task: asyncio.Task[None] | None = None
        # The fast path (``Http2Connection._fast_start``): the request it sent, the Host that went with
        # it, and what has come back of the response so far.
        self.fast = False
        self.req: Request | None = None
        self.sent_host = b""
        self.buf = b""
        self.waiter: asyncio.Future[None] | None = None  # made when a draining edge asks; set at the end


def _wake(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 client connection on the HTTPS listener."""

    def __init__(
        self, registry: Registry, scheme: str, on_close: Callable[[Http2Connection], None], sni: str = ""
    ) -> None:
        self.registry = registry
        self.sni = sni  # the server name of the TLS ClientHello (conn.tls.sni)
        self.scheme = scheme
        self._on_close = on_close
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.client_port = 0
        self.last_active = self._loop.time()  # for the edge's idle timeout
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self._streams: dict[int, _Stream] = {}
        # Proxy streams kept after a clean response, per endpoint, so the agent reuses its upstream
        # connection: without them every HTTP/2 request costs the agent a new dial.
        self._idle: dict[int, list[MuxStream]] = {}
        self._flush_scheduled = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.closed = False
        self.conn_info: Conn | None = None  # conn.* for policies (connection_made)

    # ---- asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.client_ip, self.client_port = tune(transport)
        self.conn_info = connection_info(transport, self.client_ip, self.client_port, time.time(), self.sni)
        self.h2.initiate_connection()
        codes = h2.settings.SettingCodes
        self.h2.update_settings(
            {
                codes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                codes.MAX_FRAME_SIZE: MAX_FRAME,
                codes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                codes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            }
        )
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has usually queued a GOAWAY with the right code (not for a bad preface): send one, then
            # drop this client only.
            logger.debug("h2 protocol error from %s:%s: %s", self.client_ip, self.client_port, exc)
            if self.h2.state_machine.state is not h2.connection.ConnectionState.CLOSED:
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.h2.close_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            self._flush()
            self._close()
            return
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                st = self._streams.get(ev.stream_id)
                if st is not None:
                    st.body.append((ev.data, ev.flow_controlled_length))
                    _wake(st.readable)
                else:
                    self._ack(ev.stream_id, ev.flow_controlled_length)
            elif isinstance(ev, h2.events.WindowUpdated):
                if ev.stream_id == 0:
                    for st in self._streams.values():
                        _wake(st.window)
                else:
                    st2 = self._streams.get(ev.stream_id)
                    if st2 is not None:
                        _wake(st2.window)
            elif isinstance(ev, h2.events.RequestReceived):
                self._start(ev)
            elif isinstance(ev, h2.events.StreamEnded):
                st3 = self._streams.get(ev.stream_id)
                if st3 is not None:
                    st3.ended = True
                    _wake(st3.readable)
            elif isinstance(ev, h2.events.StreamReset):
                st4 = self._streams.get(ev.stream_id)
                if st4 is not None:
                    st4.reset = True
                    if st4.task is not None:
                        st4.task.cancel()
                    elif st4.fast:
                        self._fast_stop(st4)
                        self._finish(st4)
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                for st in self._streams.values():
                    _wake(st.window)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                # After a GOAWAY h2 refuses to send anything more: end every exchange now.
                self._flush()
                self._close()
                return
        self._schedule_flush()

    def eof_received(self) -> bool | None:
        return False  # h2 has no half-close: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for idle in self._idle.values():
            for proxy in idle:
                proxy.send_eof()
        self._idle.clear()
        for st in list(self._streams.values()):
            if st.task is not None:
                st.task.cancel()  # its done callback resets the Proxy stream
            elif st.fast:
                self._fast_stop(st)
                self._finish(st)
        for w in self._drain_waiters:
            _wake(w)
        self._drain_waiters.clear()
        self._on_close(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for w in self._drain_waiters:
            _wake(w)
        self._drain_waiters.clear()

    # ---- public ---------------------------------------------------------------------------------------
    def in_flight(self) -> list[asyncio.Future[None]]:
        waiting: list[asyncio.Future[None]] = []
        for st in self._streams.values():
            if st.task is not None:
                if not st.task.done():
                    waiting.append(st.task)
            elif st.fast:
                if st.waiter is None:
                    st.waiter = self._loop.create_future()
                waiting.append(st.waiter)
        return waiting

    def shutdown(self) -> None:
        """GOAWAY and close (edge shutdown, after requests in flight had their chance to finish)."""
        if not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()
            self._flush()
            self._close()

    # ---- plumbing -------------------------------------------------------------------------------------
    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self.h2.data_to_send()
        tr = self.transport
        # A write to a closed transport raises in uvloop (performance.md rule 6): drop it instead.
        if data and tr is not None and not tr.is_closing():
            tr.write(data)

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _ack(self, sid: int, n: int) -> None:
        if n and not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.acknowledge_received_data(n, sid)
            self._schedule_flush()

    async def _drain(self) -> None:
        if self._write_paused and not self.closed:
            w = self._loop.create_future()
            self._drain_waiters.append(w)
            await w
        if self.closed:
            raise _ClientGone()

    def _start(self, ev: h2.events.RequestReceived) -> None:
        headers: H2Headers = ev.headers
        st = _Stream(ev.stream_id, headers, ev.stream_ended is not None)
        self._streams[st.sid] = st
        if not (st.ended and self._fast_start(st)):
            self._spawn(st)

    def _spawn(self, st: _Stream, resume: bytes | None = None) -> None:
        """Run the exchange as a task (``resume``: take over a fast one, with what came back of it)."""
        st.task = self._loop.create_task(self._run(st, resume), name=f"h2-stream-{st.sid}")
        # A done callback, not a ``finally``: it also runs for a task cancelled before it ever started
        # (HEADERS, DATA and RST_STREAM in one read), so the stream's buffered DATA is always given back.
        st.task.add_done_callback(lambda _t: self._finish(st))

    def _drop_proxy(self, st: _Stream, graceful: bool) -> None:
        proxy, st.proxy = st.proxy, None
        if proxy is not None:
            if graceful:
                proxy.send_eof()
            else:
                proxy.reset(ErrorCode.STREAM_CANCELLED)

    # ---- the fast path ----------------------------------------------------------------------------------
    # A bodyless request with a kept Proxy stream at hand, to an endpoint without a policy or whose static
    # request phase is settled without running it (``policy_run.shortcut``), is sent from
    # the receive callback; a response that comes whole in what the agent sent (a final status, a
    # Content-Length body that the client's windows take at once) is answered from the Proxy stream's
    # sink. No task, future or await for the commonest exchange. Anything else is handed to the general
    # path (``_spawn`` with ``resume``), which reads on from what arrived; so does a stream that ends.
    def _fast_start(self, st: _Stream) -> bool:
        req = request_from_h2(st.headers, 0, self.client_ip, self.client_port, self.scheme)
        if not req.host or req.method in (b"CONNECT", b"HEAD"):
            return False
        ep = self.registry.route(self.scheme, req.host)
        # A policy only when its request phase is static: nothing else of it can run here, and only such
        # a phase can be settled without a run (``policy_run.shortcut``).
        if ep is None or ep.ws_tcp or (ep.policy is not None and not ep.policy.static_request):
            return False
        proxy = self._take_idle(ep)
        if proxy is None:
            return False
        if ep.policy is not None and not shortcut(ep.policy, ep, req)[0]:
            # Not settled by the memo or the static function: the general path runs the phase in full.
            self._idle[id(ep)].append(proxy)
            return False
        head, sent_host = upstream_head(ep, req)
        try:
            # The whole head must go now: a part left waiting for window would need a task after all.
            if proxy.connection.session.send_window(proxy.id) < len(head):
                self._idle[id(ep)].append(proxy)
                return False
            proxy.write_nowait(head)
        except (SessionClosedError, StreamResetError, LocalProtocolError):
            proxy.reset(ErrorCode.STREAM_CANCELLED)
            return False
        st.fast = True
        st.req, st.endpoint, st.proxy, st.sent_host = req, ep, proxy, sent_host
        proxy.set_sink(partial(self._fast_data, st), partial(self._fast_end, st))
        return True

    def _fast_data(self, st: _Stream, data: bytes) -> bool:
        """Response bytes from the tunnel's receive callback. Never raises: the tunnel must not feel it."""
        if not st.fast:
            return False
        buf = st.buf + data if st.buf else data
        try:
            self._fast_answer(st, buf)
        except Exception:
            logger.exception("h2 fast path failed")
            self._fast_stop(st)
            self._reset_client(st, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self._finish(st)
        return True

    def _fast_answer(self, st: _Stream, buf: bytes) -> None:
        req, ep = st.req, st.endpoint
        assert req is not None and ep is not None
        try:
            head = parse_response_head(buf)
            framing, length = response_framing(head, req.method) if head is not None else (Framing.NONE, 0)
        except H1Error:
            self._fast_handover(st, buf)  # the general path reports it (ERR_NGROK_3004)
            return
        if head is None:
            if len(buf) > MAX_FAST_RESPONSE:
                self._fast_handover(st, buf)
            else:
                st.buf = buf  # the rest of the head is on its way
            return
        body = len(buf) - head.size
        if head.status < 200 or framing is not Framing.LENGTH or body > length:
            self._fast_handover(st, buf)
            return
        if body < length:
            if length > MAX_FAST_RESPONSE:
                self._fast_handover(st, buf)
            else:
                st.buf = buf  # a small body split across frames
            return
        conn = self.h2
        if self.closed or st.reset:
            self._fast_stop(st)
            self._finish(st)
            return
        if length > min(conn.local_flow_control_window(st.sid), conn.max_outbound_frame_size):
            self._fast_handover(st, buf)  # the general path waits for the client's window
            return
        hdrs = h2_response_headers(ep, req, head, framing, st.sent_host)
        self._fast_stop(st)
        try:
            conn.send_headers(st.sid, hdrs, end_stream=length == 0)
            if length:
                conn.send_data(st.sid, memoryview(buf)[head.size :], end_stream=True)
        except h2.exceptions.ProtocolError:
            st.reset = True  # the client's side of the stream is gone (its RST is in the same read)
        else:
            st.replied = st.complete = True
            st.reusable = b"close" not in head.connection
            self._schedule_flush()
        self._finish(st)

    def _fast_end(self, st: _Stream) -> None:
        """The Proxy stream ended or was reset before the response was relayed."""
        if st.fast:
            buf = st.buf
            self._fast_stop(st)
            self._spawn(st, resume=buf)  # it reads the end, then retries or answers with an error

    def _fast_handover(self, st: _Stream, buf: bytes) -> None:
        self._fast_stop(st)
        self._spawn(st, resume=buf)

    def _fast_stop(self, st: _Stream) -> None:
        st.fast = False
        st.buf = b""
        if st.proxy is not None:
            st.proxy.set_sink(None)

    # ---- h2 output for one stream (raise _ClientGone when the stream or connection is gone) ------------
    def _send_headers(self, st: _Stream, headers: H2Headers, end: bool = False) -> None:
        if self.closed or st.reset:
            raise _ClientGone()
        try:
            self.h2.send_headers(st.sid, headers, end_stream=end)
        except h2.exceptions.ProtocolError as exc:
            raise _ClientGone() from exc
        if end:
            st.complete = True
        self._schedule_flush()

    async def _send_data(self, st: _Stream, data: bytes | memoryview, end: bool = False) -> None:
        """Send ``data`` within the client's flow-control windows, waiting for WINDOW_UPDATE as needed;
        ``end``: its last frame ends the stream (one frame less than ``_end`` after it, and h2's state
        machines run once less: a tenth of the HTTP/2 listener's cost for a small response)."""
        view = memoryview(data)
        conn = self.h2
        while len(view):
            if self.closed or st.reset:
                raise _ClientGone()
            try:
                room = min(conn.local_flow_control_window(st.sid), conn.max_outbound_frame_size)
                if room <= 0:
                    st.window = self._loop.create_future()
                    try:
                        await st.window
                    finally:
                        st.window = None
                    continue
                last = end and len(view) <= room
                conn.send_data(st.sid, view[:room], end_stream=last)
            except h2.exceptions.ProtocolError as exc:
                raise _ClientGone() from exc
            if last:
                st.complete = True
            view = view[room:]
            self._schedule_flush()

    def _end(self, st: _Stream) -> None:
        if st.complete:
            return  # the last DATA frame ended the stream already
        if self.closed or st.reset:
            raise _ClientGone()
        try:
            self.h2.end_stream(st.sid)
        except h2.exceptions.ProtocolError as exc:
            raise _ClientGone() from exc
        st.complete = True
        self._schedule_flush()

    async def _respond(self, st: _Stream, headers: H2Headers, body: bytes) -> None:
        self._send_headers(st, headers, end=not body)
        st.replied = True
        if body:
            await self._send_data(st, body, end=True)

    async def _respond_error(self, st: _Stream, req: Request | None, err: errors.EdgeError) -> None:
        if st.replied:
            raise _Cut()  # too late for an error page: the client must see the stream fail
        accept = hh.get(req.headers, b"accept") if req is not None else None
        head_only = req is not None and req.method == b"HEAD"
        headers, body = error_response(err, accept, head_only)
        await self._respond(st, headers, body)

    # ---- one exchange -----------------------------------------------------------------------------------
    async def _run(self, st: _Stream, resume: bytes | None = None) -> None:
        try:
            if resume is None:
                await self._exchange(st)
            else:
                assert st.endpoint is not None and st.req is not None
                await self._proxy(st, st.endpoint, st.req, None, resume)
        except _ClientGone:
            pass
        except _Cut:
            self._reset_client(st, h2.errors.ErrorCodes.INTERNAL_ERROR)
        except Exception:
            logger.exception("h2 exchange failed")
            self._reset_client(st, h2.errors.ErrorCodes.INTERNAL_ERROR)

    def _reset_client(self, st: _Stream, code: int) -> None:
        if not self.closed and not st.reset and not (st.complete and st.ended):
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.reset_stream(st.sid, code)
            st.reset = True
            self._schedule_flush()

    def _finish(self, st: _Stream) -> None:
        self._streams.pop(st.sid, None)
        # The Proxy stream ends cleanly only if the agent got the whole request and we relayed the whole
        # response; otherwise the agent must drop its upstream connection.
        clean = st.complete and st.upstream_done
        if clean and st.reusable and st.proxy is not None and not self.closed and st.endpoint is not None:
            # Keep it for the next request to the same endpoint: the agent keeps its upstream connection.
            idle = self._idle.setdefault(id(st.endpoint), [])
            if len(idle) < MAX_IDLE_STREAMS:
                idle.append(st.proxy)
                st.proxy = None
        self._drop_proxy(st, graceful=clean)
        if not st.complete:
            self._reset_client(st, h2.errors.ErrorCodes.CANCEL)
        elif not st.ended:
            # A full response before the full request: ask the client to stop sending (RFC 9113 §8.1).
            self._reset_client(st, h2.errors.ErrorCodes.NO_ERROR)
        while st.body:
            self._ack(st.sid, st.body.popleft()[1])
        _wake(st.waiter)

    async def _exchange(self, st: _Stream) -> None:
        # A body that ended in the same read as the HEADERS is known whole (often an empty DATA frame
        # carrying END_STREAM): send it with a length, or as no body at all, rather than chunked.
        known = sum(len(data) for data, _ in st.body) if st.ended else None
        req = request_from_h2(st.headers, known, self.client_ip, self.client_port, self.scheme)
        if not req.has_body:
            st.upstream_done = True
        if req.method == b"CONNECT":
            body = b"CONNECT is not supported over HTTP/2 by this edge.\n"
            hdrs: H2Headers = [
                (b":status", b"501"),
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % len(body)),
            ]
            await self._respond(st, hdrs, body)
            return
        if not req.host:
            await self._respond_error(st, req, errors.bad_request("missing :authority and Host"))
            return
        ep = self.registry.route(self.scheme, req.host)
        if ep is None:
            await self._respond_error(st, req, errors.offline(self.registry.url_for(self.scheme, req.host)))
            return
        if ep.ws_tcp:
            # RFC 8441's extended CONNECT is not offered, so no WebSocket can arrive over HTTP/2 here.
            await self._respond_error(st, req, errors.websocket_expected("HTTP/2 requests cannot upgrade"))
            return
        run: PolicyRun | None = None
        if ep.policy is not None:
            run = PolicyRun(ep, ep.policy, req, self.conn_info)
            if await self._policy_request(st, run, req):
                return
        try:
            await self._proxy(st, ep, req, run)
        finally:
            if run is not None:
                run.finish(0)  # no-op when the response was reported already

    async def _peek_body(self, st: _Stream) -> bytes | None:
        """The whole request body, left in place for the upstream, or None past MAX_POLICY_BODY (also
        when the client is stuck on a full stream window, which we only open again as the upstream reads)."""
        while not st.ended:
            if sum(len(d) for d, _ in st.body) >= min(MAX_POLICY_BODY, STREAM_WINDOW):
                return None
            if self.closed or st.reset:
                raise _ClientGone()
            st.readable = self._loop.create_future()
            try:
                await st.readable
            finally:
                st.readable = None
        data = b"".join(d for d, _ in st.body)
        return None if len(data) > MAX_POLICY_BODY else data

    async def _policy_request(self, st: _Stream, run: PolicyRun, req: Request) -> bool:
        """Run the connect and request phases; True when the edge answered (or closed) instead."""
        if run.tcp_connect() is not None:
            self.shutdown()  # on_tcp_connect denies the connection, not one request
            return True
        data = await self._peek_body(st) if run.needs_body and req.has_body else b""
        reply = run.answer(req, data)
        if reply is None:
            return False
        await self._send_reply(st, reply, req)
        return True

    async def _send_reply(self, st: _Stream, reply: Reply, req: Request) -> None:
        raw = reply_bytes(reply, hh.get(req.headers, b"accept"), close=False, head_only=req.method == b"HEAD")
        head = parse_response_head(raw)
        assert head is not None
        hdrs: H2Headers = [(b":status", b"%d" % head.status)]
        hdrs += [(k.lower(), v) for k, v in head.headers if k.lower() not in hh.HOP_BY_HOP]
        await self._respond(st, hdrs, raw[head.size :])

    async def _proxy(
        self, st: _Stream, ep: Endpoint, req: Request, run: PolicyRun | None, resume: bytes | None = None
    ) -> None:
        """Send the request on a Proxy stream and relay the response. ``resume``: a fast exchange that
        stopped (its head went out on ``st.proxy``, a kept stream, and ``resume`` is what came back)."""
        head, sent_host = upstream_head(ep, req)
        st.endpoint = ep
        for attempt in (0, 1):
            resumed = resume is not None and attempt == 0  # the head went out already, on st.proxy
            if not resumed:
                st.proxy = self._take_idle(ep)
            reused = st.proxy is not None
            if st.proxy is None:
                try:
                    st.proxy = await ep.session.open_proxy(
                        ep.tunnel_id, f"{self.client_ip}:{self.client_port}", self.scheme
                    )
                except (SessionClosedError, StreamResetError):
                    await self._respond_error(st, req, errors.agent_unavailable(ep.url))
                    return
            stream = st.proxy
            sender: asyncio.Task[None] | None = None
            try:
                if not resumed:
                    try:
                        await stream.write(head)
                    except (SessionClosedError, StreamResetError) as exc:
                        raise NoResponse(refused=False, detail=str(exc)) from exc
                if req.has_body:
                    sender = self._loop.create_task(self._send_body(st, req, stream))
                prefix = (resume or b"") if resumed else b""
                await self._relay_response(st, ep, req, stream, sent_host, run, prefix)
                return
            except NoResponse as exc:
                self._drop_proxy(st, graceful=False)
                # A kept stream whose upstream connection went away meanwhile: retry once on a fresh one
                # (bodyless requests only: a body may already be partly consumed).
                if reused and attempt == 0 and not req.has_body and not exc.refused and not st.replied:
                    continue
                err = (
                    errors.upstream_unreachable(ep.url)
                    if exc.refused
                    else errors.invalid_upstream_response(ep.url, exc.detail)
                )
                await self._respond_error(st, req, err)
                return
            finally:
                if sender is not None and not sender.done():
                    sender.cancel()
                    # asyncio.wait, not ``await sender``: our own cancellation must not be swallowed here.
                    await asyncio.wait([sender])

    def _take_idle(self, ep: Endpoint) -> MuxStream | None:
        """A kept Proxy stream for ``ep`` that is still open, if any."""
        idle = self._idle.get(id(ep))
        while idle:
            proxy = idle.pop()
            alive = not ep.session.conn.is_closed and proxy.connection.session.is_open(proxy.id)
            if alive and not proxy.at_eof() and not proxy.buffered:
                return proxy
            proxy.send_eof()
        return None

    async def _next_body(self, st: _Stream) -> tuple[bytes, int] | None:
        while not st.body:
            if st.ended or self.closed or st.reset:
                return None
            st.readable = self._loop.create_future()
            try:
                await st.readable
            finally:
                st.readable = None
        return st.body.popleft()

    async def _send_body(self, st: _Stream, req: Request, stream: MuxStream) -> None:
        """Client DATA -> Proxy stream; each piece is acknowledged to the client once the stream took it."""
        try:
            while (item := await self._next_body(st)) is not None:
                data, flow = item
                if data:
                    await stream.write(encode_chunk(data) if req.chunked else data)
                self._ack(st.sid, flow)
            if st.ended:
                if req.chunked:
                    await stream.write(LAST_CHUNK)
                st.upstream_done = True
        except (SessionClosedError, StreamResetError):
            return

    async def _relay_response(
        self,
        st: _Stream,
        ep: Endpoint,
        req: Request,
        stream: MuxStream,
        sent_host: bytes,
        run: PolicyRun | None = None,
        prefix: bytes = b"",
    ) -> None:
        def interim(head: ResponseHead) -> None:
            # Interim responses (100 Continue, 103 Early Hints) go out as informational HEADERS.
            self._send_headers(st, h2_response_headers(ep, req, head, Framing.NONE, sent_host))

        rhead, framing, length, buf = await read_response_head(stream, req.method, interim, prefix)
        if rhead.status == 101:
            raise NoResponse(refused=False, detail="101 Switching Protocols on an HTTP/2 request")
        first = memoryview(buf)[rhead.size :]
        encoder: Encoder | None = None
        if run is not None:
            reply = run.response(rhead, req.method)
            run.finish(rhead.status)
            if reply is not None:
                # The policy replaced the response: its body is never read, so the stream cannot be reused.
                self._drop_proxy(st, graceful=False)
                await self._send_reply(st, reply, req)
                return
            encoder = run.encoder
        no_body = framing is Framing.NONE or (framing is Framing.LENGTH and length == 0)
        self._send_headers(st, h2_response_headers(ep, req, rhead, framing, sent_host), end=no_body)
        st.replied = True
        keep = b"close" not in rhead.connection
        if encoder is not None and not no_body:
            st.reusable = await self._relay_encoded(st, stream, framing, length, first, encoder) and keep
            self._end(st)
            return
        if no_body:
            st.reusable = keep and not first
            return
        if framing is Framing.LENGTH:
            st.reusable = await self._relay_length(st, stream, length, first) and keep
        elif framing is Framing.CHUNKED:
            st.reusable = await self._relay_chunked(st, stream, first) and keep
        else:
            await self._relay_until_eof(st, stream, first)
        self._end(st)

    async def _read_more(self, stream: MuxStream, until_eof: bool = False) -> bytes:
        """The next piece of the response body, once the client's socket has room for it."""
        if self._write_paused:
            await self._drain()
        try:
            data = await stream.read()
        except (StreamResetError, SessionClosedError) as exc:
            raise _Cut() from exc
        if not data and not until_eof:
            raise _Cut()  # the response was cut short after its head went out
        return data

    async def _relay_length(self, st: _Stream, stream: MuxStream, length: int, first: memoryview) -> bool:
        """Relay exactly ``length`` bytes; True when nothing came beyond them (the stream may be reused)."""
        remaining = length
        data: bytes | memoryview = first
        while True:
            if data:
                take = min(len(data), remaining)
                await self._send_data(st, data[:take], end=take == remaining)
                remaining -= take
                if take < len(data):
                    return False
            if remaining == 0:
                return True
            data = await self._read_more(stream)

    async def _relay_chunked(self, st: _Stream, stream: MuxStream, first: memoryview) -> bool:
        """Relay chunk data until the last chunk; True when the message ended exactly at a read's end."""
        dechunker = ChunkedScanner()
        view = first
        while True:
            if view:
                try:
                    pieces: list[memoryview] = []
                    used = dechunker.feed(view, pieces)
                except H1Error as exc:
                    raise _Cut() from exc
                for piece in pieces:
                    await self._send_data(st, piece)
                if dechunker.done:
                    return used == len(view)
            view = memoryview(await self._read_more(stream))

    async def _relay_encoded(
        self,
        st: _Stream,
        stream: MuxStream,
        framing: Framing,
        length: int,
        first: memoryview,
        encoder: Encoder,
    ) -> bool:
        """Relay the body through ``encoder`` (compress-response); True when the stream may be reused."""
        decoder = BodyDecoder(framing, length)
        data: bytes | memoryview = first
        while True:
            try:
                pieces = decoder.feed(data)
            except H1Error as exc:
                raise _Cut() from exc
            for piece in pieces:
                if out := encoder.feed(piece):
                    await self._send_data(st, out)
            if decoder.done:
                break
            data = await self._read_more(stream, until_eof=framing is Framing.CLOSE)
            if not data:
                decoder.feed_eof()  # only a close-delimited body gets here (the others raise _Cut)
        if tail := encoder.finish():
            await self._send_data(st, tail)
        return decoder.clean

    async def _relay_until_eof(self, st: _Stream, stream: MuxStream, first: memoryview) -> None:
        data: bytes | memoryview = first
        while True:
            if data:
                await self._send_data(st, data)
            data = await self._read_more(stream, until_eof=True)
            if not data:
                return
