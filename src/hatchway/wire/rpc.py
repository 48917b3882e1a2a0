"""Typed streams and RPC framing on top of muxado (protocol.md §3, §5, §6).

Every stream starts with a 4-byte big-endian stream type. RPC requests are one JSON object with no length
prefix, no delimiter and no FIN, so ``JsonReader`` parses incrementally; a reply is one JSON object
followed by FIN. Proxy streams carry an i64 *little-endian* length and the ProxyHeader JSON, then raw
bytes. This module is sans-IO: readers take bytes and return values, nothing here waits or reads clocks.
"""

from __future__ import annotations

import enum
import json
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


class JsonReader:
    """Collects bytes until they hold one complete JSON object; trailing whitespace is fine.

    ``feed`` returns the decoded object (a dict) once complete, else None. With ``eof=True`` an
    incomplete or invalid object raises ``RemoteProtocolError``. Input past ``limit`` raises too, so a
    peer cannot make us buffer without bound.
    """

    __slots__ = ("_buf", "_decoder", "limit")

    def __init__(self, limit: int = MAX_RPC_SIZE) -> None:
        self._buf = bytearray()
        self._decoder = json.JSONDecoder()
        self.limit = limit

    def feed(self, data: bytes, eof: bool = False) -> dict[str, object] | None:
        self._buf += data
        if len(self._buf) > self.limit:
            raise RemoteProtocolError("RPC message too large", ErrorCode.PROTOCOL)
        text_bytes = bytes(self._buf).strip()
        if text_bytes[-1:] == b"}":  # cheap pre-check: an object can only be complete at a '}'
            try:
                obj, _end = self._decoder.raw_decode(text_bytes.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                obj = None
            if obj is not None:
                if not isinstance(obj, dict):
                    raise RemoteProtocolError("RPC message is not a JSON object", ErrorCode.PROTOCOL)
                return obj
        if eof:
            raise RemoteProtocolError("RPC stream ended before a complete JSON object", ErrorCode.PROTOCOL)
        return None


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
