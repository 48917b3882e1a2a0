"""The reverse proxy's header rules as pure functions: hop-by-hop, X-Forwarded-*, add/remove, Location."""

from __future__ import annotations

from hatchway.http import headers as hh


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    src = [
        (b"Host", b"a"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"X-Private", b"1"),
        (b"Keep-Alive", b"5"),
        (b"TE", b"trailers"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"websocket"),
        (b"Proxy-Authorization", b"x"),
        (b"Accept", b"*/*"),
    ]
    assert hh.strip_hop_by_hop(src) == [(b"Host", b"a"), (b"Accept", b"*/*")]


def test_websocket_upgrade_keeps_connection_upgrade() -> None:
    src = [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"), (b"Sec-WebSocket-Key", b"k")]
    out = hh.strip_hop_by_hop(src, upgrade=True)
    assert (b"Upgrade", b"websocket") in out and (b"Connection", b"upgrade") in out
    assert (b"Sec-WebSocket-Key", b"k") in out


def test_forwarded_headers_append_and_keep_a_client_forwarded_host() -> None:
    out = hh.add_forwarded(
        [(b"X-Forwarded-For", b"10.0.0.1"), (b"x-forwarded-proto", b"http")],
        "203.0.113.7",
        "https",
        b"a.test",
    )
    assert hh.get_all(out, b"x-forwarded-for") == [b"10.0.0.1, 203.0.113.7"]
    assert hh.get_all(out, b"x-forwarded-proto") == [b"http, https"]
    assert hh.get(out, b"x-forwarded-host") == b"a.test"
    kept = hh.add_forwarded([(b"X-Forwarded-Host", b"orig.test")], "1.2.3.4", "https", b"a.test")
    assert hh.get_all(kept, b"x-forwarded-host") == [b"orig.test"]


def test_error_code_from_upstream_is_stripped() -> None:
    assert hh.strip_error_code([(b"NGROK-ERROR-CODE", b"ERR_NGROK_1"), (b"A", b"b")]) == [(b"A", b"b")]


def test_add_replaces_host_and_remove_takes_every_value() -> None:
    out = hh.add([(b"Host", b"public.test"), (b"X", b"1")], [(b"host", b"localhost"), (b"x", b"2")])
    assert hh.get_all(out, b"host") == [b"localhost"]
    assert hh.get_all(out, b"x") == [b"1", b"2"]
    assert hh.remove(out, {b"x"}) == [(b"host", b"localhost")]
    assert hh.parse_header_line("X-Probe: yes please") == (b"x-probe", b"yes please")


def test_location_is_rewritten_only_for_the_upstream_host() -> None:
    origin = b"https://app.edge.test:8443"
    assert (
        hh.rewrite_location(b"http://localhost/landed?x=1", b"localhost", origin)
        == b"https://app.edge.test:8443/landed?x=1"
    )
    assert hh.rewrite_location(b"http://elsewhere.test/x", b"localhost", origin) == b"http://elsewhere.test/x"
    assert hh.rewrite_location(b"/relative", b"localhost", origin) == b"/relative"


def test_heads_serialize() -> None:
    assert hh.serialize_request_head(b"GET", b"/", [(b"Host", b"a")]) == b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    assert hh.serialize_response_head(204, b"No Content", []) == b"HTTP/1.1 204 No Content\r\n\r\n"
