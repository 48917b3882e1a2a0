"""CEL expressions as a policy author meets them: what is refused when the policy loads, what matches.

Also checks that the fast path (Python closures for the common shapes) answers exactly as CEL does, by
evaluating every expression both ways on several exchanges.
"""

from __future__ import annotations

from typing import Any

import pytest

from hatchway.policy import cel
from hatchway.policy.cel import CelCompileError, EvaluationError, compile_expression
from hatchway.policy.model import Conn, EndpointInfo, Exchange, HttpRequest, HttpResponse, TlsInfo

REQUEST = "on_http_request"
RESPONSE = "on_http_response"
TCP = "on_tcp_connect"


def exchange(
    path: str = "/admin/users",
    query: str = "page=2&tag=a&tag=b",
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    client_ip: str = "10.1.2.3",
    res: HttpResponse | None = None,
    tls: TlsInfo | None = None,
) -> Exchange:
    if headers is None:
        headers = [
            ("Host", "app.example.com"),
            ("User-Agent", "curl/8.5.0"),
            ("X-Api-Key", "secret"),
            ("Accept", "text/html"),
            ("Accept", "application/json"),
            ("Cookie", 'session=abc; theme="dark"'),
            ("Content-Type", "application/json; charset=utf-8"),
            ("Content-Length", "12"),
        ]
    return Exchange(
        conn=Conn(client_ip, 50123, "192.0.2.10", 443, tls=tls, ts_start=1714564800.0),
        endpoint=EndpointInfo("ep_123", "https://app.example.com", "app.example.com", 443, "https"),
        req=HttpRequest(method, "https", "app.example.com", 443, path, query, "1.1", headers),
        res=res,
        wall=1714564861.5,
    )


def truth(source: str, ex: Exchange, phase: str = REQUEST) -> bool:
    return compile_expression(source, phase, condition=True).truth(ex)


# ---- refused when the policy loads -------------------------------------------------------------------

REFUSED = [
    ("reqq.method == 'GET'", REQUEST, "undeclared reference to 'reqq"),
    ("req.methd == 'GET'", REQUEST, "unknown variable req.methd; req has: "),
    ("conn.clientip == '1.2.3.4'", REQUEST, "unknown variable conn.clientip"),
    ("req.url.paht.startsWith('/x')", REQUEST, "unknown variable req.url.paht"),
    ("req.method.name == 'x'", REQUEST, "req.method has no fields"),
    ("conn.geo.country_code == 'DE'", REQUEST, "conn.geo is not available in Hatchway"),
    ("'tor' in conn.client_ip.categories", REQUEST, "conn.client_ip.categories is not available"),
    ("req.method ==", REQUEST, "Syntax error"),
    ("req.method == 1 +", REQUEST, "Syntax error"),
    ("1 + 2", REQUEST, "must evaluate to a bool, not int"),
    ("'text'", REQUEST, "must evaluate to a bool, not string"),
    ("res.status_code == 500", REQUEST, "res.* is only available in on_http_response"),
    ("getResHeader('x').size() > 0", REQUEST, "getResHeader() is only available in on_http_response"),
    ("req.method == 'GET'", TCP, "req.* is not available in on_tcp_connect"),
    ("inCidrRange(conn.client_ip, '10.0.0.0/33')", REQUEST, "'10.0.0.0/33' is not a CIDR range"),
    ("inCidrRanges(conn.client_ip, ['10.0.0.0/8', 'nope'])", REQUEST, "'nope' is not a CIDR range"),
    ("", REQUEST, "must be a non-empty CEL expression"),
    ("req.method == 'GET' # comment", REQUEST, "1:21"),
]


@pytest.mark.parametrize(("source", "phase", "reason"), REFUSED)
def test_a_wrong_expression_is_refused_with_a_reason(source: str, phase: str, reason: str) -> None:
    with pytest.raises(CelCompileError) as caught:
        compile_expression(source, phase, condition=True)
    assert reason in str(caught.value)


def test_every_static_problem_is_reported_together() -> None:
    with pytest.raises(CelCompileError) as caught:
        compile_expression("req.methd == 'GET' && conn.clientip == ''", REQUEST, condition=True)
    assert "req.methd" in str(caught.value) and "conn.clientip" in str(caught.value)


