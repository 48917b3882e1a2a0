"""The ``deny`` action: end the phase with a bare status (403 unless ``status_code`` says otherwise).

In ``on_http_request`` the edge answers with the status and no body (ngrok's advice for a body is
``custom-response``); in ``on_tcp_connect`` the edge closes the connection. Must not: add a body or
headers, or read the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from hatchway.policy.config import ConfigReader
from hatchway.policy.model import Action, CompileEnv, Exchange, Reply


@dataclass(slots=True)
class Deny:
    status: int
    needs_body: bool = False
    static: ClassVar[bool] = True  # always answers (engine._static_request)

    def run(self, ex: Exchange) -> Reply | None:
        return Reply(self.status)


def compile(config: Mapping[str, Any] | None, path: str, env: CompileEnv, phase: str) -> Action:
    r = ConfigReader(config, path)
    status = r.integer("status_code", 403, lo=100, hi=999)
    r.done()
    return Deny(status)
