"""The phase compiler (``policy/phase_code.py``) answers what the engine's documented semantics give.

The reference here is a plain loop written in the test: rules in order, each condition asked of CEL itself
(``CompiledExpression._slow_truth``, no fast path and no inline code), actions in order, the first reply
wins. Hypothesis draws policies from the shapes the compiler writes inline (method, decoded path tests and
regexes, header presence, ``&&``/``||``/``!``) and from shapes it calls or memoizes (query and raw path
tests), with actions that change what later rules read (url-rewrite, add-headers), and requests with
percent-escapes, newlines and non-ASCII paths. Both runs must give the same reply and the same request.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from hatchway.policy.engine import compile_policy
from hatchway.policy.model import Exchange, Reply
from hatchway.policy.phase_code import compile_phase
from hatchway.policy.variables import ALL_DIRTY, SCRATCH_KEY

from helpers import policy_exchange as exchange

# "/ax%0A" decodes to a final newline, where Python's "x$" matches and RE2's does not: CEL must decide.
PATHS = ["/", "/admin/x", "/admin", "/a%2Fb", "/caf\u00e9", "/ax%0A", "/x\ny", "/api/v1", "/static/app.js"]
QUERIES = ["", "tag=a", "debug=1&tag=b"]
HEADERS = ["x-debug", "x-block", "accept"]

_LEAF = st.sampled_from(
    [
        "req.method == 'GET'",
        "req.method != 'POST'",
        "req.url.path == '/old'",
        "req.url.path != '/'",
        "req.url.path.startsWith('/admin')",
        "req.url.path.endsWith('.js')",
        "req.url.path.contains('/')",
        "req.url.path.matches('^/(admin|api)/')",
        "req.url.path.matches('x$')",
        "'x-debug' in req.headers",
        "hasReqHeader('X-Block')",
        "req.url.query.contains('tag')",  # called (query is not written inline), memoized with others
        "req.url.raw_path.startsWith('/a')",
        "req.url.query_params['debug'][0] == '1'",  # CEL's own path (may fail: no match)
    ]
)


def _expression(depth: int) -> st.SearchStrategy[str]:
    if depth == 0:
        return _LEAF
    sub = _expression(depth - 1)
    return st.one_of(
        _LEAF,
        st.builds(lambda a, b: f"({a}) && ({b})", sub, sub),
        st.builds(lambda a, b: f"({a}) || ({b})", sub, sub),
        st.builds(lambda a: f"!({a})", sub),
    )


_ACTION = st.one_of(
    st.builds(lambda s: {"type": "deny", "config": {"status_code": s}}, st.sampled_from([401, 403, 404])),
    st.builds(
        lambda n: {"type": "add-headers", "config": {"headers": {n: "1"}}},
        st.sampled_from(["x-debug", "x-added"]),
    ),
    st.builds(
        lambda to: {"type": "url-rewrite", "config": {"from": "^(.*)/old$", "to": to}},
        st.sampled_from(["$1/admin/z", "$1/api/v1?tag=c"]),
    ),
)
_RULE = st.builds(
    lambda exprs, actions: {"expressions": exprs, "actions": actions},
    st.lists(_expression(2), max_size=2),
    st.lists(_ACTION, min_size=1, max_size=2),
)


def _reference(doc: dict[str, Any], ex: Exchange) -> Reply | None:
    """The semantics, spelled out: CEL decides every condition."""
    policy = compile_policy(doc)
    for rule in policy.rules["on_http_request"]:
        if not all(c._slow_truth(ex) for c in rule.conditions):
            continue
        for action in rule.actions:
            reply = action.run(ex)
            # Variables follow what the action changed: CEL's cached values are recomputed.
            state = ex.scratch.get(SCRATCH_KEY)
            if state is not None:
                state.dirty = ALL_DIRTY
            if reply is not None:
                return reply
    return None


def _seen(ex: Exchange) -> tuple[Any, ...]:
    r = ex.req
    return (r.method, r.path, r.query, list(r.headers))


_DENY = [{"type": "deny", "config": {"status_code": 403}}]
_REWRITE = [{"type": "url-rewrite", "config": {"from": "^(.*)/old$", "to": "$1/admin/z"}}]


@settings(max_examples=300, deadline=None)
# Two cases rare among random draws: a regex where re and RE2 differ, and a rule after a rewrite.
@example(
    rules=[{"expressions": ["req.url.path.matches('x$')"], "actions": _DENY}],
    path="/ax%0A",
    query="",
    method="GET",
    headers=[],
)
@example(
    rules=[
        {"expressions": ["req.url.path == '/old'"], "actions": _REWRITE},
        {"expressions": ["req.url.path.startsWith('/admin/')"], "actions": _DENY},
    ],
    path="/old",
    query="",
    method="GET",
    headers=[],
)
@given(
    rules=st.lists(_RULE, min_size=1, max_size=6),
    path=st.one_of(st.just("/old"), st.sampled_from(PATHS)),  # "/old": the url-rewrite applies
    query=st.sampled_from(QUERIES),
    method=st.sampled_from(["GET", "POST"]),
    headers=st.lists(st.sampled_from(HEADERS), unique=True),
)
def test_a_compiled_phase_answers_as_the_reference_loop(
    rules: list[dict[str, Any]], path: str, query: str, method: str, headers: list[str]
) -> None:
    doc = {"on_http_request": rules}
    target = f"{path}?{query}" if query else path
    request_headers = [("Host", "app.example.com"), *((h.title(), "v") for h in headers)]
    expected_ex = exchange(target, method, copy.copy(request_headers))
    expected = _reference(doc, expected_ex)
    policy = compile_policy(doc)
    for _ in range(2):  # the second time, memoized conditions answer from the URL memo
        ex = exchange(target, method, copy.copy(request_headers))
        assert policy.on_http_request(ex) == expected, (rules, target)
        assert _seen(ex) == _seen(expected_ex)


def test_policy_text_is_data_in_the_generated_function() -> None:
    # Quotes and code in the strings a policy controls travel as values, never as source: the rule
    # matches exactly that path, and nothing else happens.
    nasty = "/x'); __import__('os')._exit(3) #"
    doc = {
        "on_http_request": [
            {
                "name": nasty,
                "expressions": [f'req.url.path == "{nasty}"'],
                "actions": [{"type": "deny", "config": {"status_code": 418}}],
            },
            {
                "expressions": [f'req.url.path.startsWith("{nasty[:6]}")'],
                "actions": [{"type": "deny", "config": {"status_code": 419}}],
            },
        ]
    }
    policy = compile_policy(doc)
    assert policy.on_http_request(exchange(nasty)) == Reply(418)
    assert policy.on_http_request(exchange(nasty[:8])) == Reply(419)
    assert policy.on_http_request(exchange("/x")) is None


def test_no_rules_no_function() -> None:
    assert compile_phase([]) == (None, None)
