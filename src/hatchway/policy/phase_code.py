"""The Traffic Policy phase compiler: one phase's rules become one generated Python function.

Role: ``compile_phase`` writes the run loop of a phase out as straight-line Python, one ``if`` per rule, and
compiles it once when the policy loads. The commonest conditions (``cel.Inline``: the request method, the
decoded path and its string tests, a header's presence, and ``&&``/``||``/``!`` of those) are written
inline against locals read once per phase, so a rule that does not match costs a comparison rather than
a call and a pass of a generic loop (about 0.4 µs a rule before, see ``bench/policy_micro.py``). Other
conditions are called as the closures the CEL layer built; conditions that read only the method and URL
but cannot be inlined are still answered from the per-phase URL memo (``UrlMemo``).
The semantics are the engine's (``engine.py`` documents them): rules in order; all of a rule's
conditions must hold; its actions run in order; a ``Reply`` ends the phase; an ``EvaluationError`` from an
action answers 500 ``ERR_NGROK_3900``; after an action the variables it may have changed (its
``dirties``) are marked for recomputation, and the inline locals are read again if it may have changed
the URL.
``static_request.py`` writes a second function for the commonest static request phases, from the same
forms (``Source``, ``inline_of``).
Must not: put text from the policy into the generated source. Every constant, closure and action is
handed to the function in its namespace under a generated name (``k0``, ``k1``...), so a policy can never
inject code; the source is built from this file's fixed fragments only. No I/O and no clocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote

from hatchway.policy.cel import EvaluationError, Inline
from hatchway.policy.document import CompiledRule
from hatchway.policy.model import Exchange, HttpRequest, Reply
from hatchway.policy.variables import ALL_DIRTY, SCRATCH_KEY, URL_DERIVED

INTERPOLATION_ERROR = "ERR_NGROK_3900"

PhaseRun = Callable[[Exchange], Reply | None]
_Truth = Callable[[Exchange], bool]

# Variables that depend on the request's method and URL alone (scheme, host, port, path, query). Conditions
# reading nothing else answer the same for the same URL, so the phase answers them all from one memo entry.
URL_VARS = frozenset({"req.method", "req.url", "req.url.path", "req.url.raw_path", "req.url.query"})
MEMO_SIZE = 1024


class UrlMemo:
    """(method, scheme, host, port, path, query) -> a bit mask of which memoized conditions hold."""

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
            if len(self.masks) >= MEMO_SIZE:
                self.masks.clear()
            self.masks[key] = found
        return found


def evaluation_failed(exc: EvaluationError) -> Reply:
    return Reply(
        500,
        error_code=INTERPOLATION_ERROR,
        message=f"Traffic Policy could not evaluate an expression: {exc}",
    )


def _all(truths: tuple[_Truth, ...]) -> _Truth:
    return lambda ex: all(truth(ex) for truth in truths)


def _condition_of(rule: CompiledRule) -> _Truth | None:
    """The rule's conditions as one closure (None: the rule always runs)."""
    truths = tuple(c.truth for c in rule.conditions)
    if not truths:
        return None
    if len(truths) == 1:
        return truths[0]
    return _all(truths)


def inline_of(rule: CompiledRule) -> Inline | None:
    forms = [c.inline for c in rule.conditions]
    if not forms:
        return None
    joined = forms[0]
    for form in forms[1:]:
        joined = ("and", joined, form)
    return joined


def _calls(form: Inline) -> bool:
    """Whether ``form`` calls a closure that is not a cheap fallback (those the memo can save)."""
    kind = form[0]
    if kind == "call":
        return True
    if kind in ("and", "or"):
        return _calls(form[1]) or _calls(form[2])
    if kind == "not":
        return _calls(form[1])
    return False


