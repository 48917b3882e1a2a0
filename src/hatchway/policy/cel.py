"""CEL expressions for Traffic Policy: compiled and checked once when a policy loads, evaluated per exchange.

Role: wrap ``cel-expr-python`` (the C++ CEL runtime). ``compile_expression`` refuses what can be refused
statically: syntax and type errors, unknown top-level names (``reqq.method``, by CEL's checker) and unknown
fields of the documented variable groups (``req.methd``, ``conn.clientip``, by a scan of the dotted names
against ``variables.SCHEMA``, since CEL only sees maps). It also registers ngrok's own functions
(``inCidrRange``, ``getReqHeader``... see ``_functions``).

Evaluation has two paths that give the same answers:

- a fast path for the common shapes (``req.url.path.startsWith('/x')``, ``req.method == 'GET'``,
  ``'x' in req.headers``, ``hasReqHeader('x')``, ``inCidrRange(conn.client_ip, '10.0.0.0/8')``, joined by
  ``&&``, ``||``, ``!``), compiled to Python closures that read the exchange directly. A C++ CEL call costs
  about 1.5 µs however small the expression; the closures cost a fraction of that. Whenever a closure meets
  a value it is not sure about (a list compared with ``==``, an int compared with a double...) it answers
  ``DEFER`` and CEL decides. The commonest rule shapes (a string method or comparison on a string leaf such
  as ``req.url.path``, a header's presence, and ``&&``/``||``/``!`` of those) are specialised further into
  closures that can only answer True or False, which then are the rule's ``truth`` with no wrapper: a rule
  costs one Python call (see ``fast_condition``).
- CEL itself, with one activation per exchange carrying what the phase's CEL expressions read, rebuilt
  only when something it carries changed (converting values into CEL is the costly part).

Must not: import clocks or I/O, keep per-request state outside ``ex.scratch`` (the one exception is the
exchange being evaluated, which ngrok's ``getReqHeader``-style functions read; it is set for the duration
of one synchronous ``eval``), or let a failing expression raise into the request path: conditions that fail
are false, and values that fail raise ``EvaluationError`` for the engine to turn into a 500.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Final, NamedTuple
from urllib.parse import quote, unquote

from cel_expr_python import cel as _cel
from cel_expr_python.ext import ext_bindings, ext_encoders, ext_math, ext_optional, ext_strings

from hatchway.policy import variables as v
from hatchway.policy.model import Exchange, HttpRequest


class CelCompileError(ValueError):
    """An expression was refused; ``str()`` is the reason (CEL's error text where CEL found it)."""


class EvaluationError(Exception):
    """A value expression (``${...}`` or an action's expression) failed for this exchange."""


ROOTS: Final = frozenset(v.SCHEMA)
RESPONSE_PHASE: Final = "on_http_response"
TCP_PHASE: Final = "on_tcp_connect"


class _Defer:
    """A fast-path answer meaning "ask CEL": the closure met a value whose CEL semantics it does not copy."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFER"


DEFER: Final = _Defer()
MISSING: Final = v.MISSING

# ---- the exchange being evaluated, for ngrok's context functions (getReqHeader...) --------------------


class _Current:
    __slots__ = ("ex",)

    def __init__(self) -> None:
        self.ex: Exchange | None = None


_CURRENT: Final = _Current()


def _state() -> v.VarState:
    ex = _CURRENT.ex
    if ex is None:
        raise RuntimeError("request functions are only available while a policy runs")
    return v.state(ex)


# ---- ngrok's functions -------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr.strip(), strict=False)


@lru_cache(maxsize=4096)
def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(ip.strip())
    # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; match them against IPv4 ranges.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def in_cidr_range(ip: str, cidr: str) -> bool:
    """``inCidrRange``: raises ValueError for a malformed address or range (a CEL error)."""
    addr, net = _address(ip), _network(cidr)
    return addr.version == net.version and addr in net


def in_cidr_ranges(ip: str, cidrs: list[str]) -> bool:
    return any(in_cidr_range(ip, c) for c in cidrs)


def _query_params() -> dict[str, list[str]]:
    params: dict[str, list[str]] = _state().get("req.url.query_params")
    return params


def _cookies(key: str, name: str) -> list[Any]:
    cookies = _state().get(key)
    return [] if cookies is v.MISSING else list(cookies.get(name, []))


def _decode_b64(text: str) -> str:
    return base64.b64decode(text, validate=True).decode("utf-8", "replace")


_S = _cel.Type.STRING
_B = _cel.Type.BOOL
_D = _cel.Type.DYN
_LS = _cel.Type.List(_S)
_LD = _cel.Type.List(_D)


def _fn(name: str, ret: Any, params: list[Any], impl: Callable[..., Any], member: bool = False) -> Any:
    overload_id = f"hatchway_{name.replace('.', '_')}_{'_'.join(p.name().lower() for p in params)}"
    return _cel.FunctionDecl(name, [_cel.Overload(overload_id, ret, params, is_member=member, impl=impl)])


def _functions() -> list[Any]:
    st = _state
    return [
        _fn("inCidrRange", _B, [_S, _S], in_cidr_range),
        _fn("inCidrRanges", _B, [_S, _LS], in_cidr_ranges),
        _fn("getReqHeader", _LS, [_S], lambda n: list(st().header_values("req", n))),
        _fn("hasReqHeader", _B, [_S], lambda n: bool(st().header_values("req", n))),
        _fn("getResHeader", _LS, [_S], lambda n: list(st().header_values("res", n))),
        _fn("hasResHeader", _B, [_S], lambda n: bool(st().header_values("res", n))),
        _fn("getQueryParam", _LS, [_S], lambda n: list(_query_params().get(n, []))),
        _fn("hasQueryParam", _B, [_S], lambda n: n in _query_params()),
        _fn("getReqCookie", _LD, [_S], lambda n: _cookies("req.cookies", n)),
        _fn("hasReqCookie", _B, [_S], lambda n: bool(_cookies("req.cookies", n))),
        _fn("getResCookie", _LD, [_S], lambda n: _cookies("res.cookies", n)),
        _fn("hasResCookie", _B, [_S], lambda n: bool(_cookies("res.cookies", n))),
        _fn("basic_auth.encode", _S, [_S, _S], lambda u, p: base64.b64encode(f"{u}:{p}".encode()).decode()),
        _fn("json.encode", _S, [_D], lambda x: json.dumps(x, separators=(",", ":"))),
        _fn("json.decode", _D, [_S], json.loads),
        _fn("decodeJson", _D, [_S], json.loads, member=True),
        _fn("encodeBase64", _S, [_S], lambda s: base64.b64encode(s.encode()).decode(), member=True),
        _fn("decodeBase64", _S, [_S], _decode_b64, member=True),
        _fn("url.escape", _S, [_S], lambda s: quote(s, safe="")),
        _fn("url.unescape", _S, [_S], unquote),
    ]


# Functions that read the request/response, and the phases where that exists.
_REQ_FUNCS: Final = frozenset(
    {"getReqHeader", "hasReqHeader", "getQueryParam", "hasQueryParam", "getReqCookie", "hasReqCookie"}
)
_RES_FUNCS: Final = frozenset({"getResHeader", "hasResHeader", "getResCookie", "hasResCookie"})

_ENV: Any = None


def env() -> Any:
    """The shared CEL environment (built on first use: it costs a few milliseconds)."""
    global _ENV
    if _ENV is None:
        variables = {root: _cel.Type.Map(_S, _D) for root in sorted(ROOTS)}
        extensions = [
            ext_strings.ExtStrings(),
            ext_encoders.ExtEncoders(),
            ext_math.ExtMath(),
            ext_bindings.ExtBindings(),
            ext_optional.ExtOptional(),
            _cel.CelExtension("hatchway", _functions()),
        ]
        _ENV = _cel.NewEnv(variables=variables, extensions=extensions)
    return _ENV


# ---- lexing ------------------------------------------------------------------------------------------


class Tok(NamedTuple):
    kind: str  # "id" | "str" | "num" | "op"
    text: str
    start: int
    end: int
    value: Any = None  # str: the literal's value when it has no escapes; num: the int for plain decimals


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*)
    |(?P<raw>[rR][bB]?(?:'''.*?'''|\"\"\".*?\"\"\"|'[^'\n]*'|"[^"\n]*"))
    |(?P<str>[bB]?(?:'''(?:\\.|.)*?'''|\"\"\"(?:\\.|.)*?\"\"\"|'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"))
    |(?P<num>0[xX][0-9a-fA-F]+[uU]?|\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+[uU]?)
    |(?P<id>[A-Za-z_][A-Za-z0-9_]*|`[^`]*`)
    |(?P<op>==|!=|<=|>=|&&|\|\||[-+*/%<>!?:.,()\[\]{}])
    """,
    re.VERBOSE | re.DOTALL,
)


