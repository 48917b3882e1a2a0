"""The request head the edge writes upstream: the straight branch of ``upstream_head`` (headers passed as
they came, ours appended) gives exactly the bytes of ``general_upstream_head`` for every request it takes,
and hop-by-hop and forwarding headers are treated as ngrok does."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from hatchway.edge.proxy import Request, general_upstream_head, upstream_head
from hatchway.http import headers as hh

from helpers import EndpointDouble


def _request(headers: list[tuple[bytes, bytes]], target: bytes = b"/a?b", upgrade: bool = False) -> Request:
    host = hh.get(headers, b"host") or b""
    return Request(
        b"GET",
        target,
        headers,
        "1.1",
        host.decode("latin-1").split(":")[0].lower(),
        "10.0.0.7",
        5000,
        "https",
        upgrade=upgrade,
        lower=[k.lower() for k, _ in headers],
        connection=frozenset(hh.connection_tokens(headers)),
    )


_NAMES = st.sampled_from(
    [
        b"Host",
        b"host",
        b"User-Agent",
        b"Accept",
        b"Connection",
        b"Keep-Alive",
        b"TE",
        b"X-Forwarded-For",
        b"x-forwarded-proto",
        b"X-Forwarded-Host",
        b"X-Custom",
        b"Upgrade",
        b"Cookie",
    ]
)
_VALUES = st.sampled_from([b"", b"a.example:8443", b"1.2.3.4", b"keep-alive", b"x-custom", b"close", b"v"])


@settings(max_examples=500, deadline=None)
@given(
    headers=st.lists(st.tuples(_NAMES, _VALUES), max_size=6),
    target=st.sampled_from([b"/", b"/a?b", b"http://h.example/p?q", b"*"]),
    ep=st.sampled_from(
        [
            EndpointDouble(),
            EndpointDouble(remove={b"cookie"}),
            EndpointDouble(add=[(b"X-Added", b"1")]),
            EndpointDouble(rewrite=b"localhost:3000"),
        ]
    ),
    upgrade=st.booleans(),
)
@example(headers=[(b"Host", b""), (b"host", b"a.example")], target=b"/", ep=EndpointDouble(), upgrade=False)
def test_both_branches_write_the_same_head(
    headers: list[tuple[bytes, bytes]], target: bytes, ep: EndpointDouble, upgrade: bool
) -> None:
    req = _request(headers, target, upgrade)
    assert upstream_head(ep, req) == general_upstream_head(ep, req)  # type: ignore[arg-type]


def test_a_plain_request_gets_the_forwarding_headers_appended() -> None:
    req = _request([(b"Host", b"app.example:8443"), (b"Accept", b"*/*")])
    head, sent_host = upstream_head(EndpointDouble(), req)  # type: ignore[arg-type]
    assert head == (
        b"GET /a?b HTTP/1.1\r\nHost: app.example:8443\r\nAccept: */*\r\n"
        b"X-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: app.example:8443\r\n\r\n"
    )
    assert sent_host == b"app.example:8443"


def test_hop_by_hop_headers_are_dropped_and_forwarding_values_appended_to() -> None:
    req = _request(
        [
            (b"Host", b"app.example"),
            (b"Connection", b"keep-alive, X-Custom"),
            (b"X-Custom", b"secret"),
            (b"TE", b"trailers"),
            (b"X-Forwarded-For", b"1.2.3.4"),
        ]
    )
    head, _ = upstream_head(EndpointDouble(), req)  # type: ignore[arg-type]
    assert b"Connection" not in head and b"X-Custom" not in head and b"TE:" not in head
    assert b"X-Forwarded-For: 1.2.3.4, 10.0.0.7\r\n" in head