ACCEPTED = [
    "vars.anything.at.all == 1",
    "actions.ngrok.rate_limit.limited",
    "req.headers.exists(k, k.startsWith('x-'))",
    "conn.tls.client.subject.common_name == 'me'",
    "has(req.url.query)",
    "[1, 2].exists(req, req > 1)",  # a macro variable named like a group is not the group
    "timestamp(time.now) > timestamp('2020-01-01T00:00:00Z')",
    "'a,b'.split(',').size() == 2 && ' x '.trim() == 'x' && 'A'.lowerAscii() == 'a'",
]


@pytest.mark.parametrize("source", ACCEPTED)
def test_valid_expressions_compile(source: str) -> None:
    compile_expression(source, REQUEST, condition=True)


# ---- what matches ------------------------------------------------------------------------------------

MATCHES: list[tuple[str, dict[str, Any], bool]] = [
    ("req.url.path.startsWith('/admin')", {}, True),
    ("req.url.path.startsWith('/admin')", {"path": "/public"}, False),
    ("req.url.path == '/a b'", {"path": "/a%20b"}, True),  # path is decoded; raw_path is not
    ("req.url.raw_path == '/a%20b'", {"path": "/a%20b"}, True),
    ("req.method == 'GET'", {}, True),
    ("req.method in ['POST', 'PUT']", {}, False),
    ("req.method in ['POST', 'PUT']", {"method": "PUT"}, True),
    ("req.method != 'GET'", {}, False),
    ("req.url.contains('/admin')", {}, True),  # bare req.url is the whole URL
    ("req.url == 'https://app.example.com/admin/users?page=2&tag=a&tag=b'", {}, True),
    ("req.url.raw.startsWith('https://app.example.com/')", {}, True),
    ("req.url.uri == '/admin/users?page=2&tag=a&tag=b'", {}, True),
    ("req.url.host == 'app.example.com' && req.url.port == 443 && req.url.scheme == 'https'", {}, True),
    ("req.url.authority == 'app.example.com'", {}, True),
    ("req.url.query == 'page=2&tag=a&tag=b'", {}, True),
    ("req.url.query_params['tag'] == ['a', 'b']", {}, True),
    ("req.url.query_params['page'][0] == '2'", {}, True),
    ("getQueryParam('tag') == ['a', 'b']", {}, True),
    ("hasQueryParam('page') && !hasQueryParam('nope')", {}, True),
    ("'x-api-key' in req.headers", {}, True),
    ("'X-Api-Key' in req.headers", {}, False),  # names are lower-case
    ("req.headers['accept'] == ['text/html', 'application/json']", {}, True),
    ("req.headers['x-api-key'][0] == 'secret'", {}, True),
    ("hasReqHeader('X-API-KEY')", {}, True),
    ("getReqHeader('accept')[1] == 'application/json'", {}, True),
    ("getReqHeader('missing').size() == 0", {}, True),
    ("req.cookies['theme'][0].value == 'dark'", {}, True),
    ("hasReqCookie('session') && getReqCookie('session')[0].value == 'abc'", {}, True),
    ("req.content_type == 'application/json'", {}, True),
    ("req.content_type.parameters['charset'] == 'utf-8'", {}, True),
    ("req.content_type.raw.contains('charset')", {}, True),
    ("req.content_length == 12", {}, True),
    ("req.user_agent.matches('^curl/')", {}, True),  # bare user_agent is the header
    ("req.user_agent.name == 'curl' && req.user_agent.version == '8.5.0'", {}, True),
    ("!req.user_agent.is_bot", {}, True),
    ("req.version == 'HTTP/1.1'", {}, True),
    ("req.host == 'app.example.com'", {}, True),
    ("inCidrRange(conn.client_ip, '10.0.0.0/8')", {}, True),
    ("inCidrRange(conn.client_ip, '10.0.0.0/8')", {"client_ip": "11.0.0.1"}, False),
    ("inCidrRange(conn.client_ip, '10.0.0.0/8')", {"client_ip": "::ffff:10.9.9.9"}, True),
    ("inCidrRange(conn.client_ip, '2001:db8::/32')", {"client_ip": "2001:db8::1"}, True),
    ("inCidrRanges(conn.client_ip, ['192.168.0.0/16', '10.1.0.0/16'])", {}, True),
    ("conn.client_port == 50123 && conn.server_port == 443 && conn.server_ip == '192.0.2.10'", {}, True),
    ("conn.ts.start == '2024-05-01T12:00:00Z'", {}, True),
    ("time.now == '2024-05-01T12:01:01Z'", {}, True),
    ("timestamp(time.now).getFullYear() == 2024", {}, True),
    ("endpoint.id == 'ep_123' && endpoint.protocol == 'https' && endpoint.port == 443", {}, True),
    ("endpoint.url.endsWith('example.com')", {}, True),
    ("conn.tls.version == ''", {}, True),
    ("size(req.headers) > 3", {}, True),
    ("req.headers.exists(k, k.startsWith('x-'))", {}, True),
    ("basic_auth.encode('u', 'p') == 'dTpw'", {}, True),
    ("'a b'.encodeBase64().decodeBase64() == 'a b'", {}, True),
    ("json.decode('{\"a\": [1]}').a[0] == 1", {}, True),
    ("url.escape('a b') == 'a%20b'", {}, True),
    # A failing expression is a rule that does not match, whichever way it is negated.
    ("req.headers['missing'][0] == 'x'", {}, False),
    ("req.headers['missing'][0] != 'x'", {}, False),
    ("!(req.headers['missing'][0] == 'x')", {}, False),
    ("req.headers['missing'][0] == 'x' || req.method == 'GET'", {}, True),
    ("req.headers['missing'][0] == 'x' && req.method == 'POST'", {}, False),
    ("req.content_length > 0", {"headers": [("Host", "h")]}, False),  # absent without Content-Length
    ("inCidrRange(conn.client_ip, '10.0.0.0/8')", {"client_ip": "not-an-ip"}, False),
    ("req.method", {}, False),  # not a bool: no match
]


