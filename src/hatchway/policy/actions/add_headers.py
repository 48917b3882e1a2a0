"""The ``add-headers`` action: append headers to the request (``on_http_request``) or response.

``headers`` maps 1 to 10 names (lower-cased) to ``${cel}`` templated values. Values are appended to any
existing ones, except ``host``, which replaces the request's Host. Refused when the policy loads:
``user-agent`` (ngrok keeps it for the client) and ``ngrok-skip-browser-warning``. Must not: remove other
headers, or let a rendered value carry a line break (that is an error, answered 500).

The usual case, constant values on the request and no Host, compiles to ``AppendRequestHeaders``: one
``append_headers`` call (the edge then never decodes the client's headers for it) that keeps the
variables current itself, so the engine has nothing to re-check after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from hatchway.policy import variables
from hatchway.policy.config import ConfigReader
from hatchway.policy.interpolate import header_templates, header_value
from hatchway.policy.model import Action, CompileEnv, Exchange, Header, Reply, Template

FORBIDDEN = {
    "user-agent": "cannot be changed by add-headers",
    "ngrok-skip-browser-warning": "cannot be added by add-headers",
}


@dataclass(slots=True)
class AddHeaders:
    headers: tuple[tuple[str, Template], ...]
    response: bool  # on_http_response: change ex.res
    needs_body: bool = False

    def run(self, ex: Exchange) -> Reply | None:
        target = ex.res if self.response else ex.req
        if target is None:
            return None
        for name, template in self.headers:
            value = template.source if template.constant else header_value(template, ex)
            if name == "host":
                target.remove_header("host")
            target.headers.append((name, value))
        return None


@dataclass(slots=True)
class AppendRequestHeaders:
    """add-headers on the request with constant values and no Host (the usual case): the ready pairs are
    appended in one call, and the variables told what was appended, so the engine re-checks nothing after
    it (``dirties``, see phase_code.compile_phase)."""

    fixed: tuple[Header, ...]
    needs_body: bool = False
    dirties: int = 0
    static: ClassVar[bool] = True  # only appends fixed request headers (engine._static_request)

    def run(self, ex: Exchange) -> Reply | None:
        ex.req.append_headers(self.fixed)
        if ex.scratch:  # where the variables' state lives, once something read one
            variables.appended(ex, self.fixed)
        return None


def compile(config: Mapping[str, Any] | None, path: str, env: CompileEnv, phase: str) -> Action:
    r = ConfigReader(config, path)
    headers = header_templates(r, "headers", env, required=True, max_items=10)
    for name, _ in headers:
        if name in FORBIDDEN:
            r.problem(f"headers.{name}", FORBIDDEN[name])
    r.done()
    if phase == "on_http_request" and all(t.constant and name != "host" for name, t in headers):
        return AppendRequestHeaders(tuple((name, t.source) for name, t in headers))
    return AddHeaders(tuple(headers), phase == "on_http_response")