def _literal(text: str, raw: bool) -> str | None:
    """The value of a string literal token, or None when it has escapes or is bytes (left to CEL)."""
    body = text.lstrip("rRbB")
    if "b" in text[: len(text) - len(body)].lower():
        return None
    q = 3 if body[:3] in ("'''", '"""') else 1
    inner = body[q:-q]
    if not raw and "\\" in inner:
        return None
    return inner


def lex(source: str) -> list[Tok] | None:
    """Tokens of ``source``, or None when it holds something this lexer does not know (CEL will say)."""
    toks: list[Tok] = []
    pos, n = 0, len(source)
    while pos < n:
        m = _TOKEN.match(source, pos)
        if m is None:
            return None
        kind = m.lastgroup or ""
        text = m.group()
        if kind == "raw":
            toks.append(Tok("str", text, pos, m.end(), _literal(text, True)))
        elif kind == "str":
            toks.append(Tok("str", text, pos, m.end(), _literal(text, False)))
        elif kind == "num":
            toks.append(Tok("num", text, pos, m.end(), int(text) if text.isdigit() else None))
        elif kind != "ws":
            toks.append(Tok(kind, text, pos, m.end()))
        pos = m.end()
    return toks


# ---- the static scan: known variables, phase rules, bare struct rewrites -----------------------------


class _Scan(NamedTuple):
    text: str  # the source with bare ``req.url`` & co rewritten
    needs: frozenset[str]  # "req.url", "vars.*": what the activation must carry
    problems: list[str]
    paths: frozenset[str]  # the variables read, as far as the dots go: "req.url.path", "req.headers"


def _is_value_end(tok: Tok) -> bool:
    return tok.kind in ("id", "str", "num") or tok.text in (")", "]", "}")


def _unknown(path: list[str], name: str, node: Any) -> str:
    dotted = ".".join([*path, name])
    for i in range(2, len(path) + 2):
        if ".".join([*path, name][:i]) in v.NOT_AVAILABLE:
            return f"{dotted} is not available in Hatchway"
    if node == v.LEAF:
        return f"unknown variable {dotted}: {'.'.join(path)} has no fields"
    return f"unknown variable {dotted}; {'.'.join(path)} has: {', '.join(sorted(node))}"


