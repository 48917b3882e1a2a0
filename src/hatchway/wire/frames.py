"""muxado frames: the 8-byte header, the four frame types and their bodies, encode and decode.

Layout (protocol.md §2.1), all big-endian::

    word0 = LENGTH(24) << 8 | TYPE(4) << 4 | FLAGS(4)
    word1 = RESERVED(1) | STREAM_ID(31)

This module is pure data and bytes: it never tracks stream state (that is ``mux.py``) and never does I/O.
Malformed input raises ``RemoteProtocolError`` carrying the muxado error code to answer with.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from hatchway.errors import RemoteProtocolError

HEADER = struct.Struct(">II")
U32 = struct.Struct(">I")
GOAWAY_FIXED = struct.Struct(">II")
HEADER_SIZE = 8
MAX_LENGTH = 0xFFFFFF
MAX_STREAM_ID = 0x7FFFFFFF
MAX_WINDOW_INCREMENT = 0x7FFFFFFF


class FrameType(enum.IntEnum):
    RST = 0
    DATA = 1
    WNDINC = 2
    GOAWAY = 3


# Flags live in the low nibble of byte 3. muxado's PROTOCOL.md says SYN is 0x10; the Go and Rust code and
# the wire use 0x2 (protocol.md pitfall 1).
FLAG_FIN = 0x1
FLAG_SYN = 0x2

# The frame types as plain ints for the decoder's hot path (reading an enum member costs more).
_RST, _DATA, _WNDINC, _GOAWAY = 0, 1, 2, 3


class ErrorCode(enum.IntEnum):
    """muxado's error codes, carried by RST and GOAWAY (protocol.md §2.2)."""

    NONE = 0
    PROTOCOL = 1
    INTERNAL = 2
    FLOW_CONTROL = 3
    STREAM_CLOSED = 4
    STREAM_REFUSED = 5
    STREAM_CANCELLED = 6
    STREAM_RESET = 7
    FRAME_SIZE = 8
    ACCEPT_QUEUE_FULL = 9
    ENHANCE_YOUR_CALM = 10
    REMOTE_GONE_AWAY = 11
    STREAMS_EXHAUSTED = 12
    WRITE_TIMEOUT = 13
    SESSION_CLOSED = 14
    PEER_EOF = 15


# Frames and events are made per DATA frame on the hot path: plain slotted classes (a frozen dataclass
# costs three times as much to build). Nothing mutates them after decoding.
@dataclass(slots=True)
class Data:
    stream_id: int
    data: bytes
    fin: bool = False
    syn: bool = False


@dataclass(slots=True)
class Rst:
    stream_id: int
    code: int


@dataclass(slots=True)
class WndInc:
    stream_id: int
    increment: int


@dataclass(slots=True)
class GoAway:
    last_stream_id: int
    code: int
    message: bytes = b""


Frame = Data | Rst | WndInc | GoAway


def header(length: int, ftype: int, flags: int, stream_id: int) -> bytes:
    """Encode one frame header. Callers guarantee the ranges; they are checked here only cheaply."""
    if length > MAX_LENGTH or stream_id > MAX_STREAM_ID or length < 0 or stream_id < 0:
        raise ValueError(f"frame header out of range: length={length} stream_id={stream_id}")
    return HEADER.pack(length << 8 | ftype << 4 | flags, stream_id)


def encode_data(stream_id: int, data: bytes, fin: bool = False, syn: bool = False) -> bytes:
    flags = (FLAG_FIN if fin else 0) | (FLAG_SYN if syn else 0)
    return header(len(data), FrameType.DATA, flags, stream_id) + data


def encode_rst(stream_id: int, code: int) -> bytes:
    return header(4, FrameType.RST, 0, stream_id) + U32.pack(code)


def encode_wndinc(stream_id: int, increment: int) -> bytes:
    return header(4, FrameType.WNDINC, 0, stream_id) + U32.pack(increment & MAX_WINDOW_INCREMENT)


def encode_goaway(last_stream_id: int, code: int, message: bytes = b"") -> bytes:
    # We write the correct LENGTH (8 + message), unlike Rust muxado (see FrameDecoder).
    return (
        header(8 + len(message), FrameType.GOAWAY, 0, 0)
        + GOAWAY_FIXED.pack(last_stream_id & MAX_STREAM_ID, code)
        + message
    )


