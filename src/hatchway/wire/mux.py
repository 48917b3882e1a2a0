"""The muxado session state machine: streams, per-stream flow control, RST and GOAWAY.

Bytes in (``receive_data``) become events out; calls such as ``send_data`` queue frames that the driver
collects with ``data_to_send()``. This module never does I/O, never waits and never reads a clock: a
driver (``hatchway.net.transport``) owns the socket and decides when to write.

Peer faults never raise out of ``receive_data``: a stream-level fault queues an RST and reports
``StreamReset``; a session-level fault queues a GOAWAY and reports ``SessionTerminated``, after which
input is ignored. Misuse of the API by the caller raises ``LocalProtocolError``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hatchway.errors import LocalProtocolError, RemoteProtocolError
from hatchway.wire.frames import (
    FLAG_FIN,
    FLAG_SYN,
    HEADER,
    MAX_WINDOW_INCREMENT,
    Data,
    ErrorCode,
    FrameDecoder,
    FrameType,
    GoAway,
    Rst,
    WndInc,
    encode_goaway,
    encode_rst,
    encode_wndinc,
    header,
)

DEFAULT_WINDOW = 256 * 1024  # never negotiated: both Go and Rust assume 256 KiB (protocol.md §2.4)
DEFAULT_MAX_FRAME = 64 * 1024  # performance.md: frames up to 64 KiB keep TLS records full and latency low
DEFAULT_MAX_STREAMS = 1024
_DATA_BITS = FrameType.DATA << 4  # a DATA frame header's type nibble, no flags


# ---- events -------- (plain slotted classes, as the frames: built per frame, never changed)
@dataclass(slots=True)
class StreamOpened:
    """The peer opened ``stream_id`` (DATA with SYN). Its first bytes follow as ``DataReceived``."""

    stream_id: int


@dataclass(slots=True)
class DataReceived:
    stream_id: int
    data: bytes


@dataclass(slots=True)
class StreamEnded:
    """The peer half-closed ``stream_id`` (FIN): no more data will arrive on it."""

    stream_id: int


@dataclass(slots=True)
class StreamReset:
    """The stream is gone in both directions. ``remote`` is False when we reset it for a peer fault."""

    stream_id: int
    code: int
    remote: bool


@dataclass(slots=True)
class WindowUpdated:
    """The send window of ``stream_id`` grew: a writer blocked on it may continue."""

    stream_id: int
    window: int


@dataclass(slots=True)
class GoAwayReceived:
    last_stream_id: int
    code: int
    message: bytes


@dataclass(slots=True)
class SessionTerminated:
    """We found a fatal fault in the peer's bytes; a GOAWAY with ``code`` is queued to tell it."""

    code: int
    reason: str


Event = (
    StreamOpened
    | DataReceived
    | StreamEnded
    | StreamReset
    | WindowUpdated
    | GoAwayReceived
    | SessionTerminated
)


class _Stream:
    __slots__ = ("id", "local_fin", "recv_unacked", "recv_window", "remote_fin", "send_window")

    def __init__(self, stream_id: int, window: int) -> None:
        self.id = stream_id
        self.send_window = window
        self.recv_window = window
        self.recv_unacked = 0
        self.local_fin = False
        self.remote_fin = False


