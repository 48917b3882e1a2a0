"""The ``custom-response`` action: answer from the edge with a status, a (templated) body and headers.

In ``on_http_request`` the upstream is never contacted; in ``on_http_response`` the reply replaces the
upstream's response. Without a ``content-type`` header one is inferred from the body: JSON when it parses
as a JSON object or array, HTML when it starts with ``<``, plain text otherwise. Must not: read the
request body or keep anything between exchanges.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from hatchway.policy.config import ConfigReader
from hatchway.policy.interpolate import config_template, header_templates, header_value
from hatchway.policy.model import Action, CompileEnv, Exchange, Header, Reply, Template


def infer_content_type(body: str) -> str:
    text = body.lstrip()
    if text[:1] in ("{", "["):
        try:
            json.loads(text)
        except ValueError:
            pass
        else:
            return "application/json"
    if text.startswith("<"):
        return "text/html; charset=utf-8"
    return "text/plain; charset=utf-8"


@dataclass(slots=True)
class CustomResponse:
    status: int
    body: Template
    headers: tuple[tuple[str, Template], ...]
    infer: bool  # no content-type configured: infer it from the rendered body
    needs_body: bool = False
    static: ClassVar[bool] = True  # always answers (engine._static_request)

    def run(self, ex: Exchange) -> Reply | None:
        body = self.body.render(ex)
        headers: list[Header] = [(name, header_value(t, ex)) for name, t in self.headers]
        if self.infer and body:
            headers.append(("content-type", infer_content_type(body)))
        return Reply(self.status, headers, body.encode("utf-8"))


def compile(config: Mapping[str, Any] | None, path: str, env: CompileEnv, phase: str) -> Action:
    r = ConfigReader(config, path)
    status = r.integer("status_code", 200, lo=100, hi=999)
    body_text = r.text("body")
    legacy = r.text("content")  # the field's name in ngrok's first release of the action
    if legacy and body_text:
        r.problem("content", "use body (content is its old name), not both")
    body = config_template(r, "content" if legacy and not body_text else "body", body_text or legacy, env)
    headers = header_templates(r, "headers", env, max_items=10)
    r.done()
    infer = not any(name == "content-type" for name, _ in headers)
    return CustomResponse(status, body, tuple(headers), infer)
