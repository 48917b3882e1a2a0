"""The Traffic Policy engine: compile a document once, then run its phases for each exchange.

Role: the one entry point the edge calls. ``compile_policy`` joins the rules generated from an endpoint's
module options (``before``, run first in each phase) with the user's document and raises ``PolicyError``
listing every problem. ``CompiledPolicy.on_*`` run one phase with ngrok's semantics: rules in order; a rule
runs when all its expressions are true (none: always); its actions run in order; an action returning a
``Reply`` ends the phase. An expression that fails at run time makes its rule not match; a template that
fails to render answers 500 ``ERR_NGROK_3900``.
Must not: do I/O or read clocks (the edge puts ``now``/``wall`` in the exchange), or copy per rule: the
variables are built once per exchange (``variables.state``) and only what an action changed is recomputed.
The run loop is the hottest code of a policy endpoint: each rule is one prepared condition and the bound
``run`` of its actions (see ``_Rule``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hatchway.policy.cel import EvaluationError
from hatchway.policy.document import CompiledRule, compile_document
from hatchway.policy.interpolate import PolicyEnv
from hatchway.policy.model import PHASES, Action, Exchange, PolicyError, Problem, Reply
from hatchway.policy.variables import ALL_DIRTY, SCRATCH_KEY

INTERPOLATION_ERROR = "ERR_NGROK_3900"

# A rule as the run loop wants it: one condition (None: always; the conditions' ``truth`` joined by "and"
# when there are several), its actions' ``run`` bound once here rather than looked up per request, and
# the kinds of variables its actions may change (``variables.ALL_DIRTY`` unless each action declares less
# in a ``dirties`` attribute, which add-headers does when it keeps the variables current itself).
_Truth = Callable[[Exchange], bool]
_Rule = tuple[_Truth | None, tuple[Callable[[Exchange], Reply | None], ...], int]


def _all(truths: tuple[_Truth, ...]) -> _Truth:
    return lambda ex: all(truth(ex) for truth in truths)


def _condition(rule: CompiledRule) -> _Truth | None:
    truths = tuple(c.truth for c in rule.conditions)
    if not truths:
        return None
    if len(truths) == 1:
        return truths[0]
    if len(truths) == 2:
        first, second = truths
        return lambda ex: first(ex) and second(ex)
    return _all(truths)


def _dirties(rule: CompiledRule) -> int:
    kinds = 0
    for action in rule.actions:
        kinds |= getattr(action, "dirties", ALL_DIRTY)
    return kinds


def _loop_rules(rules: Sequence[CompiledRule]) -> tuple[_Rule, ...]:
    return tuple((_condition(r), tuple(a.run for a in r.actions), _dirties(r)) for r in rules)


def _run(rules: Sequence[_Rule], ex: Exchange) -> Reply | None:
    scratch = ex.scratch
    # Variables are built on first read; if an earlier phase read some, the edge may have changed the
    # exchange since (the response arrived, the request was forwarded): compare before trusting them.
    st = scratch.get(SCRATCH_KEY)
    if st is not None:
        st.dirty = ALL_DIRTY
    for condition, runs, dirties in rules:
        if condition is not None and not condition(ex):
            continue
        for run in runs:
            try:
                reply: Reply | None = run(ex)
            except EvaluationError as exc:
                return Reply(
                    500,
                    error_code=INTERPOLATION_ERROR,
                    message=f"Traffic Policy could not evaluate an expression: {exc}",
                )
            # What the action changed (headers, URL, vars, results) is recomputed when next read.
            if dirties:
                st = scratch.get(SCRATCH_KEY)
                if st is not None:
                    st.dirty |= dirties
            if reply is not None:
                return reply
    return None


class CompiledPolicy:
    """A policy ready to run; immutable and shared by every exchange of its endpoint."""

    __slots__ = (
        "_request",
        "_response",
        "_tcp",
        "empty",
        "has_request_phase",
        "has_response_phase",
        "has_tcp_phase",
        "needs_request_body",
        "rules",
        "tls",
    )

    def __init__(self, rules: Mapping[str, Sequence[CompiledRule]], tls: Action | None = None) -> None:
        self.rules: dict[str, tuple[CompiledRule, ...]] = {p: tuple(rules.get(p, ())) for p in PHASES}
        # The ``terminate-tls`` action, if any: the edge applies it at the handshake, not per connection.
        self.tls = tls
        self._tcp = _loop_rules(self.rules["on_tcp_connect"])
        self._request = _loop_rules(self.rules["on_http_request"])
        self._response = _loop_rules(self.rules["on_http_response"])
        self.has_tcp_phase = bool(self._tcp)
        self.has_request_phase = bool(self._request)
        self.has_response_phase = bool(self._response)
        self.empty = not (self._tcp or self._request or self._response)
        self.needs_request_body = any(a.needs_body for r in self.rules["on_http_request"] for a in r.actions)

    def on_tcp_connect(self, ex: Exchange) -> Reply | None:
        """Run ``on_tcp_connect``; a Reply means close the connection (deny)."""
        return _run(self._tcp, ex) if self._tcp else None

    def on_http_request(self, ex: Exchange) -> Reply | None:
        """Run ``on_http_request``; a Reply (also stored in ``ex.reply``) answers instead of the upstream."""
        if not self._request:
            return None
        reply = ex.reply = _run(self._request, ex)
        return reply

    def on_http_response(self, ex: Exchange) -> Reply | None:
        """Run ``on_http_response`` on ``ex.res``; a Reply replaces the response."""
        return _run(self._response, ex) if self._response else None

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
