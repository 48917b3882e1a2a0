"""Running compiled policies: rule order, matching, terminating actions, and variables that follow changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from hatchway.policy.document import CompiledRule
from hatchway.policy.engine import CompiledPolicy, compile_policy
from hatchway.policy.model import Exchange, HttpResponse, Reply

from helpers import policy_exchange as exchange


def deny_rule(*expressions: str, status: int = 403) -> dict[str, Any]:
    return {
        "expressions": list(expressions),
        "actions": [{"type": "deny", "config": {"status_code": status}}],
    }


def header_rule(name: str, value: str, *expressions: str) -> dict[str, Any]:
    return {
        "expressions": list(expressions),
        "actions": [{"type": "add-headers", "config": {"headers": {name: value}}}],
    }


ADMIN = {"on_http_request": [deny_rule("req.url.path.startsWith('/admin')")]}

# (policy, request path, method, expected status or None for "passes to the upstream")
DECISIONS: list[tuple[dict[str, Any], str, str, int | None]] = [
    (ADMIN, "/admin/x", "GET", 403),
    (ADMIN, "/public", "GET", None),
    (ADMIN, "/administrator", "GET", 403),  # startsWith is a prefix test, as in ngrok
    ({"on_http_request": [deny_rule("req.method == 'POST'", "req.url.path == '/api'")]}, "/api", "POST", 403),
    ({"on_http_request": [deny_rule("req.method == 'POST'", "req.url.path == '/api'")]}, "/api", "GET", None),
    ({"on_http_request": [deny_rule(status=451)]}, "/anything", "GET", 451),  # no expressions: always
    (
        {"on_http_request": [deny_rule("req.headers['x-missing'][0] == 'x'")]},
        "/",
        "GET",
        None,
    ),  # error: no match
    ({"on_http_request": [deny_rule("req.method")]}, "/", "GET", None),  # not a bool: no match
    (
        {"on_http_request": [deny_rule("req.url.path == '/a'", status=401), deny_rule(status=402)]},
        "/a",
        "GET",
        401,  # the first terminating rule wins
    ),
    (
        {"on_http_request": [deny_rule("req.url.path == '/a'", status=401), deny_rule(status=402)]},
        "/b",
        "GET",
        402,
    ),
    (
        {"on_http_request": [deny_rule("req.url.query_params['debug'][0] == '1'")]},
        "/x?debug=1",
        "GET",
        403,
    ),
]


@pytest.mark.parametrize(("policy", "path", "method", "status"), DECISIONS)
def test_request_decisions(policy: dict[str, Any], path: str, method: str, status: int | None) -> None:
    ex = exchange(path, method)
    reply = compile_policy(policy).on_http_request(ex)
    assert (reply.status if reply else None) == status
    assert ex.reply is reply


def test_a_deny_answers_with_no_body() -> None:
    reply = compile_policy(ADMIN).on_http_request(exchange("/admin"))
    assert reply == Reply(403)


def test_actions_of_a_rule_run_in_order_until_one_terminates() -> None:
    policy = compile_policy(
        {
            "on_http_request": [
                {
                    "actions": [
                        {"type": "add-headers", "config": {"headers": {"x-one": "1"}}},
                        {"type": "deny", "config": {"status_code": 418}},
                        {"type": "add-headers", "config": {"headers": {"x-never": "1"}}},
                    ]
                },
                header_rule("x-later", "1"),
            ]
        }
    )
    ex = exchange()
    assert policy.on_http_request(ex) == Reply(418)
    assert ex.req.header("x-one") == "1"
    assert ex.req.header("x-never") is None and ex.req.header("x-later") is None


def test_set_vars_then_a_rule_on_the_variable() -> None:
    policy = compile_policy(
        {
            "on_http_request": [
                {
                    "actions": [
                        {"type": "set-vars", "config": {"vars": [{"tier": "${req.url.path.split('/')[1]}"}]}}
                    ]
                },
                deny_rule("vars.tier == 'internal'"),
            ]
        }
    )
    assert policy.on_http_request(exchange("/internal/x")) == Reply(403)
    assert policy.on_http_request(exchange("/public/x")) is None


def test_set_vars_is_seen_by_cel_after_an_earlier_cel_evaluation() -> None:
    # The first rule builds the CEL activation with vars empty; the second must see the new value.
    policy = compile_policy(
        {
            "on_http_request": [
                {
                    "expressions": ["size(vars) == 0"],
                    "actions": [{"type": "set-vars", "config": {"vars": [{"n": 2}]}}],
                },
                deny_rule("size(vars) == 1 && vars.n + 1 == 3"),
            ]
        }
    )
    assert policy.on_http_request(exchange()) == Reply(403)


def test_a_header_added_by_one_rule_is_seen_by_the_next() -> None:
    policy = compile_policy(
        {
            "on_http_request": [
                deny_rule("'x-tag' in req.headers", status=400),  # reads (and caches) the headers first
                header_rule("x-tag", "blue"),
                deny_rule("req.headers['x-tag'][0] == 'blue'", "size(req.headers) == 2"),
            ]
        }
    )
    assert policy.on_http_request(exchange()) == Reply(403)


def test_a_removed_header_is_gone_for_later_rules() -> None:
    policy = compile_policy(
        {
            "on_http_request": [
                deny_rule("!hasReqHeader('authorization')", status=401),
                {"actions": [{"type": "remove-headers", "config": {"headers": ["Authorization"]}}]},
                deny_rule("hasReqHeader('authorization')", status=500),
                deny_rule("!('authorization' in req.headers)", status=200),
            ]
        }
    )
    reply = policy.on_http_request(exchange(headers=[("Host", "h"), ("Authorization", "Bearer x")]))
    assert reply == Reply(200)


def test_url_rewrite_results_and_new_url_are_seen_by_later_rules() -> None:
    policy = compile_policy(
        {
            "on_http_request": [
                # CEL evaluates this (has() is not on the fast path): req.url joins its activation before
                # the rewrite, and must not be stale after it.
                deny_rule("has(req.url.query) && req.url.path == '/v2/items'", status=400),
                {"actions": [{"type": "url-rewrite", "config": {"from": "/v1/", "to": "/v2/"}}]},
                deny_rule(
                    "req.url.path == '/v2/items'",
                    "actions.ngrok.url_rewrite.url == 'https://app.example.com/v2/items'",
                    "req.url.raw.endsWith('/v2/items')",
                    "has(req.url.query) && req.url.path == '/v2/items'",
                ),
            ]
        }
    )
    ex = exchange("/v1/items")
    assert policy.on_http_request(ex) == Reply(403)
    assert ex.req.path == "/v2/items"


def test_cel_sees_the_host_a_url_rewrite_set() -> None:
    # req.host is read live by the fast path but copied into CEL's activation: it must be rebuilt.
    policy = compile_policy(
        {
            "on_http_request": [
                deny_rule("size(req.host) > 0 && req.host == 'other.example'", status=400),
                {
                    "actions": [
                        {
                            "type": "url-rewrite",
                            "config": {"from": "app\\.example\\.com", "to": "other.example"},
                        }
                    ]
                },
                deny_rule("size(req.host) > 0 && req.host == 'other.example'"),
            ]
        }
    )
    assert policy.on_http_request(exchange("/x")) == Reply(403)


def test_a_failing_template_answers_500_with_ngrok_code() -> None:
    policy = compile_policy({"on_http_request": [header_rule("x-key", "${req.headers['x-key'][0]}")]})
    reply = policy.on_http_request(exchange())
    assert reply is not None and reply.status == 500 and reply.error_code == "ERR_NGROK_3900"
    assert "x-key" in reply.message


def test_module_rules_run_before_the_users_rules() -> None:
    before = {"on_http_request": [header_rule("x-order", "module")]}
    policy = compile_policy({"on_http_request": [header_rule("x-order", "user")]}, before=before)
    ex = exchange()
    policy.on_http_request(ex)
    assert ex.req.header_values("x-order") == ["module", "user"]


def test_response_phase_sees_the_response_and_can_replace_it() -> None:
    policy = compile_policy(
        {
            "on_http_request": [header_rule("x-req", "1")],
            "on_http_response": [
                header_rule("x-status", "${string(res.status_code)}"),
                {
                    "expressions": ["res.status_code >= 500"],
                    "actions": [{"type": "custom-response", "config": {"status_code": 503, "body": "sorry"}}],
                },
            ],
        }
    )
    ex = exchange()
    assert policy.on_http_request(ex) is None
    ex.res = HttpResponse(200, [("Content-Type", "text/plain")])
    assert policy.on_http_response(ex) is None
    assert ex.res.header("x-status") == "200"
    ex2 = exchange()
    policy.on_http_request(ex2)
    ex2.res = HttpResponse(502)
    reply = policy.on_http_response(ex2)
    assert reply is not None and (reply.status, reply.body) == (503, b"sorry")


def test_tcp_connect_phase_denies_by_client_address() -> None:
    policy = compile_policy({"on_tcp_connect": [deny_rule("!inCidrRange(conn.client_ip, '10.0.0.0/8')")]})
    assert policy.has_tcp_phase and not policy.has_request_phase
    assert policy.on_tcp_connect(exchange()) == Reply(403)


def test_the_request_seen_by_the_response_phase_is_the_current_one() -> None:
    policy = compile_policy(
        {
            "on_http_request": [deny_rule("req.url.path == '/nope'")],
            "on_http_response": [header_rule("x-path", "${req.url.path}")],
        }
    )
    ex = exchange("/a")
    policy.on_http_request(ex)
    ex.req.set_url("/b")  # e.g. the edge followed an internal forward
    ex.res = HttpResponse(200)
    policy.on_http_response(ex)
    assert ex.res.header("x-path") == "/b"


def test_policy_flags() -> None:
    assert compile_policy(None).empty
    policy = compile_policy({"on_http_response": [header_rule("a", "b")]})
    assert not policy.empty and policy.has_response_phase and not policy.has_request_phase
    assert not policy.needs_request_body
    assert policy.on_http_request(exchange()) is None


@dataclass
class _BodyReader:
    needs_body: bool = True

    def run(self, ex: Exchange) -> Reply | None:
        return None


def test_needs_request_body_when_a_request_action_needs_it() -> None:
    rule = CompiledRule("", "on_http_request[0]", (), (_BodyReader(),))
    assert CompiledPolicy({"on_http_request": [rule]}).needs_request_body
    assert not CompiledPolicy({"on_http_response": [rule]}).needs_request_body


def test_one_compiled_policy_serves_many_exchanges_independently() -> None:
    policy = compile_policy(
        {
            "on_http_request": [
                {"actions": [{"type": "set-vars", "config": {"vars": [{"p": "${req.url.path}"}]}}]},
                deny_rule("vars.p == '/deny'"),
            ]
        }
    )
    outcomes = [policy.on_http_request(exchange(p)) for p in ["/deny", "/ok", "/deny"]]
    assert outcomes == [Reply(403), None, Reply(403)]


# ---- conditions answered from the URL memo ------------------------------------------------------------


def _url_policy() -> CompiledPolicy:
    # Conditions on req.url.raw_path and req.url.query: the phase compiler writes those on req.url.path
    # and req.method inline, where a memo lookup would cost more than the test (see the next test).
    return compile_policy(
        {
            "on_http_request": [
                deny_rule("req.url.raw_path.startsWith('/admin')", status=401),
                {
                    "expressions": ["req.url.raw_path == '/old'"],
                    "actions": [
                        {"type": "url-rewrite", "config": {"from": "/old$", "to": "/admin"}},
                        {"type": "add-headers", "config": {"headers": {"x-rewritten": "yes"}}},
                    ],
                },
                deny_rule("req.url.raw_path == '/admin'", status=410),  # reachable after the rewrite
                {
                    "expressions": ["req.method == 'GET' && req.url.query.contains('tag')"],
                    "actions": [{"type": "add-headers", "config": {"headers": {"x-tagged": "1"}}}],
                },
                deny_rule("'x-block' in req.headers", status=418),  # reads headers: not memoized
            ]
        }
    )


def test_url_only_rules_share_one_memo_and_answer_as_before() -> None:
    policy = _url_policy()
    memo = policy._request_memo
    assert memo is not None and len(memo.conditions) == 4  # the header rule is evaluated as before
    for _ in range(2):  # the second round is answered from the memo
        assert policy.on_http_request(exchange("/admin/x")) == Reply(401)
        ex = exchange("/page?tag=a")
        assert policy.on_http_request(ex) is None
        assert ("x-tagged", "1") in ex.req.headers
        assert policy.on_http_request(exchange("/page?tag=a", headers=[("x-block", "1")])) == Reply(418)
        assert policy.on_http_request(exchange("/page", method="POST")) is None
    assert len(memo.masks) == 3


def test_inline_conditions_take_no_memo_and_see_a_rewritten_url() -> None:
    policy = compile_policy(
        {
            "on_http_request": [
                deny_rule("req.url.path.startsWith('/admin/')", status=401),
                {
                    "expressions": ["req.method == 'GET' && req.url.path == '/old'"],
                    "actions": [{"type": "url-rewrite", "config": {"from": "/old$", "to": "/admin/x"}}],
                },
                deny_rule("req.url.path.matches('^/admin/[a-z]$')", status=410),
            ]
        }
    )
    assert policy._request_memo is None
    for _ in range(2):
        assert policy.on_http_request(exchange("/admin/y")) == Reply(401)
        ex = exchange("/old")
        assert policy.on_http_request(ex) == Reply(410)  # the locals were read again after the rewrite
        assert ex.req.path == "/admin/x"
        assert policy.on_http_request(exchange("/old", method="POST")) is None


def test_after_a_url_rewrite_the_rest_of_the_group_is_evaluated_live() -> None:
    policy = _url_policy()
    for _ in range(2):
        ex = exchange("/old")
        # The memo for "/old" says only the rewrite rule matches; after it, "/admin" must match live.
        assert policy.on_http_request(ex) == Reply(410)
        assert ex.req.path == "/admin" and ("x-rewritten", "yes") in ex.req.headers


def test_the_url_memo_stays_bounded() -> None:
    from hatchway.policy import phase_code

    policy = _url_policy()
    memo = policy._request_memo
    assert memo is not None
    for i in range(phase_code.MEMO_SIZE + 50):
        policy.on_http_request(exchange(f"/p{i}"))
        assert len(memo.masks) <= phase_code.MEMO_SIZE
    assert policy.on_http_request(exchange("/admin/again")) == Reply(401)
