"""``${expr}`` interpolation in action config strings, and the ``CompileEnv`` actions compile against.

Role: split a config string such as ``"https://${req.host}/x"`` into text and CEL parts once, when the
policy loads; ``render(ex)`` then evaluates the parts for each exchange. A string without ``${`` is a
constant and renders to itself at no cost. ``PolicyEnv`` gives action compilers templates and expressions
checked for the phase they run in. Must not: evaluate anything at compile time, or swallow a failing part
(``render`` raises ``EvaluationError``, which the engine turns into a 500 ERR_NGROK_3900).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hatchway.policy.cel import (
    CelCompileError,
    CompiledExpression,
    EvaluationError,
    compile_expression,
    to_text,
)
from hatchway.policy.config import ConfigReader
from hatchway.policy.model import CompileEnv, Exchange, PolicyError, Problem, Template


@dataclass(slots=True)
class Constant:
    """A config string with no ``${...}``."""

    source: str
    constant: bool = True

    def render(self, ex: Exchange) -> str:
        return self.source


@dataclass(slots=True)
class Interpolated:
    """A config string with ``${...}`` parts: ``parts`` alternate text and compiled expressions."""

    source: str
    parts: tuple[str | CompiledExpression, ...]
    constant: bool = False

    def render(self, ex: Exchange) -> str:
        parts = self.parts
        if len(parts) == 1:  # the whole string is one ${...}
            only = parts[0]
            return only if isinstance(only, str) else to_text(only.evaluate(ex))
        return "".join(part if isinstance(part, str) else to_text(part.evaluate(ex)) for part in parts)


def _closing_brace(text: str, start: int) -> int:
    """The index of the ``}`` closing the ``${`` whose body starts at ``start``, or -1.

    CEL map literals have braces and strings may hold any character, so count one and skip the other."""
    depth, i, n = 0, start, len(text)
    while i < n:
        c = text[i]
        if c in "'\"":
            quote = text[i : i + 3] if text[i : i + 3] in ("'''", '"""') else c
            i += len(quote)
            while i < n and not text.startswith(quote, i):
                i += 2 if text[i] == "\\" else 1
            i += len(quote)
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    return -1


def split(text: str) -> list[str | tuple[str, int]]:
    """``text`` as literal pieces and ``(expression source, offset)`` pairs; raises ValueError."""
    pieces: list[str | tuple[str, int]] = []
    pos = 0
    while (at := text.find("${", pos)) >= 0:
        end = _closing_brace(text, at + 2)
        if end < 0:
            raise ValueError(f"unterminated '${{' at offset {at}")
        if at > pos:
            pieces.append(text[pos:at])
        pieces.append((text[at + 2 : end], at))
        pos = end + 1
    if pos < len(text):
        pieces.append(text[pos:])
    return pieces


def compile_template(text: str, path: str, phase: str | None = None) -> Constant | Interpolated:
    """Compile ``text``; raises ``PolicyError`` naming ``path`` for each bad part."""
    if "${" not in text:
        return Constant(text)
    try:
        pieces = split(text)
    except ValueError as exc:
        raise PolicyError([Problem(path, str(exc))]) from None
    parts: list[str | CompiledExpression] = []
    problems: list[Problem] = []
    for piece in pieces:
        if isinstance(piece, str):
            parts.append(piece)
            continue
        source, offset = piece
        try:
            parts.append(compile_expression(source, phase))
        except CelCompileError as exc:
            problems.append(Problem(path, f"invalid expression '${{{source}}}' at offset {offset}: {exc}"))
    if problems:
        raise PolicyError(problems)
    return Interpolated(text, tuple(parts))


class PolicyEnv:
    """The ``CompileEnv`` of one phase: templates and expressions checked against that phase's variables.

    It also keeps what it compiled, so that ``share_needs`` can make every CEL expression of the phase
    build one activation carrying what any of them reads: converting values into CEL is what costs, and
    growing the activation rule by rule would convert them again each time."""

    def __init__(self, phase: str | None = None) -> None:
        self.phase = phase
        self.compiled: list[CompiledExpression] = []

    def template(self, text: str, path: str) -> Constant | Interpolated:
        template = compile_template(text, path, self.phase)
        if isinstance(template, Interpolated):
            self.compiled.extend(p for p in template.parts if isinstance(p, CompiledExpression))
        return template

    def expression(self, text: str, path: str) -> CompiledExpression:
        try:
            expr = compile_expression(text, self.phase)
        except CelCompileError as exc:
            raise PolicyError([Problem(path, f"invalid expression: {exc}")]) from None
        self.compiled.append(expr)
        return expr

    def condition(self, text: str, path: str) -> CompiledExpression:
        """A rule expression: like ``expression`` but it must produce a bool."""
        try:
            expr = compile_expression(text, self.phase, condition=True)
        except CelCompileError as exc:
            raise PolicyError([Problem(path, f"invalid expression: {exc}")]) from None
        self.compiled.append(expr)
        return expr

    def share_needs(self) -> None:
        """Widen each expression's activation to what all the phase's CEL-evaluated expressions read."""
        union: frozenset[str] = frozenset().union(*(e.needs for e in self.compiled if not e.fast))
        for expr in self.compiled:
            expr.wide = expr.needs | union


# ---- header maps in action configs (add-headers, custom-response, redirect) -------------------------

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


def header_templates(
    reader: ConfigReader, key: str, env: CompileEnv, *, required: bool = False, max_items: int = 10
) -> list[tuple[str, Template]]:
    """The ``key`` map of header name -> templated value, names lower-cased; problems go to ``reader``."""
    out: list[tuple[str, Template]] = []
    for name, value in reader.str_map(key, required=required, max_items=max_items).items():
        where = f"{key}.{name}"
        if not _HEADER_NAME.match(name):
            reader.problem(where, "is not a valid header name")
            continue
        if _BAD_VALUE.search(value):
            reader.problem(where, "must not contain line breaks or NUL")
            continue
        try:
            out.append((name.lower(), env.template(value, reader.at(where))))
        except PolicyError as exc:
            reader.problems.extend(exc.problems)
    return out


def config_template(reader: ConfigReader, key: str, text: str, env: CompileEnv) -> Template:
    """``env.template`` for the field ``key`` of ``reader``, recording problems there instead of raising.

    On a problem the constant text stands in; ``reader.done()`` raises before it could be used."""
    try:
        return env.template(text, reader.at(key))
    except PolicyError as exc:
        reader.problems.extend(exc.problems)
        return Constant(text)


def header_value(template: Template, ex: Exchange) -> str:
    """Render a header value; a rendered line break would split the header, so it is an error."""
    value = template.render(ex)
    if template.constant:
        return value  # checked when the policy loaded
    if "\r" in value or "\n" in value or "\x00" in value:
        raise EvaluationError(f"header value {template.source!r} rendered a line break")
    return value
