"""The agent configuration file: ngrok's version 2 and version 3 YAML formats, merged and validated.

Role: turn the files named by ``--config`` into an ``AgentConfig`` (agent settings plus named
``EndpointSpec``s), or raise ``ConfigErrors`` listing *every* problem, each naming its file and field path
(``tunnels.web.basic_auth[1]``, ``endpoints[2].upstream.url``, ``version``).

Rules:
- Read files only: the config files and the ``traffic_policy_file``s they name (and ``stat`` the CA and
  certificate paths). Never open sockets, start endpoints, write files or print; callers decide what
  to show. ``default_config_path()`` is the only reader of the environment.
- Do not repeat ``EndpointSpec``'s checks: ``EndpointSpec.validate`` runs on every endpoint and its field
  names are translated back to the config key the value came from. That includes the Traffic Policy,
  compiled there with the edge's compiler: ``tunnels.web.traffic_policy.on_http_request[0].actions[0].type``
  for a policy written in the file, ``endpoints[0].traffic_policy_file: on_http_request[0]...`` for one
  read from another file.
- Do not edit what ``yaml.safe_load`` returned; merging builds new mappings.

Strictness: unknown keys are errors (with a "did you mean"), and so is a key given twice in one
mapping (plain YAML would keep the last silently). ``version`` (2 or 3, merged) is required unless the
files hold no keys at all: no files, or only empty ones, give the defaults. ngrok keys Hatchway has no
use for (``region``, ``update_check``, ...) are accepted with a warning in ``AgentConfig.warnings``.

Merging (ngrok's rules): later files win for scalars and lists (a list is replaced, never appended);
the top level and ``agent:`` are merged key by key; ``tunnels:`` is merged by tunnel name, and a tunnel
named in two files is taken whole from the later one ("duplicate key: later wins"). Relative paths in a
file (``root_cas``/``connect_cas``, ``mutual_tls_cas``, ``traffic_policy_file``, ``crt``/``key``, ``log``)
are relative to that file's folder. If a file cannot be read or parsed, only those errors are reported:
checking a partial merge would report problems that are not there.

TCP tunnels (``proto: tcp``) and ``tcp://`` endpoints become ``EndpointSpec``s with ``proto="tcp"``. TLS and
labeled tunnels (and ``tls://`` endpoints) are parsed and their keys checked, but kept apart in
``AgentConfig.unsupported``: ``AgentConfig.select`` reports them when they are asked to start, so a file
shared with ngrok still loads and its other endpoints still run.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import yaml
from yaml.constructor import ConstructorError

from hatchway.agent.spec import EndpointSpec, is_cidr
from hatchway.errors import ConfigError, HatchwayError

FieldPath: TypeAlias = tuple[str | int, ...]

METADATA_MAX = 4096
"""ngrok's limit on ``metadata``, for the session and for each endpoint."""


class FileConfigError(ConfigError):
    """A ``ConfigError`` found in a file: ``str()`` is ``FILE: field.path: message``."""

    def __init__(
        self, field_path: str, message: str, file: Path | None = None, line: int | None = None
    ) -> None:
        super().__init__(field_path, message)
        self.file = file
        self.line = line  # 1-based, for YAML syntax errors only

    def __str__(self) -> str:
        text = super().__str__()
        return f"{self.file}: {text}" if self.file is not None else text


class ConfigErrors(HatchwayError):
    """Every problem found in a configuration; ``str()`` lists them one per line."""

    code = ConfigError.code

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        self.errors: list[ConfigError] = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


@dataclass
class AgentSettings:
    """The agent-wide settings (v2: top-level keys; v3: under ``agent:``). Durations are seconds."""

    authtoken: str = ""
    api_key: str = ""
    server_addr: str = ""  # v3 ``connect_url``; "" = the built-in default
    root_cas: str = "trusted"  # v3 ``connect_cas``: "trusted", "host" or an absolute PEM path
    metadata: str = ""
    heartbeat_interval: float = 10.0
    heartbeat_tolerance: float = 15.0
    connect_timeout: float = 10.0
    log: str = ""  # "" = not set (ngrok's default: no log), "stdout", "stderr", "false" or a path
    log_level: str = "info"
    log_format: str = "term"
    web_addr: str = "127.0.0.1:4040"  # "false" disables the inspector
    web_allow_hosts: list[str] = field(default_factory=list)
    inspect_db_size: int = 0  # bytes; 0 = 50 MB, -1 = no inspection database
    console_ui: str = "iftty"  # "true", "false" or "iftty"
    source_files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class UnsupportedEndpoint:
    """A TLS or labeled tunnel: valid in the file, refused only when asked to start."""

    name: str
    kind: str  # "tls" or "labeled"
    error: FileConfigError


