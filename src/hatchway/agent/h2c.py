"""HTTP/1.1 on a proxy stream, relayed to an HTTP/2 upstream spoken in cleartext with prior knowledge (h2c).

The edge writes HTTP/1.1 requests on the stream, one after another (keep-alive). Each proxy stream gets
its own HTTP/2 connection to the upstream (re-dialled if the upstream goes away between requests); each
request becomes one HTTP/2 stream. h11 parses requests and writes responses; h2 speaks to the upstream.
Bodies are streamed both ways with flow control: a request body is sent only as fast as the upstream's
window allows, and the upstream's window is reopened only after the edge took the bytes.

Rules: no body is ever buffered whole; trailers are dropped; Upgrade (WebSocket) and CONNECT requests are
answered 501, since they cannot cross to HTTP/2 this way. Failures: if the upstream cannot be reached
(or does not speak HTTP/2) before anything was written on the stream, the stream is reset with
STREAM_REFUSED and nothing is written (the convention in ``forward.py``). Later, or when the upstream
itself refused the request (RST_STREAM), the answer is a 502 page with ``Connection: close``; a failure in
the middle of a response resets the stream (STREAM_RESET). A request without a body that raced the
upstream's GOAWAY is retried once on a new connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from http import HTTPStatus
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h11

from hatchway.errors import SessionClosedError, StreamResetError
from hatchway.net.transport import MuxStream
from hatchway.wire.frames import ErrorCode

logger = logging.getLogger(__name__)

MAX_HEAD = 1 << 20
#: Receive window we offer the upstream, per stream and for the connection.
WINDOW = 1 << 20
#: Connection-specific headers HTTP/2 forbids (RFC 9113 §8.2.2), plus ``host`` (it becomes :authority)
#: and ``expect`` (100-continue is answered here).
_DROP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host", b"expect"}
)
_DROP_RESPONSE = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


class UpstreamFailed(Exception):
    """The upstream connection or stream failed; ``str()`` says how.

    ``reached`` is True when the upstream itself answered (it reset the stream): that is never reported
    as "could not reach the upstream". ``retry`` is True when a GOAWAY said the stream was never
    processed, so a request without a body may be sent again on a new connection.
    """

    def __init__(self, message: str, *, reached: bool = False, retry: bool = False) -> None:
        super().__init__(message)
        self.reached = reached
        self.retry = retry


class _Exchange:
    """One HTTP/2 stream: events from the upstream for it, and a waiter for its send window."""

    __slots__ = ("closed", "events", "got_end", "sent_end", "sid", "waiter", "window_waiter")

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.events: collections.deque[h2.events.Event | UpstreamFailed] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.window_waiter: asyncio.Future[None] | None = None
        self.closed = False  # reset by either side, or the connection died: send nothing more
        self.sent_end = False  # we sent END_STREAM
        self.got_end = False  # the upstream sent END_STREAM

    def push(self, event: h2.events.Event | UpstreamFailed) -> None:
        self.events.append(event)
        _wake(self.waiter)

    async def next(self) -> h2.events.Event | UpstreamFailed:
        while not self.events:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.events.popleft()

    async def wait_window(self) -> None:
        self.window_waiter = asyncio.get_running_loop().create_future()
        try:
            await self.window_waiter
        finally:
            self.window_waiter = None


def _wake(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


class H2Upstream(asyncio.Protocol):
    """The HTTP/2 client connection to the upstream, driven by socket callbacks."""

    def __init__(self) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config)
        self.transport: asyncio.Transport | None = None
        self.exchanges: dict[int, _Exchange] = {}
        self.failure: str | None = None  # set once the connection can carry no new request
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []

    # ---- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.h2.initiate_connection()
        codes = h2.settings.SettingCodes
        self.h2.update_settings({codes.ENABLE_PUSH: 0, codes.INITIAL_WINDOW_SIZE: WINDOW})
        self.h2.increment_flow_control_window(WINDOW - 65535)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail(f"the upstream broke HTTP/2: {exc}")
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.DataReceived | h2.events.ResponseReceived | h2.events.StreamEnded):
                ex = self.exchanges.get(ev.stream_id or 0)
                if ex is not None:
                    ex.got_end = ex.got_end or isinstance(ev, h2.events.StreamEnded)
                    ex.push(ev)
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                ex = self.exchanges.get(ev.stream_id or 0)
                if ex is not None:
                    ex.closed = True
                    ex.push(
                        UpstreamFailed(
                            f"the upstream reset the stream (HTTP/2 error {ev.error_code})", reached=True
                        )
                    )
                    _wake(ex.window_waiter)
            elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                sid = getattr(ev, "stream_id", 0)
                for ex in [self.exchanges[sid]] if sid in self.exchanges else self.exchanges.values():
                    _wake(ex.window_waiter)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                last = ev.last_stream_id or 0
                for ex in self.exchanges.values():
                    if ex.sid > last:  # never processed upstream: safe to send again elsewhere
                        ex.closed = True
                        ex.push(UpstreamFailed("the upstream went away before this request", retry=True))
                self._fail(f"the upstream closed the HTTP/2 connection (GOAWAY {ev.error_code})")
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(
            f"the upstream connection was lost: {exc}" if exc else "the upstream closed the connection"
        )
        self._paused = False
        for w in self._drain_waiters:
            _wake(w)
        self._drain_waiters.clear()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for w in self._drain_waiters:
            _wake(w)
        self._drain_waiters.clear()

    # ---- used by the relay -----------------------------------------------------------------------------
    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        for ex in self.exchanges.values():
            ex.closed = True
            ex.push(UpstreamFailed(reason))
            _wake(ex.window_waiter)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        tr = self.transport
        if data and tr is not None and not tr.is_closing():
            tr.write(data)

    async def drain(self) -> None:
        if self._paused and self.failure is None:
            w = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(w)
            await w

    def open(self, headers: list[tuple[bytes, bytes]], end_stream: bool) -> _Exchange:
        if self.failure is not None:
            raise UpstreamFailed(self.failure)
        sid = self.h2.get_next_available_stream_id()
        ex = _Exchange(sid)
        self.exchanges[sid] = ex
        self.h2.send_headers(sid, headers, end_stream=end_stream)
        ex.sent_end = end_stream
        self.flush()
        return ex

    def finish(self, ex: _Exchange) -> None:
        """Forget ``ex``; if it is still open, cancel it on the upstream."""
        self.exchanges.pop(ex.sid, None)
        if self.failure is None and not ex.closed and not (ex.sent_end and ex.got_end):
            with contextlib.suppress(h2.exceptions.H2Error):
                self.h2.reset_stream(ex.sid, h2.errors.ErrorCodes.CANCEL)
                self.flush()
        ex.closed = True

    async def send_body(self, ex: _Exchange, data: bytes) -> bool:
        """Send ``data`` within the flow-control windows; False once the upstream no longer takes it."""
        view = memoryview(data)
        while view:
            if ex.closed:
                return False
            try:
                window = min(self.h2.local_flow_control_window(ex.sid), self.h2.max_outbound_frame_size)
                if window <= 0:
                    await ex.wait_window()
                    continue
                self.h2.send_data(ex.sid, view[:window])
            except h2.exceptions.H2Error:
                return False  # the stream was closed under us (the upstream answered and reset it)
            view = view[window:]
            self.flush()
            await self.drain()
        return True

    def end_body(self, ex: _Exchange) -> None:
        if not ex.closed:
            with contextlib.suppress(h2.exceptions.H2Error):
                self.h2.end_stream(ex.sid)
                ex.sent_end = True
                self.flush()

    def ack(self, ex: _Exchange, n: int) -> None:
        if n and self.failure is None:
            self.h2.acknowledge_received_data(n, ex.sid)
            self.flush()


async def dial_h2c(host: str, port: int, connect_timeout: float = 10.0) -> H2Upstream:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(connect_timeout):
        _, proto = await loop.create_connection(H2Upstream, host, port)
    return proto


def request_headers(req: h11.Request) -> list[tuple[bytes, bytes]]:
    """HTTP/2 request headers for an HTTP/1.1 request: pseudo-headers first, hop-by-hop ones dropped."""
    authority = b""
    hop = {t.strip().lower() for name, v in req.headers if name == b"connection" for t in v.split(b",")}
    rest: list[tuple[bytes, bytes]] = []
    for name, value in req.headers:
        if name == b"host":
            authority = authority or value
        elif name in _DROP or name in hop or (name == b"te" and value.lower() != b"trailers"):
            continue
        else:
            rest.append((name, value))
    path = req.target
    for scheme in (b"http://", b"https://"):
        if path.lower().startswith(scheme):  # absolute-form
            authority, slash, tail = path[len(scheme) :].partition(b"/")
            path = slash + tail or b"/"
    return [
        (b":method", req.method),
        (b":scheme", b"http"),
        (b":authority", authority),
        (b":path", path),
        *rest,
    ]


class _Relay:
    """One proxy stream: h11 toward the edge, an ``H2Upstream`` toward the app."""

    def __init__(self, host: str, port: int, stream: MuxStream, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.up: H2Upstream | None = None
        self.wrote = False  # anything written on the stream yet
        self.client_gone = False
        self._lock = asyncio.Lock()

    async def run(self, first: bytes) -> None:
        try:
            self.up = await dial_h2c(self.host, self.port, self.timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            logger.info("h2c upstream %s:%s unreachable: %s", self.host, self.port, exc)
            self.stream.reset(ErrorCode.STREAM_REFUSED)
            return
        if first:
            self.h11.receive_data(first)
        try:
            while await self._exchange():
                self.h11.start_next_cycle()
            await self.stream.write_eof()
        except h11.RemoteProtocolError as exc:
            if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await self._plain(exc.error_status_hint, f"bad request: {exc}\n", close=True)
            await self.stream.write_eof()
        except h11.LocalProtocolError as exc:
            # The upstream's response cannot be said in HTTP/1.1 (say, a body on a 304).
            logger.info("h2c upstream %s:%s: unusable response: %s", self.host, self.port, exc)
            self.stream.reset(ErrorCode.STREAM_RESET)
        except (StreamResetError, SessionClosedError):
            pass
        finally:
            if self.up is not None and self.up.transport is not None:
                self.up.transport.close()

    async def _exchange(self) -> bool:
        """Relay one request and its response; True when the stream may carry another request."""
        req = await self._next()
        if not isinstance(req, h11.Request):
            return False
        if req.method == b"CONNECT" or any(name == b"upgrade" for name, _ in req.headers):
            while isinstance(await self._next(), h11.Data):
                pass
            await self._plain(501, "Upgrade and CONNECT are not supported with an HTTP/2 (h2c) upstream\n")
            return self._reusable()
        has_body = any(
            n == b"transfer-encoding" or (n == b"content-length" and v.strip() != b"0")
            for n, v in req.headers
        )
        if not has_body:
            await self._next()  # the EndOfMessage of a request without a body
        for attempt in (1, 2):
            try:
                up = await self._upstream()
                ex = up.open(request_headers(req), end_stream=not has_body)
            except (OSError, TimeoutError, ValueError, UpstreamFailed, h2.exceptions.H2Error) as exc:
                return await self._failed(str(exc) or type(exc).__name__)
            pump = asyncio.ensure_future(self._pump(up, ex)) if has_body else None
            try:
                status = await self._respond(up, ex, req.method == b"HEAD")
                if pump is not None:
                    await pump
                logger.debug("h2c %s %s -> %s", req.method, req.target, status)
                return self._reusable()
            except UpstreamFailed as exc:
                if self.h11.our_state is not h11.SEND_RESPONSE:
                    self.stream.reset(ErrorCode.STREAM_RESET)  # the response broke off midway
                    raise StreamResetError(str(exc), ErrorCode.STREAM_RESET) from exc
                if exc.retry and not has_body and attempt == 1:
                    continue  # raced a GOAWAY: once more on a new connection
                if self.client_gone:
                    return False
                return await self._failed(str(exc), reached=exc.reached)
            finally:
                if pump is not None and not pump.done():
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pump
                up.finish(ex)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _upstream(self) -> H2Upstream:
        if self.up is None or self.up.failure is not None:
            if self.up is not None and self.up.transport is not None:
                self.up.transport.close()
            self.up = None
            self.up = await dial_h2c(self.host, self.port, self.timeout)
        return self.up

    async def _failed(self, reason: str, *, reached: bool = False) -> bool:
        """The upstream failed before answering: refuse the stream if untouched, else a 502 page."""
        logger.info("h2c upstream %s:%s failed: %s", self.host, self.port, reason)
        if not self.wrote and not reached:
            self.stream.reset(ErrorCode.STREAM_REFUSED)
            raise StreamResetError(reason, ErrorCode.STREAM_REFUSED)
        await self._plain(502, f"The HTTP/2 upstream failed: {reason}\n", close=True)
        return False

    async def _pump(self, up: H2Upstream, ex: _Exchange) -> None:
        """Copy the request body from the edge to the upstream (dropping it once the upstream stops)."""
        try:
            while True:
                ev = await self._next()
                if isinstance(ev, h11.Data):
                    if not ex.closed:
                        await up.send_body(ex, ev.data)
                elif isinstance(ev, h11.EndOfMessage):
                    up.end_body(ex)
                    return
                else:
                    raise h11.RemoteProtocolError("the request body ended early")
        except (h11.RemoteProtocolError, StreamResetError, SessionClosedError) as exc:
            self.client_gone = True
            ex.push(UpstreamFailed(f"the edge abandoned the request: {exc}"))
            up.finish(ex)

    async def _respond(self, up: H2Upstream, ex: _Exchange, head: bool) -> int:
        """Write the upstream's response for ``ex`` as HTTP/1.1; returns its status."""
        while True:
            ev = await ex.next()
            if isinstance(ev, UpstreamFailed):
                raise ev
            if isinstance(ev, h2.events.ResponseReceived):
                break
        status = 502
        headers: list[tuple[bytes, bytes]] = []
        for name, value in ev.headers or []:
            if name == b":status":
                status = int(value)
            elif not name.startswith(b":") and name not in _DROP_RESPONSE:
                headers.append((bytes(name), bytes(value)))
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b""
        await self._send(h11.Response(status_code=status, headers=headers, reason=reason))
        while True:
            ev2 = await ex.next()
            if isinstance(ev2, UpstreamFailed):
                raise ev2
            if isinstance(ev2, h2.events.DataReceived):
                if ev2.data and not head:
                    await self._send(h11.Data(data=ev2.data))
                up.ack(ex, ev2.flow_controlled_length or 0)
            elif isinstance(ev2, h2.events.StreamEnded):
                await self._send(h11.EndOfMessage())
                return status

    def _reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    async def _next(self) -> h11.Event:
        conn = self.h11
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    async with self._lock:
                        if conn.they_are_waiting_for_100_continue and conn.our_state is h11.SEND_RESPONSE:
                            self.wrote = True
                            await self.stream.write(
                                conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
                            )
                conn.receive_data(await self.stream.read())
            elif event is h11.PAUSED:
                return h11.ConnectionClosed()  # a switch proposal we answered without switching
            else:
                assert isinstance(event, h11.Event)
                return event

    async def _send(self, *events: h11.Event) -> None:
        async with self._lock:  # the body pump may write a 100 Continue concurrently
            data = b"".join(self.h11.send(e) or b"" for e in events)
            if data:
                self.wrote = True
                await self.stream.write(data)

    async def _plain(self, status: int, text: str, *, close: bool = False) -> None:
        body = text.encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))]
        if close:
            headers.append((b"connection", b"close"))
        response = h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase)
        await self._send(response, h11.Data(data=body), h11.EndOfMessage())


async def serve_h2c(
    host: str, port: int, stream: MuxStream, first: bytes = b"", connect_timeout: float = 10.0
) -> None:
    """Relay the HTTP/1.1 requests on ``stream`` to the h2c upstream at ``host:port`` until the edge's FIN."""
    await _Relay(host, port, stream, connect_timeout).run(first)