@pytest.mark.parametrize(("source", "changes", "expected"), MATCHES)
def test_expression_matches_like_ngrok(source: str, changes: dict[str, Any], expected: bool) -> None:
    assert truth(source, exchange(**changes)) is expected


def test_response_variables_in_the_response_phase() -> None:
    res = HttpResponse(
        503,
        [("Content-Type", "text/html"), ("Set-Cookie", "id=7; Path=/; HttpOnly"), ("Location", "/x")],
    )
    ex = exchange(res=res)
    for source in [
        "res.status_code >= 500",
        "res.content_type == 'text/html'",
        "hasResHeader('content-type')",
        "getResHeader('Location') == ['/x']",
        "res.location == '/x'",
        "res.cookies['id'][0].value == '7' && res.cookies['id'][0].http_only",
        "hasResCookie('id') && getResCookie('id')[0].path == '/'",
    ]:
        assert truth(source, ex, RESPONSE), source


def test_tls_variables() -> None:
    tls = TlsInfo(
        "TLSv1.3", "TLS_AES_128_GCM_SHA256", "app.example.com", "h2", {"subject": {"common_name": "me"}}
    )
    ex = exchange(tls=tls)
    assert truth("conn.tls.version == 'TLSv1.3' && conn.tls.sni == 'app.example.com'", ex)
    assert truth("conn.tls.negotiated_alpn == 'h2' && conn.tls.client.subject.common_name == 'me'", ex)
    assert truth("has(conn.tls.client)", ex)
    assert not truth("has(conn.tls.client)", exchange())


# ---- the fast path agrees with CEL -------------------------------------------------------------------

FAST_SHAPES = [
    "req.url.path.startsWith('/admin')",
    "req.url.path.endsWith('.php')",
    "req.url.path.contains('min')",
    "req.url.path.matches('^/admin/[a-z]+$')",
    "req.url.path.matches('(?i)ADMIN')",
    "req.method == 'GET'",
    "'GET' == req.method",
    "req.method != 'GET'",
    "req.method in ['GET', 'HEAD']",
    "'x-api-key' in req.headers",
    "'tag' in req.url.query_params",
    "req.headers['x-api-key'][0] == 'secret'",
    "req.headers['accept'][5] == 'x'",
    "req.url.port == 443",
    "req.url.port == '443'",
    "req.url.port > 80",
    "req.url.path < '/b'",
    "conn.client_port >= 50000 && conn.client_port <= 60000",
    "!(req.method == 'POST') && req.url.path.startsWith('/')",
    "req.method == 'POST' || req.url.path == '/admin/users'",
    "(req.method == 'POST' || req.method == 'GET') && !hasReqHeader('x-debug')",
    "hasReqHeader('x-api-key')",
    "hasQueryParam('page')",
    "getReqHeader('accept')[0] == 'text/html'",
    "getQueryParam('tag')[1] == 'b'",
    "inCidrRange(conn.client_ip, '10.0.0.0/8')",
    "inCidrRanges(conn.client_ip, ['192.168.0.0/16', '2001:db8::/32'])",
    "vars.flag",
    "vars.flag == true",
    "vars.name == 'x'",
    "vars.count == 3",
    "vars.items == ['a']",
    "'a' in vars.items",
    "actions.ngrok.rate_limit.limited == false",
    "req.user_agent.is_bot == false",
    "req.url == 'https://app.example.com/admin/users?page=2&tag=a&tag=b'",
]

