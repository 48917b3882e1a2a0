"""A static request phase decided from the listener's own request, with no exchange built.

Role: for the commonest policies (conditions on the method, the decoded path and header presence;
actions deny, custom-response and add-headers with fixed values) ``compile_static_request`` writes the
request phase a second time, as a function of ``proxy.Request`` exactly as the HTTP/1.1 listener parsed
it: method and target bytes and lower-cased header names. It returns the header lines the phase appends
(encoded as ``edge/policy_run`` encodes them), None for no change, or FULL when the phase must run in full
(a matched answer, or a request it does not cover). The edge calls it after the outcome memo and before
building a ``PolicyRun`` (``policy_run.decided``). ``tests/unit/edge/test_static_request.py`` checks that
wherever it decides, the head is what the full run gives.
Must not: put text from the policy into the generated source (as ``phase_code``: constants travel in the
namespace), decide a request whose answer it cannot give exactly, or do I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hatchway.policy.actions.add_headers import AppendRequestHeaders
from hatchway.policy.cel import Inline
from hatchway.policy.document import CompiledRule
from hatchway.policy.phase_code import Source, inline_of


class NotCovered(Exception):
    """A form the static request function does not cover: the phase gets none."""


class WireSource(Source):
    """``Source`` writing forms on the listener's request: ``p`` and ``m`` from its bytes, header names in
    ``lower`` (its lower-cased raw names) and ``low`` (the names appended so far). Only inline forms."""

    def __init__(self) -> None:
        super().__init__()
        # The lower-cased names appended so far when they are known as the function is written, None
        # when only the function's ``low`` list knows them (an append under a condition came first).
        self.appended: frozenset[bytes] | None = None

    def expr(self, form: Inline) -> str:
        kind = form[0]
        if kind == "call":
            raise NotCovered
        if kind == "path_guard":
            # A path where re and RE2 may differ never gets here: the function's prologue says FULL.
            self.reads.update(("p", "pa"))
            return self.expr(form[1])
        if kind == "header":
            # An ASCII name is a lower-cased decoded name exactly when its bytes are a bytes.lower()'d raw
            # name (latin-1 letters above ASCII never lower-case into ASCII); others are not covered.
            if not form[1].isascii():
                raise NotCovered
            lname = form[1].encode()
            if self.appended is None:
                name = self.const(lname)
                return f"({name} in lower or {name} in low)"
            return "True" if lname in self.appended else f"({self.const(lname)} in lower)"
        return super().expr(form)


class _Full:
    __slots__ = ()

    def __repr__(self) -> str:
        return "FULL"


FULL: Any = _Full()  # "run the phase in full": an answer matched, or a request this code does not cover
# The listener's Request -> a ``policy_run.Outcome`` (headers appended, their lower-cased names), None
# (nothing appended) or FULL.
StaticRun = Callable[[Any], Any]


def _encode(text: str) -> bytes:
    return text.encode("latin-1", "replace")  # as policy_run writes header text back


def compile_static_request(rules: Sequence[CompiledRule]) -> StaticRun | None:
    """The request phase ``rules`` as a function of the listener's ``Request`` (``proxy.Request``), or
    None when some condition or action is not of the kinds it covers. It answers exactly what running
    the phase gives to the request head: the headers appended (encoded as the edge's glue encodes
    them), None for no change, or FULL where it cannot say (a matched answer, an absolute-form target,
    a bare "?", a path where re and RE2 may differ)."""
    # "static" actions other than the appending one always answer (engine._static_request).
    if not all(
        isinstance(a, AppendRequestHeaders) or getattr(a, "static", False) for r in rules for a in r.actions
    ):
        return None
    src = WireSource()
    # While every append so far came from a rule without a condition, what has been appended is known
    # here: header tests read it as constants and the function returns it as one. The first append
    # under a condition starts lists in the function (``dynamic``).
    known: list[tuple[bytes, bytes]] = []
    known_low: list[bytes] = []
    dynamic = False
    answered = False  # a rule without a condition answers: the rules after it never run
    try:
        for rule in rules:
            src.appended = None if dynamic else frozenset(known_low)
            form = inline_of(rule)
            test = None if form is None else src.expr(form)
            appends = [a for a in rule.actions if isinstance(a, AppendRequestHeaders)]
            if test is not None and appends and not dynamic:
                src.emit(1, f"new = list({src.const(tuple(known))})")
                src.emit(1, f"low = list({src.const(tuple(known_low))})  # names appended so far")
                dynamic = True
            depth = 1
            if test is not None:
                src.emit(1, f"if {test}:")
                depth = 2
            for action in rule.actions:
                if not isinstance(action, AppendRequestHeaders):
                    src.emit(depth, "return FULL  # an answer: the full run makes it")
                    answered = test is None
                    break
                names = tuple(_encode(k) for k, _ in action.fixed)
                pairs = tuple((n, _encode(v)) for n, (_, v) in zip(names, action.fixed, strict=True))
                lows = tuple(n.lower() for n in names)
                if dynamic:
                    src.emit(depth, f"new.extend({src.const(pairs)})")
                    src.emit(depth, f"low.extend({src.const(lows)})")
                else:
                    known.extend(pairs)
                    known_low.extend(lows)
            if answered:
                break
    except NotCovered:
        return None
    if dynamic:
        src.emit(1, "return (tuple(new), tuple(low)) if new else None")
    elif not answered:
        src.emit(1, f"return {src.const((tuple(known), tuple(known_low)) if known else None)}")
    body, src.lines = src.lines, []
    src.ns["FULL"] = FULL
    src.emit(1, "target = req.target")
    src.emit(1, "lower = req.lower")
    src.emit(1, 'if target[:1] != b"/" or len(lower) != len(req.headers):')
    src.emit(2, "return FULL")
    src.emit(1, 'path_b, sep, query_b = target.partition(b"?")')
    src.emit(1, "if sep and not query_b:")
    src.emit(2, "return FULL  # running the phase writes the target back without its bare '?'")
    if "m" in src.reads:
        src.emit(1, 'm = req.method.decode("latin-1")')
    if "p" in src.reads:
        src.emit(1, 'p = path_b.decode("latin-1") or "/"')
        src.emit(1, 'if "%" in p:')
        src.emit(2, "p = _unquote(p)")
    if "pa" in src.reads:
        src.emit(1, 'if "\\n" in p or not p.isascii():')
        src.emit(2, "return FULL")
    text = "\n".join(["def run(req):", *src.lines, *body, ""])
    exec(compile(text, "<traffic policy static request phase>", "exec"), src.ns)  # our fragments only
    run: StaticRun = src.ns["run"]
    return run
