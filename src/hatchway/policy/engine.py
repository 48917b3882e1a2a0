"""The Traffic Policy engine: compile a document once, then run its phases for each exchange.

Role: the one entry point the edge calls. ``compile_policy`` joins the rules generated from an endpoint's
module options (``before``, run first in each phase) with the user's document and raises ``PolicyError``
listing every problem. ``CompiledPolicy.on_*`` run one phase with ngrok's semantics: rules in order; a rule
runs when all its expressions are true (none: always); its actions run in order; an action returning a
``Reply`` ends the phase. An expression that fails at run time makes its rule not match; a template that
fails to render answers 500 ``ERR_NGROK_3900``.
Must not: do I/O or read clocks (the edge puts ``now``/``wall`` in the exchange), or copy per rule: the
variables are built once per exchange (``variables.state``) and only what an action changed is recomputed.
Running a phase is the hottest code of a policy endpoint: each phase is compiled into one Python function
for its rules when the policy loads (``phase_code.compile_phase``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hatchway.policy.document import CompiledRule, compile_document
from hatchway.policy.interpolate import PolicyEnv
from hatchway.policy.model import PHASES, Action, Exchange, PolicyError, Problem, Reply
from hatchway.policy.phase_code import INTERPOLATION_ERROR, URL_VARS, compile_phase
from hatchway.policy.static_request import compile_static_request

__all__ = ["EMPTY", "INTERPOLATION_ERROR", "CompiledPolicy", "compile_policy"]

# What a "static" request-phase condition may read: the answer is then the same for the same request
# line, Host and headers.
_STATIC_VARS = URL_VARS | {"req.headers"}
# ... and of those, what leaves the query string out (by dotted path: ``req.url`` as a whole has it): a
# static phase reading only these gives the same outcome for requests that differ only in their query.
_QUERY_FREE_PATHS = frozenset({"req.method", "req.url.path", "req.url.raw_path", "req.headers"})


def _static_request(rules: Sequence[CompiledRule]) -> bool:
    """Whether the request phase is a pure function of the request line, Host and headers: every
    condition reads only those, and every action either always answers or only appends fixed request
    headers (``static`` on its class). Such a phase may be answered from a memo (``edge/policy_run``)."""
    return bool(rules) and all(
        all(c.reads_only(_STATIC_VARS) for c in r.conditions)
        and all(getattr(a, "static", False) for a in r.actions)
        for r in rules
    )


class CompiledPolicy:
    """A policy ready to run; immutable and shared by every exchange of its endpoint."""

    __slots__ = (
        "_request",
        "_request_memo",
        "_response",
        "_response_memo",
        "_tcp",
        "_tcp_memo",
        "empty",
        "has_request_phase",
        "has_response_phase",
        "has_tcp_phase",
        "needs_request_body",
        "rules",
        "static_query_free",
        "static_request",
        "static_run",
        "tls",
    )

    def __init__(self, rules: Mapping[str, Sequence[CompiledRule]], tls: Action | None = None) -> None:
        self.rules: dict[str, tuple[CompiledRule, ...]] = {p: tuple(rules.get(p, ())) for p in PHASES}
        # The ``terminate-tls`` action, if any: the edge applies it at the handshake, not per connection.
        self.tls = tls
        self._tcp, self._tcp_memo = compile_phase(self.rules["on_tcp_connect"])
        self._request, self._request_memo = compile_phase(self.rules["on_http_request"])
        self._response, self._response_memo = compile_phase(self.rules["on_http_response"])
        self.has_tcp_phase = self._tcp is not None
        self.has_request_phase = self._request is not None
        self.has_response_phase = self._response is not None
        self.empty = not (self.has_tcp_phase or self.has_request_phase or self.has_response_phase)
        self.needs_request_body = any(a.needs_body for r in self.rules["on_http_request"] for a in r.actions)
        self.static_request = (
            self._tcp is None and self._response is None and _static_request(self.rules["on_http_request"])
        )
        # The request phase decided from the listener's request alone, when its rules allow it.
        self.static_run = (
            compile_static_request(self.rules["on_http_request"]) if self.static_request else None
        )
        self.static_query_free = self.static_request and all(
            c.reads_only_paths(_QUERY_FREE_PATHS) for r in self.rules["on_http_request"] for c in r.conditions
        )

    def on_tcp_connect(self, ex: Exchange) -> Reply | None:
        """Run ``on_tcp_connect``; a Reply means close the connection (deny)."""
        return self._tcp(ex) if self._tcp is not None else None

    def on_http_request(self, ex: Exchange) -> Reply | None:
        """Run ``on_http_request``; a Reply (also stored in ``ex.reply``) answers instead of the upstream."""
        if self._request is None:
            return None
        reply = ex.reply = self._request(ex)
        return reply

    def on_http_response(self, ex: Exchange) -> Reply | None:
        """Run ``on_http_response`` on ``ex.res``; a Reply replaces the response."""
        return self._response(ex) if self._response is not None else None

    def __repr__(self) -> str:
        counts = ", ".join(f"{p}={len(r)}" for p, r in self.rules.items() if r)
        return f"CompiledPolicy({counts or 'empty'})"


EMPTY = CompiledPolicy({})


def compile_policy(
    doc: Mapping[str, Any] | str | None = None, *, before: Mapping[str, Any] | None = None
) -> CompiledPolicy:
    """Compile ``doc`` (YAML/JSON text or a mapping) after the module rules ``before``.

    Raises ``PolicyError`` listing every problem; problems in ``before`` have paths starting ``modules.``.
    """
    problems = []
    merged: dict[str, list[CompiledRule]] = {p: [] for p in PHASES}
    envs: dict[str, PolicyEnv] = {}  # one per phase, shared by the module rules and the user's
    for part, prefix in ((before, "modules."), (doc, "")):
        if part is None:
            continue
        phases, found = compile_document(part, prefix, envs)
        problems.extend(found)
        for phase, rules in phases.items():
            merged[phase].extend(rules)
    merged["on_tcp_connect"], tls = _take_handshake_actions(merged["on_tcp_connect"], problems)
    if problems:
        raise PolicyError(problems)
    for env in envs.values():
        env.share_needs()
    if not any(merged.values()) and tls is None:
        return EMPTY
    return CompiledPolicy(merged, tls)


def _take_handshake_actions(
    rules: list[CompiledRule], problems: list[Problem]
) -> tuple[list[CompiledRule], Action | None]:
    """``on_tcp_connect`` without the actions that apply at the TLS handshake, and that action."""
    kept: list[CompiledRule] = []
    found: list[Action] = []
    for rule in rules:
        at_handshake = [a for a in rule.actions if getattr(a, "at_handshake", False)]
        if not at_handshake:
            kept.append(rule)
            continue
        if rule.conditions:
            problems.append(
                Problem(
                    f"{rule.path}.expressions",
                    "terminate-tls applies at the TLS handshake, before there is anything to match: "
                    "put it in a rule without expressions",
                )
            )
        found.extend(at_handshake)
        rest = tuple(a for a in rule.actions if a not in at_handshake)
        if rest:
            kept.append(CompiledRule(rule.name, rule.path, rule.conditions, rest))
    if len(found) > 1:
        where = getattr(found[1], "path", "on_tcp_connect")
        problems.append(Problem(where, "only one terminate-tls action may apply to an endpoint"))
    return kept, (found[0] if found else None)
