"""A static request phase decided from the listener's request alone (``CompiledPolicy.static_run``, used by
``policy_run.decided``) leaves the request head exactly as running the phase in full does.

Hypothesis draws policies from the shapes the static function covers (method and path tests, path
regexes, header presence, ``&&``/``||``/``!``; deny, custom-response and add-headers with fixed values,
including headers that later rules test and a Connection header) and requests with percent-escapes,
non-ASCII and newline paths, a bare "?", an absolute-form target and mixed-case header names. Where the
static function decides, the head must equal the full run's and the full run must not have answered;
it must decide every request it covers (else a function that always says FULL would pass).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hatchway.edge.policy_run import PolicyRun, decided
from hatchway.policy.engine import compile_policy

from helpers import EndpointDouble, head_of, listener_request

_LEAF = st.sampled_from(
    [
        "req.method == 'GET'",
        "req.method != 'POST'",
        "req.url.path == '/admin/x'",
        "req.url.path != '/'",
        "req.url.path.startsWith('/a')",
        "req.url.path.endsWith('b')",
        "req.url.path.contains('/')",
        "'x-debug' in req.headers",
        "'x-added' in req.headers",
        "'X-Debug' in req.headers",  # map keys are lower-case: never true
        "req.url.path.matches('^/(admin|api)')",
        "req.url.path.matches('b$')",
    ]
)
_EXPR = st.recursive(
    _LEAF,
    lambda sub: st.one_of(
        st.builds(lambda a, b: f"({a}) && ({b})", sub, sub),
        st.builds(lambda a, b: f"({a}) || ({b})", sub, sub),
        st.builds(lambda a: f"!({a})", sub),
    ),
    max_leaves=3,
)
# A regex as a whole expression too (inside &&, || or ! it is one of the leaves above).
_REGEX = st.sampled_from(["req.url.path.matches('^/(admin|api)')", "req.url.path.matches('b$')"])
_ACTION = st.sampled_from(
    [
        {"type": "deny", "config": {"status_code": 404}},
        {"type": "custom-response", "config": {"status_code": 418, "body": "teapot"}},
        {"type": "add-headers", "config": {"headers": {"x-added": "1"}}},
        {"type": "add-headers", "config": {"headers": {"X-Policy": "seen", "connection": "x-policy"}}},
    ]
)
_RULE = st.builds(
    lambda exprs, actions: {"expressions": exprs, "actions": actions},
    st.lists(st.one_of(_EXPR, _REGEX), max_size=2),
    st.lists(_ACTION, min_size=1, max_size=2),
)
# Targets the static function always decides (origin-form, no bare "?", paths re and RE2 read alike),
# and others it may hand to the full run (a non-ASCII or newline path only when a regex is involved).
COVERED = [b"/", b"/admin/x", b"/a%2Fb", b"/api?x=1", b"/old/b"]
OTHERS = [b"/caf%C3%A9", b"/ab%0A", b"/api?", b"http://app.hatchway.localhost/api"]
HEADERS = st.lists(
    st.sampled_from(
        [
            (b"Host", b"app.hatchway.localhost"),
            (b"X-Debug", b"1"),
            (b"x-added", b"0"),
            (b"Connection", b"keep-alive"),
            (b"Accept", b"*/*"),
        ]
    ),
    max_size=4,
)


@settings(max_examples=400, deadline=None)
@example(
    rules=[
        {"actions": [{"type": "add-headers", "config": {"headers": {"x-added": "1"}}}]},
        {"expressions": ["'x-added' in req.headers"], "actions": [{"type": "deny"}]},
    ],
    method=b"GET",
    target=b"/",
    headers=[],
)  # a header a rule appended is seen by the next rule's test
@example(
    rules=[
        {"actions": [{"type": "add-headers", "config": {"headers": {"x-added": "1"}}}]},
        {
            "expressions": ["req.method == 'GET'"],
            "actions": [{"type": "add-headers", "config": {"headers": {"x-policy": "seen"}}}],
        },
        {
            "expressions": ["'x-added' in req.headers && 'x-policy' in req.headers"],
            "actions": [{"type": "deny"}],
        },
    ],
    method=b"POST",
    target=b"/",
    headers=[],
)  # appends known when the function is written, then appends under a condition
@given(
    rules=st.lists(_RULE, min_size=1, max_size=5),
    method=st.sampled_from([b"GET", b"POST"]),
    target=st.sampled_from(COVERED + OTHERS),
    headers=HEADERS,
)
def test_deciding_from_the_request_bytes_is_running_the_phase(
    rules: list[dict[str, Any]], method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    policy = compile_policy({"on_http_request": rules})
    assert policy.static_run is not None
    full = listener_request(method, target, headers)
    reply = PolicyRun(EndpointDouble(), policy, full).answer(full, b"")  # type: ignore[arg-type]

    req = listener_request(method, target, headers)
    ep: Any = EndpointDouble()
    if decided(policy, ep, req, None):
        assert reply is None, "the static function let through what the rules answer"
        assert head_of(req) == head_of(full)
    else:
        assert reply is not None or target in OTHERS, "a request it covers was not decided"
        assert head_of(req) == head_of(
            listener_request(method, target, headers)
        )  # untouched for the full run


@pytest.mark.parametrize(
    ("rule", "covered"),
    [
        ({"expressions": ["req.url.path.matches('^/a')"], "actions": [{"type": "deny"}]}, True),
        (
            {
                "expressions": ["req.method == 'GET' && !req.url.path.matches('^/a')"],
                "actions": [{"type": "deny"}],
            },
            True,
        ),
        ({"expressions": ["req.url.path.matches('\\\\pL')"], "actions": [{"type": "deny"}]}, False),
        ({"actions": [{"type": "add-headers", "config": {"headers": {"a": "b"}}}]}, True),
        ({"expressions": ["req.url.query.contains('x')"], "actions": [{"type": "deny"}]}, False),
        ({"expressions": ["req.headers['accept'][0] == 'x'"], "actions": [{"type": "deny"}]}, False),
        ({"expressions": ["'caf\u00e9' in req.headers"], "actions": [{"type": "deny"}]}, False),
        ({"expressions": ["conn.client_ip == '1.2.3.4'"], "actions": [{"type": "deny"}]}, False),
        ({"actions": [{"type": "add-headers", "config": {"headers": {"a": "${req.url.path}"}}}]}, False),
    ],
)
def test_which_phases_get_a_static_function(rule: dict[str, Any], covered: bool) -> None:
    assert (compile_policy({"on_http_request": [rule]}).static_run is not None) is covered


def test_a_remembered_decision_is_replayed() -> None:
    policy = compile_policy(
        {"on_http_request": [{"actions": [{"type": "add-headers", "config": {"headers": {"x-p": "1"}}}]}]}
    )
    ep: Any = EndpointDouble(memo=True)
    req = listener_request(b"GET", b"/a", [(b"Host", b"app.hatchway.localhost")])
    key = ep.request_outcomes.key(req)
    assert decided(policy, ep, req, key)
    assert ep.request_outcomes.entries[key] == (((b"x-p", b"1"),), (b"x-p",))
