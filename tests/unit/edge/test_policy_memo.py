"""The request-phase memo of static policies (``policy_run.remembered``): which policies qualify, and a
replayed outcome leaves the request head exactly as running the rules does."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hatchway.edge import policy_run
from hatchway.edge.policy_run import OutcomeMemo, PolicyRun, outcome_key, remembered
from hatchway.policy.engine import compile_policy

from helpers import EndpointDouble, head_of, listener_request

STATIC = {
    "on_http_request": [
        {
            "expressions": ["'x-debug' in req.headers"],
            "actions": [{"type": "custom-response", "config": {"status_code": 418, "body": "debug"}}],
        },
        {
            "expressions": ["req.method == 'POST' && req.url.path.startsWith('/api')"],
            "actions": [{"type": "add-headers", "config": {"headers": {"x-api": "1"}}}],
        },
        {
            "expressions": ["req.headers['accept'][0] == 'text/html'"],
            "actions": [
                {"type": "add-headers", "config": {"headers": {"x-html": "yes", "connection": "x-html"}}}
            ],
        },
        {"actions": [{"type": "add-headers", "config": {"headers": {"x-policy": "seen"}}}]},
        {"expressions": ["req.url.query == 'deny'"], "actions": [{"type": "deny"}]},
    ]
}


@pytest.mark.parametrize(
    ("rule", "static"),
    [
        ({"expressions": ["req.url.path == '/a'"], "actions": [{"type": "deny"}]}, True),
        (
            {
                "expressions": ["'x' in req.headers"],
                "actions": [{"type": "add-headers", "config": {"headers": {"a": "b"}}}],
            },
            True,
        ),
        ({"actions": [{"type": "custom-response", "config": {"body": "${req.url.path}"}}]}, True),
        ({"expressions": ["conn.client_ip == '1.2.3.4'"], "actions": [{"type": "deny"}]}, False),
        ({"expressions": ["hasReqHeader('x')"], "actions": [{"type": "deny"}]}, False),
        ({"actions": [{"type": "add-headers", "config": {"headers": {"a": "${req.url.path}"}}}]}, False),
        ({"actions": [{"type": "remove-headers", "config": {"headers": ["a"]}}]}, False),
        ({"actions": [{"type": "set-vars", "config": {"vars": [{"a": "b"}]}}]}, False),
        (
            {
                "actions": [
                    {
                        "type": "rate-limit",
                        "config": {
                            "name": "r",
                            "algorithm": "sliding_window",
                            "capacity": 5,
                            "rate": "60s",
                            "bucket_key": ["conn.client_ip"],
                        },
                    }
                ]
            },
            False,
        ),
    ],
)
def test_only_phases_that_depend_on_the_request_alone_are_static(rule: dict[str, Any], static: bool) -> None:
    assert compile_policy({"on_http_request": [rule]}).static_request is static


def test_a_response_phase_makes_the_request_phase_not_static() -> None:
    doc = {
        **STATIC,
        "on_http_response": [{"actions": [{"type": "add-headers", "config": {"headers": {"a": "b"}}}]}],
    }
    assert not compile_policy(doc).static_request


_HEADERS = st.lists(
    st.sampled_from(
        [
            (b"Host", b"app.hatchway.localhost:8443"),
            (b"Accept", b"text/html"),
            (b"Accept", b"*/*"),
            (b"X-Debug", b"1"),
            (b"Connection", b"keep-alive"),
            (b"User-Agent", b"curl"),
        ]
    ),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from([b"GET", b"POST"]),
    target=st.sampled_from([b"/", b"/api/x", b"/api?deny", b"/?deny", b"http://h.example/api"]),
    headers=_HEADERS,
)
def test_a_replayed_outcome_is_what_running_the_rules_gives(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    policy = compile_policy(STATIC)
    ep: Any = EndpointDouble(memo=True)
    fresh = listener_request(method, target, headers)
    reply = PolicyRun(ep, policy, fresh).answer(fresh, b"")

    # Once to fill the memo the way the listener does, once more to replay it.
    first = listener_request(method, target, headers)
    key = outcome_key(first)
    assert not remembered(ep, key, first)
    run = PolicyRun(ep, policy, first)
    first_reply = run.answer(first, b"")
    if first_reply is None:
        run.remember(ep, key)
    assert (first_reply is None) == (reply is None)

    again = listener_request(method, target, headers)
    if reply is not None:
        assert not remembered(ep, outcome_key(again), again)  # answers always run in full
        return
    replayed = remembered(ep, outcome_key(again), again)
    assert replayed == target.startswith(b"/")  # an absolute-form target is written back: not kept
    if replayed:
        assert head_of(again) == head_of(fresh)


# STATIC without its rule on req.url.query: nothing of it reads the query string.
QUERY_FREE = {"on_http_request": [r for r in STATIC["on_http_request"] if "req.url.query" not in str(r)]}
_QUERIES = st.sampled_from([b"", b"?", b"?a=1", b"?a=2&b", b"?deny"])


def test_only_a_phase_that_ignores_the_query_shares_entries_across_queries() -> None:
    assert compile_policy(QUERY_FREE).static_query_free
    assert not compile_policy(STATIC).static_query_free  # its last rule reads req.url.query
    raw = {"on_http_request": [{"expressions": ["req.url.raw_path == '/a'"], "actions": [{"type": "deny"}]}]}
    assert compile_policy(raw).static_query_free


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from([b"GET", b"POST"]),
    path=st.sampled_from([b"/", b"/api/x", b"/api"]),
    first_query=_QUERIES,
    query=_QUERIES,
    headers=_HEADERS,
)
def test_a_query_free_replay_is_what_running_the_rules_gives(
    method: bytes, path: bytes, first_query: bytes, query: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    policy = compile_policy(QUERY_FREE)
    ep: Any = EndpointDouble(memo=True)
    memo = ep.request_outcomes = OutcomeMemo(query_free=True)
    fresh = listener_request(method, path + query, headers)
    reply = PolicyRun(ep, policy, fresh).answer(fresh, b"")

    first = listener_request(method, path + first_query, headers)  # fills the memo, as the listener does
    key = memo.key(first)
    run = PolicyRun(ep, policy, first)
    if run.answer(first, b"") is None:
        run.remember(ep, key)

    again = listener_request(method, path + query, headers)
    replayed = remembered(ep, memo.key(again), again)
    if reply is not None:
        assert not replayed  # answers always run in full
        return
    # Replayed across queries when both have one; a bare "?" runs in full (it is written back without).
    assert replayed == (first_query == query != b"?" or (len(first_query) > 1 and len(query) > 1))
    if replayed:
        assert head_of(again) == head_of(fresh)


def test_the_memo_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy_run, "_OUTCOMES", 8)
    policy = compile_policy(STATIC)
    ep: Any = EndpointDouble(memo=True)
    for i in range(30):
        req = listener_request(b"GET", f"/p{i}".encode(), [(b"Host", b"app.hatchway.localhost")])
        key = outcome_key(req)
        run = PolicyRun(ep, policy, req)
        assert run.answer(req, b"") is None
        run.remember(ep, key)
        assert len(ep.request_outcomes) <= 8


def _fill(ep: Any, policy: Any, paths: list[str]) -> int:
    """Requests for ``paths`` through the memo as the listener uses it (without the static function, so
    that every miss runs in full); returns how many were replayed."""
    replayed = 0
    for path in paths:
        req = listener_request(b"GET", path.encode(), [(b"Host", b"app.hatchway.localhost")])
        memo = ep.request_outcomes
        key = outcome_key(req) if memo.active() else None
        if key is not None and remembered(ep, key, req):
            replayed += 1
            continue
        run = PolicyRun(ep, policy, req)
        assert run.answer(req, b"") is None
        if key is not None:
            run.remember(ep, key)
    return replayed


def test_a_memo_that_does_not_pay_off_rests_then_starts_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy_run, "_OUTCOMES", 8)
    monkeypatch.setattr(policy_run, "_REST", 2)  # 16 requests
    policy = compile_policy(STATIC)
    ep: Any = EndpointDouble(memo=True)
    memo = ep.request_outcomes
    # Repeats: the memo keeps paying off and starts over when full, as before.
    assert _fill(ep, policy, [f"/r{i % 4}" for i in range(40)]) == 36
    assert memo.rest == 0
    # Requests that never repeat: the memo starts over once (its hits were from before), fills up again
    # without a replay, and then empties and rests for 16 requests: not even a repeat is replayed...
    assert _fill(ep, policy, [f"/new{i}" for i in range(13)]) == 0
    assert memo.rest == 16 and len(memo) == 0
    assert _fill(ep, policy, ["/again"] * 16) == 0
    assert memo.rest == 0 and len(memo) == 0
    # ...after which it is used again.
    assert _fill(ep, policy, ["/again"] * 3) == 2
    assert len(memo) == 1
