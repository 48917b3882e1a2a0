"""Typed streams and RPC framing on top of muxado (protocol.md §3, §5, §6).

Every stream starts with a 4-byte big-endian stream type. RPC requests are one JSON object with no length
prefix, no delimiter and no FIN, so ``JsonReader`` parses incrementally; a reply is one JSON object
followed by FIN. Proxy streams carry an i64 *little-endian* length and the ProxyHeader JSON, then raw
bytes. This module is sans-IO: readers take bytes and return values, nothing here waits or reads clocks.
"""

from __future__ import annotations

import enum
import json
import re
import struct

import msgspec

from hatchway.errors import RemoteProtocolError
from hatchway.wire import messages as m
from hatchway.wire.frames import ErrorCode

STREAM_TYPE = struct.Struct(">I")
PROXY_LEN = struct.Struct("<q")
MAX_RPC_SIZE = 1 << 20  # a Bind with a large traffic policy stays far below this
MAX_PROXY_HEADER = 64 * 1024


class StreamType(enum.IntEnum):
    AUTH = 0
    BIND = 1
    UNBIND = 2
    PROXY = 3
    RESTART = 4
    STOP = 5
    UPDATE = 6
    START_TUNNEL_WITH_LABEL = 7
    SRV_INFO = 8
    STOP_TUNNEL = 9
    PATCH_TUNNEL_STATE = 10
    HEARTBEAT = 0xFFFFFFFF


#: Agent-opened RPCs: request type -> (request struct, response struct).
RPC_TYPES: dict[StreamType, tuple[type[msgspec.Struct], type[msgspec.Struct]]] = {
    StreamType.AUTH: (m.Auth, m.AuthResp),
    StreamType.BIND: (m.Bind, m.BindResp),
    StreamType.UNBIND: (m.Unbind, m.UnbindResp),
    StreamType.START_TUNNEL_WITH_LABEL: (m.StartTunnelWithLabel, m.StartTunnelWithLabelResp),
    StreamType.SRV_INFO: (m.SrvInfo, m.SrvInfoResp),
}

#: Server-opened commands that expect a reply, and StopTunnel which gets none (only FIN).
COMMAND_TYPES: dict[StreamType, type[msgspec.Struct]] = {
    StreamType.RESTART: m.Restart,
    StreamType.STOP: m.Stop,
    StreamType.UPDATE: m.Update,
    StreamType.STOP_TUNNEL: m.StopTunnel,
}

NO_CALLBACK_ERROR = "the agent has not defined a callback for this operation"


def stream_type_prefix(stream_type: int) -> bytes:
    return STREAM_TYPE.pack(stream_type)


def parse_stream_type(data: bytes) -> int:
    """The type of a stream from its first 4 bytes (callers gather exactly 4)."""
    (value,) = STREAM_TYPE.unpack(data)
    return int(value)


# Outside strings only braces and quotes matter; inside a string, the body up to its closing quote is matched
# in one C-level step (an escape is a backslash plus any one byte).
_OBJECT_TOKEN = re.compile(rb'[{}"]')
_STRING_BODY = re.compile(rb'[^"\\]*(?:\\[\s\S][^"\\]*)*')
_WHITESPACE = re.compile(rb"[ \t\r\n]*")


class JsonReader:
    """Collects bytes until they hold one complete JSON object; trailing whitespace is fine.

    ``feed`` returns the decoded object (a dict) once complete, else None. With ``eof=True`` an
    incomplete or invalid object raises ``RemoteProtocolError``. Input past ``limit`` raises too, so a
    peer cannot make us buffer without bound. Input that cannot be an object (its first byte is not
    ``{``) or that is invalid once its braces balance raises at once: the agent never FINs a request.

    Each byte is scanned once (brace depth and string state carry over between feeds), so a request
    trickled in one byte per frame costs linear, not quadratic, time.
    """

    __slots__ = ("_buf", "_depth", "_end", "_in_string", "_pos", "limit")

    def __init__(self, limit: int = MAX_RPC_SIZE) -> None:
        self._buf = bytearray()
        self._pos = 0  # where scanning resumes
        self._depth = 0
        self._in_string = False
        self._end = 0  # one past the closing brace, once found
        self.limit = limit

    def feed(self, data: bytes, eof: bool = False) -> dict[str, object] | None:
        self._buf += data
        if len(self._buf) > self.limit:
            raise RemoteProtocolError("RPC message too large", ErrorCode.PROTOCOL)
        if not self._end:
            self._end = self._scan()
        if self._end:
            try:
                obj: dict[str, object] = json.loads(self._buf[: self._end].decode("utf-8"))
            except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
                raise RemoteProtocolError(f"invalid RPC JSON: {exc}", ErrorCode.PROTOCOL) from exc
            return obj  # a dict: it starts with '{' and ends at the matching '}'
        if eof:
            raise RemoteProtocolError("RPC stream ended before a complete JSON object", ErrorCode.PROTOCOL)
        return None

    def _scan(self) -> int:
        """Advance over the new bytes; return the end of the object, or 0 while it is incomplete."""
        buf = self._buf
        size = len(buf)
        pos = self._pos
        if self._depth == 0:
            pos = _WHITESPACE.match(buf, pos).end()  # type: ignore[union-attr]  # always matches
            if pos == size:
                self._pos = pos
                return 0
            if buf[pos] != 0x7B:  # '{'
                raise RemoteProtocolError("RPC message is not a JSON object", ErrorCode.PROTOCOL)
            self._depth = 1
            pos += 1
        while pos < size:
            if self._in_string:
                pos = _STRING_BODY.match(buf, pos).end()  # type: ignore[union-attr]  # always matches
                if pos == size or buf[pos] == 0x5C:  # the string, or the escape ending it, goes on later
                    break
                self._in_string = False  # buf[pos] is the closing quote
                pos += 1
                continue
            token = _OBJECT_TOKEN.search(buf, pos)
            if token is None:
                pos = size
                break
            pos = token.end()
            char = buf[token.start()]
            if char == 0x22:  # '"'
                self._in_string = True
            elif char == 0x7B:
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    return pos
        self._pos = pos
        return 0


def encode_proxy_header(header: m.ProxyHeader) -> bytes:
    """Stream type 3, i64 LE length, JSON: everything the edge writes before the client's bytes."""
    body = m.encode(header)
    return STREAM_TYPE.pack(StreamType.PROXY) + PROXY_LEN.pack(len(body)) + body


class ProxyHeaderReader:
    """Agent side: reads the i64 LE length and the ProxyHeader JSON after the stream type.

    ``feed`` returns ``(header, rest)`` once complete, where ``rest`` is the first client bytes.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> tuple[m.ProxyHeader, bytes] | None:
        self._buf += data
        if len(self._buf) < 8:
            return None
        (length,) = PROXY_LEN.unpack_from(self._buf)
        if length < 0 or length > MAX_PROXY_HEADER:
            raise RemoteProtocolError(f"bad ProxyHeader length {length}", ErrorCode.PROTOCOL)
        if len(self._buf) < 8 + length:
            return None
        header = m.decode(self._buf[8 : 8 + length], m.ProxyHeader)
        rest = bytes(self._buf[8 + length :])
        self._buf = bytearray()
        return header, rest
