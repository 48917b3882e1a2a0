"""The edge's request phase (``edge/policy_run.py``) gives the answers and request heads it gave before it was
made lazy, and the variables follow add-headers wherever its changes are tracked without a comparison.

``PolicyRun`` decodes the request headers only when something reads them, notes headers appended to an
undecoded request, shares one ``EndpointInfo`` per endpoint and writes back only what changed. Each case
here runs a policy on a request both through ``PolicyRun`` and through ``reference`` (the eager version it
replaced: decode everything, compare everything, re-encode everything on a change) and compares the reply,
the request head fields and the head ``upstream_head`` writes.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from hatchway.edge import policy_run
from hatchway.edge.policy_run import PolicyRun
from hatchway.edge.proxy import Request, origin_form, upstream_head
from hatchway.http import headers as hh
from hatchway.policy.document import CompiledRule
from hatchway.policy.engine import CompiledPolicy, compile_policy
from hatchway.policy.model import Conn, EndpointInfo, Exchange, HttpRequest, Reply
from hatchway.policy.variables import header_map

from helpers import EndpointDouble

EP: Any = EndpointDouble()

BASIC = [(b"Host", b"app.hatchway.localhost:8443"), (b"User-Agent", b"wrk"), (b"Accept", b"*/*")]


def request(
    target: bytes = b"/a?x=1",
    headers: list[tuple[bytes, bytes]] | None = None,
    method: bytes = b"GET",
    version: str = "1.1",
    h1: bool = True,
) -> Request:
    """A request as the HTTP/1.1 listener makes it (``h1``: lower-case names and Connection tokens filled
    in) or as the HTTP/2 one does (neither)."""
    hdrs = list(BASIC if headers is None else headers)
    return Request(
        method=method,
        target=target,
        headers=hdrs,
        version=version,
        host="app.hatchway.localhost",
        client_ip="127.0.0.1",
        client_port=5000,
        scheme="https",
        lower=[k.lower() for k, _ in hdrs] if h1 else [],
        connection=frozenset(hh.connection_tokens(hdrs)) if h1 else None,
    )


def reference(policy: CompiledPolicy, req: Request) -> tuple[Reply | None, Exchange]:
    """The request phase as the edge ran it before: every header decoded up front, the method, URL and
    header list compared after the phase, and on any change the whole head rewritten."""
    text: Callable[[bytes], str] = lambda b: b.decode("latin-1")  # noqa: E731
    raw: Callable[[str], bytes] = lambda s: s.encode("latin-1", "replace")  # noqa: E731
    path, _, query = origin_form(req.target).partition(b"?")
    ex = Exchange(
        conn=Conn(req.client_ip, req.client_port, ts_start=1.0),
        endpoint=EndpointInfo(EP.tunnel_id, EP.url, EP.host, 8443, EP.scheme),
        req=HttpRequest(
            text(req.method),
            req.scheme,
            req.host,
            8443,
            text(path) or "/",
            text(query),
            req.version,
            [(text(k), text(v)) for k, v in req.headers],
        ),
        now=1.0,
        wall=1.0,
    )
    before = (ex.req.method, ex.req.url, list(ex.req.headers))
    reply = policy.on_http_request(ex)
    if reply is not None:
        return reply, ex
    r = ex.req
    if (r.method, r.url, r.headers) != before:
        req.method = raw(r.method)
        req.target = raw(r.path + (f"?{r.query}" if r.query else ""))
        headers = [(raw(k), raw(v)) for k, v in r.headers]
        if r.host != req.host:
            headers = hh.set_host(headers, raw(r.host))
            req.host = r.host
        req.headers = headers
        req.lower = [k.lower() for k, _ in headers]
        req.connection = frozenset(hh.connection_tokens(headers))
    return None, ex


def head_fields(req: Request) -> tuple[Any, ...]:
    """What the proxy and the listeners read from a request head after the policy ran."""
    lower = req.lower or [k.lower() for k, _ in req.headers]
    connection = (
        req.connection if req.connection is not None else frozenset(hh.connection_tokens(req.headers))
    )
    return (req.method, req.target, req.headers, req.host, lower, connection, upstream_head(EP, req))


# ---- actions only a test would write: changes the catalogue's actions cannot make ---------------------


@dataclass
class Do:
    """An action that runs ``fn`` on the exchange."""

    fn: Callable[[Exchange], Any]
    needs_body: bool = False

    def run(self, ex: Exchange) -> Reply | None:
        self.fn(ex)
        return None


def custom(*fns: Callable[[Exchange], Any]) -> CompiledPolicy:
    rules = [CompiledRule("", f"on_http_request[{i}]", (), (Do(fn),)) for i, fn in enumerate(fns)]
    return CompiledPolicy({"on_http_request": rules})


def _set(obj: Any, **fields: Any) -> None:
    for name, value in fields.items():
        setattr(obj, name, value)


def add(**headers: str) -> dict[str, Any]:
    return {"actions": [{"type": "add-headers", "config": {"headers": headers}}]}


def when(expression: str, status: int = 418) -> dict[str, Any]:
    return {
        "expressions": [expression],
        "actions": [{"type": "custom-response", "config": {"status_code": status, "body": "matched"}}],
    }


def doc(*rules: dict[str, Any]) -> CompiledPolicy:
    return compile_policy({"on_http_request": list(rules)})


POLICIES: dict[str, CompiledPolicy] = {
    "no match": doc(when("req.method == 'TRACE'")),
    "add fixed": doc(add(**{"x-a": "1", "x-b": "two"})),
    "add fixed twice": doc(add(**{"x-a": "1"}), add(**{"x-a": "2", "x-c": "3"})),
    "add templated": doc(add(**{"x-path": "${req.url.path}"})),
    "add host": doc(add(host="other.example")),
    "add connection": doc(add(connection="x-hop")),
    "add non-latin-1": doc(add(**{"x-sym": "€ and é"})),
    "remove": doc({"actions": [{"type": "remove-headers", "config": {"headers": ["accept"]}}]}),
    "remove, add": doc(
        {"actions": [{"type": "remove-headers", "config": {"headers": ["accept"]}}]}, add(**{"x-a": "1"})
    ),
    "add, remove it": doc(
        add(**{"x-a": "1"}), {"actions": [{"type": "remove-headers", "config": {"headers": ["x-a"]}}]}
    ),
    "rewrite path": doc({"actions": [{"type": "url-rewrite", "config": {"from": "/a", "to": "/b"}}]}),
    "rewrite host": doc(
        {"actions": [{"type": "url-rewrite", "config": {"from": "^.*$", "to": "https://up.example/z?q"}}]}
    ),
    "rewrite, add": doc(
        {"actions": [{"type": "url-rewrite", "config": {"from": "/a", "to": "/b"}}]}, add(**{"x-a": "1"})
    ),
    "read header, add": doc(when("req.headers['accept'][0] == 'nope'"), add(**{"x-a": "1"})),
    "probe, add, probe": doc(
        when("'x-a' in req.headers", 419), add(**{"x-a": "1"}), when("hasReqHeader('X-A')")
    ),
    "add, probe absent": doc(add(**{"x-a": "1"}), when("'x-b' in req.headers || hasReqHeader('X-B')")),
    "add, cel size": doc(add(**{"x-a": "1"}), when("size(req.headers) == 4")),
    "cel, add, cel": doc(
        when("req.headers.exists(k, k == 'x-a')", 419),
        add(**{"x-a": "1"}),
        when("req.headers.exists(k, k == 'x-a') && req.headers['x-a'] == ['1']"),
    ),
    "add cookie, cookie": doc(when("hasReqCookie('a')", 419), add(cookie="a=1"), when("hasReqCookie('a')")),
    "user agent, add": doc(when("req.user_agent.raw == 'nope'"), add(**{"x-a": "1"})),
    "20 rules": doc(
        *[
            add(**{f"x-policy-{i}": "seen"})
            if i % 5 == 4
            else [
                when(f"req.url.path.startsWith('/admin{i}/')", 403),
                when(f"'x-debug-{i}' in req.headers"),
                when(f"req.method == 'POST' && req.url.path == '/upload{i}'", 405),
                when(f"req.url.path.matches('^/(wp-admin|phpmyadmin|cgi-bin{i})')", 404),
            ][i % 5]
            for i in range(20)
        ]
    ),
    "same method, new object": custom(lambda ex: _set(ex.req, method="".join(["G", "ET"]))),
    "same port, new object": custom(lambda ex: _set(ex.req, port=int(str(ex.req.port)))),
    "path / to empty": custom(lambda ex: _set(ex.req, path="" if ex.req.path == "/" else ex.req.path)),
    "method": custom(lambda ex: _set(ex.req, method="POST")),
    "header in place": custom(lambda ex: ex.req.headers[:1] and ex.req.headers.__setitem__(0, ("H", "x"))),
    "headers set unread": custom(lambda ex: _set(ex.req, headers=[("X-Only", "1")])),
    "headers set to the same": custom(lambda ex: _set(ex.req, headers=list(ex.req.headers))),
    "append directly": custom(lambda ex: ex.req.headers.append(("X-Direct", "1"))),
    "append_headers, then read": custom(
        lambda ex: ex.req.append_headers([("x-a", "1")]), lambda ex: ex.req.headers.append(("x-b", "2"))
    ),
}

REQUESTS: dict[str, Callable[[], Request]] = {
    "basic": request,
    "h2": lambda: request(version="2", h1=False),
    "absolute-form": lambda: request(b"https://app.hatchway.localhost:8443/a?x=1"),
    "absolute, no path": lambda: request(b"https://app.hatchway.localhost:8443"),
    "bare ?": lambda: request(b"/a?"),
    "root": lambda: request(b"/"),
    "asterisk": lambda: request(b"*", method=b"OPTIONS"),
    "rare method": lambda: request(b"/a", method=b"PROPFIND", version="1.0"),
    "percent": lambda: request(b"/%61dmin0/x?y=%20"),
    "no headers": lambda: request(headers=[]),
    "latin-1 bytes": lambda: request(headers=[*BASIC, (b"X-Caf\xe9", b"cr\xe8me"), (b"x-a", b"0")]),
    "duplicates, connection": lambda: request(
        headers=[*BASIC, (b"Connection", b"keep-alive, X-Hop"), (b"X-Hop", b"1"), (b"accept", b"text/html")]
    ),
}


@pytest.mark.parametrize("policy_name", list(POLICIES))
@pytest.mark.parametrize("request_name", list(REQUESTS))
def test_the_request_phase_is_what_it_was(policy_name: str, request_name: str) -> None:
    policy = POLICIES[policy_name]
    make = REQUESTS[request_name]
    expected_req = make()
    expected_reply, expected_ex = reference(policy, expected_req)
    req = make()
    run = PolicyRun(EP, policy, req)
    reply = run.request(req)
    assert reply == expected_reply
    if reply is None:
        assert head_fields(req) == head_fields(expected_req)
    assert run.ex.req.headers == expected_ex.req.headers
    assert run.ex.req.url == expected_ex.req.url
    assert run.ex.results == expected_ex.results
    run.finish(200)


@pytest.mark.parametrize("request_name", list(REQUESTS))
@pytest.mark.parametrize(
    "name", ["host", "x-a", "x-caf\xe9", "X-A", "connection", "x-hop", "x-new", "x-caf\xc9", "", "é"]
)
def test_an_undecoded_request_answers_has_header_as_its_decoded_headers_do(
    request_name: str, name: str
) -> None:
    req = REQUESTS[request_name]()
    for appended in ([], [("X-New", "1")]):
        run = PolicyRun(EP, POLICIES["no match"], req)
        wire_req = run.ex.req
        wire_req.append_headers(appended)
        assert type(wire_req) is not HttpRequest  # still undecoded
        decoded = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in req.headers] + appended
        assert wire_req.has_header(name) is (name in header_map(decoded))
        assert wire_req.headers == decoded  # reading decodes: now a plain HttpRequest
        assert type(wire_req) is HttpRequest
        assert wire_req.has_header(name) is (name in header_map(decoded))


def test_the_endpoint_info_is_shared_and_dropped_with_its_endpoint() -> None:
    ep: Any = EndpointDouble()
    first = PolicyRun(ep, POLICIES["no match"], request()).ex.endpoint
    assert PolicyRun(ep, POLICIES["no match"], request()).ex.endpoint is first
    assert first == EndpointInfo(
        "tn_1", "https://app.hatchway.localhost:8443", "app.hatchway.localhost", 8443, "https"
    )
    with pytest.raises(AttributeError):
        first.port = 1  # type: ignore[misc]  # frozen: an action cannot change it for the next exchange
    ep.url = "https://app.hatchway.localhost:9443"  # a replaced URL is not served from the cache
    assert PolicyRun(ep, POLICIES["no match"], request()).ex.endpoint.port == 9443
    key = id(ep)
    assert key in policy_run._ENDPOINTS
    del ep
    gc.collect()
    assert key not in policy_run._ENDPOINTS


# ---- the variables follow add-headers on a decoded request ---------------------------------------------


def exchange(headers: list[tuple[str, str]]) -> Exchange:
    return Exchange(
        conn=Conn("198.51.100.7", 40000),
        endpoint=EndpointInfo("ep_1", "https://app.example.com", "app.example.com", 443, "https"),
        req=HttpRequest("GET", "https", "app.example.com", 443, "/", "", "1.1", headers),
    )


@pytest.mark.parametrize(
    ("rules", "status"),
    [
        # The map is built, then extended by add-headers without a comparison (variables.appended).
        ([when("'x-z' in req.headers", 419), add(**{"x-z": "1"}), when("'x-z' in req.headers")], 418),
        (
            [
                when("req.headers['x-a'] == ['1']", 419),
                add(**{"x-a": "1"}),
                when("req.headers['x-a'] == ['0', '1']"),
            ],
            418,
        ),
        # Derived values (cookies) are dropped when a header they come from is appended.
        ([when("hasReqCookie('c')", 419), add(cookie="c=1"), when("getReqCookie('c')[0].value == '1'")], 418),
        # The CEL activation is rebuilt after an append it did not see.
        ([when("size(req.headers) == 3", 419), add(**{"x-b": "1"}), when("size(req.headers) == 3")], 418),
        ([when("size(req.headers) == 1", 419), add(**{"x-b": "1"}), when("size(req.headers) == 3")], 418),
        # A change the engine must compare (remove-headers) between two appends.
        (
            [
                when("'x-z' in req.headers", 419),
                add(**{"x-b": "1"}),
                {"actions": [{"type": "remove-headers", "config": {"headers": ["x-a"]}}]},
                add(**{"x-c": "1"}),
                when("!('x-a' in req.headers) && hasReqHeader('x-b') && req.headers['x-c'] == ['1']"),
            ],
            418,
        ),
    ],
)
def test_variables_follow_headers_appended_to_a_decoded_request(
    rules: list[dict[str, Any]], status: int
) -> None:
    ex = exchange([("Host", "app.example.com"), ("x-a", "0")])
    reply = compile_policy({"on_http_request": rules}).on_http_request(ex)
    assert reply is not None and reply.status == status
