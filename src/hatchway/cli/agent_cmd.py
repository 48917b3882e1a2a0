"""``hatchway http``, ``hatchway tcp``, ``hatchway start``, ``hatchway config check``: flags and files to an
``Agent``.

Resolution order for where to connect: flags, then environment (``HATCHWAY_AUTHTOKEN``,
``NGROK_AUTHTOKEN``), then config files, then a dev edge on this machine (its data dir holds
``edge.json``, ``ca.pem`` and ``dev-token``). Output is a live status screen on a terminal, log lines
otherwise. This module parses and prints; the agent's behaviour lives in ``agent/``.

``hatchway http`` takes ngrok's module flags (``--basic-auth``, ``--cidr-allow``, ``--verify-webhook``, ...)
and ``--traffic-policy-file``; the spec is validated before connecting, so a bad value or a broken policy
is printed with its flag (and the policy path) and nothing goes online. What the edge refuses at Bind is
printed as ``ERROR: message [ERR_NGROK_...]``. ``hatchway tcp`` does the same for ngrok's TCP flags
(``--remote-addr``, ``--url tcp://...``, ``--cidr-allow``/``--cidr-deny``, ``--proxy-proto``).
Must not: print tracebacks for user errors, or decide what the edge supports (it says so itself).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TextIO

import typer

from hatchway.agent.config import (
    AgentConfig,
    AgentSettings,
    ConfigErrors,
    check_config,
    default_config_path,
    load_config,
)
from hatchway.agent.discovery import dev_edge_dir, find_dev_edge
from hatchway.agent.runner import Agent, AgentOptions
from hatchway.agent.spec import EndpointSpec
from hatchway.errors import ConfigError, RpcError
from hatchway.net import tls

config_app = typer.Typer(help="Check agent configuration files.", no_args_is_help=True)

Multi = Annotated[list[str] | None, typer.Option()]


def _split_multi(values: list[str] | None) -> list[str]:
    """Repeatable flags also accept comma lists (``--scheme http,https``), as ngrok's do."""
    out: list[str] = []
    for v in values or []:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


def _split_patterns(values: list[str] | None) -> list[str]:
    """Like ``_split_multi`` for regular expressions: a comma inside ``{}``, ``[]`` or ``()`` (``a{1,3}``)
    belongs to the pattern, so only top-level commas separate patterns."""
    out: list[str] = []
    for v in values or []:
        depth, start, escaped = 0, 0, False
        for i, ch in enumerate(v):
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch in "{[(":
                depth += 1
            elif ch in "}])":
                depth = max(0, depth - 1)
            elif ch == "," and depth == 0:
                out.append(v[start:i])
                start = i + 1
        out.append(v[start:])
    return [p for p in out if p]


# Spec fields whose flag is not the field's own name with dashes (for error messages).
_FLAG_FOR = {
    "addr": "ADDR",
    "schemes": "--scheme",
    "oauth_provider": "--oauth",
    "oauth_allow_emails": "--oauth-allow-email",
    "oauth_allow_domains": "--oauth-allow-domain",
    "oauth_scopes": "--oauth-scope",
    "oidc_issuer_url": "--oidc",
    "oidc_scopes": "--oidc-scope",
    "traffic_policy": "--traffic-policy-file",
}


def flag_error(problem: ConfigError) -> str:
    """``spec.validate()``'s problem as the user typed it: ``--cidr-allow[1]: ...``; a Traffic Policy problem
    as ``--traffic-policy-file: on_http_request[0].actions[0].type: ...``."""
    head, dot, rest = problem.field_path.partition(".")
    attr, bracket, index = head.partition("[")
    flag = _FLAG_FOR.get(attr, "--" + attr.replace("_", "-"))
    where = flag + bracket + index
    return f"{where}: {rest}: {problem.message}" if dot else f"{where}: {problem.message}"


@dataclass
class Resolved:
    settings: AgentSettings
    specs: list[EndpointSpec]
    ca_pem: bytes | None


def _load(config: Sequence[Path | str] | None) -> AgentConfig:
    """The ``--config`` files (each may be a comma list), merged in order; the default file without any.
    Errors end the command with every problem printed."""
    paths = [Path(p) for c in (config or []) for p in str(c).split(",")]
    if not paths and default_config_path().exists():
        paths = [default_config_path()]
    try:
        return load_config(paths)
    except ConfigErrors as exc:
        _fail(exc)