@dataclass
class AgentConfig:
    """A loaded configuration. ``endpoints`` keeps the order of the files (name -> spec)."""

    settings: AgentSettings = field(default_factory=AgentSettings)
    endpoints: dict[str, EndpointSpec] = field(default_factory=dict)
    unsupported: dict[str, UnsupportedEndpoint] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # deprecated or ignored keys, as FILE: path: text
    version: int | None = None  # None when no file set anything

    def select(self, names: Iterable[str] = (), *, all_endpoints: bool = False) -> dict[str, EndpointSpec]:
        """The endpoints ``hatchway start NAMES`` (or ``--all``) runs; unknown or unsupported names raise."""
        known = [*self.endpoints, *self.unsupported]
        errors: list[ConfigError] = []
        chosen: dict[str, EndpointSpec] = {}
        for name in known if all_endpoints else names:
            if name in self.endpoints:
                chosen[name] = self.endpoints[name]
            elif name in self.unsupported:
                errors.append(self.unsupported[name].error)
            else:
                close = difflib.get_close_matches(name, known, n=1)
                hint = (
                    f"; did you mean {close[0]!r}?" if close else f" (defined: {', '.join(known) or 'none'})"
                )
                errors.append(FileConfigError("", f"no endpoint or tunnel named {name!r}{hint}"))
        if errors:
            raise ConfigErrors(errors)
        return chosen


def default_config_path() -> Path:
    """``$HATCHWAY_CONFIG`` if set, else ``~/.config/hatchway/hatchway.yml``."""
    env = os.environ.get("HATCHWAY_CONFIG")
    return Path(env).expanduser() if env else Path.home() / ".config" / "hatchway" / "hatchway.yml"


def check_config(paths: Iterable[Path | str]) -> list[str]:
    """``hatchway config check``: one ``FILE: field.path: message`` line per problem; [] means valid."""
    try:
        load_config(paths)
    except ConfigErrors as exc:
        return [str(e) for e in exc.errors]
    return []


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object, field_path: str = "") -> float:
    """Seconds, from a number of seconds or a Go duration string (``10s``, ``1m30s``, ``500ms``)."""
    bad = ConfigError(field_path, f"expected a duration such as 10s, 1m30s or 500ms, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise bad
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            sign = -1.0 if text.startswith("-") else 1.0
            body = text[1:] if text[:1] in ("+", "-") else text
            if not _DURATION.fullmatch(body):
                raise bad from None
            seconds = sign * sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(body))
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise bad
    return seconds


def load_config(paths: Iterable[Path | str]) -> AgentConfig:
    """Read, merge and check ``paths`` in order; no paths means the defaults. Raises ``ConfigErrors``."""
    files = [Path(p) for p in paths]
    origins: dict[FieldPath, Path] = {}
    merged: dict[str, Any] = {}
    failed: list[ConfigError] = []
    for file in files:
        data = _read_mapping(file, failed)
        if data is not None:
            _merge(merged, data, file, origins, (), levels=2)
    if failed:
        raise ConfigErrors(failed)
    build = _Build(files, origins)
    config = build.run(merged)
    if build.found:
        raise ConfigErrors(e for _, e in build.found)
    return config


# --------------------------------------------------------------------------------------------------
# Reading and merging


class _StrictLoader(yaml.SafeLoader):
    """``safe_load`` that also refuses a key given twice in one mapping (ngrok's Go parser does)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"the key {key_node.value!r} is given twice",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def _parse_yaml(text: str, file: Path) -> tuple[object, FileConfigError | None]:
    try:
        return yaml.load(text, Loader=_StrictLoader), None  # a SafeLoader subclass: safe
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if mark is None:
            return None, FileConfigError("", f"invalid YAML: {problem}", file)
        lines = text.splitlines()
        source = lines[mark.line] if mark.line < len(lines) else ""
        if re.search(r"(:|-)\s+\*", source):
            problem += " (a wildcard domain must be quoted: '*.example.com')"
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        return None, FileConfigError("", f"{where}: invalid YAML: {problem}", file, mark.line + 1)
    except yaml.YAMLError as exc:
        return None, FileConfigError("", f"invalid YAML: {exc}", file)


def _read_text(file: Path) -> str:
    """The file's text, or ``OSError`` / ``ValueError`` with a message meant for the user."""
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OSError("file not found") from None
    except IsADirectoryError:
        raise OSError("is a directory, not a file") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except OSError as exc:
        raise OSError(exc.strerror or str(exc)) from None


