"""One HTTP exchange through a tunnel, as pure decisions: what goes upstream and what goes to the client.

``upstream_head`` builds the request head written on the Proxy stream (hop-by-hop removed,
``X-Forwarded-*`` added, the endpoint's header changes and Host rewrite applied); ``client_head`` builds
the response head the client gets (``ngrok-error-code`` stripped, response header changes, Location
rewrite, our own framing). The listeners own the sockets and call these; nothing here awaits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hatchway.edge.registry import Endpoint
from hatchway.http import headers as hh
from hatchway.http.h1 import Framing, ResponseHead


@dataclass(slots=True)
class Request:
    """A client request head as the listener parsed it."""

    method: bytes
    target: bytes
    headers: hh.Headers
    version: str  # "1.1", "1.0" or "2"
    host: str  # from Host / :authority, port stripped, lowercased
    client_ip: str
    client_port: int
    scheme: str
    keep_alive: bool = True
    upgrade: bool = False
    chunked: bool = False  # the body arrives chunked and must be re-framed upstream
    has_body: bool = False
    lower: list[bytes] = field(default_factory=list)  # lowercased names aligned with ``headers``, if known
    connection: frozenset[bytes] | None = None  # Connection header tokens, if known
    extra: dict[str, object] = field(default_factory=dict)


def origin_form(target: bytes) -> bytes:
    """``http://host/path?q`` (absolute-form) becomes ``/path?q``; origin-form passes unchanged."""
    if target.startswith(b"/") or target == b"*":
        return target
    scheme_end = target.find(b"://")
    if scheme_end < 0:
        return target
    path_start = target.find(b"/", scheme_end + 3)
    return target[path_start:] if path_start >= 0 else b"/"


# Request header names that make ``upstream_head`` drop, merge or replace something.
_NOT_AS_IS = hh.HOP_BY_HOP | {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}


def upstream_head(ep: Endpoint, req: Request) -> tuple[bytes, bytes]:
    """The request head for the Proxy stream and the Host it carries (for the Location rewrite).

    Most requests pass every header on as it came and only get ours appended: that is written straight
    out here (it runs per request); anything else takes ``general_upstream_head``. Both give the same
    bytes.
    """
    names = req.lower or [k.lower() for k, _ in req.headers]
    if (
        not req.connection
        and req.connection is not None
        and not req.upgrade
        and not req.chunked
        and not ep.request_remove
        and not ep.rewrite_host
        and not ep.request_add
        and _NOT_AS_IS.isdisjoint(names)
    ):
        sent_host = req.headers[names.index(b"host")][1] if b"host" in names else b""
        if sent_host or names.count(b"host") < 2:  # else X-Forwarded-Host is a later, non-empty Host
            parts = [req.method, b" ", origin_form(req.target), b" HTTP/1.1\r\n"]
            for k, v in req.headers:
                parts += (k, b": ", v, b"\r\n")
            parts += (
                b"X-Forwarded-For: ",
                req.client_ip.encode(),
                b"\r\nX-Forwarded-Proto: ",
                req.scheme.encode(),
                b"\r\nX-Forwarded-Host: ",
                sent_host or req.host.encode(),
                b"\r\n\r\n",
            )
            return b"".join(parts), sent_host
    return general_upstream_head(ep, req, names)