class MuxSession:
    """One muxado session, either role. ``client=True`` is the agent (odd stream ids)."""

    def __init__(
        self,
        *,
        client: bool,
        window: int = DEFAULT_WINDOW,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_streams: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        self.client = client
        self.window = window
        self.max_frame = max_frame
        self.max_streams = max_streams
        # Both implementations start at 1 (client) / 0 (server) and add 2 before each use, so the
        # agent's first stream is 3 and the server's is 2 (protocol.md §2.3).
        self._next_id = 1 if client else 0
        self._streams: dict[int, _Stream] = {}
        self._decoder = FrameDecoder()
        # Frames are appended to one buffer (the only copy of a payload) and handed out whole.
        self._out = bytearray()
        self.last_remote_id = 0
        self.goaway_sent = False
        self.goaway_received = False
        self.terminated = False
        # WNDINC is sent once a quarter of the window is consumed: fewer frames than Rust's per-read
        # updates, and the sender never runs dry while data is being read.
        self._ack_threshold = max(1, window // 4)

    # ---- inspection ----------------------------------------------------------------------------------
    def is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def send_window(self, stream_id: int) -> int:
        st = self._streams.get(stream_id)
        return st.send_window if st is not None else 0

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def bytes_to_send(self) -> int:
        return len(self._out)

    def _is_local_id(self, stream_id: int) -> bool:
        return (stream_id & 1) == (1 if self.client else 0)

    # ---- output --------------------------------------------------------------------------------------
    def _emit(self, chunk: bytes) -> None:
        self._out += chunk

    def data_to_send(self) -> bytearray:
        """Everything queued since the last call, as one buffer (one write, one TLS record run)."""
        out = self._out
        self._out = bytearray()
        return out

    # ---- commands ------------------------------------------------------------------------------------
    def open_stream(self, initial: bytes = b"") -> int:
        """Open a stream with SYN; ``initial`` (e.g. the 4-byte stream type) rides on the SYN frame."""
        if self.terminated or self.goaway_sent or self.goaway_received:
            raise LocalProtocolError("session is going away; no new streams", ErrorCode.SESSION_CLOSED)
        if len(initial) > self.window:
            raise LocalProtocolError("initial data larger than the window", ErrorCode.FLOW_CONTROL)
        self._next_id += 2
        stream_id = self._next_id
        if stream_id > 0x7FFFFFFF:
            raise LocalProtocolError("stream ids exhausted", ErrorCode.STREAMS_EXHAUSTED)
        st = _Stream(stream_id, self.window)
        self._streams[stream_id] = st
        st.send_window -= len(initial)
        self._emit(header(len(initial), FrameType.DATA, FLAG_SYN, stream_id) + initial)
        return stream_id

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview, fin: bool = False) -> int:
        """Queue as much of ``data`` as the send window allows; return how many bytes were taken.

        FIN goes out only with the last byte: when fewer bytes fit, the caller waits for
        ``WindowUpdated`` and calls again with the rest and ``fin``.
        """
        st = self._streams.get(stream_id)
        if st is None or st.local_fin:
            raise LocalProtocolError(f"stream {stream_id} is not open for sending", ErrorCode.STREAM_CLOSED)
        total = len(data)
        if not fin and 0 < total <= st.send_window and total <= self.max_frame:
            # The commonest call (a request or response head, a small body): one whole frame, whose
            # header needs no range check (the length is under max_frame, the stream id is ours).
            out = self._out
            out += HEADER.pack(total << 8 | _DATA_BITS, stream_id)
            out += data
            st.send_window -= total
            return total
        n = min(total, st.send_window)
        view = memoryview(data)
        max_frame = self.max_frame
        off = 0
        while off < n:
            size = min(max_frame, n - off)
            last = off + size == n
            flags = FLAG_FIN if (fin and last and n == total) else 0
            out = self._out
            out += header(size, FrameType.DATA, flags, stream_id)
            out += view[off : off + size]
            off += size
        st.send_window -= n
        if fin and n == total:
            if total == 0:
                self._emit(header(0, FrameType.DATA, FLAG_FIN, stream_id))
            st.local_fin = True
            if st.remote_fin:
                del self._streams[stream_id]
        return n

    def send_eof(self, stream_id: int) -> None:
        """Half-close our direction (an empty DATA with FIN)."""
        self.send_data(stream_id, b"", fin=True)

    def reset_stream(self, stream_id: int, code: int = ErrorCode.STREAM_RESET) -> None:
        """Close both directions of a stream with RST. Resetting a stream that is gone is a no-op."""
        if self._streams.pop(stream_id, None) is not None and not self.terminated:
            self._emit(encode_rst(stream_id, code))

    def consumed(self, stream_id: int, n: int) -> bool:
        """The application has read ``n`` bytes of ``stream_id``: give the window back to the peer.
        True when that queued a WNDINC (the driver then has something to send)."""
        st = self._streams.get(stream_id)
        if st is None or st.remote_fin or n <= 0:
            return False
        st.recv_unacked += n
        if st.recv_unacked < self._ack_threshold:
            return False
        self._emit(encode_wndinc(stream_id, st.recv_unacked))
        st.recv_window += st.recv_unacked
        st.recv_unacked = 0
        return True

    def go_away(self, code: int = ErrorCode.NONE, message: bytes = b"") -> None:
        """Tell the peer we take no new streams; existing streams may finish."""
        if not self.goaway_sent:
            self.goaway_sent = True
            self._emit(encode_goaway(self.last_remote_id, code, message))

    # ---- input ---------------------------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        if self.terminated:
            return []
        events: list[Event] = []
        decoder = self._decoder
        decoder.feed(data)
        try:
            while True:
                frame = decoder.next_frame()
                if frame is None:
                    break
                if type(frame) is Data:
                    self._on_data(frame, events)
                elif type(frame) is WndInc:
                    self._on_wndinc(frame, events)
                elif type(frame) is Rst:
                    if self._streams.pop(frame.stream_id, None) is not None:
                        events.append(StreamReset(frame.stream_id, frame.code, True))
                elif type(frame) is GoAway:
                    self.goaway_received = True
                    events.append(GoAwayReceived(frame.last_stream_id, frame.code, frame.message))
        except RemoteProtocolError as exc:
            self._terminate(exc.mux_code, str(exc), events)
        return events

    def _terminate(self, code: int, reason: str, events: list[Event]) -> None:
        if not self.goaway_sent:
            self.goaway_sent = True
            self._emit(encode_goaway(self.last_remote_id, code, reason.encode()[:256]))
        self.terminated = True
        for stream_id in list(self._streams):
            events.append(StreamReset(stream_id, ErrorCode.SESSION_CLOSED, False))
        self._streams.clear()
        events.append(SessionTerminated(code, reason))

    def _on_data(self, frame: Data, events: list[Event]) -> None:
        stream_id = frame.stream_id
        st = self._streams.get(stream_id)
        if frame.syn:
            if self._is_local_id(stream_id):
                raise RemoteProtocolError(
                    f"peer opened stream {stream_id} with our parity", ErrorCode.PROTOCOL
                )
            if st is not None:
                raise RemoteProtocolError(f"SYN on open stream {stream_id}", ErrorCode.PROTOCOL)
            if self.goaway_sent:
                self._emit(encode_rst(stream_id, ErrorCode.REMOTE_GONE_AWAY))
                return
            if len(self._streams) >= self.max_streams:
                self._emit(encode_rst(stream_id, ErrorCode.STREAMS_EXHAUSTED))
                return
            st = _Stream(stream_id, self.window)
            self._streams[stream_id] = st
            if stream_id > self.last_remote_id:
                self.last_remote_id = stream_id
            events.append(StreamOpened(stream_id))
        elif st is None:
            # DATA for a stream we never saw or already closed/reset (protocol.md §2.3).
            self._emit(encode_rst(stream_id, ErrorCode.STREAM_CLOSED))
            return
        if st.remote_fin:
            self._streams.pop(stream_id, None)
            self._emit(encode_rst(stream_id, ErrorCode.STREAM_CLOSED))
            events.append(StreamReset(stream_id, ErrorCode.STREAM_CLOSED, False))
            return
        size = len(frame.data)
        if size:
            if size > st.recv_window:
                self._streams.pop(stream_id, None)
                self._emit(encode_rst(stream_id, ErrorCode.FLOW_CONTROL))
                events.append(StreamReset(stream_id, ErrorCode.FLOW_CONTROL, False))
                return
            st.recv_window -= size
            events.append(DataReceived(stream_id, frame.data))
        if frame.fin:
            st.remote_fin = True
            events.append(StreamEnded(stream_id))
            if st.local_fin:
                del self._streams[stream_id]

    def _on_wndinc(self, frame: WndInc, events: list[Event]) -> None:
        st = self._streams.get(frame.stream_id)
        if st is None or frame.increment == 0:
            return  # WNDINC for an unknown stream is ignored (protocol.md §2.4)
        st.send_window = min(st.send_window + frame.increment, MAX_WINDOW_INCREMENT)
        events.append(WindowUpdated(frame.stream_id, st.send_window))
