"""The edge's fast response path (``passthrough_head``) against the general one: same answers or a refusal.

A refusal (None) is always safe, since the listener then takes the general path; what must never happen
is a fast answer that differs from the general path's, so the property test compares them header by
header on generated heads.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hatchway.http import headers as hh
from hatchway.http.h1 import (
    Framing,
    general_path_pattern,
    parse_response_head,
    passthrough_head,
    response_framing,
)

NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: text/plain\r\nContent-Length: 256\r\n"
    b'Connection: keep-alive\r\nETag: "x"\r\n\r\n'
)


def test_a_typical_head_passes_with_connection_cut_out() -> None:
    out = passthrough_head(NGINX)
    assert out is not None
    head, length = out
    assert length == 256
    assert b"connection" not in head.lower()
    assert head == NGINX.replace(b"Connection: keep-alive\r\n", b"")


def test_additions_go_before_the_blank_line() -> None:
    out = passthrough_head(NGINX, add=b"X-A: 1\r\nX-B: 2\r\n")
    assert out is not None
    assert out[0].endswith(b'ETag: "x"\r\nX-A: 1\r\nX-B: 2\r\n\r\n')


@pytest.mark.parametrize(
    "head",
    [
        NGINX.replace(b"HTTP/1.1", b"HTTP/1.0"),
        NGINX.replace(b"200 OK", b"100 Continue"),
        NGINX.replace(b"200 OK", b"204 No Content"),
        NGINX.replace(b"200 OK", b"304 Not Modified"),
        NGINX.replace(b"Content-Length: 256", b"Transfer-Encoding: chunked"),
        NGINX.replace(b"Content-Length: 256\r\n", b""),
        NGINX.replace(b"Content-Length: 256", b"Content-Length: 256\r\nContent-Length: 256"),
        NGINX.replace(b"Content-Length: 256", b"Content-Length: 25x"),
        NGINX.replace(b"keep-alive", b"close"),
        NGINX.replace(b"keep-alive", b"keep-alive, x-other"),
        NGINX.replace(b"Connection: keep-alive", b"Connection: keep-alive\r\nConnection: keep-alive"),
        NGINX.replace(b"ETag", b"Keep-Alive: timeout=5\r\nETag"),
        NGINX.replace(b"ETag", b"ngrok-error-code: ERR_NGROK_1\r\nETag"),
        NGINX.replace(b"ETag", b"Upgrade: h2c\r\nETag"),
        NGINX.replace(b"ETag", b"Trailer: x\r\nETag"),
        NGINX.replace(b"Server: nginx/1.22.1\r\n", b"Server: nginx\n"),  # a bare LF
        NGINX.replace(b"Server: nginx/1.22.1\r\n", b"Server: nginx\r\n folded\r\n"),
        NGINX.replace(b"ETag", b"Bad Name: 1\r\nETag"),
        NGINX.replace(b"ETag", b"Transfer-Encoding : chunked\r\nETag"),
    ],
)
def test_anything_unusual_goes_to_the_general_path(head: bytes) -> None:
    assert passthrough_head(head) is None


def test_the_endpoints_own_markers_send_heads_to_the_general_path() -> None:
    assert passthrough_head(NGINX, general_path_pattern(frozenset({b"etag"}))) is None
    assert passthrough_head(NGINX, general_path_pattern(frozenset({b"x-absent"}))) is not None


_NAMES = st.sampled_from(
    [
        b"Server",
        b"Content-Type",
        b"Content-Length",
        b"content-length",
        b"Connection",
        b"Keep-Alive",
        b"Transfer-Encoding",
        b"ETag",
        b"Set-Cookie",
        b"ngrok-error-code",
        b"X-A",
        b"TE",
        b"Upgrade",
    ]
)
_VALUES = st.sampled_from([b"1", b"12", b"keep-alive", b"close", b"chunked", b"a b", b"", b"x;y=z", b"0"])


@settings(max_examples=400, deadline=None)
@given(
    status=st.sampled_from([b"200 OK", b"404 Not Found", b"204 No Content", b"101 Switching", b"500 E"]),
    fields=st.lists(st.tuples(_NAMES, _VALUES), max_size=6),
)
def test_fast_answers_match_the_general_path(status: bytes, fields: list[tuple[bytes, bytes]]) -> None:
    raw = b"HTTP/1.1 " + status + b"\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in fields) + b"\r\n"
    out = passthrough_head(raw)
    if out is None:
        return
    fast_head, length = out
    general = parse_response_head(raw)
    assert general is not None
    assert response_framing(general, b"GET") == (Framing.LENGTH, length)
    kept = [
        (k, v)
        for (k, v), lk in zip(general.headers, general.lower, strict=True)
        if lk not in hh.HOP_BY_HOP and lk != hh.ERROR_CODE_HEADER
    ]
    reparsed = parse_response_head(fast_head)
    assert reparsed is not None
    assert reparsed.status == general.status
    assert reparsed.headers == kept
