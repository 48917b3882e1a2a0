"""The ``log`` action: record ``metadata`` (values ``${cel}`` templated) for the exchange's event.

Each run appends one map to ``ex.logs``; the edge publishes them as ``traffic_policy.logs``. String
values are templates; numbers, booleans, lists and maps are kept as written. Must not: write anywhere
itself (no logging calls, no I/O), or end the phase.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hatchway.policy.config import ConfigReader
from hatchway.policy.interpolate import config_template
from hatchway.policy.model import Action, CompileEnv, Exchange, Reply, Template


@dataclass(slots=True)
class Log:
    entries: tuple[tuple[str, Template | None, Any], ...]  # name, template (strings) or None, fixed value
    needs_body: bool = False

    def run(self, ex: Exchange) -> Reply | None:
        ex.logs.append({k: t.render(ex) if t is not None else v for k, t, v in self.entries})
        return None


def compile(config: Mapping[str, Any] | None, path: str, env: CompileEnv, phase: str) -> Action:
    r = ConfigReader(config, path)
    metadata = r.raw("metadata", required=True)
    entries: list[tuple[str, Template | None, Any]] = []
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
            r.problem("metadata", "must be a map of names to values")
        elif not metadata:
            r.problem("metadata", "must not be empty")
        else:
            for key, value in metadata.items():
                if isinstance(value, str):
                    entries.append((key, config_template(r, f"metadata.{key}", value, env), None))
                else:
                    entries.append((key, None, value))
    r.done()
    return Log(tuple(entries))