# The specialised shapes (cel.fast_condition): one strict closure each, or a closure that asks CEL itself.
SPECIALISED = [
    "req.url.path.startsWith('/admin')",
    "req.url.path.endsWith('.php')",
    "req.url.path.contains('é')",
    "req.url.path.matches('^/(wp-admin|admin|café)')",
    "req.url.path == '/admin/users'",
    "req.url.path != '/admin/users'",
    "'/b' == req.url.path",
    "req.url.raw_path.contains('%')",
    "req.url.query.startsWith('page')",
    "req.url.uri.endsWith('tag=b')",
    "req.url.authority == 'app.example.com'",
    "req.method == 'POST' && req.url.path == '/upload'",
    "req.method == 'GET' && req.url.path.startsWith('/admin') && 'x-api-key' in req.headers",
    "req.method == 'HEAD' || req.url.path.endsWith('.php')",
    "!(req.method == 'GET') || !('x-debug' in req.headers)",
    "req.host.endsWith('.example.com')",
    "req.version == 'HTTP/1.1'",
    "req.user_agent.raw.startsWith('curl/')",
    "conn.client_ip.startsWith('10.')",
    "endpoint.host == 'app.example.com' && endpoint.protocol == 'https'",
    "req.method in ['POST', 'HEAD']",
    "'x-debug' in req.headers",
    "'X-Debug' in req.headers",
    "hasReqHeader('X-API-KEY')",
    "hasReqHeader('x-debug') && req.url.path.matches('^/b$')",
    # "x$" on a path with a final newline: Python's re matches, RE2 does not. CEL must decide the whole
    # condition there, inside && and ! too.
    "req.url.path.matches('x$')",
    "req.method == 'HEAD' && req.url.path.matches('x$')",
    "!req.url.path.matches('x$') || req.method == 'GET'",
]
# Strict: no DEFER, no wrapper; ``truth`` is the fast closure itself.
STRICT = [s for s in SPECIALISED if "matches" not in s]

EXCHANGES = [
    exchange(),
    exchange(path="/public/index.php", method="POST", client_ip="2001:db8::5", query=""),
    exchange(path="/b", headers=[("Host", "h"), ("X-Debug", "1")], client_ip="bad ip"),
    exchange(path="/ADMIN/x\n", method="HEAD"),
    exchange(path="/%61dmin/users", query=""),  # decodes to /admin/users
    exchange(path="/caf%C3%A9/admin", headers=[("X-DEBUG", "")]),  # not ASCII once decoded: CEL decides
    exchange(path="", method="PROPFIND", headers=[]),  # an empty path is "/"
    exchange(path="/upload", method="POST", headers=[("x-api-key", "k"), ("X-Api-Key", "K")]),
]
VARS: list[dict[str, Any]] = [
    {},
    {"flag": True, "name": "x", "count": 3, "items": ["a"]},
    {"flag": "yes", "name": 1, "count": 3.0, "items": "a"},
]


@pytest.mark.parametrize("source", FAST_SHAPES + SPECIALISED)
def test_fast_path_covers_common_shapes_and_agrees_with_cel(source: str) -> None:
    expr = compile_expression(source, REQUEST, condition=True)
    assert expr.fast, "expected the fast path to cover this shape"
    for ex in EXCHANGES:
        for values in VARS:
            ex.vars = dict(values)
            ex.results = {"rate_limit": {"limited": False}} if values else {}
            cel.v.changed(ex)
            assert expr.truth(ex) is expr._slow_truth(ex), (source, ex.req.path, values)


@pytest.mark.parametrize("source", SPECIALISED)
def test_specialised_shapes_agree_with_the_general_fast_path(source: str) -> None:
    """The general closures (the parser without its specialisations) answer as the specialised ones do,
    wherever they do not defer to CEL."""
    expr = compile_expression(source, REQUEST, condition=True)
    general = _general_bool(source)
    for ex in EXCHANGES:
        r = general(ex)
        if r is cel.DEFER:
            continue
        assert expr.truth(ex) is (r is True), (source, ex.req.path)