def _read_mapping(file: Path, failed: list[ConfigError]) -> Mapping[Any, Any] | None:
    try:
        text = _read_text(file)
    except (OSError, ValueError) as exc:
        failed.append(FileConfigError("", f"cannot read the configuration: {exc}", file))
        return None
    data, error = _parse_yaml(text, file)
    if error is not None:
        failed.append(error)
        return None
    if data is None:  # an empty file (or only comments)
        return {}
    if not isinstance(data, Mapping):
        kind = "a list" if isinstance(data, list) else f"{type(data).__name__} {data!r}"
        failed.append(
            FileConfigError("", f"the top level must be a mapping (key: value lines), got {kind}", file)
        )
        return None
    return data


def _merge(
    base: dict[str, Any],
    over: Mapping[Any, Any],
    file: Path,
    origins: dict[FieldPath, Path],
    at: FieldPath,
    levels: int,
) -> None:
    """Lay ``over`` on ``base``: mappings are merged ``levels`` deep, anything deeper is replaced."""
    for raw_key, value in over.items():
        key = str(raw_key)
        path = (*at, key)
        origins[path] = file
        old = base.get(key)
        if levels > 1 and isinstance(value, Mapping):
            target = old if isinstance(old, dict) else {}
            base[key] = target
            _merge(target, value, file, origins, path, levels - 1)
        else:
            base[key] = value


