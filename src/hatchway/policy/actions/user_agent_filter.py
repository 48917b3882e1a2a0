"""The ``user-agent-filter`` action (on_http_request): the seed's User Agent Filter module as an action.

Not an ngrok action type (ngrok now writes this as ``deny`` with ``req.user_agent`` expressions); it keeps
the 2024 module's semantics so ``--ua-filter-allow/--ua-filter-deny`` and ``user_agent_filter`` in agent
configs compile to one action. Config: ``allow`` and ``deny``, lists of regular expressions (unanchored
``re.search``; Python syntax, which covers the RE2 patterns people write), ``enforce`` (true, a Hatchway
addition). At least one list must be given.

Decision, for the first ``User-Agent`` header only (later ones are ignored, as ngrok does):
1. it matches any ``allow`` regex: allowed (allow wins over deny, so a narrow allow can carve an exception
   out of a broad deny);
2. it is empty or missing: denied; ngrok denies a missing User-Agent unless an allow rule matches the
   empty string (``^$``), which step 1 covers;
3. it matches any ``deny`` regex: denied;
4. otherwise allowed when there is a deny list, denied when there is only an allow list. ngrok's "matches
   no deny rule" would let everything through an allow-only filter, which nobody configuring one means.

Denied: ``403`` ERR_NGROK_3211. Results (Hatchway's): ``user_agent_filter.{decision: allow|deny,
matched}`` with the pattern that decided, "" when none did. Regexes are compiled once here; ``run`` does at
most one search per pattern and never reads the body.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hatchway.policy.config import ConfigReader
from hatchway.policy.model import CompileEnv, Exchange, Problem, Reply

ERROR_CODE = "ERR_NGROK_3211"


def _first_match(patterns: tuple[re.Pattern[str], ...], text: str) -> str | None:
    for pattern in patterns:
        if pattern.search(text) is not None:
            return pattern.pattern
    return None


class UserAgentFilter:
    needs_body = False

    def __init__(
        self, allow: tuple[re.Pattern[str], ...], deny: tuple[re.Pattern[str], ...], enforce: bool
    ) -> None:
        self.allow = allow
        self.deny = deny
        self.enforce = enforce

    def decide(self, user_agent: str) -> tuple[bool, str]:
        """(allowed, the pattern that decided or "")."""
        allowed_by = _first_match(self.allow, user_agent)
        if allowed_by is not None:
            return (True, allowed_by)
        if not user_agent:
            return (False, "")
        denied_by = _first_match(self.deny, user_agent)
        if denied_by is not None:
            return (False, denied_by)
        return (bool(self.deny), "")

    def run(self, ex: Exchange) -> Reply | None:
        allowed, matched = self.decide(ex.req.header("user-agent") or "")
        ex.results["user_agent_filter"] = {"decision": "allow" if allowed else "deny", "matched": matched}
        if allowed or not self.enforce:
            return None
        return Reply(
            403,
            error_code=ERROR_CODE,
            message="The server does not authorize requests from your user-agent.",
        )


def _patterns(r: ConfigReader, key: str) -> tuple[re.Pattern[str], ...]:
    compiled: list[re.Pattern[str]] = []
    for i, source in enumerate(r.str_list(key)):
        try:
            compiled.append(re.compile(source))
        except re.error as e:
            r.problem(f"{key}[{i}]", f"not a valid regular expression: {e}")
    return tuple(compiled)


def compile(config: Mapping[str, Any] | None, path: str, env: CompileEnv, phase: str) -> UserAgentFilter:
    r = ConfigReader(config, path)
    allow = _patterns(r, "allow")
    deny = _patterns(r, "deny")
    enforce = r.flag("enforce", True)
    if not allow and not deny and not r.problems:
        r.problems.append(Problem(r.path, "give at least one regular expression in allow or deny"))
    r.done()
    return UserAgentFilter(allow, deny, enforce)
