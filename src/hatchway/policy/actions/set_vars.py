"""The ``set-vars`` action: set ``vars.<name>`` for the expressions and templates that follow.

``vars`` is a list of single-entry maps (``- name: value``), applied in order so a later entry may use an
earlier one. String values are ``${cel}`` templates (their result is a string); other YAML values (numbers,
booleans, lists, maps) are stored as written. Must not: touch anything but ``ex.vars``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hatchway.policy import variables
from hatchway.policy.config import ConfigReader
from hatchway.policy.interpolate import config_template
from hatchway.policy.model import Action, CompileEnv, Exchange, Reply, Template


@dataclass(slots=True)
class SetVars:
    entries: tuple[tuple[str, Template | None, Any], ...]  # name, template (strings) or None, fixed value
    needs_body: bool = False

    def run(self, ex: Exchange) -> Reply | None:
        for name, template, value in self.entries:
            ex.vars[name] = template.render(ex) if template is not None else value
            variables.changed(ex)  # the next entry's templates must see this one
        return None


def _plain(value: Any) -> Any:
    """YAML reads ``2024-01-01`` as a date, which CEL cannot take: keep such values as text."""
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def compile(config: Mapping[str, Any] | None, path: str, env: CompileEnv, phase: str) -> Action:
    r = ConfigReader(config, path)
    items = r.raw("vars", required=True)
    entries: list[tuple[str, Template | None, Any]] = []
    if items is not None and (not isinstance(items, list) or not items):
        r.problem("vars", "must be a non-empty list of single-entry maps (- name: value)")
    elif items is not None:
        for i, item in enumerate(items):
            if not isinstance(item, Mapping) or len(item) != 1:
                r.problem(f"vars[{i}]", "must be a map with exactly one name: value entry")
                continue
            ((name, value),) = item.items()
            if not isinstance(name, str) or not name:
                r.problem(f"vars[{i}]", "the variable's name must be a non-empty string")
            elif isinstance(value, str):
                entries.append((name, config_template(r, f"vars[{i}].{name}", value, env), None))
            else:
                entries.append((name, None, _plain(value)))
    r.done()
    return SetVars(tuple(entries))