def _fmt(path: FieldPath) -> str:
    """``("tunnels", "web", "basic_auth", 1)`` -> ``tunnels.web.basic_auth[1]`` (odd names in ``["..."]``)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


# --------------------------------------------------------------------------------------------------
# Schemas: config key -> how to check it and which attribute it sets


@dataclass(frozen=True)
class _F:
    """One key: ``kind`` says how to check it, ``attr`` which attribute it sets ("" = check, then drop)."""

    kind: str
    attr: str = ""
    choices: tuple[str, ...] = ()
    note: str = ""  # the error for "unsupported", the warning for "ignored" and deprecated aliases


_Table: TypeAlias = "dict[str, _F | _Table]"

_PROTOCOLS = ("http1", "http2")
_IGNORED = _F("ignored", note="accepted for ngrok compatibility; Hatchway ignores it")


def _header_table(prefix: str) -> _Table:
    return {"add": _F("strs", f"{prefix}_add"), "remove": _F("strs", f"{prefix}_remove")}


_SETTINGS: _Table = {
    "authtoken": _F("str", "authtoken"),
    "api_key": _F("str", "api_key"),
    "server_addr": _F("str", "server_addr"),
    "connect_url": _F("str", "server_addr"),
    "root_cas": _F("cas", "root_cas"),
    "connect_cas": _F("cas", "root_cas"),
    "metadata": _F("metadata", "metadata"),
    "heartbeat_interval": _F("duration", "heartbeat_interval"),
    "heartbeat_tolerance": _F("duration", "heartbeat_tolerance"),
    "connect_timeout": _F("duration", "connect_timeout"),
    "log": _F("log", "log"),
    "log_level": _F("choice", "log_level", ("debug", "info", "warn", "error", "crit")),
    "log_format": _F("choice", "log_format", ("term", "logfmt", "json")),
    "web_addr": _F("web_addr", "web_addr"),
    "web_allow_hosts": _F("strs", "web_allow_hosts"),
    "inspect_db_size": _F("db_size", "inspect_db_size"),
    "console_ui": _F("choice", "console_ui", ("true", "false", "iftty")),
    **dict.fromkeys(
        (
            "connect_interface",
            "console_ui_color",
            "crl_noverify",
            "dns_resolver_ips",
            "proxy_url",
            "region",
            "remote_management",
            "update_channel",
            "update_check",
        ),
        _IGNORED,
    ),
}

_CIDRS: _Table = {"allow_cidrs": _F("cidrs", "cidr_allow"), "deny_cidrs": _F("cidrs", "cidr_deny")}
_WEBHOOK: _Table = {"provider": _F("str", "verify_webhook"), "secret": _F("str", "verify_webhook_secret")}
_FOR_NOW = "are not supported by this agent for now"
_HTTP_TUNNEL: _Table = {
    "proto": _F("skip"),
    "addr": _F("addr", "addr"),
    "url": _F("str", "url"),
    "domain": _F("str", "domain"),
    "hostname": _F("str", "domain", note="hostname is deprecated; use domain"),
    "subdomain": _F(
        "unsupported", note="subdomain is not supported: use domain: NAME.<the edge's base domain>"
    ),
    "metadata": _F("metadata", "metadata"),
    "schemes": _F("strs", "schemes"),
    "inspect": _F("bool", "inspect"),
    "host_header": _F("str", "host_header"),
    "basic_auth": _F("strs", "basic_auth"),
    # OAuth, OIDC, mutual TLS and the WebSocket-TCP converter are passed on as the CLI and SDK pass them:
    # the edge decides what it enforces, and refuses what it cannot (ERR_NGROK_9027) when they start.
    "oauth": {
        "provider": _F("str", "oauth_provider"),
        "allow_emails": _F("strs", "oauth_allow_emails"),
        "allow_domains": _F("strs", "oauth_allow_domains"),
        "scopes": _F("strs", "oauth_scopes"),
        "client_id": _F("str", "oauth_client_id"),
        "client_secret": _F("str", "oauth_client_secret"),
    },
    "oidc": {
        "issuer_url": _F("str", "oidc_issuer_url"),
        "client_id": _F("str", "oidc_client_id"),
        "client_secret": _F("str", "oidc_client_secret"),
        "scopes": _F("strs", "oidc_scopes"),
        "allow_emails": _F("strs", "oidc_allow_emails"),
        "allow_domains": _F("strs", "oidc_allow_domains"),
    },
    "ip_restriction": _CIDRS,
    # The CLI's spellings (--cidr-allow/--cidr-deny), accepted in files too; they set the same lists.
    "cidr_allow": _F("cidrs", "cidr_allow"),
    "cidr_deny": _F("cidrs", "cidr_deny"),
    "circuit_breaker": _F("num", "circuit_breaker"),
    "compression": _F("bool", "compression"),
    "mutual_tls_cas": _F("path", "mutual_tls_cas"),
    "request_header": _header_table("request_header"),
    "request_headers": _header_table("request_header"),  # the spelling of ngrok's HTTP Endpoints page
    "response_header": _header_table("response_header"),
    "response_headers": _header_table("response_header"),
    "user_agent_filter": {"allow": _F("strs", "ua_filter_allow"), "deny": _F("strs", "ua_filter_deny")},
    "verify_webhook": _WEBHOOK,
    "webhook_verification": _WEBHOOK,  # the module's name in ngrok's SDKs and Bind (WebhookVerification)
    "websocket_tcp_converter": _F("bool", "websocket_tcp_converter"),
    "proxy_proto": _F("proto", "proxy_proto"),
    "traffic_policy": _F("policy", "traffic_policy"),
    "traffic_policy_file": _F("policy_file", "traffic_policy"),
    "policy": _F("policy", "traffic_policy", note="policy is deprecated; use traffic_policy"),
    "upstream_protocol": _F("choice", "upstream_protocol", _PROTOCOLS),
    "app_protocol": _F(
        "choice", "upstream_protocol", _PROTOCOLS, "app_protocol is deprecated; use upstream_protocol"
    ),
    "pooling_enabled": _F("bool", "pooling_enabled"),
}
_COMMON_L4: _Table = {
    "proto": _F("skip"),
    "addr": _F("addr", "addr"),
    "url": _F("str"),
    "metadata": _F("metadata"),
    "ip_restriction": _CIDRS,
    "proxy_proto": _F("proto"),
    "traffic_policy": _F("policy"),
    "policy": _F("policy"),
    "pooling_enabled": _F("bool"),
}
_TCP_TUNNEL: _Table = {
    **_COMMON_L4,
    "url": _F("str", "url"),
    "remote_addr": _F("str", "remote_addr"),
    "metadata": _F("metadata", "metadata"),
    "ip_restriction": _CIDRS,
    "proxy_proto": _F("proto", "proxy_proto"),
    "traffic_policy": _F("policy", "traffic_policy"),
    "policy": _F("policy", "traffic_policy", note="policy is deprecated; use traffic_policy"),
}
_TLS_TUNNEL: _Table = {
    **_COMMON_L4,
    **dict.fromkeys(("domain", "hostname", "subdomain"), _F("str")),
    **dict.fromkeys(("crt", "key", "mutual_tls_cas"), _F("path")),
    "terminate_at": _F("choice", choices=("edge", "agent", "upstream")),
}
_LABELED_TUNNEL: _Table = {
    "labels": _F("strs"),
    "addr": _F("addr", "addr"),
    "inspect": _F("bool"),
    "metadata": _F("metadata"),
    "proxy_proto": _F("proto"),
    "app_protocol": _F("choice", choices=_PROTOCOLS),
    **dict.fromkeys(("crt", "key"), _F("path")),
}
_ENDPOINT: _Table = {
    "name": _F("skip"),
    "url": _F("str", "url"),
    "bindings": _F("bindings"),
    "description": _F("str"),  # EndpointSpec has no description: checked, then dropped
    "metadata": _F("metadata", "metadata"),
    "pooling_enabled": _F("bool", "pooling_enabled"),
    "traffic_policy": _F("policy", "traffic_policy"),
    "traffic_policy_file": _F("policy_file", "traffic_policy"),
    "agent_tls_termination": _F("unsupported", note="only tls:// endpoints terminate TLS at the agent"),
    "upstream": {
        "url": _F("addr", "addr"),
        "protocol": _F("choice", "upstream_protocol", _PROTOCOLS),
        "proxy_protocol": _F("proto", "proxy_proto"),
    },
}
_L4_ENDPOINT: _Table = {**_ENDPOINT, "agent_tls_termination": _F("skip")}
_TCP_ENDPOINT: _Table = {
    **_ENDPOINT,
    "upstream": {"url": _F("addr", "addr"), "proxy_protocol": _F("proto", "proxy_proto")},
}
_TUNNEL_TABLES = {"http": _HTTP_TUNNEL, "tcp": _TCP_TUNNEL, "tls": _TLS_TUNNEL, "labeled": _LABELED_TUNNEL}

# Keys from older ngrok files that difflib would not connect to their new names.
_OLD_KEYS = {
    "bind_tls": "bind_tls is ngrok 2's; use schemes: [https] or [http, https]",
    "auth": 'auth is ngrok 2\'s; use basic_auth: ["user:password"]',
}
_V3_ONLY = {
    "agent": "a version 3 key (set version: 3; in version 2 agent settings are top-level keys)",
    "endpoints": "a version 3 key (set version: 3, or use tunnels:)",
}
_V2_TOP: _Table = {"version": _F("skip"), "tunnels": _F("skip"), **_SETTINGS}
_V3_TOP: _Table = {"version": _F("skip"), "agent": _F("skip"), "endpoints": _F("skip"), "tunnels": _F("skip")}
# EndpointSpec attributes whose config key is not their own name, when nothing set them explicitly.
_V3_SPEC_KEYS: dict[str, FieldPath] = {
    "addr": ("upstream", "url"),
    "upstream_protocol": ("upstream", "protocol"),
    "proxy_proto": ("upstream", "proxy_protocol"),
    "schemes": ("url",),
}


# --------------------------------------------------------------------------------------------------
# Building


class _Invalid(Exception):
    """A value is wrong: ``message`` is for the key's path plus ``at`` ("" = already reported)."""

    def __init__(self, message: str, at: FieldPath = ()) -> None:
        super().__init__(message)
        self.message = message
        self.at = at


