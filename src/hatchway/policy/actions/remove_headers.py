"""The ``remove-headers`` action: drop every value of the named headers from the request or response.

``headers`` lists 1 to 10 names, matched without regard to case; ``user-agent`` is refused when the
policy loads. Works on ``ex.req`` in ``on_http_request`` and ``ex.res`` in ``on_http_response``.
Must not: touch headers it was not asked to remove.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hatchway.policy.config import ConfigReader
from hatchway.policy.model import Action, CompileEnv, Exchange, Reply

_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


@dataclass(slots=True)
class RemoveHeaders:
    names: frozenset[str]
    response: bool
    needs_body: bool = False

    def run(self, ex: Exchange) -> Reply | None:
        target = ex.res if self.response else ex.req
        if target is None:
            return None
        names = self.names
        # One pass for all the names; a new list, as remove_header makes (the variables notice either way).
        target.headers = [(k, v) for k, v in target.headers if k.lower() not in names]
        return None


def compile(config: Mapping[str, Any] | None, path: str, env: CompileEnv, phase: str) -> Action:
    r = ConfigReader(config, path)
    names = r.str_list("headers", required=True, max_items=10)
    for i, name in enumerate(names):
        if not _NAME.match(name):
            r.problem(f"headers[{i}]", f"{name!r} is not a valid header name")
        elif name.lower() == "user-agent":
            r.problem(f"headers[{i}]", "user-agent cannot be removed")
    r.done()
    return RemoveHeaders(frozenset(n.lower() for n in names), phase == "on_http_response")