def scan(source: str, toks: list[Tok], phase: str | None) -> _Scan:
    inserts: list[tuple[int, str]] = []
    needs: set[str] = set()
    paths: set[str] = set()
    problems: list[str] = []
    n = len(toks)
    for i, tok in enumerate(toks):
        if tok.kind != "id":
            continue
        if phase is not None and i + 1 < n and toks[i + 1].text == "(":
            if tok.text in _RES_FUNCS and phase != RESPONSE_PHASE:
                problems.append(f"{tok.text}() is only available in {RESPONSE_PHASE}")
            elif tok.text in _REQ_FUNCS and phase == TCP_PHASE:
                problems.append(f"{tok.text}() is not available in {TCP_PHASE}")
        if tok.text not in ROOTS or (i + 1 < n and toks[i + 1].text == "("):
            continue
        if i > 0 and toks[i - 1].text == "." and i > 1 and _is_value_end(toks[i - 2]):
            continue  # a field named like a variable (x.req), not the variable
        root = tok.text
        if phase is not None and root == "res" and phase != RESPONSE_PHASE:
            problems.append(f"res.* is only available in {RESPONSE_PHASE}")
        elif phase == TCP_PHASE and root == "req":
            problems.append(f"req.* is not available in {TCP_PHASE}")
        node: Any = v.SCHEMA[root]
        path = [root]
        j = i + 1
        while j + 1 < n and toks[j].text == "." and toks[j + 1].kind == "id":
            name = toks[j + 1].text.strip("`")
            if j + 2 < n and toks[j + 2].text == "(":  # a method called on what we have so far
                if (dual := v.DUAL.get(".".join(path))) is not None:
                    inserts.append((toks[j].start, f".{dual}"))
                break
            if node == v.ANY:
                break
            if node == v.LEAF or name not in node:
                problems.append(_unknown(path, name, node))
                break
            node = node[name]
            path.append(name)
            j += 2
        else:
            # The chain ends: a bare struct with a string meaning gets its string field.
            dual = v.DUAL.get(".".join(path))
            if dual is not None and not (j < n and toks[j].text == "["):
                inserts.append((toks[j - 1].end, f".{dual}"))
        paths.add(".".join(path))
        if root in v.WHOLE or len(path) == 1:
            needs.add(f"{root}.*")
        else:
            needs.add(f"{root}.{path[1]}")
    text = source
    for at, piece in sorted(inserts, reverse=True):
        text = text[:at] + piece + text[at:]
    return _Scan(text, frozenset(needs), list(dict.fromkeys(problems)), frozenset(paths))


def _check_cidr_literals(toks: list[Tok]) -> list[str]:
    """Malformed literal ranges in ``inCidrRange(ip, '...')`` / ``inCidrRanges(ip, [...])``."""
    problems = []
    for i, tok in enumerate(toks):
        if tok.text not in ("inCidrRange", "inCidrRanges") or i + 1 >= len(toks) or toks[i + 1].text != "(":
            continue
        depth, after_comma = 0, False
        for t in toks[i + 1 :]:
            if t.text in ("(", "[", "{"):
                depth += 1
            elif t.text in (")", "]", "}"):
                depth -= 1
                if depth == 0:
                    break
            elif t.text == "," and depth == 1:
                after_comma = True
            elif after_comma and t.kind == "str" and t.value is not None:
                try:
                    _network(t.value)
                except ValueError:
                    problems.append(f"{t.value!r} is not a CIDR range")
    return problems


# ---- the fast path -----------------------------------------------------------------------------------
# Bool closures return True, False, None (a CEL error: the rule does not match) or DEFER.
# Value closures return a value or MISSING (a CEL error).

Bool = Callable[[Exchange], Any]
Value = Callable[[Exchange], Any]


class _NotFast(Exception):
    """The expression has a shape the fast path does not handle; CEL evaluates it."""


_SCALARS: Final = (str, int, bool, float)


