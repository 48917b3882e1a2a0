"""Loading policy documents: the accepted forms, and every mistake reported at once with its exact path."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hatchway.policy.document import compile_document, load
from hatchway.policy.engine import compile_policy
from hatchway.policy.model import Conn, EndpointInfo, Exchange, HttpRequest, PolicyError

YAML_DOC = """
on_http_request:
  - name: block admin
    expressions:
      - "req.url.path.startsWith('/admin')"
    actions:
      - type: deny
on_http_response:
  - actions:
      - type: add-headers
        config:
          headers:
            x-served-by: hatchway
"""


def problems(doc: Any) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        compile_policy(doc)
    return [str(p) for p in caught.value.problems]


@pytest.mark.parametrize(
    "doc",
    [YAML_DOC, json.dumps(load(YAML_DOC)), load(YAML_DOC), YAML_DOC.encode()],
    ids=["yaml", "json", "mapping", "bytes"],
)
def test_yaml_json_and_mappings_compile_to_the_same_rules(doc: Any) -> None:
    phases, found = compile_document(doc)
    assert found == []
    assert [r.name for r in phases["on_http_request"]] == ["block admin"]
    assert len(phases["on_http_response"]) == 1
    assert phases["on_tcp_connect"] == []


@pytest.mark.parametrize(
    "doc", [None, "", "   \n", {}, "{}", {"on_http_request": None}, {"on_http_request": []}]
)
def test_empty_documents_are_the_empty_policy(doc: Any) -> None:
    assert compile_policy(doc).empty


def test_legacy_inbound_and_outbound_are_the_http_phases() -> None:
    phases, found = compile_document(
        {
            "inbound": [{"actions": [{"type": "deny"}]}],
            "outbound": [{"actions": [{"type": "log", "config": {"metadata": {"a": "b"}}}]}],
        }
    )
    assert found == []
    assert len(phases["on_http_request"]) == 1 and len(phases["on_http_response"]) == 1
    assert phases["on_http_request"][0].path == "inbound[0]"


# (document, the exact problems)
MISTAKES: list[tuple[Any, list[str]]] = [
    (
        {"on_http_request": [{"actions": [{"type": "deny", "config": {"status_code": 1000}}]}]},
        ["on_http_request[0].actions[0].config.status_code: must be between 100 and 999, got 1000"],
    ),
    (
        {"on_http_requests": []},
        ["on_http_requests: unknown field; a policy has phases on_tcp_connect, on_http_request, "],
    ),
    (
        {"on_http_request": [{"actions": [{"type": "teleport"}]}]},
        ["on_http_request[0].actions[0].type: unknown action type 'teleport'; known types: add-headers, "],
    ),
    (
        {"on_http_response": [{"actions": [{"type": "redirect", "config": {"to": "/x"}}]}]},
        [
            "on_http_response[0].actions[0].type: 'redirect' cannot be used in on_http_response "
            "(only in on_http_request)"
        ],
    ),
    (
        {"on_tcp_connect": [{"actions": [{"type": "add-headers", "config": {"headers": {"a": "b"}}}]}]},
        ["on_tcp_connect[0].actions[0].type: 'add-headers' cannot be used in on_tcp_connect"],
    ),
    (
        {"on_http_request": [{"expressions": ["reqq.method == 'GET'"], "actions": [{"type": "deny"}]}]},
        ["on_http_request[0].expressions[0]: invalid expression: 1:5: undeclared reference to 'reqq.method'"],
    ),
    (
        {"on_http_request": [{"expressions": ["req.methd == 'GET'"], "actions": [{"type": "deny"}]}]},
        ["on_http_request[0].expressions[0]: invalid expression: unknown variable req.methd; req has: "],
    ),
    (
        {"on_http_request": [{"expressions": "req.method == 'GET'", "actions": [{"type": "deny"}]}]},
        ["on_http_request[0].expressions: must be a list of CEL expressions, got a string"],
    ),
    (
        {"on_http_request": [{"name": "no actions"}]},
        ["on_http_request[0].actions: is required: a rule needs at least one action"],
    ),
    (
        {"on_http_request": [{"actions": []}]},
        ["on_http_request[0].actions: must be a non-empty list of actions"],
    ),
    ({"on_http_request": {"actions": []}}, ["on_http_request: must be a list of rules, got a map"]),
    (
        {"on_http_request": ["deny"]},
        ["on_http_request[0]: must be a rule (a map with actions), got a string"],
    ),
    (
        {"on_http_request": [{"actions": [{"type": "deny"}], "when": "always"}]},
        ["on_http_request[0].when: unknown field; a rule has name, expressions, actions"],
    ),
    (
        {"on_http_request": [{"actions": [{"type": "deny", "cfg": {}}]}]},
        ["on_http_request[0].actions[0].cfg: unknown field; an action has type and config"],
    ),
    (
        {"on_http_request": [{"actions": [{"config": {}}]}]},
        ["on_http_request[0].actions[0].type: is required"],
    ),
    (
        {"on_http_request": [{"actions": [{"type": "deny", "config": {"status": 403}}]}]},
        ["on_http_request[0].actions[0].config.status: unknown field"],
    ),
    (
        {
            "on_http_request": [
                {"actions": [{"type": "add-headers", "config": {"headers": {"x": "${req.methd}"}}}]}
            ]
        },
        [
            "on_http_request[0].actions[0].config.headers.x: "
            "invalid expression '${req.methd}' at offset 0: unknown variable"
        ],
    ),
    (
        {"inbound": [], "on_http_request": []},
        ["inbound: cannot be used together with on_http_request (its new name)"],
    ),
    ("on_http_request: [unclosed", ["policy: is not valid YAML or JSON: "]),
    ("- just\n- a list\n", ["policy: must be a map of phases, got a list"]),
]


@pytest.mark.parametrize(("doc", "expected"), MISTAKES)
def test_each_mistake_is_reported_with_its_path(doc: Any, expected: list[str]) -> None:
    got = problems(doc)
    assert len(got) == len(expected), got
    for problem, start in zip(got, expected, strict=True):
        assert problem.startswith(start), problem


def test_all_problems_of_a_document_are_reported_together() -> None:
    doc = {
        "on_http_request": [
            {
                "expressions": ["req.methd == 'x'"],
                "actions": [{"type": "deny", "config": {"status_code": 7}}],
            },
            {"actions": [{"type": "nope"}]},
        ],
        "on_http_response": [{"actions": [{"type": "redirect", "config": {"to": "/"}}]}],
        "extra": 1,
    }
    got = problems(doc)
    assert [p.split(":")[0] for p in got] == [
        "on_http_request[0].expressions[0]",
        "on_http_request[0].actions[0].config.status_code",
        "on_http_request[1].actions[0].type",
        "on_http_response[0].actions[0].type",
        "extra",
    ]


def test_module_rules_report_paths_under_modules() -> None:
    before = {"on_http_request": [{"actions": [{"type": "deny", "config": {"status_code": 99}}]}]}
    with pytest.raises(PolicyError) as caught:
        compile_policy({"on_http_request": [{"actions": [{"type": "teleport"}]}]}, before=before)
    paths = [p.path for p in caught.value.problems]
    assert paths == [
        "modules.on_http_request[0].actions[0].config.status_code",
        "on_http_request[0].actions[0].type",
    ]


def test_policy_error_message_lists_every_problem() -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy(
            {"on_http_request": [{"actions": [{"type": "deny", "config": {"status_code": 1}}]}], "x": 1}
        )
    assert str(caught.value) == (
        "on_http_request[0].actions[0].config.status_code: must be between 100 and 999, got 1; "
        "x: unknown field; a policy has phases on_tcp_connect, on_http_request, on_http_response"
    )


def test_yaml_booleans_are_true_and_false_only_as_in_ngroks_parser() -> None:
    """YAML 1.1's yes/no/on/off stay strings (a header value ``yes`` must not become ``true``)."""
    doc = load("a: yes\nb: No\nc: on\nd: OFF\ne: true\nf: False\ng: 12\nh: ~\n")
    assert doc == {"a": "yes", "b": "No", "c": "on", "d": "OFF", "e": True, "f": False, "g": 12, "h": None}
    policy = compile_policy(
        "on_http_request:\n  - actions:\n      - type: add-headers\n"
        "        config: {headers: {x-flag: yes}}\n"
    )
    ex = Exchange(
        conn=Conn("198.51.100.7", 40000, "192.0.2.1", 443),
        endpoint=EndpointInfo("ep_1", "https://app.example.com", "app.example.com", 443, "https"),
        req=HttpRequest(
            "GET", "https", "app.example.com", 443, "/", "", "1.1", [("Host", "app.example.com")]
        ),
    )
    assert policy.on_http_request(ex) is None
    assert ("x-flag", "yes") in ex.req.headers
