"""Drives a sans-IO ``MuxSession`` over an asyncio transport (TLS or plain TCP).

``MuxConnection`` is an ``asyncio.Protocol``: bytes from the socket go into the session, events come out
and wake the ``MuxStream`` objects; frames the session queues are written once per loop iteration
(write coalescing). Backpressure works at two levels: a writer waits for its stream's send window (so a
slow reader holds its sender, never the other streams), and every writer waits while the socket's own
buffer is above its high-water mark (so nothing buffers without bound).

Rules: this module owns no protocol decisions (those are in ``hatchway.wire``) and no product logic (that
is ``edge/`` and ``agent/``). Every task it starts is kept and cancelled on close.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import cast

from hatchway.errors import LocalProtocolError, SessionClosedError, StreamResetError
from hatchway.wire import mux
from hatchway.wire.frames import ErrorCode
from hatchway.wire.rpc import parse_stream_type, stream_type_prefix

logger = logging.getLogger(__name__)

StreamHandler = Callable[["MuxStream"], Awaitable[None]]


class MuxStream:
    """One muxado stream with async read/write/half-close. Reads give the window back to the peer."""

    __slots__ = (
        "_chunks",
        "_closed_error",
        "_conn",
        "_eof",
        "_read_waiter",
        "_sink",
        "_sink_end",
        "_size",
        "_window_waiter",
        "id",
        "stream_type",
    )

    def __init__(self, conn: MuxConnection, stream_id: int, stream_type: int | None = None) -> None:
        self._conn = conn
        self.id = stream_id
        self.stream_type = stream_type
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._eof = False
        self._closed_error: Exception | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._window_waiter: asyncio.Future[None] | None = None
        # A synchronous consumer (a splice) may take data straight from the receive path; it returns
        # False to decline (its side is full), and the data is buffered for ``read()`` as usual.
        self._sink: Callable[[bytes], bool] | None = None
        self._sink_end: Callable[[], None] | None = None  # told of EOF or reset while a sink is set

    def __repr__(self) -> str:
        return f"<MuxStream {self.id} type={self.stream_type}>"

    @property
    def connection(self) -> MuxConnection:
        return self._conn

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read (never more than the stream's receive window)."""
        return self._size

    # ---- driven by the connection ------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None and not self._chunks and sink(data):
            self._conn._consumed(self.id, len(data))
            return
        self._chunks.append(data)
        self._size += len(data)
        self._wake_reader()

    def _feed_eof(self) -> None:
        self._eof = True
        self._wake_reader()
        self._end_sink()

    def _abort(self, exc: Exception) -> None:
        if self._closed_error is None:
            self._closed_error = exc
        self._chunks.clear()
        self._size = 0
        self._wake_reader()
        self._wake_writer()
        self._end_sink()

    def _end_sink(self) -> None:
        end = self._sink_end
        if end is not None and self._sink is not None:
            self._sink = self._sink_end = None
            end()

    def _wake_reader(self) -> None:
        w = self._read_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _wake_writer(self) -> None:
        w = self._window_waiter
        if w is not None and not w.done():
            w.set_result(None)

    # ---- reading -------------------------------------------------------------------------------------
    async def _wait_readable(self) -> None:
        while not self._chunks and not self._eof and self._closed_error is None:
            self._read_waiter = self._conn._loop.create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (any amount when ``n < 0``); ``b""`` at the peer's FIN."""
        await self._wait_readable()
        if self._closed_error is not None:
            raise self._closed_error
        if not self._chunks:
            return b""
        chunk = self._chunks.popleft()
        if 0 <= n < len(chunk):
            self._chunks.appendleft(chunk[n:])
            chunk = chunk[:n]
        self._size -= len(chunk)
        self._conn._consumed(self.id, len(chunk))
        return chunk

    async def readexactly(self, n: int) -> bytes:
        parts: list[bytes] = []
        need = n
        while need:
            chunk = await self.read(need)
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(chunk)
            need -= len(chunk)
        return b"".join(parts)

    async def read_all(self, limit: int = 1 << 30) -> bytes:
        parts: list[bytes] = []
        total = 0
        while chunk := await self.read():
            parts.append(chunk)
            total += len(chunk)
            if total > limit:
                raise LocalProtocolError("stream body over limit", ErrorCode.FLOW_CONTROL)
        return b"".join(parts)

    def set_sink(
        self, sink: Callable[[bytes], bool] | None, on_end: Callable[[], None] | None = None
    ) -> None:
        """Deliver data to ``sink`` as it arrives while nothing is buffered (saves a task wake-up per
        chunk); data it declines, and everything after, goes through ``read()`` in order. ``on_end`` is
        called once (and the sink dropped) if the stream ends or is reset while the sink is set, for a
        consumer that has no task waiting in ``read()``."""
        self._sink = sink
        self._sink_end = on_end if sink is not None else None

    @property
    def has_sink(self) -> bool:
        return self._sink is not None

    def write_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Queue what fits in the send window now, without waiting; returns the bytes taken. Callers must
        not mix it with a ``write()`` still waiting on the same stream (order would break)."""
        if self._closed_error is not None:
            raise self._closed_error
        try:
            sent = self._conn.session.send_data(self.id, data)
        except LocalProtocolError:
            raise StreamResetError(f"stream {self.id} is closed", ErrorCode.STREAM_CLOSED) from None
        if sent:
            self._conn._schedule_flush()
        return sent

    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    # ---- writing -------------------------------------------------------------------------------------
    async def write(self, data: bytes | bytearray | memoryview, fin: bool = False) -> None:
        """Send all of ``data``, waiting for window and for the socket to drain as needed."""
        conn = self._conn
        session = conn.session
        view = memoryview(data)
        while True:
            if self._closed_error is not None:
                raise self._closed_error
            if not session.is_open(self.id):
                raise StreamResetError(f"stream {self.id} is closed", ErrorCode.STREAM_CLOSED)
            sent = session.send_data(self.id, view, fin=fin)
            if sent or fin:
                conn._schedule_flush()
            view = view[sent:]
            if not len(view):
                if fin and not session.is_open(self.id):
                    conn._forget(self.id)  # both sides finished: the session dropped it too
                break  # everything queued, FIN included when asked
            # Window exhausted: wait for WNDINC (or the end of the stream).
            self._window_waiter = conn._loop.create_future()
            try:
                await self._window_waiter
            finally:
                self._window_waiter = None
        if conn._paused:
            await conn._drain()

    async def write_eof(self) -> None:
        """Half-close: the peer reads EOF; we can still read."""
        self.send_eof()

    def send_eof(self) -> None:
        """The same as ``write_eof`` for callers that cannot await (FIN needs no window)."""
        if self._closed_error is None and self._conn.session.is_open(self.id):
            with contextlib.suppress(LocalProtocolError):
                self._conn.session.send_eof(self.id)
                self._conn._schedule_flush()
                if not self._conn.session.is_open(self.id):
                    self._conn._forget(self.id)

    def reset(self, code: int = ErrorCode.STREAM_CANCELLED) -> None:
        """Abort both directions with RST."""
        self._conn.session.reset_stream(self.id, code)
        self._conn._schedule_flush()
        self._conn._forget(self.id)
        self._abort(StreamResetError(f"stream {self.id} reset locally", code))

    async def aclose(self) -> None:
        """Finish our side (FIN); the stream is dropped when the peer finishes too."""
        await self.write_eof()


class MuxConnection(asyncio.Protocol):
    """A muxado session on one socket. ``on_stream`` runs (as an owned task) for each peer-opened stream."""

    def __init__(
        self,
        session: mux.MuxSession,
        on_stream: StreamHandler | None = None,
        *,
        typed: bool = True,
    ) -> None:
        self.session = session
        self._on_stream = on_stream
        self._typed = typed
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, MuxStream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._flush_scheduled = False
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.closed: asyncio.Future[Exception | None] = self._loop.create_future()
        self.goaway: mux.GoAwayReceived | None = None
        self.peername: tuple[str, int] | None = None
        self._sock: socket.socket | None = None
        self._quick_ack = False

    # ---- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's SSL transport is not an asyncio.Transport subclass, though it has the same methods.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Without NODELAY each RPC round trip waits 40-90 ms on delayed ACKs (protocol.md §1).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peername = (str(peer[0]), int(peer[1]))
        # A large high-water mark lets many streams coalesce; writers still stop well before memory grows.
        transport.set_write_buffer_limits(high=1 << 20, low=256 * 1024)
        self._schedule_flush()

    @property
    def transport(self) -> asyncio.Transport | None:
        """The socket's transport (TLS or plain), once connected."""
        return self._transport

    def quick_ack(self) -> None:
        """ACK the peer's data at once from now on (re-armed after every read, as Linux requires).

        The Rust SDKs leave Nagle on for their tunnel socket: each small write then waits for our delayed
        ACK (~40 ms, seen as a p99 of 50 ms). Acking at once costs one setsockopt per read, so it is only
        turned on for such peers.
        """
        self._quick_ack = self._sock is not None and hasattr(socket, "TCP_QUICKACK")

    def data_received(self, data: bytes) -> None:
        if self._quick_ack:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)  # type: ignore[union-attr]
            except OSError:
                self._quick_ack = False
        streams = self._streams
        for ev in self.session.receive_data(data):
            # Ordered by frequency: data and window updates are the hot path.
            if isinstance(ev, mux.DataReceived):
                st = streams.get(ev.stream_id)
                if st is not None:
                    st._feed(ev.data)
                else:
                    # The app dropped the stream: give the window back so the peer is not stuck.
                    self.session.consumed(ev.stream_id, len(ev.data))
            elif isinstance(ev, mux.WindowUpdated):
                st = streams.get(ev.stream_id)
                if st is not None:
                    st._wake_writer()
            elif isinstance(ev, mux.StreamOpened):
                self._accept(ev.stream_id)
            elif isinstance(ev, mux.StreamEnded):
                st = streams.get(ev.stream_id)
                if st is not None:
                    st._feed_eof()  # may run a sink's end callback, which may reset and forget the stream
                    if not self.session.is_open(st.id):
                        streams.pop(st.id, None)
            elif isinstance(ev, mux.StreamReset):
                st = streams.pop(ev.stream_id, None)
                if st is not None:
                    who = "peer" if ev.remote else "protocol fault"
                    st._abort(StreamResetError(f"stream {ev.stream_id} reset by {who}", ev.code))
            elif isinstance(ev, mux.GoAwayReceived):
                self.goaway = ev
                logger.debug("GOAWAY received code=%s message=%r", ev.code, ev.message)
            elif isinstance(ev, mux.SessionTerminated):
                logger.warning("closing tunnel session: %s (muxado code %s)", ev.reason, ev.code)
                self._flush()
                if self._transport is not None:
                    self._transport.close()
        if self.session.bytes_to_send:
            # The session answered something itself (an RST, a WNDINC, a GOAWAY); what the streams wrote
            # from their callbacks scheduled its own flush.
            self._schedule_flush()

    def eof_received(self) -> bool | None:
        return False  # close the transport; a muxado session cannot be half-open

    def connection_lost(self, exc: Exception | None) -> None:
        err = SessionClosedError(f"tunnel connection closed: {exc}" if exc else "tunnel connection closed")
        for st in list(self._streams.values()):
            st._abort(err)
        self._streams.clear()
        self._paused = False
        for w in self._drain_waiters:
            if not w.done():
                w.set_exception(err)
        self._drain_waiters.clear()
        for task in list(self._tasks):
            task.cancel()
        if not self.closed.done():
            self.closed.set_result(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)
        self._drain_waiters.clear()

    # ---- internals used by MuxStream -------------------------------------------------------------------
    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self.session.data_to_send()
        if data:
            tr = self._transport
            # Writing to a closing transport raises in uvloop (performance.md rule 6): drop it instead.
            if tr is not None and not tr.is_closing():
                tr.write(data)

    async def _drain(self) -> None:
        if self.closed.done():
            raise SessionClosedError("tunnel connection closed")
        w = self._loop.create_future()
        self._drain_waiters.append(w)
        await w

    def _consumed(self, stream_id: int, n: int) -> None:
        if self.session.consumed(stream_id, n):
            self._schedule_flush()

    def _forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    def _accept(self, stream_id: int) -> None:
        st = MuxStream(self, stream_id)
        self._streams[stream_id] = st
        if self._on_stream is None:
            st.reset(ErrorCode.STREAM_REFUSED)
            return
        self.spawn(self._run_handler(st), name=f"mux-stream-{stream_id}")

    async def _run_handler(self, st: MuxStream) -> None:
        assert self._on_stream is not None
        try:
            if self._typed:
                st.stream_type = parse_stream_type(await st.readexactly(4))
            await self._on_stream(st)
        except (asyncio.IncompleteReadError, StreamResetError, SessionClosedError):
            st.reset(ErrorCode.STREAM_CANCELLED)
        except Exception:
            logger.exception("stream handler failed on stream %s", st.id)
            st.reset(ErrorCode.INTERNAL)

    # ---- public API --------------------------------------------------------------------------------------
    def spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        """Run ``coro`` as a task owned by this connection (cancelled when it closes)."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def is_closed(self) -> bool:
        return self.closed.done()

    async def open_stream(self, stream_type: int | None = None, initial: bytes = b"") -> MuxStream:
        """Open a stream; with ``stream_type`` its 4-byte type rides on the SYN frame."""
        if self.closed.done():
            raise SessionClosedError("tunnel connection closed")
        prefix = stream_type_prefix(stream_type) if stream_type is not None else b""
        try:
            stream_id = self.session.open_stream(prefix + initial)
        except LocalProtocolError as exc:
            raise SessionClosedError(str(exc)) from exc
        st = MuxStream(self, stream_id, stream_type)
        self._streams[stream_id] = st
        self._schedule_flush()
        if self._paused:
            await self._drain()
        return st

    def go_away(self, code: int = ErrorCode.NONE, message: str = "") -> None:
        self.session.go_away(code, message.encode())
        self._schedule_flush()

    def close(self) -> None:
        """Flush what is queued and close the socket; streams see ``SessionClosedError``."""
        self._flush()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def aclose(self, grace: float = 5.0) -> None:
        self.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), grace)
        if not self.closed.done():
            self.abort()

    async def wait_closed(self) -> Exception | None:
        return await asyncio.shield(self.closed)
