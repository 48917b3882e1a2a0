"""Header rules of a compliant reverse proxy, as pure functions over ``[(name, value)]`` byte pairs.

Hop-by-hop removal (keeping ``Connection: upgrade`` for WebSockets), ``X-Forwarded-*``, header
add/remove, Host and Location rewriting, and the ``ngrok-error-code`` guard. Names are compared
case-insensitively and kept as received. This module never parses messages or frames bodies (that is
the listener's job) and does no I/O.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1 plus the classic RFC 2616 list.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
ERROR_CODE_HEADER = b"ngrok-error-code"


def get(headers: Headers, name: bytes) -> bytes | None:
    """The first value of ``name`` (lowercase), or None."""
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def get_all(headers: Headers, name: bytes) -> list[bytes]:
    return [v for k, v in headers if k.lower() == name]


def connection_tokens(headers: Headers) -> set[bytes]:
    tokens: set[bytes] = set()
    for v in get_all(headers, b"connection"):
        tokens.update(t.strip().lower() for t in v.split(b",") if t.strip())
    return tokens


def strip_hop_by_hop(headers: Headers, *, upgrade: bool = False) -> Headers:
    """Drop hop-by-hop headers and those named in ``Connection``. With ``upgrade`` (a WebSocket
    handshake) ``Connection: upgrade`` and ``Upgrade`` pass, the one exception ngrok makes."""
    named = connection_tokens(headers) - {b"upgrade", b"close", b"keep-alive"}
    out: Headers = []
    for k, v in headers:
        lk = k.lower()
        if lk in HOP_BY_HOP or lk in named:
            if upgrade and lk == b"upgrade":
                out.append((k, v))
            continue
        out.append((k, v))
    if upgrade:
        out.append((b"Connection", b"upgrade"))
    return out


def strip_error_code(headers: Headers) -> Headers:
    """Upstreams can never set ``ngrok-error-code``: only the edge does (ngrok-reference.md §6)."""
    return [(k, v) for k, v in headers if k.lower() != ERROR_CODE_HEADER]


def add_forwarded(headers: Headers, client_ip: str, proto: str, host: bytes) -> Headers:
    """Append ``X-Forwarded-For`` and ``X-Forwarded-Proto``; keep a client's ``X-Forwarded-Host`` or
    set it to the original Host. Appending (not replacing) is what ngrok does; apps read the last value."""
    out: Headers = []
    xff: list[bytes] = []
    xfp: list[bytes] = []
    has_xfh = False
    for k, v in headers:
        lk = k.lower()
        if lk == b"x-forwarded-for":
            xff.append(v)
        elif lk == b"x-forwarded-proto":
            xfp.append(v)
        else:
            if lk == b"x-forwarded-host":
                has_xfh = True
            out.append((k, v))
    xff.append(client_ip.encode())
    xfp.append(proto.encode())
    out.append((b"X-Forwarded-For", b", ".join(xff)))
    out.append((b"X-Forwarded-Proto", b", ".join(xfp)))
    if not has_xfh and host:
        out.append((b"X-Forwarded-Host", host))
    return out


def remove(headers: Headers, names: set[bytes]) -> Headers:
    """Remove every header whose lowercase name is in ``names`` (all values)."""
    if not names:
        return headers
    return [(k, v) for k, v in headers if k.lower() not in names]


def add(headers: Headers, additions: list[tuple[bytes, bytes]]) -> Headers:
    """Add headers; ``host`` replaces the existing Host instead of adding a second (seed rule)."""
    out = list(headers)
    for k, v in additions:
        if k.lower() == b"host":
            out = [(hk, hv) for hk, hv in out if hk.lower() != b"host"]
        out.append((k, v))
    return out


def set_host(headers: Headers, host: bytes) -> Headers:
    return add(headers, [(b"Host", host)])


def parse_header_line(text: str) -> tuple[bytes, bytes]:
    """``"Name: value"`` (or ``"name:value"``) as the pair the proxy writes (name lowercased)."""
    name, _, value = text.partition(":")
    return name.strip().lower().encode("latin-1"), value.strip().encode("latin-1")


def rewrite_location(value: bytes, upstream_host: bytes, public_origin: bytes) -> bytes:
    """Point an absolute ``Location`` at the upstream's host back at the public endpoint."""
    try:
        text = value.decode("latin-1")
        parts = urlsplit(text)
    except ValueError:
        return value
    if not parts.netloc or parts.netloc.lower().encode() != upstream_host.lower():
        return value
    origin = urlsplit(public_origin.decode("latin-1"))
    return urlunsplit((origin.scheme, origin.netloc, parts.path, parts.query, parts.fragment)).encode(
        "latin-1"
    )


def serialize_request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for k, v in headers:
        parts += (k, b": ", v, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def serialize_response_head(
    status: int, reason: bytes, headers: Headers, version: bytes = b"HTTP/1.1"
) -> bytes:
    parts = [version, b" ", str(status).encode(), b" ", reason, b"\r\n"]
    for k, v in headers:
        parts += (k, b": ", v, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
