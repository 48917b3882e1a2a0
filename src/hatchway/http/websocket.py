"""Server side of RFC 6455 WebSockets for the "WebSocket TCP converter" module, sans-IO.

The edge finishes a client's opening handshake itself (``accept_handshake``) and then turns the
client's binary messages into a plain byte stream for the upstream, and upstream bytes back into
binary frames (``ServerConnection``). Only what the converter needs is here: binary data, ping/pong,
close, fragmentation; no text, no extensions, no client side.

This module must not do I/O, read a clock or keep whole messages: bytes go in through ``receive``,
events and bytes to write come out, and payload is handed on as soon as it arrives, so memory stays at
one frame header plus one control frame however large a message is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from hatchway.http.headers import Headers, connection_tokens, get_all, serialize_response_head

# RFC 6455 §1.3: the fixed string the server appends to the client's key before hashing.
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# RFC 9110 §5.6.2 token: what a subprotocol name may be. Checked so that nothing a client sent can
# break out of the response header we echo it into.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class HandshakeError(ValueError):
    """The client's opening handshake is not a valid WebSocket upgrade; the message says why."""


def _tokens(values: list[bytes]) -> list[bytes]:
    """The comma-separated items of every value, stripped, empties dropped, in order."""
    return [t.strip() for v in values for t in v.split(b",") if t.strip()]


def accept_value(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2 step 5.4)."""
    return base64.b64encode(hashlib.sha1(key + _ACCEPT_GUID).digest())


def accept_handshake(method: bytes, headers: Headers) -> bytes:
    """Check a client's opening handshake and return the whole ``101 Switching Protocols`` response.

    Raises ``HandshakeError`` (the edge answers 400 with its message) when the request is not a
    version 13 WebSocket upgrade. The first offered subprotocol is echoed, since the converter cannot
    know which one the upstream would have picked and clients refuse a connection that drops the
    protocol they required. Extension offers (permessage-deflate) are declined by omission.
    """
    if method != b"GET":
        raise HandshakeError(f"a WebSocket handshake must be a GET request, not {method.decode('latin-1')}")
    if b"websocket" not in {t.lower() for t in _tokens(get_all(headers, b"upgrade"))}:
        raise HandshakeError("the Upgrade header must name websocket")
    if b"upgrade" not in connection_tokens(headers):
        raise HandshakeError("the Connection header must contain the upgrade token")
    versions = [v.strip() for v in get_all(headers, b"sec-websocket-version")]
    if versions != [b"13"]:
        raise HandshakeError("Sec-WebSocket-Version must be 13 (the only version supported)")
    keys = get_all(headers, b"sec-websocket-key")
    if len(keys) != 1:
        raise HandshakeError("exactly one Sec-WebSocket-Key header is required")
    key = keys[0].strip()
    try:
        nonce = base64.b64decode(key, validate=True)
    except binascii.Error:
        raise HandshakeError("Sec-WebSocket-Key is not valid base64") from None
    if len(nonce) != 16:
        raise HandshakeError("Sec-WebSocket-Key must encode 16 bytes")
    response: Headers = [
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Accept", accept_value(key)),
    ]
    protocols = _tokens(get_all(headers, b"sec-websocket-protocol"))
    if protocols:
        if not _TOKEN.fullmatch(protocols[0]):
            raise HandshakeError("Sec-WebSocket-Protocol values must be tokens")
        response.append((b"Sec-WebSocket-Protocol", protocols[0]))
    return serialize_response_head(101, b"Switching Protocols", response)


# ---- events -------------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class BinaryData:
    """Payload bytes of a binary message, unmasked, in order. One event carries the part of one frame
    that a ``receive`` call completed: a frame split over reads comes out in pieces, and message
    boundaries are not marked (the converter forwards a byte stream, where they mean nothing)."""

    data: bytes


@dataclass(slots=True, frozen=True)
class Ping:
    """The client pinged; the pong is already queued in ``data_to_send``."""

    payload: bytes


@dataclass(slots=True, frozen=True)
class CloseReceived:
    """The client closed (``code`` None when its close frame had no payload). The echo, if one is owed,
    is queued in ``data_to_send``; the caller sends it and then closes the TCP connection."""

    code: int | None
    reason: str


@dataclass(slots=True, frozen=True)
class ProtocolFailure:
    """The client broke the protocol. A close frame with ``code`` is queued and further input is
    ignored; the caller sends ``data_to_send`` and closes the connection."""

    code: int
    reason: str


Event = BinaryData | Ping | CloseReceived | ProtocolFailure


# ---- framing ------------------------------------------------------------------------------------------

_OP_CONTINUATION, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2
_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA
_KNOWN_OPCODES = frozenset({0x0, 0x1, 0x2, 0x8, 0x9, 0xA})

_MAX_CONTROL = 125  # RFC 6455 §5.5
_MAX_HEADER = 14  # 2 + 8 (64-bit length) + 4 (mask)
_MAX_REASON = _MAX_CONTROL - 2

PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
INVALID_PAYLOAD = 1007
MESSAGE_TOO_BIG = 1009


def _sendable_code(code: int) -> bool:
    """Codes an endpoint may put on the wire (RFC 6455 §7.4 and the IANA registry). 1005, 1006 and 1015
    only exist inside APIs; 1016-2999 are reserved for future standards."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