def resolve(
    cfg: AgentConfig,
    specs: list[EndpointSpec],
    authtoken: str | None,
    server_addr: str | None,
    root_cas: str | None,
) -> Resolved:
    s = cfg.settings
    # Flags, then the environment, then config files (ngrok's NGROK_AUTHTOKEN overrides its file too).
    s.authtoken = (
        authtoken or os.environ.get("HATCHWAY_AUTHTOKEN") or os.environ.get("NGROK_AUTHTOKEN") or s.authtoken
    )
    if server_addr:
        s.server_addr = server_addr
    if root_cas:
        s.root_cas = root_cas
    if not s.server_addr:
        dev = find_dev_edge()
        if dev is None:
            raise ConfigError(
                "server_addr",
                "no edge to connect to: pass --server-addr HOST:PORT (or set server_addr), or run "
                f"`hatchway edge` on this machine (looked in {dev_edge_dir()})",
            )
        s.server_addr = dev.server_addr
        # A dev edge's certificates come from its own CA: trust it unless a CA file was named.
        if (not s.root_cas or s.root_cas in ("trusted", "host")) and not root_cas and dev.ca_file is not None:
            s.root_cas = str(dev.ca_file)
        if not s.authtoken:
            s.authtoken = dev.token
    ca_pem: bytes | None = None
    if s.root_cas and s.root_cas not in ("trusted", "host"):
        try:
            ca_pem = Path(s.root_cas).expanduser().read_bytes()
        except OSError as exc:
            raise ConfigError("root_cas", f"cannot read {s.root_cas}: {exc.strerror}") from exc
    return Resolved(s, specs, ca_pem)


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else []


class Output:
    """Log lines (logfmt or JSON) to a stream, or a live status screen on a terminal."""

    def __init__(self, log: str, log_format: str, level: str, settings: AgentSettings) -> None:
        self.settings = settings
        self.format = log_format
        self.stream: TextIO | None = None
        self.live: Any = None
        self.agent: Agent | None = None
        self.level = level
        if log in ("", "stdout"):
            self.stream = sys.stdout
        elif log == "stderr":
            self.stream = sys.stderr
        elif log != "false":
            self.stream = open(log, "a", buffering=1)  # noqa: SIM115 -- kept open for the agent's lifetime

    def line(self, lvl: str, msg: str, **fields: object) -> None:
        if self.stream is None or (lvl == "debug" and self.level != "debug"):
            return
        t = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if self.format == "json":
            self.stream.write(json.dumps({"t": t, "lvl": lvl, "msg": msg, **fields}) + "\n")
        else:
            parts = [f"t={t}", f"lvl={lvl}", f"msg={json.dumps(msg)}"]
            parts += [
                f"{k}={json.dumps(v) if isinstance(v, str) and (' ' in v or not v) else v}"
                for k, v in fields.items()
            ]
            self.stream.write(" ".join(parts) + "\n")
        self.stream.flush()

    def event(self, kind: str, data: dict[str, object]) -> None:
        if kind == "bound":
            self.line(
                "info", "started tunnel", obj="tunnels", name=data["name"], addr=data["addr"], url=data["url"]
            )
        elif kind == "online":
            self.line(
                "info",
                "client session established" if not data.get("reconnected") else "reconnected",
                obj="csess",
                urls=",".join(str(u) for u in _as_list(data.get("urls"))),
            )
        elif kind == "reconnecting":
            self.line("warn", "session closed, reconnecting", obj="csess")
        elif kind == "error":
            self.line("error", str(data.get("error")), err=data.get("code", ""))


def status_table(agent: Agent, settings: AgentSettings) -> Any:
    from rich.table import Table

    t = Table.grid(padding=(0, 3))
    t.add_column(style="bold")
    t.add_column()
    t.add_row("Session Status", {"online": "[green]online[/]"}.get(agent.state, f"[yellow]{agent.state}[/]"))
    t.add_row("Edge", settings.server_addr)
    if agent.session is not None and agent.session.latency is not None:
        t.add_row("Latency", f"{agent.session.latency * 1000:.0f}ms")
    for ep in agent.endpoints:
        for url in ep.urls:
            t.add_row("Forwarding", f"{url} -> {ep.upstream_url}")
    st = agent.stats
    t.add_row("", "")
    t.add_row("Connections", "ttl     opn     p50     p90")
    t.add_row("", f"{st.total:<7} {st.open:<7} {st.percentile(50):<7.2f} {st.percentile(90):.2f}")
    return t