class _Build:
    """One pass over the merged data; collects every error with its path and file."""

    def __init__(self, files: list[Path], origins: dict[FieldPath, Path]) -> None:
        self.files = files
        self.origins = origins
        self.found: list[tuple[FieldPath, FileConfigError]] = []
        self.warnings: list[str] = []
        self.names: dict[str, FieldPath] = {}

    def file_for(self, path: FieldPath) -> Path | None:
        for n in range(len(path), 0, -1):
            if path[:n] in self.origins:
                return self.origins[path[:n]]
        return self.files[-1] if self.files else None

    def err(self, path: FieldPath, message: str) -> None:
        self.found.append((path, FileConfigError(_fmt(path), message, self.file_for(path))))

    def warn(self, path: FieldPath, message: str) -> None:
        self.warnings.append(str(FileConfigError(_fmt(path), message, self.file_for(path))))

    def run(self, merged: dict[str, Any]) -> AgentConfig:
        config = AgentConfig(AgentSettings(source_files=list(self.files)))
        if not merged:
            return config
        config.version = version = self.version(merged)
        if version == 2:
            hints = {**_OLD_KEYS, **_V3_ONLY}
            self.apply(_V2_TOP, merged, (), config.settings, {}, hints)
        else:
            hints = {k: f"in version 3 agent settings go under agent: (agent.{k})" for k in _SETTINGS}
            hints.update(_OLD_KEYS)
            self.apply(_V3_TOP, merged, (), config.settings, {}, hints)
        for key, value in merged.items():
            if key == "agent" and version == 3 and value is not None:
                self.section(_SETTINGS, value, ("agent",), config.settings, {})
            elif key == "tunnels" and value is not None:
                if version == 3:
                    self.warn(("tunnels",), "tunnels is deprecated in version 3; use endpoints")
                self.tunnels(value, config)
            elif key == "endpoints" and version == 3 and value is not None:
                self.endpoints(value, config)
        config.warnings = self.warnings
        return config

    def version(self, merged: Mapping[str, Any]) -> int:
        raw = merged.get("version")
        if type(raw) is int and raw in (2, 3):
            return raw
        if isinstance(raw, str) and raw.strip() in ("2", "3"):
            return int(raw)
        if raw is None:
            self.err(("version",), 'required: "2" or "3"')
        else:
            self.err(("version",), f'must be "2" or "3", got {raw!r}')
        # Check the rest against the version the keys look like, to report their problems too.
        v2_keys = any(k in _SETTINGS for k in merged)
        return 3 if "agent" in merged or ("endpoints" in merged and not v2_keys) else 2

    # -- generic checking --------------------------------------------------------------------------

    def section(
        self, table: _Table, value: object, path: FieldPath, target: object, seen: dict[str, FieldPath]
    ) -> None:
        if isinstance(value, Mapping):
            self.apply(table, value, path, target, seen)
        else:
            keys = f"with the keys {', '.join(table)}" if len(table) <= 6 else "(key: value lines)"
            self.err(path, f"must be a mapping {keys}, got {_kind(value)}")

    def apply(
        self,
        table: _Table,
        data: Mapping[Any, Any],
        path: FieldPath,
        target: object,
        seen: dict[str, FieldPath],
        hints: Mapping[str, str] | None = None,
    ) -> None:
        """Check every key of ``data`` against ``table`` and set ``target``'s attributes from them.

        ``seen`` records the config path each attribute came from (to relabel ``EndpointSpec``'s errors
        and to catch two spellings of one setting, such as ``domain`` and ``hostname``).
        """
        for raw_key, value in data.items():
            key = str(raw_key)
            sub = (*path, key)
            spec = table.get(key)
            if spec is None:
                self.unknown(sub, key, table, hints or _OLD_KEYS)
            elif isinstance(spec, dict):
                if value is not None:
                    self.section(spec, value, sub, target, seen)
            elif value is not None:
                self.set(spec, value, sub, target, seen)

    def unknown(self, path: FieldPath, key: str, table: _Table, hints: Mapping[str, str]) -> None:
        if key in hints:  # a key of the other version, or of ngrok 2
            self.err(path, hints[key])
            return
        close = difflib.get_close_matches(key, list(table), n=1, cutoff=0.6)
        self.err(path, f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))

    def set(self, f: _F, value: object, path: FieldPath, target: object, seen: dict[str, FieldPath]) -> None:
        if f.kind == "skip":
            return
        if f.kind == "unsupported":
            self.err(path, f.note)
            return
        if f.kind == "ignored":
            self.warn(path, f.note)
            return
        try:
            result = self.convert(f, value, path)
        except _Invalid as exc:
            if exc.message:
                self.err((*path, *exc.at), exc.message)
            return
        if f.note:
            self.warn(path, f.note)
        if not f.attr:
            return
        if f.attr in seen:
            self.err(path, f"{_fmt(seen[f.attr])} already sets this; keep only one of them")
            return
        seen[f.attr] = path
        setattr(target, f.attr, result)

    def convert(self, f: _F, value: object, path: FieldPath) -> object:
        """The value to store for ``f``; raises ``_Invalid`` saying what is wrong."""
        kind = f.kind
        if kind in ("str", "metadata", "addr", "proto"):
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise _Invalid(f"must be a string, got {_kind(value)}")
            text = str(value).strip() if kind in ("addr", "proto") else str(value)
            if kind == "metadata" and len(text) > METADATA_MAX:
                raise _Invalid(f"must be at most {METADATA_MAX} characters, got {len(text)}")
            m = re.fullmatch(r"(https?)://(:\d+)?/?", text) if kind == "addr" else None
            if m:  # "https://" = https://localhost:443 (ngrok's v3 upstream.url form)
                text = f"{m[1]}://localhost{m[2] or (':443' if m[1] == 'https' else ':80')}"
            return text
        if kind == "bool":
            if not isinstance(value, bool):
                raise _Invalid(f"must be true or false, got {_kind(value)}")
            return value
        if kind in ("strs", "cidrs", "bindings"):
            return self.strings(kind, value, path)
        if kind in ("num", "db_size"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _Invalid(f"must be a number, got {_kind(value)}")
            if kind == "db_size" and (not isinstance(value, int) or value < -1):
                raise _Invalid("must be a whole number of bytes (0 = 50 MB, -1 = off)")
            return value if kind == "db_size" else float(value)
        if kind == "duration":
            try:
                seconds = parse_duration(value)
            except ConfigError as exc:
                raise _Invalid(exc.message) from None
            if seconds <= 0:
                raise _Invalid("must be longer than zero")
            return seconds
        if kind == "choice":
            choice: object = str(value).lower() if isinstance(value, bool) else value
            if choice not in f.choices:
                raise _Invalid(f"must be one of {', '.join(f.choices)}, got {_kind(value)}")
            return choice
        if kind in ("log", "web_addr"):
            if value is False:
                return "false"
            if not isinstance(value, str):
                want = "stdout, stderr, false or a file path" if kind == "log" else "host:port or false"
                raise _Invalid(f"must be {want}, got {_kind(value)}")
            if kind == "log" and value not in ("", "stdout", "stderr", "false"):
                return str(self.relative(path, value))
            return value
        if kind in ("path", "cas"):
            if not isinstance(value, str) or not value:
                raise _Invalid(f"must be a file path, got {_kind(value)}")
            if kind == "cas" and value in ("trusted", "host"):
                return value
            file = self.relative(path, value)
            if not file.is_file():
                raise _Invalid(f"no such file: {file}")
            return str(file)
        if kind == "policy":
            if not isinstance(value, Mapping):
                raise _Invalid(
                    f"must be a traffic policy mapping (on_http_request: [...]), got {_kind(value)}"
                )
            return json.dumps(value, default=str)
        if kind == "policy_file":
            return self.policy_file(value, path)
        raise AssertionError(f"unknown field kind {kind!r}")  # a bug in the tables above

    def strings(self, kind: str, value: object, path: FieldPath) -> list[str]:
        if not isinstance(value, list):
            raise _Invalid(f"must be a list, e.g. [a, b], got {_kind(value)}")
        items: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.err((*path, i), f"must be a string, got {_kind(item)}")
            elif kind == "cidrs" and not is_cidr(item):
                self.err((*path, i), f"not an IPv4 or IPv6 CIDR: {item!r}")
            else:
                items.append(item)
        if len(items) < len(value):
            raise _Invalid("")  # each bad item is reported above
        if kind == "bindings" and items:
            if len(items) > 1:
                raise _Invalid("at most one binding")
            if items[0] not in ("public", "internal", "kubernetes"):
                raise _Invalid(f"must be public, internal or kubernetes, got {items[0]!r}", (0,))
            if items[0] != "public":
                raise _Invalid(f"{items[0]} bindings {_FOR_NOW}: only public", (0,))
        return items

    def relative(self, path: FieldPath, value: str) -> Path:
        """``value`` as a path; relative ones are relative to the folder of the file that set it."""
        target = Path(value).expanduser()
        origin = self.file_for(path)
        if target.is_absolute() or origin is None:
            return target
        return (origin.parent / target).absolute()

    def policy_file(self, value: object, path: FieldPath) -> str:
        if not isinstance(value, str) or not value:
            raise _Invalid(f"must be a file path, got {_kind(value)}")
        file = self.relative(path, value)
        try:
            text = _read_text(file)
        except (OSError, ValueError) as exc:
            raise _Invalid(f"cannot read {file}: {exc}") from None
        document, error = _parse_yaml(text, file)
        if error is not None:
            raise _Invalid(str(error))
        if not isinstance(document, Mapping):
            raise _Invalid(f"{file} must hold a traffic policy mapping, got {_kind(document)}")
        return json.dumps(document, default=str)

    # -- endpoints ---------------------------------------------------------------------------------

    def claim(self, name: str, path: FieldPath) -> bool:
        if name in self.names:
            self.err(path, f"the name {name!r} is already used by {_fmt(self.names[name])}")
            return False
        self.names[name] = path
        return True

    def tunnels(self, value: object, config: AgentConfig) -> None:
        if not isinstance(value, Mapping):
            self.err(("tunnels",), "must be a mapping of tunnel name -> settings (proto, addr, ...)")
            return
        for raw_name, entry in value.items():
            name = str(raw_name)
            path: FieldPath = ("tunnels", name)
            if not isinstance(entry, Mapping):
                self.err(path, f"must be a mapping (proto, addr, ...), got {_kind(entry)}")
                continue
            proto = entry.get("proto")
            kind = "labeled" if "labels" in entry else str(proto)
            if kind not in _TUNNEL_TABLES:
                what = "required" if proto is None else f"must be http, tcp or tls, got {proto!r}"
                self.err((*path, "proto"), what)
            mark = len(self.found)
            spec = EndpointSpec(name=name)
            seen: dict[str, FieldPath] = {}
            self.apply(_TUNNEL_TABLES.get(kind, _HTTP_TUNNEL), entry, path, spec, seen)
            if entry.get("addr") is None:
                self.err(
                    (*path, "addr"), "required: the local address to forward to (a port, host:port or URL)"
                )
            layer4 = kind in ("tls", "labeled")
            spec.proto = "tcp" if kind == "tcp" else "http"
            if not layer4:
                self.spec_errors(spec, path, seen, {}, mark)
            if not self.claim(name, path):
                continue
            if layer4:
                where = (*path, "labels" if kind == "labeled" else "proto")
                what = "labeled tunnels" if kind == "labeled" else f"{kind} tunnels"
                self.unsupported(
                    config, name, kind, where, f"{what} {_FOR_NOW}: only http and tcp tunnels are supported"
                )
            else:
                config.endpoints[name] = spec

    def endpoints(self, value: object, config: AgentConfig) -> None:
        if not isinstance(value, list):
            self.err(("endpoints",), "must be a list of endpoints (- name: web, upstream: {url: 8080})")
            return
        for i, entry in enumerate(value):
            path: FieldPath = ("endpoints", i)
            if not isinstance(entry, Mapping):
                self.err(path, f"must be a mapping (name, url, upstream, ...), got {_kind(entry)}")
                continue
            mark = len(self.found)
            name = entry.get("name")
            if not isinstance(name, str) or not name.strip():
                why = "required" if name is None else f"must be a non-empty string, got {name!r}"
                self.err((*path, "name"), f"{why}: the name that `hatchway start NAME` uses")
                name = None
            url = entry.get("url")
            scheme = url.partition("://")[0] if isinstance(url, str) and "://" in url else ""
            layer4 = scheme == "tls"
            spec = EndpointSpec(name=name or "", proto="tcp" if scheme == "tcp" else "http")
            seen: dict[str, FieldPath] = {}
            table = _L4_ENDPOINT if layer4 else _TCP_ENDPOINT if scheme == "tcp" else _ENDPOINT
            self.apply(table, entry, path, spec, seen)
            upstream = entry.get("upstream")
            if upstream is None:
                self.err((*path, "upstream"), "required: where to forward, e.g. upstream: {url: 8080}")
            elif isinstance(upstream, Mapping) and upstream.get("url") is None:
                self.err((*path, "upstream", "url"), "required: a port, host:port or URL to forward to")
            if not layer4:
                defaults = {attr: (*path, *keys) for attr, keys in _V3_SPEC_KEYS.items()}
                self.spec_errors(spec, path, seen, defaults, mark)
            if name is None or not self.claim(name, (*path, "name")):
                continue
            if layer4:
                self.unsupported(
                    config,
                    name,
                    scheme,
                    (*path, "url"),
                    f"{scheme}:// endpoints {_FOR_NOW}: only http://, https:// and tcp://",
                )
            else:
                config.endpoints[name] = spec

    def unsupported(self, config: AgentConfig, name: str, kind: str, path: FieldPath, message: str) -> None:
        error = FileConfigError(_fmt(path), message, self.file_for(path))
        config.unsupported[name] = UnsupportedEndpoint(name, kind, error)

    def spec_errors(
        self,
        spec: EndpointSpec,
        base: FieldPath,
        seen: dict[str, FieldPath],
        defaults: dict[str, FieldPath],
        mark: int,
    ) -> None:
        """Add ``spec.validate()``'s errors under the config key each value came from.

        An error at (or below) a path this endpoint already reported is the same problem seen twice
        (a missing ``addr`` is both "required" here and "an upstream address is required" there).
        """
        reported = {p for p, _ in self.found[mark:]}
        for error in spec.validate(""):
            attr, rest = _split_field(error.field_path)
            where = seen.get(attr) or defaults.get(attr) or (*base, attr)
            message = error.message
            if rest and where[-1] == "traffic_policy_file":
                # A problem inside a policy file has no path in this file: name the key, then the
                # problem's place in the policy (as `hatchway http --traffic-policy-file` does).
                full, message = where, f"{_fmt(rest)}: {message}"
            else:
                full = (*where, *rest)
            if not any(full[:n] in reported for n in range(len(base) + 1, len(full) + 1)):
                self.err(full, message)


def _split_field(field_path: str) -> tuple[str, FieldPath]:
    """Split a spec field path: ``traffic_policy.on_http_request[1].type`` gives the attribute
    ``"traffic_policy"`` and the rest ``("on_http_request", 1, "type")``."""
    m = re.match(r"[A-Za-z0-9_]*", field_path)
    attr = m.group(0) if m else ""
    rest: list[str | int] = []
    for name, index in re.findall(r"\.([^.\[\]]+)|\[(\d+)\]", field_path[len(attr) :]):
        rest.append(int(index) if index else name)
    return attr, tuple(rest)


def _kind(value: object) -> str:
    """How to name a wrong value in a message: ``a list``, ``a mapping``, ``true``, ``'x'``."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return repr(value).lower() if isinstance(value, bool) else repr(value)