def _eq(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if ta is tb and ta in _SCALARS:
        return a == b
    if ta in _SCALARS and tb in _SCALARS and not (ta in (int, float) and tb in (int, float)):
        return False  # CEL's heterogeneous equality: a string never equals an int
    return DEFER


def _index(value: Any, key: Any) -> Any:
    if type(value) is dict:
        return value.get(key, MISSING) if type(key) is str else MISSING
    if type(value) is list and type(key) is int:
        return value[key] if 0 <= key < len(value) else MISSING
    return MISSING


def _field_getter(key: str, rest: list[Any] | None = None) -> Value:
    """A cached variable (``req.headers``), then up to two keys into it, in one closure."""
    scratch_key = v.SCRATCH_KEY

    def field(ex: Exchange) -> Any:
        st = ex.scratch.get(scratch_key)
        return (st or v.state(ex)).get(key)

    if not rest:
        return field
    if len(rest) == 1:
        k1 = rest[0]

        def field1(ex: Exchange) -> Any:
            st = ex.scratch.get(scratch_key)
            return _index((st or v.state(ex)).get(key), k1)

        return field1
    if len(rest) == 2:
        k1, k2 = rest

        def field2(ex: Exchange) -> Any:
            st = ex.scratch.get(scratch_key)
            return _index(_index((st or v.state(ex)).get(key), k1), k2)

        return field2
    return _indexed(field, rest)


def _indexed(base: Value, rest: list[Any]) -> Value:
    if len(rest) == 1:
        only = rest[0]
        return lambda ex: _index(base(ex), only)

    def get(ex: Exchange) -> Any:
        value = base(ex)
        for key in rest:
            value = _index(value, key)
        return value

    return get


def _path_getter(root: str, segs: list[Any]) -> Value:
    if not segs:
        raise _NotFast
    base: Value
    rest = segs
    if root in v.WHOLE:
        base = v.WHOLE[root]
    else:
        first = f"{root}.{segs[0]}"
        second = f"{first}.{segs[1]}" if len(segs) > 1 else ""
        if second in v.LEAVES:
            base, rest = v.LEAVES[second], segs[2:]
        elif second in v.FIELDS:
            return _field_getter(second, segs[2:])
        elif first in v.LEAVES:
            base, rest = v.LEAVES[first], segs[1:]
        elif first in v.FIELDS:
            return _field_getter(first, segs[1:])
        else:
            raise _NotFast
    return _indexed(base, rest) if rest else base


def _and(a: Bool, b: Bool) -> Bool:
    def both(ex: Exchange) -> Any:
        x = a(ex)
        if x is False:
            return False
        y = b(ex)
        if y is False:
            return False
        if x is True and y is True:
            return True
        return DEFER if x is DEFER or y is DEFER else None

    return both


def _or(a: Bool, b: Bool) -> Bool:
    def either(ex: Exchange) -> Any:
        x = a(ex)
        if x is True:
            return True
        y = b(ex)
        if y is True:
            return True
        if x is False and y is False:
            return False
        return DEFER if x is DEFER or y is DEFER else None

    return either


def _not(a: Bool) -> Bool:
    def negate(ex: Exchange) -> Any:
        x = a(ex)
        return (not x) if type(x) is bool else x

    return negate


def _truth(val: Value) -> Bool:
    def truth(ex: Exchange) -> Any:
        x = val(ex)
        return x if type(x) is bool else None  # a non-bool where a bool is needed is a CEL error

    return truth


class _NoConst:
    __slots__ = ()


NO_CONST: Final = _NoConst()


def _eq_const(a: Value, const: Any, negate: bool) -> Bool:
    """``path == 'literal'``: the commonest condition, with the literal's type checked once."""
    kind = type(const)

    def equal_const(ex: Exchange) -> Any:
        x = a(ex)
        if type(x) is kind:
            return (x != const) if negate else (x == const)
        if x is MISSING:
            return None
        r = _eq(x, const)
        return (not r) if negate and r is not DEFER else r

    return equal_const


def _in_const_list(a: Value, items: list[str]) -> Bool:
    """``path in ['a', 'b']`` with string literals only."""
    members = frozenset(items)

    def member(ex: Exchange) -> Any:
        x = a(ex)
        if type(x) is str:
            return x in members
        if x is MISSING:
            return None
        return any(_eq(x, i) is True for i in items) or (DEFER if type(x) not in _SCALARS else False)

    return member


def _key_in(key: str, b: Value) -> Bool:
    """``'name' in path``: a key of a map (headers, query params) or an item of a list."""

    def has_key(ex: Exchange) -> Any:
        y = b(ex)
        if type(y) is dict:
            return key in y
        if y is MISSING:
            return None
        if type(y) is list:
            return key in y if all(type(i) is str for i in y) else DEFER
        return DEFER

    return has_key


def _compare(op: str, a: Value, b: Value, a_const: Any = NO_CONST, b_const: Any = NO_CONST) -> Bool:
    scalar_a, scalar_b = type(a_const) in _SCALARS, type(b_const) in _SCALARS
    if op in ("==", "!=") and (scalar_a or scalar_b):
        return _eq_const(a, b_const, op == "!=") if scalar_b else _eq_const(b, a_const, op == "!=")
    if op == "in" and type(a_const) is str:
        return _key_in(a_const, b)
    if op == "in" and type(b_const) is list and b_const and all(type(i) is str for i in b_const):
        return _in_const_list(a, b_const)
    if op in ("==", "!="):
        negate = op == "!="

        def equal(ex: Exchange) -> Any:
            x, y = a(ex), b(ex)
            if x is MISSING or y is MISSING:
                return None
            r = _eq(x, y)
            return (not r) if negate and r is not DEFER else r

        return equal
    if op == "in":

        def contains(ex: Exchange) -> Any:
            x, y = a(ex), b(ex)
            if x is MISSING or y is MISSING:
                return None
            if type(y) is list:
                found: Any = False
                for item in y:
                    r = _eq(x, item)
                    if r is True:
                        return True
                    if r is DEFER:
                        found = DEFER
                return found
            if type(y) is dict and type(x) is str:
                return x in y
            return DEFER

        return contains
    order: Callable[[Any, Any], bool] = {
        "<": lambda x, y: x < y,
        "<=": lambda x, y: x <= y,
        ">": lambda x, y: x > y,
        ">=": lambda x, y: x >= y,
    }[op]

    def ordered(ex: Exchange) -> Any:
        x, y = a(ex), b(ex)
        if x is MISSING or y is MISSING:
            return None
        tx = type(x)
        if tx is type(y) and tx in (int, str):
            return order(x, y)
        return DEFER

    return ordered


# Constructs whose meaning differs between RE2 (CEL) and Python's re, or that only one of them accepts.
_RE_UNSAFE = re.compile(r"\(\?[^:i]|\\[0-9pPQEzZCXuUN]|\[\[:|\{,")


def _regex(arg: str) -> Callable[[str], Any]:
    """The search function of ``arg`` where Python's re means what RE2 does; raises _NotFast otherwise."""
    if _RE_UNSAFE.search(arg):
        raise _NotFast  # RE2 and Python differ here: let CEL run it
    try:
        return re.compile(arg, re.ASCII).search
    except re.error:
        raise _NotFast from None


def _method(name: str, recv: Value, arg: str) -> Bool:
    if name == "matches":
        search = _regex(arg)

        def matches(ex: Exchange) -> Any:
            x = recv(ex)
            if x is MISSING:
                return None
            if type(x) is not str or "\n" in x or not x.isascii():
                return DEFER  # "$" before a final newline and Unicode case folding differ too
            return search(x) is not None

        return matches
    test: Callable[[str], bool] = {
        "startsWith": lambda s: s.startswith(arg),
        "endsWith": lambda s: s.endswith(arg),
        "contains": lambda s: arg in s,
    }[name]

    def method(ex: Exchange) -> Any:
        x = recv(ex)
        if x is MISSING:
            return None
        return test(x) if type(x) is str else DEFER

    return method


_REL_OPS: Final = frozenset({"==", "!=", "<", "<=", ">", ">=", "in"})
_STR_METHODS: Final = frozenset({"startsWith", "endsWith", "contains", "matches"})


@lru_cache(maxsize=4096)
def _address_int(ip: str) -> tuple[int, int]:
    addr = _address(ip)
    return addr.version, int(addr)


def _cidr_test(ip: Value, cidrs: list[str]) -> Bool:
    # (version, network address, mask) as ints: a masked compare instead of ipaddress's __contains__.
    nets = tuple((n.version, int(n.network_address), int(n.netmask)) for n in map(_network, cidrs))

    def inside(ex: Exchange) -> Any:
        x = ip(ex)
        if type(x) is not str:
            return None if x is MISSING else DEFER
        try:
            version, value = _address_int(x)
        except ValueError:
            return None
        return any(version == ver and value & mask == network for ver, network, mask in nets)

    return inside


def _header_fn(side: str, name: str) -> Value:
    return lambda ex: v.state(ex).header_values(side, name)


def _query_fn(name: str) -> Value:
    def values(ex: Exchange) -> Any:
        return v.state(ex).get("req.url.query_params").get(name, [])

    return values


# ---- specialised conditions ----------------------------------------------------------------------------
# The commonest rule conditions as one closure each that answers only True or False ("strict"), so that
# ``truth`` is the closure itself: no wrapper, no getter call, the string leaf read inline. They give the
# answers of the general closures above (tests/unit/policy/test_cel.py checks both against CEL); they
# exist because each Python call saved is about 0.05-0.1 µs per rule and request.

Truth = Callable[[Exchange], bool]
# A strict condition as data, for the engine's phase compiler (``policy/phase_code.py``) to write inline:
# ("method", const, negate), ("path_eq", const, negate), ("path_test", startsWith|endsWith|contains, arg),
# ("path_search", search) (right only under a path_guard), ("path_guard", inner form, slow: CEL's answer
# where re and RE2 may differ on the path), ("header", lower-case name, closure), ("and"|"or", a, b),
# ("not", a), or ("call", closure) for any other strict closure. Every form answers exactly what its
# closure answers.
Inline = tuple[Any, ...]
_STR_TESTS: Final[dict[str, Callable[[str, str], bool]]] = {
    "startsWith": str.startswith,
    "endsWith": str.endswith,
    "contains": str.__contains__,
}


def _str_read(key: str) -> Value:
    """The getter of a string leaf (``v.STR_LEAVES``)."""
    return v.LEAVES[key]


def _decoded_path(ex: Exchange) -> str:
    """``req.url.path`` as ``v.LEAVES`` computes it; unquote() returns its argument itself without a %."""
    p = ex.req.path or "/"
    return unquote(p) if "%" in p else p


def _str_test(name: str, key: str, arg: str) -> Truth:
    """``<string leaf>.startsWith|endsWith|contains('arg')``."""
    test = _STR_TESTS[name]
    if key == "req.url.path":

        def path_test(ex: Exchange) -> bool:
            p = ex.req.path or "/"
            return test(unquote(p) if "%" in p else p, arg)  # unquote() returns p itself without a %

        return path_test
    read = _str_read(key)
    return lambda ex: test(read(ex), arg)


def _str_matches(key: str, search: Callable[[str], Any], slow: Truth | None) -> Callable[[Exchange], Any]:
    """``<string leaf>.matches('re')`` on a leaf other than the path (that one is ``_path_guarded``):
    DEFER (or, as the whole condition, ``slow``) where RE2 and re may differ, True/False otherwise."""
    read = _str_read(key)
    if slow is None:

        def matches(ex: Exchange) -> Any:
            x = read(ex)
            if "\n" in x or not x.isascii():
                return DEFER
            return search(x) is not None

        return matches

    def matches_or_cel(ex: Exchange) -> bool:
        x = read(ex)
        if "\n" in x or not x.isascii():
            return slow(ex)
        return search(x) is not None

    return matches_or_cel


def _str_equals(key: str, const: str, negate: bool) -> Truth:
    """``<string leaf> == 'literal'`` (``!=`` with ``negate``)."""
    if key == "req.method":
        if negate:
            return lambda ex: ex.req.method != const
        return lambda ex: ex.req.method == const
    if key == "req.url.path":

        def path_equals(ex: Exchange) -> bool:
            p = ex.req.path or "/"
            return ((unquote(p) if "%" in p else p) == const) is not negate

        return path_equals
    read = _str_read(key)
    if negate:
        return lambda ex: read(ex) != const
    return lambda ex: read(ex) == const


def _str_in(key: str, items: list[str]) -> Truth:
    """``<string leaf> in ['a', 'b']``."""
    members = frozenset(items)
    read = _str_read(key)
    return lambda ex: read(ex) in members


def _has_req_header(key: str) -> Truth:
    """``'key' in req.headers``; also ``hasReqHeader(name)`` with the lower-case name (the map's keys are
    lower-case and its lists never empty). ``VarState.get`` with its checks inline; a request of another
    class than ``HttpRequest`` (the edge's, whose headers may not even be decoded yet) answers itself."""
    scratch_key, dirty_bit = v.SCRATCH_KEY, v.REQ_HEADERS

    def has_header(ex: Exchange) -> bool:
        r = ex.req
        if type(r) is not HttpRequest:
            return r.has_header(key)
        st = ex.scratch.get(scratch_key)
        if st is None:
            st = v.state(ex)
        if st.dirty & dirty_bit:
            st.refresh(dirty_bit)
        hmap = st.cache.get("req.headers")
        if hmap is None:
            hmap = st.get("req.headers")
        return key in hmap

    return has_header


def _strict_and(a: Truth, b: Truth) -> Truth:
    return lambda ex: a(ex) and b(ex)


def _strict_or(a: Truth, b: Truth) -> Truth:
    return lambda ex: a(ex) or b(ex)


def _strict_not(a: Truth) -> Truth:
    return lambda ex: not a(ex)


class _Parser:
    """Recursive descent over the tokens, for the subset of CEL the fast path covers."""

    def __init__(self, toks: list[Tok]) -> None:
        self.toks = toks
        self.pos = 0
        # Bool closures known to answer only True or False (the specialised ones and strict combinations).
        self.strict: set[Bool] = set()
        # Bool closures that may DEFER, with how to build them as the whole condition given CEL's answer.
        self.whole: dict[Bool, Callable[[Truth], Truth]] = {}
        # Value closures that read a variable as such, with its dotted name ("req.url.path").
        self.paths: dict[Value, str] = {}
        # The strict closures as ``Inline`` data.
        self.inline: dict[Bool, Inline] = {}
        # Whether the condition has a ``req.url.path.matches(re)``. Those are strict closures here, right
        # only where Python's re and RE2 agree on the path (ASCII, no newline): ``fast_condition`` then
        # guards the whole condition with that test and lets CEL decide the rest.
        self.path_guard = False

    def strict_(self, fn: Truth, inline: Inline | None = None) -> Bool:
        self.strict.add(fn)
        self.inline[fn] = inline or ("call", fn)
        return fn

    def joined(self, op: str, left: Bool, right: Bool) -> Bool:
        """``left && right`` or ``left || right``: strict when both sides are."""
        if left in self.strict and right in self.strict:
            fn = _strict_and(left, right) if op == "and" else _strict_or(left, right)
            return self.strict_(fn, (op, self.inline[left], self.inline[right]))
        return _and(left, right) if op == "and" else _or(left, right)

    def peek(self, ahead: int = 0) -> str:
        at = self.pos + ahead
        return self.toks[at].text if at < len(self.toks) else ""

    def take(self, text: str | None = None) -> Tok:
        if self.pos >= len(self.toks) or (text is not None and self.toks[self.pos].text != text):
            raise _NotFast
        self.pos += 1
        return self.toks[self.pos - 1]

    def done(self) -> bool:
        return self.pos == len(self.toks)

    def string(self) -> str:
        tok = self.take()
        if tok.kind != "str" or tok.value is None:
            raise _NotFast
        value: str = tok.value
        return value

    # bool := and ('||' and)* ; and := unary ('&&' unary)* ; unary := '!' unary | relation
    def boolean(self) -> Bool:
        left = self.conjunction()
        while self.peek() == "||":
            self.take()
            left = self.joined("or", left, self.conjunction())
        return left

    def conjunction(self) -> Bool:
        left = self.unary()
        while self.peek() == "&&":
            self.take()
            left = self.joined("and", left, self.unary())
        return left

    def unary(self) -> Bool:
        if self.peek() == "!":
            self.take()
            inner = self.unary()
            if inner in self.strict:
                return self.strict_(_strict_not(inner), ("not", self.inline[inner]))
            return _not(inner)
        if self.peek() == "(":
            self.take()
            inner = self.boolean()
            self.take(")")
            if self.peek() in _REL_OPS or self.peek() == ".":
                raise _NotFast
            return inner
        start = self.pos
        kind, fn = self.operand()
        const = self.constant_at(start)
        if self.peek() in _REL_OPS:
            if kind != "value":
                raise _NotFast
            op = self.take().text
            start = self.pos
            kind2, rhs = self.operand()
            if kind2 != "value":
                raise _NotFast
            return self.compare(op, fn, rhs, const, self.constant_at(start))
        return fn if kind == "bool" else _truth(fn)

    def compare(self, op: str, a: Value, b: Value, a_const: Any, b_const: Any) -> Bool:
        """``_compare``, or a specialised strict closure for a string leaf or the request headers."""
        a_key, b_key = self.paths.get(a), self.paths.get(b)
        if op in ("==", "!="):
            if a_key in v.STR_LEAVES and type(b_const) is str:
                return self.equals(a_key, b_const, op == "!=")
            if b_key in v.STR_LEAVES and type(a_const) is str:
                return self.equals(b_key, a_const, op == "!=")
        elif op == "in":
            if type(a_const) is str and b_key == "req.headers":
                return self.has_header(a_const)
            if (
                a_key in v.STR_LEAVES
                and type(b_const) is list
                and b_const
                and all(type(i) is str for i in b_const)
            ):
                return self.strict_(_str_in(a_key, b_const))
        return _compare(op, a, b, a_const, b_const)

    def equals(self, key: str, const: str, negate: bool) -> Bool:
        inline = None
        if key == "req.method":
            inline = ("method", const, negate)
        elif key == "req.url.path":
            inline = ("path_eq", const, negate)
        return self.strict_(_str_equals(key, const, negate), inline)

    def has_header(self, lname: str) -> Bool:
        fn = _has_req_header(lname)
        return self.strict_(fn, ("header", lname, fn))

    def constant_at(self, start: int) -> Any:
        """The literal the tokens from ``start`` to here spell, or NO_CONST."""
        toks = self.toks[start : self.pos]
        if len(toks) == 1 and toks[0].kind in ("str", "num") and toks[0].value is not None:
            return toks[0].value
        if len(toks) == 1 and toks[0].text in ("true", "false"):
            return toks[0].text == "true"
        if toks and toks[0].text == "[":
            return [t.value for t in toks if t.kind in ("str", "num")]
        return NO_CONST

    def operand(self) -> tuple[str, Callable[[Exchange], Any]]:
        tok = self.take()
        if tok.kind == "str":
            if tok.value is None:
                raise _NotFast
            const: Any = tok.value
            return "value", lambda ex: const
        if tok.kind == "num":
            if tok.value is None:
                raise _NotFast
            number: int = tok.value
            return "value", lambda ex: number
        if tok.text in ("true", "false"):
            flag = tok.text == "true"
            return "value", lambda ex: flag
        if tok.text == "[":
            items = self.literal_list()
            return "value", lambda ex: items
        if tok.kind != "id":
            raise _NotFast
        if self.peek() == "(":
            return self.call(tok.text)
        if tok.text not in ROOTS:
            raise _NotFast
        return self.postfix(tok.text)

    def literal_list(self) -> list[Any]:
        items: list[Any] = []
        while self.peek() != "]":
            tok = self.take()
            if tok.kind not in ("str", "num") or tok.value is None:
                raise _NotFast
            items.append(tok.value)
            if self.peek() == ",":
                self.take()
        self.take("]")
        return items

    def postfix(self, root: str) -> tuple[str, Callable[[Exchange], Any]]:
        segs: list[Any] = []
        while True:
            if self.peek() == "." and self.pos + 1 < len(self.toks) and self.toks[self.pos + 1].kind == "id":
                name = self.toks[self.pos + 1].text
                if self.peek(2) == "(":
                    if name not in _STR_METHODS:
                        raise _NotFast
                    self.pos += 3
                    arg = self.string()
                    self.take(")")
                    return "bool", self.method(name, root, segs, arg)
                if name.startswith("`"):
                    raise _NotFast
                segs.append(name)
                self.pos += 2
            elif self.peek() == "[":
                self.take()
                tok = self.take()
                if tok.value is None or tok.kind not in ("str", "num"):
                    raise _NotFast
                segs.append(tok.value)
                self.take("]")
            else:
                getter = _path_getter(root, segs)
                if all(type(seg) is str for seg in segs):
                    self.paths[getter] = ".".join([root, *segs])
                return "value", getter

    def method(self, name: str, root: str, segs: list[Any], arg: str) -> Bool:
        """``<path>.<name>('arg')``: specialised on a string leaf, else ``_method``."""
        recv = _path_getter(root, segs)
        key = ".".join([root, *segs]) if all(type(seg) is str for seg in segs) else ""
        if key not in v.STR_LEAVES:
            return _method(name, recv, arg)
        if name != "matches":
            inline = ("path_test", name, arg) if key == "req.url.path" else None
            return self.strict_(_str_test(name, key, arg), inline)
        search = _regex(arg)
        if key == "req.url.path":
            self.path_guard = True
            return self.strict_(lambda ex: search(_decoded_path(ex)) is not None, ("path_search", search))
        fn = _str_matches(key, search, None)
        self.whole[fn] = lambda slow: _str_matches(key, search, slow)
        return fn

    def call(self, name: str) -> tuple[str, Callable[[Exchange], Any]]:
        self.take("(")
        if name in ("hasReqHeader", "hasResHeader", "getReqHeader", "getResHeader"):
            header = self.string()
            self.take(")")
            if name == "hasReqHeader":
                return "bool", self.has_header(header.lower())
            values = _header_fn("req" if "Req" in name else "res", header)
            if name.startswith("has"):
                return "bool", lambda ex: bool(values(ex))
            return self.index_after(values)
        if name in ("hasQueryParam", "getQueryParam"):
            param = self.string()
            self.take(")")
            params = _query_fn(param)
            if name.startswith("has"):
                return "bool", lambda ex: bool(params(ex))
            return self.index_after(params)
        if name in ("inCidrRange", "inCidrRanges"):
            kind, ip = self.operand()
            if kind != "value":
                raise _NotFast
            self.take(",")
            if name == "inCidrRange":
                cidrs = [self.string()]
            else:
                self.take("[")
                cidrs = self.literal_list()
                if not all(type(c) is str for c in cidrs):
                    raise _NotFast
            self.take(")")
            try:
                return "bool", _cidr_test(ip, cidrs)
            except ValueError:
                raise _NotFast from None
        raise _NotFast

    def index_after(self, fn: Value) -> tuple[str, Callable[[Exchange], Any]]:
        if self.peek() != "[":
            return "value", fn
        self.take()
        tok = self.take()
        if tok.kind != "num" or tok.value is None:
            raise _NotFast
        at: int = tok.value
        self.take("]")
        return "value", lambda ex: _index(fn(ex), at)


def fast_condition(toks: list[Tok], slow: Truth) -> tuple[Bool, Truth, Inline] | None:
    """For ``toks`` as a condition: the fast closure (which may answer DEFER or None), the rule's
    ``truth`` built on it, which asks ``slow`` (CEL) when the closure defers, and ``truth`` as ``Inline``
    data; None when not covered."""
    parser = _Parser(toks)
    try:
        fn = parser.boolean()
    except _NotFast:
        return None
    if not parser.done():
        return None
    if parser.path_guard:
        return _path_guarded(fn, fn in parser.strict, parser.inline.get(fn), slow)
    if fn in parser.strict:
        return fn, fn, parser.inline[fn]
    whole = parser.whole.get(fn)
    if whole is not None:
        alone = whole(slow)
        return fn, alone, ("call", alone)
    truth = _deferring(fn, slow)
    return fn, truth, ("call", truth)


def _deferring(fn: Bool, slow: Truth) -> Truth:
    """``fn`` as a rule's truth: True or False as it answers, CEL (``slow``) where it defers."""

    def truth(ex: Exchange) -> bool:
        r = fn(ex)
        if r is True:
            return True
        return slow(ex) if r is DEFER else False

    return truth


def _path_unsafe(ex: Exchange) -> bool:
    """Whether Python's re and RE2 may differ on ``req.url.path`` ("$" before a final newline, Unicode
    case folding); patterns whose meaning differs anyway never compile here (``_regex``)."""
    p = _decoded_path(ex)
    return "\n" in p or not p.isascii()


def _path_guarded(fn: Bool, strict: bool, inline: Inline | None, slow: Truth) -> tuple[Bool, Truth, Inline]:
    """``fast_condition``'s answer for a condition with ``req.url.path.matches``: where the path is one
    re and RE2 may read differently, CEL decides the whole condition."""

    def fast(ex: Exchange) -> Any:
        return DEFER if _path_unsafe(ex) else fn(ex)

    if strict and inline is not None:

        def guarded(ex: Exchange) -> bool:
            return slow(ex) if _path_unsafe(ex) else fn(ex)

        return fast, guarded, ("path_guard", inline, slow)
    truth = _deferring(fast, slow)
    return fast, truth, ("call", truth)


def fast_value(toks: list[Tok]) -> Value | None:
    """A closure for ``toks`` as a value (a variable path), or None."""
    parser = _Parser(toks)
    try:
        kind, fn = parser.operand()
    except _NotFast:
        return None
    return fn if kind == "value" and parser.done() else None


# ---- compiled expressions ----------------------------------------------------------------------------


def _clean(error: Exception) -> str:
    """CEL's error text without its status prefix and caret drawing: ``1:5: undeclared reference...``."""
    lines = [ln for ln in str(error).splitlines() if ln.strip()]
    first = lines[0] if lines else str(error)
    first = re.sub(r"^[A-Z_]+: ", "", first)
    first = first.replace("ERROR: <input>:", "").replace(" (in container '')", "").strip()
    return first


class CompiledExpression:
    """One CEL expression: ``truth(ex)`` for a rule condition, ``evaluate(ex)`` for a value."""

    __slots__ = (
        "_bool",
        "_build",
        "_kinds",
        "_reads_exchange",
        "_value",
        "inline",
        "needs",
        "paths",
        "program",
        "source",
        "text",
        "truth",
        "wide",
    )

    def __init__(
        self,
        source: str,
        text: str,
        program: Any,
        needs: frozenset[str],
        toks: list[Tok],
        paths: frozenset[str] = frozenset(),
    ) -> None:
        self.source = source
        self.text = text  # what CEL compiled (bare struct names rewritten)
        self.program = program
        self.needs = needs  # the variables it reads
        self.paths = paths  # and exactly which parts of them (see _Scan)
        self._kinds = v.kinds_of(needs)
        self.wide = needs  # what an activation built for it carries (see PolicyEnv.share_needs)
        self._build = env().Activation
        # getReqHeader() & co read the exchange being evaluated (see _CURRENT).
        self._reads_exchange = any(t.text in _REQ_FUNCS or t.text in _RES_FUNCS for t in toks)
        self._value = fast_value(toks)
        # ``truth(ex)``: the condition's answer; an error or a non-bool result counts as false. A closure
        # rather than a method: it is the engine's innermost call (for the commonest shapes, the fast
        # closure itself, see fast_condition).
        self.truth: Callable[[Exchange], bool] = self._slow_truth
        self._bool: Bool | None = None
        # ``truth`` as data the engine's phase compiler can write inline (see ``Inline``).
        self.inline: Inline = ("call", self._slow_truth)
        found = fast_condition(toks, self._slow_truth)
        if found is not None:
            self._bool, self.truth, self.inline = found

    def reads_only(self, names: frozenset[str]) -> bool:
        """Whether the value depends on nothing but the variables ``names`` (and constants)."""
        return not self._reads_exchange and self.needs <= names

    def reads_only_paths(self, paths: frozenset[str]) -> bool:
        """``reads_only`` by dotted path: ``req.url.path`` but not the rest of ``req.url``."""
        return not self._reads_exchange and self.paths <= paths

    @property
    def fast(self) -> bool:
        """Whether the fast path covers this expression (CEL runs only when it defers)."""
        return self._bool is not None or self._value is not None

    def _run(self, ex: Exchange) -> Any:
        act = v.state(ex).activation(self.needs, self._kinds, self.wide, self._build)
        if not self._reads_exchange:
            return self.program.eval(act)
        _CURRENT.ex = ex
        try:
            return self.program.eval(act)
        finally:
            _CURRENT.ex = None

    def _slow_truth(self, ex: Exchange) -> bool:
        try:
            return self._run(ex).value() is True
        except Exception:  # a value CEL cannot take (from set-vars, say) fails the rule, not the request
            return False

    def evaluate(self, ex: Exchange) -> Any:
        """The expression's value as plain Python (str, int, float, bool, None, bytes, list, dict)."""
        fast = self._value
        if fast is not None:
            r = fast(ex)
            if r is not MISSING:
                return r
        elif self._bool is not None:
            r = self._bool(ex)
            if type(r) is bool:
                return r
        try:
            result = self._run(ex)
        except Exception as exc:
            raise EvaluationError(f"{self.source}: {exc}") from exc
        if result.type() == _cel.Type.ERROR:
            raise EvaluationError(f"{self.source}: {_clean(Exception(result.value()))}")
        return result.plain_value()


def compile_expression(
    source: str, phase: str | None = None, *, condition: bool = False
) -> CompiledExpression:
    """Compile ``source`` for ``phase`` (None: any); ``condition`` requires a bool result.

    Raises ``CelCompileError`` with every static problem found (joined by "; ")."""
    if not isinstance(source, str) or not source.strip():
        raise CelCompileError("must be a non-empty CEL expression")
    toks = lex(source)
    if toks is None:
        try:
            env().compile(source)
        except Exception as exc:
            raise CelCompileError(_clean(exc)) from None
        raise CelCompileError("cannot be read (unexpected character)")
    found = scan(source, toks, phase)
    problems = list(found.problems)
    program = None
    try:
        program = env().compile(found.text)
    except Exception as exc:
        problems.insert(0, _clean(exc))
    problems.extend(_check_cidr_literals(toks))
    if program is not None and condition:
        rtype = program.return_type()
        if rtype != _B and rtype != _D:
            problems.append(f"must evaluate to a bool, not {rtype.name().lower()}")
    if problems:
        raise CelCompileError("; ".join(problems))
    text_toks = lex(found.text) if found.text != source else toks
    return CompiledExpression(source, found.text, program, found.needs, text_toks or [], found.paths)


def to_text(value: Any) -> str:
    """A value as it appears when interpolated into a string (JSON for lists and maps)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    try:
        return json.dumps(value, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        return str(value)