async def run_agent(res: Resolved, out: Output, console: bool) -> int:
    ctx = tls.client_context(res.ca_pem)  # None (trusted/host) means the system store
    s = res.settings
    agent = Agent(
        AgentOptions(
            server_addr=s.server_addr,
            authtoken=s.authtoken,
            ssl_context=ctx,
            metadata=s.metadata,
            heartbeat_interval=s.heartbeat_interval,
            heartbeat_tolerance=s.heartbeat_tolerance,
            connect_timeout=s.connect_timeout,
        ),
        on_event=out.event,
    )
    try:
        await agent.start(res.specs)
    except RpcError as exc:
        code = f" [{exc.ngrok_code}]" if exc.ngrok_code else ""
        typer.echo(f"ERROR: {exc.message}{code}", err=True)
        return 1
    except (OSError, TimeoutError) as exc:
        typer.echo(f"ERROR: cannot reach the edge at {s.server_addr}: {exc}", err=True)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if console:
        from rich.live import Live

        with Live(status_table(agent, s), refresh_per_second=2, screen=False) as live:
            while not stop.is_set():
                live.update(status_table(agent, s))
                try:
                    async with asyncio.timeout(0.5):
                        await stop.wait()
                except TimeoutError:
                    pass
    else:
        await stop.wait()
    await agent.aclose()
    return 0


def _run(res: Resolved, log: str | None, log_format: str | None, log_level: str | None) -> None:
    s = res.settings
    log_target = log if log is not None else (s.log or "")
    console = log is None and not s.log and sys.stdout.isatty()
    out = Output(
        "false" if console else log_target,
        log_format or s.log_format or "logfmt",
        log_level or s.log_level,
        s,
    )
    from hatchway.cli.main import run_loop

    raise typer.Exit(run_loop(run_agent(res, out, console)))


def _fail(exc: ConfigError | ConfigErrors) -> NoReturn:
    typer.echo(f"ERROR: {exc}", err=True)
    raise typer.Exit(1)


