"""The ``url-rewrite`` action: rewrite the request URL before it goes upstream (the client sees nothing).

``from`` is a regular expression matched, unanchored, against the whole URL; every match is replaced by
``to`` (``$1`` / ``$name`` groups, Go's rules; both fields are ``${cel}`` templates rendered first). The new
URL may change the path and query, or name another scheme/host. Results:
``actions.ngrok.url_rewrite.{matches, url}``. Must not: answer the request (it never terminates).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hatchway.policy.actions.redirect import Rewriter, compile_rewriter
from hatchway.policy.cel import EvaluationError
from hatchway.policy.config import ConfigReader
from hatchway.policy.model import Action, CompileEnv, Exchange, Reply


@dataclass(slots=True)
class UrlRewrite:
    rewriter: Rewriter
    needs_body: bool = False

    def run(self, ex: Exchange) -> Reply | None:
        url = ex.req.url
        new, matches = self.rewriter.apply(url, ex)
        ex.results["url_rewrite"] = {"matches": matches, "url": new}
        if new != url:
            try:
                ex.req.set_url(new)
            except ValueError as exc:  # e.g. a port that is not a number
                raise EvaluationError(f"url-rewrite produced an invalid URL {new!r}: {exc}") from None
        return None


def compile(config: Mapping[str, Any] | None, path: str, env: CompileEnv, phase: str) -> Action:
    r = ConfigReader(config, path)
    rewriter = compile_rewriter(r, env, from_required=True)
    r.done()
    return UrlRewrite(rewriter)
