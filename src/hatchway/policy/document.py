"""Reading a Traffic Policy document: YAML/JSON text or a mapping, checked and compiled into rules.

Role: accept ngrok's document shape (``on_tcp_connect`` / ``on_http_request`` / ``on_http_response``, and
the legacy ``inbound`` / ``outbound``), check every field, compile each rule's expressions and actions,
and report *all* problems at once with paths such as
``on_http_request[1].actions[0].config.status_code: must be between 100 and 999``.
Must not: run anything, or stop at the first problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from hatchway.policy.actions import CATALOGUE, compiler
from hatchway.policy.cel import CompiledExpression
from hatchway.policy.interpolate import PolicyEnv
from hatchway.policy.model import PHASES, Action, PolicyError, Problem

LEGACY = {"inbound": "on_http_request", "outbound": "on_http_response"}
RULE_KEYS = ("name", "expressions", "actions")
ACTION_KEYS = ("type", "config")


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One rule: it runs when every condition is true (none: always), then its actions in order."""

    name: str
    path: str
    conditions: tuple[CompiledExpression, ...]
    actions: tuple[Action, ...]


Phases = dict[str, list[CompiledRule]]


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: only true/false are booleans, as in ngrok's Go parser.
    With YAML 1.1's, ``add-headers: {x-flag: yes}`` would send ``true`` and ``on``/``off`` values change."""


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load(doc: Mapping[str, Any] | str | bytes | None, where: str = "policy") -> Mapping[str, Any]:
    """The document as a mapping (``None`` and empty text are the empty policy); raises ``PolicyError``."""
    if doc is None:
        return {}
    if isinstance(doc, bytes):
        doc = doc.decode("utf-8", "replace")
    if isinstance(doc, str):
        if not doc.strip():
            return {}
        try:
            # JSON is tried first for its clearer errors on JSON documents; YAML reads the rest.
            parsed = json.loads(doc) if doc.lstrip().startswith("{") else yaml.load(doc, Loader=_Loader)
        except (ValueError, yaml.YAMLError) as exc:
            try:
                parsed = yaml.load(doc, Loader=_Loader)
            except yaml.YAMLError:
                raise PolicyError([Problem(where, f"is not valid YAML or JSON: {exc}")]) from None
        doc = {} if parsed is None else parsed
    if not isinstance(doc, Mapping):
        raise PolicyError([Problem(where, f"must be a map of phases, got {_kind(doc)}")])
    return doc


def _kind(value: object) -> str:
    if isinstance(value, Mapping):
        return "a map"
    kinds = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}
    return kinds.get(type(value), type(value).__name__)


def compile_document(
    doc: Mapping[str, Any] | str | bytes | None, prefix: str = "", envs: dict[str, PolicyEnv] | None = None
) -> tuple[Phases, list[Problem]]:
    """Compile every rule of ``doc``; paths in problems start with ``prefix`` (e.g. ``"modules."``).

    ``envs`` (phase -> env) may be shared between documents of one policy; the caller then calls their
    ``share_needs()`` once everything is compiled. Without it, this does so itself."""
    own = envs is None
    envs = {} if envs is None else envs
    problems: list[Problem] = []
    phases: Phases = {p: [] for p in PHASES}
    try:
        mapping = load(doc, prefix.rstrip(".") or "policy")
    except PolicyError as exc:
        return phases, exc.problems
    for key, rules in mapping.items():
        phase = LEGACY.get(key, key) if isinstance(key, str) else ""
        if phase not in PHASES:
            known = ", ".join(PHASES)
            problems.append(Problem(f"{prefix}{key}", f"unknown field; a policy has phases {known}"))
            continue
        if key in LEGACY and phase in mapping:
            problems.append(Problem(f"{prefix}{key}", f"cannot be used together with {phase} (its new name)"))
            continue
        if rules is None:
            continue
        if not isinstance(rules, list):
            problems.append(Problem(f"{prefix}{key}", f"must be a list of rules, got {_kind(rules)}"))
            continue
        env = envs.setdefault(phase, PolicyEnv(phase))
        for i, rule in enumerate(rules):
            compiled = _rule(rule, f"{prefix}{key}[{i}]", phase, env, problems)
            if compiled is not None:
                phases[phase].append(compiled)
    if own:
        for env in envs.values():
            env.share_needs()
    return phases, problems