class FlagProblems(Exception):
    """What is wrong with ``http`` flags, one line per problem, each naming its flag."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def inline_policy(value: str) -> str:
    """``--traffic-policy``'s value as document text: YAML/JSON as given, or the base64url form of it.

    The URL-safe form exists for ``ssh ... http --traffic-policy=...``, where quoting a YAML document
    through two shells is impractical. Base64url text has no ``:``, space or brace, so it can never be
    mistaken for a document (and a document is never valid base64url)."""
    text = value.strip()
    if text and re.fullmatch(r"[A-Za-z0-9_-]+=*", text):
        try:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8")
        except (ValueError, UnicodeDecodeError) as exc:
            raise FlagProblems([f"--traffic-policy: not valid base64url text: {exc}"]) from exc
    return value


def http_spec(
    addr: str,
    domain: str | None = None,
    url: str | None = None,
    scheme: list[str] | None = None,
    basic_auth: list[str] | None = None,
    cidr_allow: list[str] | None = None,
    cidr_deny: list[str] | None = None,
    compression: bool = False,
    circuit_breaker: float | None = None,
    ua_filter_allow: list[str] | None = None,
    ua_filter_deny: list[str] | None = None,
    verify_webhook: str | None = None,
    verify_webhook_secret: str | None = None,
    websocket_tcp_converter: bool = False,
    oauth: str | None = None,
    oauth_allow_email: list[str] | None = None,
    oauth_allow_domain: list[str] | None = None,
    oauth_scope: list[str] | None = None,
    oauth_client_id: str | None = None,
    oauth_client_secret: str | None = None,
    oidc: str | None = None,
    oidc_client_id: str | None = None,
    oidc_client_secret: str | None = None,
    oidc_scope: list[str] | None = None,
    mutual_tls_cas: Path | None = None,
    request_header_add: list[str] | None = None,
    request_header_remove: list[str] | None = None,
    response_header_add: list[str] | None = None,
    response_header_remove: list[str] | None = None,
    host_header: str | None = None,
    upstream_protocol: str | None = None,
    app_protocol: str | None = None,
    metadata: str | None = None,
    traffic_policy_file: Path | None = None,
    traffic_policy: str | None = None,
    pooling_enabled: bool = False,
) -> EndpointSpec:
    """The endpoint that ``hatchway http`` flags describe, validated offline (the SSH entry parses the
    same flags with the same command and calls this too). Raises ``FlagProblems``."""
    spec = EndpointSpec(
        addr=addr,
        name="command_line",
        domain=domain or "",
        url=url or "",
        schemes=_split_multi(scheme) or ["https"],
        # Passwords and header values may hold commas: those flags are repeated, never split.
        basic_auth=list(basic_auth or []),
        cidr_allow=_split_multi(cidr_allow),
        cidr_deny=_split_multi(cidr_deny),
        compression=compression,
        circuit_breaker=circuit_breaker or 0.0,
        ua_filter_allow=_split_patterns(ua_filter_allow),
        ua_filter_deny=_split_patterns(ua_filter_deny),
        verify_webhook=verify_webhook or "",
        verify_webhook_secret=verify_webhook_secret or "",
        websocket_tcp_converter=websocket_tcp_converter,
        oauth_provider=oauth or "",
        oauth_allow_emails=_split_multi(oauth_allow_email),
        oauth_allow_domains=_split_multi(oauth_allow_domain),
        oauth_scopes=_split_multi(oauth_scope),
        oauth_client_id=oauth_client_id or "",
        oauth_client_secret=oauth_client_secret or "",
        oidc_issuer_url=oidc or "",
        oidc_client_id=oidc_client_id or "",
        oidc_client_secret=oidc_client_secret or "",
        oidc_scopes=_split_multi(oidc_scope),
        mutual_tls_cas=str(mutual_tls_cas) if mutual_tls_cas is not None else "",
        request_header_add=list(request_header_add or []),
        request_header_remove=_split_multi(request_header_remove),
        response_header_add=list(response_header_add or []),
        response_header_remove=_split_multi(response_header_remove),
        host_header=host_header or "",
        upstream_protocol=upstream_protocol or app_protocol or "http1",
        metadata=metadata or "",
        pooling_enabled=pooling_enabled,
    )
    if traffic_policy_file is not None and traffic_policy is not None:
        raise FlagProblems(["--traffic-policy: give either it or --traffic-policy-file, not both"])
    if traffic_policy is not None:
        spec.traffic_policy = inline_policy(traffic_policy)
    if traffic_policy_file is not None:
        try:
            spec.traffic_policy = traffic_policy_file.read_text(encoding="utf-8")
        except OSError as exc:
            msg = f"cannot read {traffic_policy_file}: {exc.strerror}"
            raise FlagProblems([f"--traffic-policy-file: {msg}"]) from exc
        except UnicodeDecodeError as exc:
            raise FlagProblems([f"--traffic-policy-file: {traffic_policy_file} is not UTF-8 text"]) from exc
    # Everything the edge would refuse at Bind (module values, the policy) is refused here, offline.
    problems = spec.validate()
    if problems:
        raise FlagProblems([flag_error(p) for p in problems])
    return spec


SPEC_FLAGS = frozenset(inspect.signature(http_spec).parameters)


ConfigOpt = Annotated[list[Path] | None, typer.Option("--config", help="Config file(s), merged in order.")]
LogOpt = Annotated[str | None, typer.Option(help="stdout, stderr, false or a file.")]
LogFormatOpt = Annotated[str | None, typer.Option(help="logfmt or json.")]
LogLevelOpt = Annotated[str | None, typer.Option(help="debug, info, warn, error.")]
ServerAddrOpt = Annotated[str | None, typer.Option(help="The edge's agent address HOST:PORT.")]
RootCasOpt = Annotated[str | None, typer.Option(help="PEM file of CAs to trust for the edge.")]


def _start_one(build: Callable[[], EndpointSpec], cfg: AgentConfig, flags: dict[str, Any]) -> None:
    """Validate one endpoint from its command's flags (``build``), resolve where to connect, and run."""
    try:
        spec = build()
    except FlagProblems as exc:
        for line in exc.lines:
            typer.echo(f"ERROR: {line}", err=True)
        raise typer.Exit(1) from None
    try:
        res = resolve(cfg, [spec], flags.get("authtoken"), flags.get("server_addr"), flags.get("root_cas"))
    except ConfigError as exc:
        _fail(exc)
    _run(res, flags.get("log"), flags.get("log_format"), flags.get("log_level"))