class Source:
    """A generated function's lines and namespace, and ``expr``: an ``Inline`` form as a Python expression
    on the exchange ``ex`` (``static_request.WireSource`` writes them on the listener's request)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ns: dict[str, Any] = {
            "EvaluationError": EvaluationError,
            "_failed": evaluation_failed,
            "_unquote": unquote,
            "_HttpRequest": HttpRequest,
            "_KEY": SCRATCH_KEY,
        }
        self.reads: set[str] = set()  # the locals the inline conditions read: r, m, p, pa

    def const(self, value: Any) -> str:
        name = f"k{len(self.ns)}"
        self.ns[name] = value
        return name

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def expr(self, form: Inline) -> str:
        kind = form[0]
        if kind == "call":
            return f"{self.const(form[1])}(ex)"
        if kind == "and" or kind == "or":
            return f"({self.expr(form[1])} {kind} {self.expr(form[2])})"
        if kind == "not":
            return f"(not {self.expr(form[1])})"
        if kind == "method":
            self.reads.add("m")
            return f"(m {'!=' if form[2] else '=='} {self.const(form[1])})"
        if kind == "path_eq":
            self.reads.add("p")
            return f"(p {'!=' if form[2] else '=='} {self.const(form[1])})"
        if kind == "path_test":
            self.reads.add("p")
            arg = self.const(form[2])
            if form[1] == "contains":
                return f"({arg} in p)"
            return f"p.{'startswith' if form[1] == 'startsWith' else 'endswith'}({arg})"
        if kind == "path_search":
            self.reads.add("p")
            return f"({self.const(form[1])}(p) is not None)"
        if kind == "path_guard":
            # Where Python's re and RE2 may differ on the path (a newline, non-ASCII), CEL decides the
            # whole condition (cel._path_guarded).
            self.reads.update(("p", "pa"))
            return f"({self.expr(form[1])} if pa else {self.const(form[2])}(ex))"
        if kind == "header":
            # The edge's request answers itself (headers maybe not decoded yet); else the closure reads
            # the cached header map (cel._has_req_header does both).
            self.reads.add("r")
            name, closure = self.const(form[1]), self.const(form[2])
            return f"(r.has_header({name}) if type(r) is not _HttpRequest else {closure}(ex))"
        raise ValueError(f"unknown inline form {kind!r}")

    def read_locals(self, depth: int) -> None:
        """(Re)read the request's locals the inline conditions use."""
        reads = self.reads
        if not reads:
            return
        self.emit(depth, "r = ex.req")
        if "m" in reads:
            self.emit(depth, "m = r.method")
        if "p" in reads:
            # req.url.path as variables.LEAVES computes it; unquote() only when there is something to undo.
            self.emit(depth, 'p = r.path or "/"')
            self.emit(depth, 'if "%" in p:')
            self.emit(depth + 1, "p = _unquote(p)")
        if "pa" in reads:
            self.emit(depth, 'pa = "\\n" not in p and p.isascii()')


def compile_phase(rules: Sequence[CompiledRule]) -> tuple[PhaseRun | None, UrlMemo | None]:
    """The phase as one function (None without rules) and its URL memo (None when it has none)."""
    if not rules:
        return None, None
    src = Source()
    memo_conditions: list[_Truth] = []
    # Per rule: its test as source, the bit that answers it in the memo, or None (no condition).
    tests: list[str | int | None] = []
    for rule in rules:
        form = inline_of(rule)
        if form is not None and _calls(form) and all(c.reads_only(URL_VARS) for c in rule.conditions):
            condition = _condition_of(rule)
            assert condition is not None
            tests.append(len(memo_conditions))
            memo_conditions.append(condition)
        else:
            tests.append(None if form is None else src.expr(form))
    memo = None
    if len(memo_conditions) >= 2:
        memo = UrlMemo(tuple(memo_conditions))
        src.ns["_mask"] = memo.mask
    else:  # one memoized rule gains nothing: a dict lookup instead of one evaluation
        tests = [src.expr(("call", memo_conditions[t])) if type(t) is int else t for t in tests]
    src.emit(1, "scratch = ex.scratch")
    # Variables are built on first read; if an earlier phase read some, the edge may have changed the
    # exchange since (the response arrived, the request was forwarded): compare before trusting them.
    src.emit(1, "st = scratch.get(_KEY)")
    src.emit(1, "if st is not None:")
    src.emit(2, f"st.dirty = {ALL_DIRTY}")
    if memo is not None:
        src.emit(1, "mask = -1  # the memo's answer: looked up on first need, again after a URL change")
    src.read_locals(1)
    for rule, test in zip(rules, tests, strict=True):
        depth = 1
        if type(test) is int:
            src.emit(1, f"if ((mask if mask >= 0 else (mask := _mask(ex))) >> {test}) & 1:")
            depth = 2
        elif test is not None:
            src.emit(1, f"if {test}:")
            depth = 2
        for action in rule.actions:
            dirties = getattr(action, "dirties", ALL_DIRTY)
            src.emit(depth, "try:")
            src.emit(depth + 1, f"reply = {src.const(action.run)}(ex)")
            src.emit(depth, "except EvaluationError as exc:")
            src.emit(depth + 1, "return _failed(exc)")
            if dirties:
                # What the action changed (headers, URL, vars, results) is recomputed when next read.
                src.emit(depth, "st = scratch.get(_KEY)")
                src.emit(depth, "if st is not None:")
                src.emit(depth + 1, f"st.dirty |= {dirties}")
                if dirties & URL_DERIVED:
                    if memo is not None:
                        src.emit(depth, "mask = -1")
                    src.read_locals(depth)
            src.emit(depth, "if reply is not None:")
            src.emit(depth + 1, "return reply")
    src.emit(1, "return None")
    text = "\n".join(["def run(ex):", *src.lines, ""])
    exec(compile(text, "<traffic policy phase>", "exec"), src.ns)  # our fragments only: see the docstring
    run: PhaseRun = src.ns["run"]
    return run, memo
