"""The eight simple actions: config checks (with paths) and what each does to an exchange."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from hatchway.policy.actions import compiler
from hatchway.policy.cel import EvaluationError
from hatchway.policy.interpolate import PolicyEnv
from hatchway.policy.model import (
    Action,
    Conn,
    EndpointInfo,
    Exchange,
    HttpRequest,
    HttpResponse,
    LiteralEnv,
    PolicyError,
    Reply,
)

REQUEST = "on_http_request"
RESPONSE = "on_http_response"
PATH = "on_http_request[0].actions[0]"


def exchange(url_path: str = "/old/page?x=1", headers: list[tuple[str, str]] | None = None) -> Exchange:
    path, _, query = url_path.partition("?")
    return Exchange(
        conn=Conn("203.0.113.5", 1234),
        endpoint=EndpointInfo("ep_1", "https://app.example.com", "app.example.com", 443, "https"),
        req=HttpRequest(
            "GET", "https", "app.example.com", 443, path, query, "1.1",
            headers if headers is not None else [("Host", "app.example.com"), ("User-Agent", "curl/8")],
        ),
    )  # fmt: skip


def action(kind: str, config: Mapping[str, Any] | None, phase: str = REQUEST, cel: bool = True) -> Action:
    env = PolicyEnv(phase) if cel else LiteralEnv()
    return compiler(kind)(config, PATH, env, phase)


def refused(kind: str, config: Mapping[str, Any] | None, phase: str = REQUEST) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        action(kind, config, phase)
    return [str(p) for p in caught.value.problems]


# ---- config mistakes: (type, config, the problems) ---------------------------------------------------

P = f"{PATH}.config"
MISTAKES: list[tuple[str, Any, list[str]]] = [
    ("deny", {"status_code": 99}, [f"{P}.status_code: must be between 100 and 999, got 99"]),
    ("deny", {"status_code": "403"}, [f"{P}.status_code: must be an integer, got '403'"]),
    ("deny", ["x"], [f"{P}: must be a map"]),
    ("custom-response", {"status_code": 1000}, [f"{P}.status_code: must be between 100 and 999, got 1000"]),
    (
        "custom-response",
        {"headers": {f"h{i}": "v" for i in range(11)}},
        [f"{P}.headers: may hold at most 10 entries, got 11"],
    ),
    (
        "custom-response",
        {"headers": {"bad name": "v"}},
        [f"{P}.headers.bad name: is not a valid header name"],
    ),
    (
        "custom-response",
        {"body": "${req.nope}"},
        [f"{P}.body: invalid expression '${{req.nope}}' at offset 0"],
    ),
    ("custom-response", {"body": "a", "content": "b"}, [f"{P}.content: use body (content is its old name)"]),
    ("redirect", {}, [f"{P}.to: is required"]),
    (
        "redirect",
        {"to": "/x", "status_code": 200},
        [f"{P}.status_code: must be between 300 and 399, got 200"],
    ),
    ("redirect", {"from": "(", "to": "/x"}, [f"{P}.from: is not a valid regular expression"]),
    ("redirect", {"from": "", "to": "/x"}, [f"{P}.from: must not be empty"]),
    ("url-rewrite", {"to": "/x"}, [f"{P}.from: is required"]),
    ("url-rewrite", {"from": "a", "to": "${req.methd}"}, [f"{P}.to: invalid expression '${{req.methd}}'"]),
    ("add-headers", {}, [f"{P}.headers: is required"]),
    ("add-headers", {"headers": {}}, [f"{P}.headers: must not be empty"]),
    (
        "add-headers",
        {"headers": {"User-Agent": "x"}},
        [f"{P}.headers.user-agent: cannot be changed by add-headers"],
    ),
    (
        "add-headers",
        {"headers": {"ngrok-skip-browser-warning": "1"}},
        [f"{P}.headers.ngrok-skip-browser-warning: cannot be added by add-headers"],
    ),
    ("add-headers", {"headers": {"x": "a\r\nb"}}, [f"{P}.headers.x: must not contain line breaks"]),
    ("add-headers", {"headers": {"x": "${unclosed"}}, [f"{P}.headers.x: unterminated '${{' at offset 0"]),
    ("add-headers", {"headers": {"x": "${res.status_code}"}}, [f"{P}.headers.x: invalid expression"]),
    ("remove-headers", {"headers": []}, [f"{P}.headers: must not be empty"]),
    ("remove-headers", {"headers": ["User-Agent"]}, [f"{P}.headers[0]: user-agent cannot be removed"]),
    (
        "remove-headers",
        {"headers": [f"h{i}" for i in range(11)]},
        [f"{P}.headers: may hold at most 10 entries"],
    ),
    ("log", {}, [f"{P}.metadata: is required"]),
    ("log", {"metadata": []}, [f"{P}.metadata: must be a map of names to values"]),
    ("set-vars", {"vars": {"a": 1}}, [f"{P}.vars: must be a non-empty list of single-entry maps"]),
    (
        "set-vars",
        {"vars": [{"a": 1, "b": 2}]},
        [f"{P}.vars[0]: must be a map with exactly one name: value entry"],
    ),
    ("set-vars", {"vars": [{"a": "${nope}"}]}, [f"{P}.vars[0].a: invalid expression '${{nope}}'"]),
]


@pytest.mark.parametrize(("kind", "config", "expected"), MISTAKES)
def test_config_mistakes_are_refused_with_paths(kind: str, config: Any, expected: list[str]) -> None:
    got = refused(kind, config)
    assert len(got) == len(expected), got
    for problem, start in zip(got, expected, strict=True):
        assert problem.startswith(start), problem


# ---- deny ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "status"), [(None, 403), ({}, 403), ({"status_code": 404}, 404)])
def test_deny_answers_with_its_status_and_no_body(config: Any, status: int) -> None:
    assert action("deny", config).run(exchange()) == Reply(status)


# ---- custom-response ----------------------------------------------------------------------------------

INFERRED = [
    ('{"ok": true}', "application/json"),
    ("[1, 2]", "application/json"),
    ("{not json", "text/plain; charset=utf-8"),
    ("<h1>Hi</h1>", "text/html; charset=utf-8"),
    ("  <!doctype html>", "text/html; charset=utf-8"),
    ("plain words", "text/plain; charset=utf-8"),
    ("42", "text/plain; charset=utf-8"),  # JSON, but not an object or array
]


@pytest.mark.parametrize(("body", "content_type"), INFERRED)
def test_custom_response_infers_the_content_type(body: str, content_type: str) -> None:
    reply = action("custom-response", {"body": body}).run(exchange())
    assert reply == Reply(200, [("content-type", content_type)], body.encode())


def test_custom_response_keeps_a_configured_content_type_and_renders_templates() -> None:
    config = {
        "status_code": 503,
        "body": "down for ${req.url.path}",
        "headers": {"Content-Type": "text/x-custom", "Retry-After": "${string(1 + 1)}"},
    }
    reply = action("custom-response", config).run(exchange())
    assert reply == Reply(
        503, [("content-type", "text/x-custom"), ("retry-after", "2")], b"down for /old/page"
    )


def test_custom_response_with_no_body_has_no_content_type() -> None:
    assert action("custom-response", {"status_code": 204}).run(exchange()) == Reply(204)


def test_custom_response_accepts_the_old_content_field() -> None:
    reply = action("custom-response", {"content": "hi"}).run(exchange())
    assert reply is not None and reply.body == b"hi"


# ---- redirect -----------------------------------------------------------------------------------------

# (config, request path, Location or None for no redirect, recorded matches)
REDIRECTS: list[tuple[dict[str, Any], str, str | None, list[str]]] = [
    ({"to": "https://new.example.com/"}, "/a", "https://new.example.com/", []),
    (
        {"from": "/old/(.*)", "to": "/new/$1"},
        "/old/page?x=1",
        "https://app.example.com/new/page?x=1",
        ["/old/page?x=1", "page?x=1"],
    ),
    (
        {"from": "^https://app\\.example\\.com/(?<rest>.*)$", "to": "https://b.example/${req.method}/$rest"},
        "/p",
        "https://b.example/GET/p",
        ["https://app.example.com/p", "p"],
    ),
    ({"from": "/nomatch/", "to": "/x"}, "/old/page", None, []),
    ({"to": "https://app.example.com/same"}, "/same", None, []),  # unchanged URL: no loop
    ({"from": "/a$", "to": "/b$2$$"}, "/a", "https://app.example.com/b$", ["/a"]),  # unknown group: empty
    ({"from": "o", "to": "0"}, "/foo", "https://app.example.c0m/f00", ["o"]),  # every match is replaced
]


@pytest.mark.parametrize(("config", "path", "location", "matches"), REDIRECTS)
def test_redirect(config: dict[str, Any], path: str, location: str | None, matches: list[str]) -> None:
    ex = exchange(path)
    reply = action("redirect", config).run(ex)
    if location is None:
        assert reply is None
    else:
        assert reply == Reply(302, [("location", location)])
    assert ex.results["redirect"]["matches"] == matches


def test_redirect_status_headers_and_results() -> None:
    config = {
        "to": "https://b.example${req.url.path}",
        "status_code": 301,
        "headers": {"Cache-Control": "no-store"},
    }
    ex = exchange("/p")
    reply = action("redirect", config).run(ex)
    assert reply == Reply(301, [("location", "https://b.example/p"), ("cache-control", "no-store")])
    assert ex.results["redirect"]["url"] == "https://b.example/p"


def test_redirect_with_a_templated_regex_rendering_an_invalid_one_is_an_error() -> None:
    ex = exchange("/p", headers=[("X-Re", "(")])
    with pytest.raises(EvaluationError):
        action("redirect", {"from": "${req.headers['x-re'][0]}", "to": "/x"}).run(ex)


# ---- url-rewrite --------------------------------------------------------------------------------------

REWRITES: list[tuple[dict[str, Any], str, tuple[str, str, str]]] = [
    ({"from": "/old/", "to": "/new/"}, "/old/page?x=1", ("app.example.com", "/new/page", "x=1")),
    ({"from": "/api/v([0-9]+)/(.*)", "to": "/v$1/$2"}, "/api/v2/items", ("app.example.com", "/v2/items", "")),
    ({"from": "a", "to": "b"}, "/banana", ("bpp.exbmple.com", "/bbnbnb", "")),  # every match, whole URL
    ({"from": "\\?.*$", "to": ""}, "/p?drop=me", ("app.example.com", "/p", "")),
    ({"from": "nothing", "to": "x"}, "/p?q=1", ("app.example.com", "/p", "q=1")),
]


@pytest.mark.parametrize(("config", "path", "after"), REWRITES)
def test_url_rewrite(config: dict[str, Any], path: str, after: tuple[str, str, str]) -> None:
    ex = exchange(path)
    assert action("url-rewrite", config).run(ex) is None
    assert (ex.req.host, ex.req.path, ex.req.query) == after
    assert ex.results["url_rewrite"]["url"] == ex.req.url


def test_url_rewrite_records_the_groups_of_the_first_match() -> None:
    ex = exchange("/api/v2/items")
    action("url-rewrite", {"from": "/api/v([0-9]+)/", "to": "/"}).run(ex)
    assert ex.results["url_rewrite"]["matches"] == ["/api/v2/", "2"]


# ---- add-headers / remove-headers ---------------------------------------------------------------------


def test_add_headers_appends_lowercased_names_with_rendered_values() -> None:
    ex = exchange(headers=[("Host", "app.example.com"), ("X-Tag", "a")])
    config = {"headers": {"X-Tag": "b", "X-Client": "${conn.client_ip}"}}
    assert action("add-headers", config).run(ex) is None
    assert ex.req.headers == [
        ("Host", "app.example.com"),
        ("X-Tag", "a"),
        ("x-tag", "b"),
        ("x-client", "203.0.113.5"),
    ]


def test_add_headers_replaces_host() -> None:
    ex = exchange()
    action("add-headers", {"headers": {"Host": "internal.svc"}}).run(ex)
    assert ex.req.header_values("host") == ["internal.svc"]


def test_add_headers_in_the_response_phase_changes_the_response() -> None:
    ex = exchange()
    ex.res = HttpResponse(200, [("Content-Type", "text/plain")])
    action("add-headers", {"headers": {"X-Status": "${string(res.status_code)}"}}, RESPONSE).run(ex)
    assert ex.res.headers[-1] == ("x-status", "200")
    assert ("x-status", "200") not in ex.req.headers


def test_add_headers_refuses_a_rendered_line_break() -> None:
    ex = exchange(headers=[("Host", "h"), ("X-In", "ok")])
    ex.req.headers[1] = ("X-In", "a\nb")  # cannot come from a parser, but an earlier action might do it
    with pytest.raises(EvaluationError):
        action("add-headers", {"headers": {"x-copy": "${req.headers['x-in'][0]}"}}).run(ex)


def test_remove_headers_removes_every_value_whatever_the_case() -> None:
    ex = exchange(headers=[("Host", "h"), ("X-A", "1"), ("x-a", "2"), ("X-B", "3"), ("User-Agent", "u")])
    assert action("remove-headers", {"headers": ["x-A", "x-missing"]}).run(ex) is None
    assert ex.req.headers == [("Host", "h"), ("X-B", "3"), ("User-Agent", "u")]


def test_remove_headers_in_the_response_phase() -> None:
    ex = exchange()
    ex.res = HttpResponse(200, [("Server", "x"), ("X-Powered-By", "y"), ("Content-Type", "text/plain")])
    action("remove-headers", {"headers": ["server", "x-powered-by"]}, RESPONSE).run(ex)
    assert ex.res.headers == [("Content-Type", "text/plain")]


def test_header_actions_work_with_a_literal_env() -> None:
    ex = exchange()
    action("add-headers", {"headers": {"x-raw": "${not evaluated}"}}, cel=False).run(ex)
    assert ex.req.header("x-raw") == "${not evaluated}"


# ---- log / set-vars -----------------------------------------------------------------------------------


def test_log_appends_rendered_metadata() -> None:
    ex = exchange()
    log = action("log", {"metadata": {"path": "${req.url.path}", "n": 3, "tags": ["a"], "msg": "hit"}})
    assert log.run(ex) is None
    log.run(ex)
    assert ex.logs == [{"path": "/old/page", "n": 3, "tags": ["a"], "msg": "hit"}] * 2


def test_set_vars_in_order_with_templates_and_plain_values() -> None:
    ex = exchange()
    config = {
        "vars": [
            {"first": "${req.method}"},
            {"both": "${vars.first}-${req.url.path}"},
            {"n": 5},
            {"on": True},
        ]
    }
    assert action("set-vars", config).run(ex) is None
    assert ex.vars == {"first": "GET", "both": "GET-/old/page", "n": 5, "on": True}


def test_set_vars_keeps_yaml_dates_as_text() -> None:
    import datetime

    ex = exchange()
    action("set-vars", {"vars": [{"since": datetime.date(2024, 5, 1)}]}).run(ex)
    assert ex.vars == {"since": "2024-05-01"}


def test_actions_never_ask_for_the_body() -> None:
    configs = {
        "deny": None,
        "custom-response": None,
        "redirect": {"to": "/x"},
        "url-rewrite": {"from": "a", "to": "b"},
        "add-headers": {"headers": {"a": "b"}},
        "remove-headers": {"headers": ["a"]},
        "log": {"metadata": {"a": "b"}},
        "set-vars": {"vars": [{"a": "b"}]},
    }
    assert [action(kind, config).needs_body for kind, config in configs.items()] == [False] * 8