def http(
    addr: Annotated[str, typer.Argument(help="Port, host:port, URL, file:///abs/path or unix:/path.")],
    authtoken: Annotated[
        str | None, typer.Option(help="Authtoken (also HATCHWAY_AUTHTOKEN / NGROK_AUTHTOKEN).")
    ] = None,
    domain: Annotated[str | None, typer.Option(help="Static, reserved or wildcard domain.")] = None,
    url: Annotated[str | None, typer.Option(help="Endpoint URL, e.g. https://app.example.com.")] = None,
    scheme: Annotated[
        list[str] | None, typer.Option("--scheme", "--schemes", help="https (default), http, or both.")
    ] = None,
    basic_auth: Annotated[
        list[str] | None, typer.Option(help="user:password (8-128 characters); repeat for more users.")
    ] = None,
    cidr_allow: Annotated[list[str] | None, typer.Option(help="Only clients in these CIDRs.")] = None,
    cidr_deny: Annotated[list[str] | None, typer.Option(help="Refuse clients in these CIDRs.")] = None,
    compression: Annotated[bool, typer.Option(help="Compress responses (gzip, deflate, ...).")] = False,
    circuit_breaker: Annotated[
        float | None, typer.Option(help="Reject with 503 when this ratio of responses are 5xx (0-1).")
    ] = None,
    ua_filter_allow: Annotated[list[str] | None, typer.Option(help="Allowed User-Agent regex.")] = None,
    ua_filter_deny: Annotated[list[str] | None, typer.Option(help="Denied User-Agent regex.")] = None,
    verify_webhook: Annotated[
        str | None, typer.Option(help="Verify webhook signatures from this provider (github, ...).")
    ] = None,
    verify_webhook_secret: Annotated[str | None, typer.Option(help="The provider's signing secret.")] = None,
    websocket_tcp_converter: Annotated[bool, typer.Option(help="WebSocket to TCP upstream.")] = False,
    oauth: Annotated[str | None, typer.Option(help="Require an OAuth login (google, github, ...).")] = None,
    oauth_allow_email: Multi = None,
    oauth_allow_domain: Multi = None,
    oauth_scope: Multi = None,
    oauth_client_id: Annotated[str | None, typer.Option()] = None,
    oauth_client_secret: Annotated[str | None, typer.Option()] = None,
    oidc: Annotated[str | None, typer.Option(help="Require an OpenID Connect login (issuer URL).")] = None,
    oidc_client_id: Annotated[str | None, typer.Option()] = None,
    oidc_client_secret: Annotated[str | None, typer.Option()] = None,
    oidc_scope: Multi = None,
    mutual_tls_cas: Annotated[
        Path | None, typer.Option(help="Require client certificates signed by these CAs (PEM file).")
    ] = None,
    request_header_add: Multi = None,
    request_header_remove: Multi = None,
    response_header_add: Multi = None,
    response_header_remove: Multi = None,
    host_header: Annotated[str | None, typer.Option(help="rewrite, preserve or a host.")] = None,
    upstream_protocol: Annotated[str | None, typer.Option(help="http1 or http2 (h2c).")] = None,
    app_protocol: Annotated[str | None, typer.Option(hidden=True)] = None,
    metadata: Annotated[str | None, typer.Option()] = None,
    traffic_policy_file: Annotated[
        Path | None,
        # --policy-file is the name before ngrok 3.13.0, still accepted there.
        typer.Option(
            "--traffic-policy-file", "--policy-file", help="Traffic Policy document (YAML or JSON)."
        ),
    ] = None,
    traffic_policy: Annotated[
        str | None,
        typer.Option(help="Traffic Policy inline: YAML/JSON text, or base64url of it (URL-safe, for ssh)."),
    ] = None,
    pooling_enabled: Annotated[bool, typer.Option()] = False,
    config: ConfigOpt = None,
    log: LogOpt = None,
    log_format: LogFormatOpt = None,
    log_level: LogLevelOpt = None,
    server_addr: ServerAddrOpt = None,
    root_cas: RootCasOpt = None,
) -> None:
    """Expose a local HTTP service on a public URL."""
    flags = dict(locals())
    cfg = _load(config)
    _start_one(lambda: http_spec(**{k: v for k, v in flags.items() if k in SPEC_FLAGS}), cfg, flags)


