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
from hatchway.policy.variables import ALL_DIRTY, SCRATCH_KEY, URL_DERIVED

INTERPOLATION_ERROR = "ERR_NGROK_3900"

# A rule as the run loop wants it: one condition (None: always; the conditions' ``truth`` joined by "and"
# when there are several), its actions' ``run`` bound once here rather than looked up per request, and
# the kinds of variables its actions may change (``variables.ALL_DIRTY`` unless each action declares less
# in a ``dirties`` attribute, which add-headers does when it keeps the variables current itself), and the
# bit that answers its condition in the phase's URL memo (-1: the condition is evaluated; see ``_UrlMemo``).
_Truth = Callable[[Exchange], bool]
_Rule = tuple[_Truth | None, tuple[Callable[[Exchange], Reply | None], ...], int, int]


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


def _loop_rules(rules: Sequence[CompiledRule]) -> tuple[tuple[_Rule, ...], _UrlMemo | None]:
    """The run loop's entries, and the memo answering the conditions that read only the request's method
    and URL (their entries carry a bit number instead of a condition)."""
    out: list[_Rule] = []
    url_conditions: list[_Truth] = []
    for r in rules:
        condition = _condition(r)
        bit = -1
        if condition is not None and all(c.reads_only(_URL_VARS) for c in r.conditions):
            bit = len(url_conditions)
            url_conditions.append(condition)
        out.append((condition, tuple(a.run for a in r.actions), _dirties(r), bit))
    # One rule gains nothing: a dict lookup instead of one evaluation.
    if len(url_conditions) < 2:
        return tuple((c, runs, d, -1) for c, runs, d, _ in out), None
    return tuple(out), _UrlMemo(tuple(url_conditions))


# Variables that depend on the request's method and URL alone (scheme, host, port, path, query). Conditions
# reading nothing else answer the same for the same URL, so the phase answers them all from one memo entry:
# one dict lookup per request instead of one evaluation per rule. Most rules of real policies are of this
# kind (path routing, method checks, blocked paths), and most requests repeat a URL.
_URL_VARS = frozenset({"req.method", "req.url", "req.url.path", "req.url.raw_path", "req.url.query"})
_MEMO_SIZE = 1024


class _UrlMemo:
    """(method, scheme, host, port, path, query) -> a bit mask of which URL-only conditions hold."""

    __slots__ = ("conditions", "masks")

    def __init__(self, conditions: tuple[_Truth, ...]) -> None:
        self.conditions = conditions
        self.masks: dict[tuple[str, str, str, int, str, str], int] = {}

    def mask(self, ex: Exchange) -> int:
        r = ex.req
        key = (r.method, r.scheme, r.host, r.port, r.path, r.query)
        found = self.masks.get(key)
        if found is None:
            found = 0
            for bit, condition in enumerate(self.conditions):
                if condition(ex):
                    found |= 1 << bit
            if len(self.masks) >= _MEMO_SIZE:
                self.masks.clear()
            self.masks[key] = found
        return found


def _run(rules: Sequence[_Rule], ex: Exchange, memo: _UrlMemo | None) -> Reply | None:
    scratch = ex.scratch
    # Variables are built on first read; if an earlier phase read some, the edge may have changed the
    # exchange since (the response arrived, the request was forwarded): compare before trusting them.
    st = scratch.get(SCRATCH_KEY)
    if st is not None:
        st.dirty = ALL_DIRTY
    mask = -1  # the URL memo's answer for this exchange: looked up on first need, again after a URL change
    for condition, runs, dirties, bit in rules:
        if bit >= 0:
            if mask < 0:
                assert memo is not None
                mask = memo.mask(ex)
            if not (mask >> bit) & 1:
                continue
        elif condition is not None and not condition(ex):
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
                if dirties & URL_DERIVED:
                    mask = -1
            if reply is not None:
                return reply
    return None


# What a "static" request-phase condition may read: the answer is then the same for the same request
# line, Host and headers.
_STATIC_VARS = _URL_VARS | {"req.headers"}


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
        "static_request",
        "tls",
    )

    def __init__(self, rules: Mapping[str, Sequence[CompiledRule]], tls: Action | None = None) -> None:
        self.rules: dict[str, tuple[CompiledRule, ...]] = {p: tuple(rules.get(p, ())) for p in PHASES}
        # The ``terminate-tls`` action, if any: the edge applies it at the handshake, not per connection.
        self.tls = tls
        self._tcp, self._tcp_memo = _loop_rules(self.rules["on_tcp_connect"])
        self._request, self._request_memo = _loop_rules(self.rules["on_http_request"])
        self._response, self._response_memo = _loop_rules(self.rules["on_http_response"])
        self.has_tcp_phase = bool(self._tcp)
        self.has_request_phase = bool(self._request)
        self.has_response_phase = bool(self._response)
        self.empty = not (self._tcp or self._request or self._response)
        self.needs_request_body = any(a.needs_body for r in self.rules["on_http_request"] for a in r.actions)
        self.static_request = (
            not self._tcp and not self._response and _static_request(self.rules["on_http_request"])
        )

    def on_tcp_connect(self, ex: Exchange) -> Reply | None:
        """Run ``on_tcp_connect``; a Reply means close the connection (deny)."""
        return _run(self._tcp, ex, self._tcp_memo) if self._tcp else None

    def on_http_request(self, ex: Exchange) -> Reply | None:
        """Run ``on_http_request``; a Reply (also stored in ``ex.reply``) answers instead of the upstream."""
        if not self._request:
            return None
        reply = ex.reply = _run(self._request, ex, self._request_memo)
        return reply

    def on_http_response(self, ex: Exchange) -> Reply | None:
        """Run ``on_http_response`` on ``ex.res``; a Reply replaces the response."""
        return _run(self._response, ex, self._response_memo) if self._response else None

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