def _rule(rule: Any, path: str, phase: str, env: PolicyEnv, problems: list[Problem]) -> CompiledRule | None:
    if not isinstance(rule, Mapping):
        problems.append(Problem(path, f"must be a rule (a map with actions), got {_kind(rule)}"))
        return None
    before = len(problems)
    for key in rule:
        if key not in RULE_KEYS:
            problems.append(Problem(f"{path}.{key}", f"unknown field; a rule has {', '.join(RULE_KEYS)}"))
    name = rule.get("name", "")
    if name is None:
        name = ""
    if not isinstance(name, str):
        problems.append(Problem(f"{path}.name", f"must be a string, got {_kind(name)}"))
        name = ""
    conditions = _expressions(rule.get("expressions"), f"{path}.expressions", env, problems)
    actions = _actions(rule.get("actions"), f"{path}.actions", phase, env, problems)
    if len(problems) > before:
        return None
    return CompiledRule(name, path, tuple(conditions), tuple(actions))


def _expressions(value: Any, path: str, env: PolicyEnv, problems: list[Problem]) -> list[CompiledExpression]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(Problem(path, f"must be a list of CEL expressions, got {_kind(value)}"))
        return []
    out: list[CompiledExpression] = []
    for i, source in enumerate(value):
        if not isinstance(source, str):
            problems.append(
                Problem(f"{path}[{i}]", f"must be a string (a CEL expression), got {_kind(source)}")
            )
            continue
        try:
            out.append(env.condition(source, f"{path}[{i}]"))
        except PolicyError as exc:
            problems.extend(exc.problems)
    return out


def _actions(value: Any, path: str, phase: str, env: PolicyEnv, problems: list[Problem]) -> list[Action]:
    if value is None:
        problems.append(Problem(path, "is required: a rule needs at least one action"))
        return []
    if not isinstance(value, list) or not value:
        problems.append(Problem(path, "must be a non-empty list of actions"))
        return []
    out: list[Action] = []
    for i, spec in enumerate(value):
        action = _action(spec, f"{path}[{i}]", phase, env, problems)
        if action is not None:
            out.append(action)
    return out


def _action(spec: Any, path: str, phase: str, env: PolicyEnv, problems: list[Problem]) -> Action | None:
    if not isinstance(spec, Mapping):
        problems.append(Problem(path, f"must be an action (a map with type and config), got {_kind(spec)}"))
        return None
    bad_keys = [k for k in spec if k not in ACTION_KEYS]
    for key in bad_keys:
        problems.append(Problem(f"{path}.{key}", "unknown field; an action has type and config"))
    kind = spec.get("type")
    if not isinstance(kind, str) or not kind:
        problems.append(Problem(f"{path}.type", "is required: the action's type, e.g. deny"))
        return None
    if kind not in CATALOGUE:
        known = ", ".join(sorted(CATALOGUE))
        problems.append(Problem(f"{path}.type", f"unknown action type {kind!r}; known types: {known}"))
        return None
    allowed = CATALOGUE[kind][1]
    if phase not in allowed:
        where = ", ".join(p for p in PHASES if p in allowed)
        problems.append(Problem(f"{path}.type", f"{kind!r} cannot be used in {phase} (only in {where})"))
        return None
    try:
        compile_action = compiler(kind)
    except ImportError:
        problems.append(Problem(f"{path}.type", f"{kind!r} is not available in this build of Hatchway"))
        return None
    try:
        action = compile_action(spec.get("config"), path, env, phase)
    except PolicyError as exc:
        problems.extend(exc.problems)
        return None
    if bad_keys:
        return None
    return action