@pytest.mark.parametrize("source", SPECIALISED)
def test_specialised_shapes_evaluate_as_cel_does(source: str) -> None:
    """As a value (``${...}``, set-vars), a condition's fast closure answers what CEL answers."""
    expr = compile_expression(source, REQUEST, condition=True)
    for ex in EXCHANGES:
        cel.v.changed(ex)
        want = expr._run(ex).value()
        if type(want) is bool:
            assert expr.evaluate(ex) is want, (source, ex.req.path)


@pytest.mark.parametrize("source", STRICT)
def test_strict_shapes_are_the_truth_itself(source: str) -> None:
    expr = compile_expression(source, REQUEST, condition=True)
    assert expr.truth is expr._bool, "expected a strict specialised closure, with no wrapper"
    for ex in EXCHANGES:
        assert type(expr.truth(ex)) is bool


def test_header_conditions_follow_headers_added_and_removed() -> None:
    """'x' in req.headers reads a cached map: it must see headers appended, replaced and removed since."""
    expr = compile_expression("'x-new' in req.headers", REQUEST, condition=True)
    has = compile_expression("hasReqHeader('X-New')", REQUEST, condition=True)
    ex = exchange()
    assert not expr.truth(ex) and not has.truth(ex)
    ex.req.headers.append(("X-New", "1"))
    cel.v.changed(ex)
    assert expr.truth(ex) and has.truth(ex)
    ex.req.remove_header("x-new")
    cel.v.changed(ex)
    assert not expr.truth(ex) and not has.truth(ex)
    ex.req.headers[0] = ("x-new", "in place")
    cel.v.changed(ex)
    assert expr.truth(ex) and has.truth(ex)


def _general_bool(source: str) -> Any:
    """The fast closure the parser builds without its specialised shapes."""
    toks = cel.lex(source)
    assert toks is not None
    parser = cel._Parser(toks)
    parser.paths = _NoPaths()  # no variable is known by name: nothing is specialised
    parser.method = lambda name, root, segs, arg: cel._method(  # type: ignore[method-assign]
        name, cel._path_getter(root, segs), arg
    )
    call = parser.call

    def general_call(name: str) -> Any:
        if name != "hasReqHeader":
            return call(name)
        parser.take("(")
        header = parser.string()
        parser.take(")")
        values = cel._header_fn("req", header)
        return "bool", lambda ex: bool(values(ex))

    parser.call = general_call  # type: ignore[method-assign]
    fn = parser.boolean()
    assert parser.done()
    return fn


class _NoPaths(dict[Any, str]):
    def __setitem__(self, key: Any, value: str) -> None:
        pass


# ---- values (templates and action expressions) -------------------------------------------------------

VALUES: list[tuple[str, Any]] = [
    ("req.host", "app.example.com"),
    ("req.url", "https://app.example.com/admin/users?page=2&tag=a&tag=b"),
    ("conn.client_ip + ':' + string(conn.client_port)", "10.1.2.3:50123"),
    ("req.headers['accept']", ["text/html", "application/json"]),
    ("req.url.query_params", {"page": ["2"], "tag": ["a", "b"]}),
    ("req.method == 'GET'", True),
    ("size(req.headers)", 7),
    ("endpoint.port", 443),
    ("'x'.upperAscii()", "X"),
]


@pytest.mark.parametrize(("source", "expected"), VALUES)
def test_value_expressions(source: str, expected: Any) -> None:
    assert compile_expression(source, REQUEST).evaluate(exchange()) == expected


def test_a_missing_value_is_an_evaluation_error_naming_the_expression() -> None:
    expr = compile_expression("req.headers['x-missing'][0]", REQUEST)
    with pytest.raises(EvaluationError, match=r"x-missing"):
        expr.evaluate(exchange())


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("s", "s"),
        (True, "true"),
        (None, "null"),
        (3, "3"),
        (1.5, "1.5"),
        (b"hi", "hi"),
        (["a", 1], '["a",1]'),
    ],
)
def test_values_render_as_text(value: Any, text: str) -> None:
    assert cel.to_text(value) == text


def test_request_functions_outside_a_policy_run_are_errors_not_crashes() -> None:
    # getReqHeader reads the exchange being evaluated; without one the call is a CEL error value.
    program = cel.env().compile("hasReqHeader('x')")
    result = program.eval(data={r: {} for r in cel.ROOTS})
    assert result.type() == cel._cel.Type.ERROR