def general_upstream_head(
    ep: Endpoint, req: Request, names: list[bytes] | None = None
) -> tuple[bytes, bytes]:
    """``upstream_head`` for any request.

    One pass over the client's headers: hop-by-hop ones (and those named in Connection) and the
    endpoint's removals are dropped, earlier ``X-Forwarded-For/Proto`` values are gathered so ours can be
    appended (ngrok appends; apps read the last value), and a client's ``X-Forwarded-Host`` is kept.
    """
    names = names or req.lower or [k.lower() for k, _ in req.headers]
    tokens = req.connection if req.connection is not None else hh.connection_tokens(req.headers)
    named = tokens - {b"upgrade", b"close", b"keep-alive"}
    removed = ep.request_remove
    host_value = b""
    xff: list[bytes] = []
    xfp: list[bytes] = []
    has_xfh = False
    headers: hh.Headers = []
    for (k, v), lk in zip(req.headers, names, strict=True):
        if lk == b"host" and not host_value:
            host_value = v
        if lk in hh.HOP_BY_HOP or lk in named:
            if req.upgrade and lk == b"upgrade":
                headers.append((k, v))
            continue
        if lk in removed:
            continue
        if lk == b"x-forwarded-for":
            xff.append(v)
        elif lk == b"x-forwarded-proto":
            xfp.append(v)
        else:
            has_xfh = has_xfh or lk == b"x-forwarded-host"
            headers.append((k, v))
    host_value = host_value or req.host.encode()
    if req.upgrade:
        headers.append((b"Connection", b"upgrade"))
    xff.append(req.client_ip.encode())
    xfp.append(req.scheme.encode())
    headers.append((b"X-Forwarded-For", b", ".join(xff)))
    headers.append((b"X-Forwarded-Proto", b", ".join(xfp)))
    if not has_xfh:
        headers.append((b"X-Forwarded-Host", host_value))
    if ep.rewrite_host:
        headers = hh.set_host(headers, ep.rewrite_host)
    if ep.request_add:
        headers = hh.add(headers, ep.request_add)
    if req.chunked:
        headers.append((b"Transfer-Encoding", b"chunked"))
    sent_host = hh.get(headers, b"host") or b""
    return hh.serialize_request_head(req.method, origin_form(req.target), headers), sent_host


def response_headers(ep: Endpoint, req: Request, head: ResponseHead, sent_host: bytes) -> hh.Headers:
    """The upstream's response headers as any client may see them (both listeners use this).

    One pass drops hop-by-hop headers (and those named in Connection; ``Upgrade`` stays on a 101), the
    upstream's ``ngrok-error-code`` and the endpoint's removals, and rewrites Location when Host was
    rewritten; then the endpoint's additions. Framing headers are the caller's. This runs once per
    proxied response.
    """
    upgrade = head.status == 101
    names = head.lower or [k.lower() for k, _ in head.headers]
    named = head.connection - {b"upgrade", b"close", b"keep-alive"}
    removed = ep.response_remove
    # When Host was rewritten, a Location pointing at the upstream's host goes back to the public one.
    public_host = hh.get(req.headers, b"host") or req.host.encode()
    rewrite = bool(sent_host) and sent_host.lower() != public_host.lower()
    headers: hh.Headers = []
    for (k, v), lk in zip(head.headers, names, strict=True):
        if lk in hh.HOP_BY_HOP or lk in named:
            if upgrade and lk == b"upgrade":
                headers.append((k, v))
            continue
        if lk == hh.ERROR_CODE_HEADER or lk in removed:
            continue
        if rewrite and lk == b"location":
            v = hh.rewrite_location(v, sent_host, ep.url.encode())
        headers.append((k, v))
    if upgrade:
        headers.append((b"Connection", b"upgrade"))
    if ep.response_add:
        headers = hh.add(headers, ep.response_add)
    return headers


def client_head(
    ep: Endpoint,
    req: Request,
    head: ResponseHead,
    framing: Framing,
    sent_host: bytes,
    *,
    close: bool,
) -> bytes:
    """The response head for an HTTP/1.x client. ``framing`` is how the upstream delimited the body;
    a close-delimited body is re-framed as chunked for HTTP/1.1 clients (the listener encodes it), and
    an HTTP/1.0 client gets chunked bodies decoded, ended by closing."""
    headers = response_headers(ep, req, head, sent_host)
    if req.version == "1.1" and framing in (Framing.CHUNKED, Framing.CLOSE):
        headers.append((b"Transfer-Encoding", b"chunked"))
    if head.status != 101:
        if close:
            headers.append((b"Connection", b"close"))
        elif req.version == "1.0":
            headers.append((b"Connection", b"keep-alive"))
    return hh.serialize_response_head(head.status, head.reason or b"-", headers)