def encode(frame: Frame) -> bytes:
    if isinstance(frame, Data):
        return encode_data(frame.stream_id, frame.data, frame.fin, frame.syn)
    if isinstance(frame, Rst):
        return encode_rst(frame.stream_id, frame.code)
    if isinstance(frame, WndInc):
        return encode_wndinc(frame.stream_id, frame.increment)
    return encode_goaway(frame.last_stream_id, frame.code, frame.message)


class FrameDecoder:
    """Incremental decoder: ``feed()`` bytes, then call ``next_frame()`` until it returns None.

    A GOAWAY ends decoding for good: Rust muxado (0.4-0.5) writes LENGTH without the 8 fixed bytes, so
    whatever follows a GOAWAY cannot be trusted (protocol.md §2.1). Bytes after it are ignored.
    """

    __slots__ = ("_buf", "_pos", "finished")

    def __init__(self) -> None:
        # What was fed and not decoded yet, from ``_pos``: the caller's own bytes while they are being
        # decoded (no copy for input that holds whole frames, the common case), a bytearray once a frame
        # is split across feeds.
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self.finished = False

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.finished:
            return
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            self._buf = data if type(data) is bytes else bytes(data)
            self._pos = 0
            return
        if isinstance(buf, bytearray):
            if pos:
                # Compact lazily: only once per feed, so a burst of small frames costs one memmove.
                del buf[:pos]
        else:
            buf = bytearray(memoryview(buf)[pos:])
        buf += data
        self._buf = buf
        self._pos = 0

    def next_frame(self) -> Frame | None:
        if self.finished:
            return None
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        word0, word1 = HEADER.unpack_from(buf, pos)
        length = word0 >> 8
        ftype = (word0 >> 4) & 0xF
        flags = word0 & 0xF
        stream_id = word1 & MAX_STREAM_ID
        if ftype == _DATA:
            end = pos + HEADER_SIZE + length
            if len(buf) < end:
                return None
            if stream_id == 0:
                raise RemoteProtocolError("DATA frame on stream 0", ErrorCode.PROTOCOL)
            self._pos = end
            # One copy either way (a bytearray slice then bytes() would copy twice).
            if type(buf) is bytes:
                payload = buf[pos + HEADER_SIZE : end]
            else:
                payload = bytes(memoryview(buf)[pos + HEADER_SIZE : end])
            return Data(stream_id, payload, bool(flags & FLAG_FIN), bool(flags & FLAG_SYN))
        if ftype in (_RST, _WNDINC):
            if length != 4:
                raise RemoteProtocolError(
                    f"{FrameType(ftype).name} frame with length {length}", ErrorCode.FRAME_SIZE
                )
            if len(buf) - pos < HEADER_SIZE + 4:
                return None
            if stream_id == 0:
                raise RemoteProtocolError(f"{FrameType(ftype).name} frame on stream 0", ErrorCode.PROTOCOL)
            (value,) = U32.unpack_from(buf, pos + HEADER_SIZE)
            self._pos = pos + HEADER_SIZE + 4
            if ftype == _RST:
                return Rst(stream_id, value)
            return WndInc(stream_id, value & MAX_WINDOW_INCREMENT)
        if ftype == _GOAWAY:
            if stream_id != 0:
                raise RemoteProtocolError("GOAWAY frame on a stream", ErrorCode.PROTOCOL)
            # A correct LENGTH is >= 8. A shorter one is Rust's variant that left out the fixed 8 bytes:
            # then the body really is 8 + LENGTH bytes long.
            body_len = length if length >= 8 else 8 + length
            if len(buf) - pos < HEADER_SIZE + body_len:
                return None
            last_id, code = GOAWAY_FIXED.unpack_from(buf, pos + HEADER_SIZE)
            message = bytes(buf[pos + HEADER_SIZE + 8 : pos + HEADER_SIZE + body_len])
            self.finished = True
            self._buf = b""
            self._pos = 0
            return GoAway(last_id & MAX_STREAM_ID, code, message)
        raise RemoteProtocolError("invalid frame", ErrorCode.PROTOCOL)