# XOR tables for bytes.translate, one per mask byte value. Built with one big-int XOR per table, not a
# byte loop, so importing stays cheap (256 × 256 bytes in all).
_IDENTITY = int.from_bytes(bytes(range(256)), "little")
_XOR_TABLES = tuple(
    (_IDENTITY ^ int.from_bytes(bytes((k,)) * 256, "little")).to_bytes(256, "little") for k in range(256)
)
# Below this size one big-int XOR beats four strided translate passes: the fixed cost of the slices
# dominates short chunks such as control frames (measured crossover between 512 and 1024 bytes).
_SMALL = 768


def _unmask(chunk: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """``chunk`` XOR the repeated 4-byte ``mask`` (already rotated to the chunk's offset in its frame).

    Large chunks go through ``bytes.translate``: byte lane i (every 4th byte from i) is XORed with
    mask[i] by a 256-entry table, so the per-byte work runs in C. That measured about twice as fast as
    a big-int XOR over the whole buffer, which wins only for short chunks.
    """
    n = len(chunk)
    if n < _SMALL:
        key = (mask * ((n >> 2) + 1))[:n]
        return (int.from_bytes(chunk, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
    out = bytearray(chunk)
    for lane in range(4):
        out[lane::4] = out[lane::4].translate(_XOR_TABLES[mask[lane]])
    return bytes(out)


def _frame(opcode: int, payload: bytes | bytearray | memoryview) -> bytes:
    """One final, unmasked frame (servers never mask, RFC 6455 §5.1), with the shortest length form."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def _close_payload(code: int, reason: str) -> bytes:
    data = reason.encode("utf-8")
    if len(data) > _MAX_REASON:
        # Cut on a character boundary: a close reason must stay valid UTF-8 for the peer.
        data = data[:_MAX_REASON].decode("utf-8", "ignore").encode("utf-8")
    return struct.pack("!H", code) + data


class _Failure(Exception):
    """Internal: the client broke the protocol; carried out of the parser to ``receive``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ServerConnection:
    """The server end of one WebSocket after the handshake: client bytes in, events and bytes out.

    ``receive`` streams binary payload out as ``BinaryData`` as soon as bytes arrive (partial frames
    included), answers pings and close frames by queueing control frames for ``data_to_send``, and
    reports protocol violations as ``ProtocolFailure``. ``max_message`` caps one message's total size
    (checked against frame headers before any of the frame's payload is passed on), since nothing
    here buffers messages, it is a policy limit rather than a memory one.

    After ``close`` the connection keeps decoding input until the client's close frame arrives (its
    data can still be used or dropped by the caller), but it answers no more pings. After a close frame
    from the client or a protocol failure, input is ignored.
    """

    __slots__ = (
        "_ctrl",
        "_fin",
        "_hdr",
        "_in_message",
        "_mask",
        "_max_message",
        "_message_len",
        "_offset",
        "_opcode",
        "_outgoing",
        "_remaining",
        "_sent_close",
        "_stopped",
    )

    def __init__(self, max_message: int = 1 << 20) -> None:
        if max_message < 1:
            raise ValueError("max_message must be at least 1")
        self._max_message = max_message
        self._hdr = b""  # a frame header split across reads (under 14 bytes)
        self._opcode: int | None = None  # the frame being read, None between frames
        self._fin = False
        self._mask = b""
        self._remaining = 0  # payload bytes of the current frame still to come
        self._offset = 0  # payload bytes of the current frame already read (where the mask stands)
        self._ctrl = bytearray()  # a control frame's payload so far (at most 125 bytes)
        self._in_message = False  # a fragmented binary message awaits continuation frames
        self._message_len = 0
        self._outgoing = bytearray()  # pongs and close frames for data_to_send
        self._sent_close = False
        self._stopped = False  # close received or protocol failure: input is ignored from now on

    @property
    def closed(self) -> bool:
        """True once a close frame was received or sent (or queued, for an echo or a failure).

        Receiving a close or failing always queues our own close frame, so "sent" covers all three."""
        return self._sent_close

    def data_to_send(self) -> bytes:
        """Control frames the codec owes the client (pongs, the close echo, a failure's close frame)."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def send_data(self, payload: bytes | bytearray | memoryview) -> bytes:
        """One binary frame carrying ``payload``. Once a close frame went out nothing more may be sent
        (RFC 6455 §5.5.1), so upstream bytes racing a close are dropped and this returns ``b""``."""
        if self.closed:
            return b""
        return _frame(_OP_BINARY, payload)

    def close(self, code: int = 1000, reason: str = "") -> bytes:
        """A close frame to send, the first time only; later calls (or after a queued close) give ``b""``.

        Raises ValueError for a code that may not be sent or a reason over 123 bytes of UTF-8.
        """
        if not _sendable_code(code):
            raise ValueError(f"close code {code} may not be sent")
        if len(reason.encode("utf-8")) > _MAX_REASON:
            raise ValueError(f"a close reason is at most {_MAX_REASON} bytes of UTF-8")
        if self.closed:
            return b""
        self._sent_close = True
        return _frame(_OP_CLOSE, _close_payload(code, reason))

    def receive(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes from the client; returns what they completed, in order."""
        events: list[Event] = []
        view = memoryview(data)
        pos, end = 0, len(view)
        try:
            while pos < end and not self._stopped:
                if self._opcode is None:
                    pos = self._read_header(view, pos, end)
                    if self._opcode is not None and self._remaining == 0:
                        self._end_frame(events)
                    continue
                take = min(self._remaining, end - pos)
                chunk = view[pos : pos + take]
                pos += take
                if self._opcode >= _OP_CLOSE:
                    self._ctrl += chunk  # unmasked once whole: control payloads are handled as a unit
                else:
                    k = self._offset & 3
                    events.append(BinaryData(_unmask(chunk, self._mask[k:] + self._mask[:k])))
                self._offset += take
                self._remaining -= take
                if self._remaining == 0:
                    self._end_frame(events)
        except _Failure as failure:
            self._fail(failure, events)
        return events

    # ---- internals ----

    def _read_header(self, view: memoryview, pos: int, end: int) -> int:
        """Parse the next frame header from a stash plus ``view[pos:]``; returns the new position.

        At most 14 bytes are taken per try, so a header split across reads costs a tiny copy and a
        stash that never exceeds one header."""
        stashed = len(self._hdr)
        buf = self._hdr + bytes(view[pos : pos + _MAX_HEADER])
        size = self._parse_header(buf)
        if size == 0:
            # Incomplete: buf holds fewer bytes than a header needs, hence all of view[pos:].
            self._hdr = buf
            return end
        self._hdr = b""
        return pos + size - stashed

    def _parse_header(self, buf: bytes) -> int:
        """The header's size if ``buf`` holds all of it (and the frame state is set), else 0.

        Rule checks run as soon as the bytes they need are there, so a bad frame fails early; state
        changes only once the header is whole, so a retry after more input sees the same state."""
        if len(buf) < 2:
            return 0
        b0, b1 = buf[0], buf[1]
        fin, opcode, length = bool(b0 & 0x80), b0 & 0x0F, b1 & 0x7F
        if b0 & 0x70:
            raise _Failure(PROTOCOL_ERROR, "reserved bits set but no extension was negotiated")
        if opcode not in _KNOWN_OPCODES:
            raise _Failure(PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        if not b1 & 0x80:
            raise _Failure(PROTOCOL_ERROR, "client frames must be masked")
        if opcode >= _OP_CLOSE:
            if not fin:
                raise _Failure(PROTOCOL_ERROR, "control frames must not be fragmented")
            if length > _MAX_CONTROL:
                raise _Failure(PROTOCOL_ERROR, "control frame payload over 125 bytes")
        elif opcode == _OP_CONTINUATION:
            if not self._in_message:
                raise _Failure(PROTOCOL_ERROR, "continuation frame without a message to continue")
        elif self._in_message:
            raise _Failure(PROTOCOL_ERROR, "new data frame before the fragmented message ended")
        elif opcode == _OP_TEXT:
            raise _Failure(UNSUPPORTED_DATA, "unsupported data: only binary messages are carried")
        size = 2
        if length == 126:
            if len(buf) < 4:
                return 0
            (length,) = struct.unpack_from("!H", buf, 2)
            size = 4
            if length < 126:
                raise _Failure(PROTOCOL_ERROR, "frame length not in its shortest form")
        elif length == 127:
            if len(buf) < 10:
                return 0
            (length,) = struct.unpack_from("!Q", buf, 2)
            size = 10
            if length >> 63:
                raise _Failure(PROTOCOL_ERROR, "frame length has its most significant bit set")
            if length < 1 << 16:
                raise _Failure(PROTOCOL_ERROR, "frame length not in its shortest form")
        if opcode < _OP_CLOSE and self._message_len + length > self._max_message:
            raise _Failure(MESSAGE_TOO_BIG, f"message over {self._max_message} bytes")
        if len(buf) < size + 4:
            return 0
        self._mask = buf[size : size + 4]
        self._opcode, self._fin = opcode, fin
        self._remaining, self._offset = length, 0
        if opcode < _OP_CLOSE:
            self._message_len += length
        return size + 4

    def _end_frame(self, events: list[Event]) -> None:
        """The current frame's payload is all read: act on it and get ready for the next header."""
        opcode = self._opcode
        self._opcode = None
        if opcode is None:  # pragma: no cover - callers only end a frame they started
            return
        if opcode < _OP_CLOSE:
            # Data: a final frame ends the message; a non-final one keeps it open for continuations.
            self._in_message = not self._fin
            if self._fin:
                self._message_len = 0
            return
        payload = _unmask(self._ctrl, self._mask)
        self._ctrl.clear()
        if opcode == _OP_PING:
            events.append(Ping(payload))
            if not self._sent_close:  # after our close frame nothing else may follow it
                self._outgoing += _frame(_OP_PONG, payload)
        elif opcode == _OP_CLOSE:
            code, reason = self._parse_close(payload)
            events.append(CloseReceived(code, reason))
            if not self._sent_close:
                # Echo the status code (RFC 6455 §5.5.1); an empty close is answered with an empty one.
                self._outgoing += _frame(_OP_CLOSE, b"" if code is None else struct.pack("!H", code))
                self._sent_close = True
            self._stop()
        # A pong needs nothing: unsolicited pongs are allowed as one-way heartbeats (§5.5.3).

    @staticmethod
    def _parse_close(payload: bytes) -> tuple[int | None, str]:
        if not payload:
            return None, ""
        if len(payload) == 1:
            raise _Failure(PROTOCOL_ERROR, "close frame payload of one byte")
        (code,) = struct.unpack_from("!H", payload)
        if not _sendable_code(code):
            raise _Failure(PROTOCOL_ERROR, f"invalid close code {code}")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise _Failure(INVALID_PAYLOAD, "close reason is not valid UTF-8") from None
        return code, reason

    def _fail(self, failure: _Failure, events: list[Event]) -> None:
        events.append(ProtocolFailure(failure.code, failure.reason))
        if not self._sent_close:
            self._outgoing += _frame(_OP_CLOSE, _close_payload(failure.code, failure.reason))
            self._sent_close = True
        self._stop()

    def _stop(self) -> None:
        self._stopped = True
        self._hdr = b""
        self._ctrl.clear()
        self._opcode = None
