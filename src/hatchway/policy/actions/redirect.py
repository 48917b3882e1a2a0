"""The ``redirect`` action: answer with a 3xx and ``Location`` built from the request URL.

``from`` (optional) is a regular expression matched, unanchored, against the whole URL (scheme, host, the
port when not the default, path, query); every match is replaced by ``to``, whose ``$1`` / ``$name``
refer to the match's groups (Go's expansion rules, as ngrok uses: ``$$`` is a dollar, unknown groups are
empty). Without ``from``, ``to`` is the whole new URL. Both are ``${cel}`` templates, rendered before the
regex runs. When the result equals the current URL nothing happens (no redirect loop). Results:
``actions.ngrok.redirect.{matches, url}``. Also home of the regex helpers ``url-rewrite`` shares.
Must not: change the request, or answer with a status outside 300..399.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hatchway.policy.cel import EvaluationError
from hatchway.policy.config import ConfigReader
from hatchway.policy.interpolate import config_template, header_templates, header_value
from hatchway.policy.model import Action, CompileEnv, Exchange, Header, Reply, Template

# RE2 (ngrok's dialect) accepts (?<name>...) for a named group; Python spells it (?P<name>...).
_RE2_NAMED = re.compile(r"\(\?<(?![=!])")
_GROUP_REF = re.compile(r"\$(?:\$|\{(\w+)\}|(\w+))", re.ASCII)


def compile_regex(pattern: str) -> re.Pattern[str]:
    """``pattern`` (RE2 syntax) as a Python regex; raises ``re.error``."""
    return re.compile(_RE2_NAMED.sub("(?P<", pattern))


def expand(template: str, match: re.Match[str]) -> str:
    """``template`` with ``$1``, ``${1}``, ``$name`` replaced by ``match``'s groups and ``$$`` by ``$``."""

    def group(ref: re.Match[str]) -> str:
        name = ref.group(1) or ref.group(2)
        if name is None:
            return "$"
        try:
            value = match.group(int(name) if name.isdigit() else name)
        except IndexError:
            return ""  # Go expands an unknown group to nothing
        return value or ""

    return _GROUP_REF.sub(group, template)


def groups(match: re.Match[str]) -> list[str]:
    """The whole match then each group (unmatched groups as ""), for ``actions.ngrok.*.matches``."""
    return [match.group(0), *(g or "" for g in match.groups())]


class Rewriter:
    """``from``/``to`` of redirect and url-rewrite: the regex is compiled once when ``from`` is constant."""

    __slots__ = ("pattern", "source", "to")

    def __init__(self, source: Template | None, pattern: re.Pattern[str] | None, to: Template) -> None:
        self.source = source
        self.pattern = pattern
        self.to = to

    def apply(self, url: str, ex: Exchange) -> tuple[str, list[str]]:
        """The rewritten ``url`` and the first match's groups ([] when nothing matched)."""
        target = self.to.render(ex)
        pattern = self.pattern
        if pattern is None:
            if self.source is None:
                return target, []
            try:
                pattern = compile_regex(self.source.render(ex))
            except re.error as exc:
                raise EvaluationError(f"'from' rendered an invalid regular expression: {exc}") from None
        first = pattern.search(url)
        if first is None:
            return url, []
        return pattern.sub(lambda m: expand(target, m), url), groups(first)


def compile_rewriter(r: ConfigReader, env: CompileEnv, *, from_required: bool) -> Rewriter:
    source_text = r.text("from", required=from_required)
    to = config_template(r, "to", r.text("to", required=True), env)
    if not source_text:
        if r.config.get("from") == "":
            r.problem("from", "must not be empty (leave it out to redirect every request)")
        return Rewriter(None, None, to)
    source = config_template(r, "from", source_text, env)
    pattern = None
    if source.constant:
        try:
            pattern = compile_regex(source_text)
        except re.error as exc:
            r.problem("from", f"is not a valid regular expression: {exc}")
    return Rewriter(source, pattern, to)


@dataclass(slots=True)
class Redirect:
    rewriter: Rewriter
    status: int
    headers: tuple[tuple[str, Template], ...]
    needs_body: bool = False

    def run(self, ex: Exchange) -> Reply | None:
        url = ex.req.url
        new, matches = self.rewriter.apply(url, ex)
        ex.results["redirect"] = {"matches": matches, "url": new}
        if new == url:
            return None
        headers: list[Header] = [("location", new)]
        headers.extend((name, header_value(t, ex)) for name, t in self.headers)
        return Reply(self.status, headers)


def compile(config: Mapping[str, Any] | None, path: str, env: CompileEnv, phase: str) -> Action:
    r = ConfigReader(config, path)
    rewriter = compile_rewriter(r, env, from_required=False)
    status = r.integer("status_code", 302, lo=300, hi=399)
    headers = header_templates(r, "headers", env, max_items=10)
    r.done()
    return Redirect(rewriter, status, tuple(headers))