def tcp_endpoint_spec(
    addr: str,
    remote_addr: str | None = None,
    url: str | None = None,
    cidr_allow: list[str] | None = None,
    cidr_deny: list[str] | None = None,
    proxy_proto: str | None = None,
    metadata: str | None = None,
) -> EndpointSpec:
    """The endpoint that ``hatchway tcp`` flags describe, validated offline (the SSH entry's ``tcp`` parses
    the same flags with the same command and calls this too). Raises ``FlagProblems``."""
    spec = EndpointSpec(
        addr=addr,
        proto="tcp",
        name="command_line",
        remote_addr=remote_addr or "",
        url=url or "",
        cidr_allow=_split_multi(cidr_allow),
        cidr_deny=_split_multi(cidr_deny),
        proxy_proto=proxy_proto or "",
        metadata=metadata or "",
    )
    problems = spec.validate()
    if problems:
        raise FlagProblems([flag_error(p) for p in problems])
    return spec


TCP_SPEC_FLAGS = frozenset(inspect.signature(tcp_endpoint_spec).parameters)


def tcp(
    addr: Annotated[str, typer.Argument(help="Local port or host:port to forward to.")],
    authtoken: Annotated[
        str | None, typer.Option(help="Authtoken (also HATCHWAY_AUTHTOKEN / NGROK_AUTHTOKEN).")
    ] = None,
    remote_addr: Annotated[
        str | None, typer.Option(help="The edge's HOST:PORT (or :PORT) to listen on; default: any port.")
    ] = None,
    url: Annotated[str | None, typer.Option(help="Endpoint URL, e.g. tcp://tcp.example.com:10005.")] = None,
    cidr_allow: Annotated[list[str] | None, typer.Option(help="Only clients in these CIDRs.")] = None,
    cidr_deny: Annotated[list[str] | None, typer.Option(help="Refuse clients in these CIDRs.")] = None,
    proxy_proto: Annotated[
        str | None,
        typer.Option(
            "--proxy-proto",
            "--upstream-proxy-protocol",
            help="Send a PROXY protocol header (1 or 2) to the upstream.",
        ),
    ] = None,
    metadata: Annotated[str | None, typer.Option(help="Opaque text kept with the endpoint.")] = None,
    config: ConfigOpt = None,
    log: LogOpt = None,
    log_format: LogFormatOpt = None,
    log_level: LogLevelOpt = None,
    server_addr: ServerAddrOpt = None,
    root_cas: RootCasOpt = None,
) -> None:
    """Expose a local TCP service (ssh, a database, ...) on a public tcp://HOST:PORT."""
    flags = dict(locals())
    cfg = _load(config)
    _start_one(
        lambda: tcp_endpoint_spec(**{k: v for k, v in flags.items() if k in TCP_SPEC_FLAGS}), cfg, flags
    )


def start(
    names: Annotated[
        list[str] | None, typer.Argument(help="Endpoint or tunnel names from the config.")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Start every endpoint in the config.")] = False,
    config: Annotated[
        list[Path] | None, typer.Option("--config", help="Config file(s), merged in order.")
    ] = None,
    authtoken: Annotated[str | None, typer.Option()] = None,
    log: Annotated[str | None, typer.Option()] = None,
    log_format: Annotated[str | None, typer.Option()] = None,
    log_level: Annotated[str | None, typer.Option()] = None,
    server_addr: Annotated[str | None, typer.Option()] = None,
    root_cas: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Start endpoints by name from the config file(s) (or --all)."""
    cfg = _load(config)
    try:
        specs = list(cfg.select(list(names or []), all_endpoints=all_).values())
    except (ConfigError, ConfigErrors) as exc:
        _fail(exc)
    if not specs:
        _fail(ConfigError("start", "name endpoints to start, or pass --all"))
    try:
        res = resolve(cfg, specs, authtoken, server_addr, root_cas)
    except ConfigError as exc:
        _fail(exc)
    _run(res, log, log_format, log_level)


@config_app.command("check")
def config_check(
    config: Annotated[list[Path] | None, typer.Option("--config", help="Config file(s) to check.")] = None,
) -> None:
    """Validate config files and print every error with its field path."""
    paths = list(config or [default_config_path()])
    errors = check_config(paths)
    if errors:
        for line in errors:
            typer.echo(line, err=True)
        raise typer.Exit(1)
    typer.echo(f"Valid configuration file at {', '.join(map(str, paths))}")
