"""Reading the server name and ALPN offers out of a TLS ClientHello, before any TLS library sees it.

The HTTPS listener peeks at a new connection's first bytes so that it can pick the whole ``SSLContext``
for the name (certificate, minimum version, client-certificate requests) before the handshake starts:
OpenSSL's SNI callback can switch the certificate but not the verify mode or the protocol versions of a
connection already under way. Pure: bytes in, a ``Hello`` (or "need more", or ``NotTls``) out; no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: A ClientHello larger than this is not worth waiting for (real ones are 0.5-2 KiB; 16 KiB is a record).
MAX_HELLO = 32 * 1024

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16


class NotTls(ValueError):
    """The bytes are not a TLS ClientHello (plain HTTP on the TLS port, garbage, or too large)."""


@dataclass(frozen=True)
class Hello:
    server_name: str | None
    alpn: tuple[str, ...]


def parse_client_hello(data: bytes) -> Hello | None:
    """The ClientHello at the start of ``data``; None when more bytes are needed; ``NotTls`` otherwise."""
    handshake = bytearray()
    pos = 0
    while True:
        if len(data) < pos + 5:
            return _need_more(data)
        ctype, _version, length = struct.unpack_from(">BHH", data, pos)
        if ctype != _HANDSHAKE or length == 0 or length > 16384 + 2048:
            raise NotTls("not a TLS handshake record")
        if len(data) < pos + 5 + length:
            return _need_more(data)
        handshake += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(handshake) >= 4:
            if handshake[0] != _CLIENT_HELLO:
                raise NotTls("the first handshake message is not a ClientHello")
            need = 4 + int.from_bytes(handshake[1:4], "big")
            if need > MAX_HELLO:
                raise NotTls("ClientHello too large")
            if len(handshake) >= need:
                return _body(bytes(handshake[4:need]))


def _need_more(data: bytes) -> Hello | None:
    if len(data) > MAX_HELLO:
        raise NotTls("ClientHello too large")
    return None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise NotTls("truncated ClientHello")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, size: int) -> bytes:
        return self.take(self.number(size))

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


def _body(body: bytes) -> Hello:
    r = _Reader(body)
    r.take(2 + 32)  # legacy version, random
    r.vector(1)  # session id
    r.vector(2)  # cipher suites
    r.vector(1)  # compression methods
    name: str | None = None
    alpn: list[str] = []
    if r.done:
        return Hello(None, ())
    ext = _Reader(r.vector(2))
    while not ext.done:
        kind = ext.number(2)
        data = _Reader(ext.vector(2))
        if kind == _EXT_SERVER_NAME:
            names = _Reader(data.vector(2))
            while not names.done:
                name_type = names.number(1)
                value = names.vector(2)
                if name_type == 0 and name is None:
                    try:
                        name = value.decode("ascii").lower().rstrip(".")
                    except UnicodeDecodeError as exc:
                        raise NotTls("server name is not ASCII") from exc
        elif kind == _EXT_ALPN:
            protos = _Reader(data.vector(2))
            while not protos.done:
                alpn.append(protos.vector(1).decode("ascii", "replace"))
    return Hello(name or None, tuple(alpn))
