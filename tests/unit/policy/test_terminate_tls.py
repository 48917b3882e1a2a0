"""The ``terminate-tls`` action: its config checks, and how the engine takes it out of the per-connection
phase (it applies at the TLS handshake) and refuses what a handshake cannot honour."""

from __future__ import annotations

import pytest

from hatchway.policy.actions.terminate_tls import TerminateTls
from hatchway.policy.engine import EMPTY, compile_policy
from hatchway.policy.model import PolicyError


def _policy(config: dict[str, object], expressions: list[str] | None = None) -> dict[str, object]:
    rule: dict[str, object] = {"actions": [{"type": "terminate-tls", "config": config}]}
    if expressions:
        rule["expressions"] = expressions
    return {"on_tcp_connect": [rule]}


def test_defaults_and_values() -> None:
    p = compile_policy(_policy({}))
    assert isinstance(p.tls, TerminateTls)
    assert (p.tls.min_version, p.tls.max_version, p.tls.strategy) == ("1.2", "1.3", "require-and-verify")
    assert not p.has_tcp_phase and p.empty  # nothing left to run per connection
    assert p is not EMPTY
    p = compile_policy(_policy({"min_version": "1.3", "mutual_tls_certificate_authorities": ["PEM"]}))
    assert isinstance(p.tls, TerminateTls)
    assert p.tls.min_version == "1.3" and p.tls.client_cas == ("PEM",)
    assert p.tls.path == "on_tcp_connect[0].actions[0]"


def test_other_actions_of_the_rule_still_run_per_connection() -> None:
    doc = {
        "on_tcp_connect": [
            {
                "actions": [
                    {"type": "terminate-tls", "config": {"min_version": "1.3"}},
                    {"type": "log", "config": {"metadata": {"a": "b"}}},
                ]
            }
        ]
    }
    p = compile_policy(doc)
    assert p.tls is not None and p.has_tcp_phase
    assert [type(a).__name__ for a in p.rules["on_tcp_connect"][0].actions] == ["Log"]


@pytest.mark.parametrize(
    ("config", "path", "message"),
    [
        ({"min_version": "1.4"}, "config.min_version", "must be one of 1.0, 1.1, 1.2, 1.3"),
        ({"min_version": "1.3", "max_version": "1.2"}, "config.min_version", "is above max_version"),
        ({"server_certificate": "PEM"}, "config.server_private_key", "give both"),
        ({"mutual_tls_verification_strategy": "require-any"}, "strategy", "require-any is not supported"),
        ({"mutual_tls_certificate_authorities": "PEM"}, "certificate_authorities", "must be a list"),
        ({"bogus": 1}, "config.bogus", ""),
    ],
)
def test_bad_config_is_named(config: dict[str, object], path: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        compile_policy(_policy(config))
    text = str(info.value)
    assert path in text and message in text


def test_it_cannot_depend_on_expressions_or_appear_twice() -> None:
    with pytest.raises(PolicyError, match=r"on_tcp_connect\[0\]\.expressions: terminate-tls applies at the"):
        compile_policy(_policy({}, ["conn.client_ip == '1.2.3.4'"]))
    twice = {"on_tcp_connect": [_policy({})["on_tcp_connect"][0]] * 2}  # type: ignore[index]
    with pytest.raises(PolicyError, match=r"on_tcp_connect\[1\]\.actions\[0\]: only one terminate-tls"):
        compile_policy(twice)


def test_only_in_on_tcp_connect() -> None:
    doc = {"on_http_request": [{"actions": [{"type": "terminate-tls"}]}]}
    with pytest.raises(PolicyError, match="terminate-tls"):
        compile_policy(doc)
