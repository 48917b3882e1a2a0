"""The SSH session's command (``http --basic-auth a:b``, ``tcp``) and its ``-R`` forward, as Bind requests.

``http`` takes the CLI's HTTP flags, parsed by the very command ``hatchway http`` uses (``cli.agent_cmd``)
and validated by the same ``http_spec``; flags that only make sense on the agent's machine (config files,
logs, local files, the edge address) are refused by name. The ``-R`` bind address names the domain
(``-R app.example.com:443:...``) and its port picks the scheme (443 or 0: https, 80: http) unless
``--scheme`` says otherwise. ``tcp`` binds a TCP endpoint (``-R 0:`` any port, ``-R N:`` port N).
``--verbose`` (SSH only) asks for one line per request on the session.

Pure: no I/O, no asyncio. Problems become ``CommandError`` with lines meant for the user's terminal.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

import typer

# typer vendors click since 0.29 (pinned below 0.30 in pyproject); only its command objects are used.
from typer._click import Command, Context
from typer._click.core import ParameterSource
from typer._click.exceptions import ClickException

from hatchway.agent.spec import SCHEMES
from hatchway.cli.agent_cmd import (
    SPEC_FLAGS,
    TCP_SPEC_FLAGS,
    FlagProblems,
    _split_multi,
    http,
    http_spec,
    tcp,
    tcp_endpoint_spec,
)

#: Bind addresses that name no domain (OpenSSH sends "localhost" when ``-R`` has none).
LOCAL_BINDS = frozenset({"", "localhost", "127.0.0.1", "::1", "0.0.0.0", "::", "*"})

# Flags of ``hatchway http`` that read files or settings on the agent's machine: over SSH there is none.
_AGENT_ONLY = {
    "config": "--config",
    "log": "--log",
    "log_format": "--log-format",
    "log_level": "--log-level",
    "server_addr": "--server-addr",
    "root_cas": "--root-cas",
    "authtoken": "--authtoken",
    "traffic_policy_file": "--traffic-policy-file (use --traffic-policy with inline or base64url text)",
    "mutual_tls_cas": "--mutual-tls-cas",
    "upstream_protocol": "--upstream-protocol (the ssh client forwards plain TCP)",
    "app_protocol": "--app-protocol",
}

USAGE = """\
usage: ssh -R [DOMAIN:]443:localhost:PORT -p SSH_PORT v2@EDGE http [flags] [--verbose]
       ssh -R 0:localhost:PORT -p SSH_PORT v2@EDGE tcp [--remote-addr HOST:PORT] [--verbose]
  -R 443:... https (default), -R 80:... http, -R NAME:443:... a static, reserved or wildcard domain.
  http flags are those of `hatchway http`; `http --help` lists them."""


class CommandError(Exception):
    """The command cannot run; ``lines`` say why, for the user's terminal."""

    def __init__(self, *lines: str) -> None:
        super().__init__("; ".join(lines))
        self.lines = list(lines)


@dataclass(frozen=True)
class Forward:
    """One ``-R`` remote forward as the client asked for it and the port we answered."""

    listen_host: str
    listen_port: int
    port: int  # the port the client now knows this forward by (channels must name it)


@dataclass
class Plan:
    """What to bind: one (proto, opts) per scheme, in order (https first, as the agent does)."""

    binds: list[tuple[str, dict[str, Any]]]
    verbose: bool = False
    metadata: str = ""
    help_text: str = ""  # set for ``http --help``: print it and stop


def _command(func: Any) -> Command:
    app = typer.Typer(add_completion=False)
    app.command()(func)
    return typer.main.get_command(app)


_HTTP = _command(http)
_TCP = _command(tcp)  # the CLI's own `hatchway tcp`


def _flag_help(cmd: Command, skip: set[str]) -> str:
    lines = []
    for p in cmd.params:
        if p.param_type_name == "option" and p.name not in skip and not getattr(p, "hidden", False):
            help_text = getattr(p, "help", None) or ""
            lines.append(f"  {', '.join(p.opts):<34} {help_text}".rstrip())
    return "\n".join(lines)


def plan(command: str | None, fwd: Forward) -> Plan:
    """The Bind requests for ``command`` on ``fwd``; ``CommandError`` when anything is wrong."""
    if not command or not command.strip():
        raise CommandError("no command: say what to open (http or tcp)", USAGE)
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise CommandError(f"cannot split the command: {exc}") from exc
    verbose = False
    args = []
    for w in words[1:]:
        if w in ("--verbose", "-v"):
            verbose = True
        else:
            args.append(w)
    kind = words[0].lower()
    if kind == "http":
        return _plan_http(args, fwd, verbose)
    if kind == "tcp":
        return _plan_tcp(args, fwd, verbose)
    if kind in ("help", "--help", "-h"):
        return Plan([], help_text=USAGE)
    if kind == "tls":
        raise CommandError("tls endpoints are not served by this edge yet; use http or tcp")
    raise CommandError(f"unknown command {words[0]!r}", USAGE)


def _parse(cmd: Command, args: list[str]) -> Context:
    try:
        return cmd.make_context(cmd.name or "command", args)
    except ClickException as exc:
        raise CommandError(f"ERROR: {exc.format_message()}") from exc
    except (typer.Exit, typer.Abort) as exc:  # --help handled by the caller; anything else ends here
        raise CommandError("ERROR: nothing to do") from exc


def _refuse_agent_only(ctx: Context) -> set[str]:
    """The parameters given on the command line; the agent-only ones among them are refused by name."""
    given = {name for name in ctx.params if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    refused = [_AGENT_ONLY[n] for n in sorted(given & _AGENT_ONLY.keys())]
    if refused:
        raise CommandError(*(f"ERROR: {flag} is not available over ssh" for flag in refused))
    return given


def _plan_http(args: list[str], fwd: Forward, verbose: bool) -> Plan:
    if "--help" in args or "-h" in args:
        text = "usage: ... http [flags] [--verbose]\n" + _flag_help(_HTTP, {"addr", *_AGENT_ONLY})
        return Plan([], help_text=text)
    # The upstream is on the client's side of the channel; a stand-in address keeps the parser whole.
    ctx = _parse(_HTTP, ["localhost:80", *args])
    given = _refuse_agent_only(ctx)
    if ctx.params.get("host_header") == "rewrite":
        raise CommandError(
            "ERROR: --host-header=rewrite needs the upstream's name, which only your ssh client knows; "
            "use --host-header=NAME or --request-header-add='host: NAME'"
        )
    try:
        spec = http_spec(**{k: v for k, v in ctx.params.items() if k in SPEC_FLAGS})
    except FlagProblems as exc:
        raise CommandError(*(f"ERROR: {line}" for line in exc.lines)) from exc
    host = fwd.listen_host.lower().rstrip(".")
    if host not in LOCAL_BINDS:
        asked = spec.requested_domain().lower()
        if asked and asked != host:
            raise CommandError(f"ERROR: -R names {host} but --domain/--url names {asked}: give one")
        if not asked:
            spec.domain = host
    if "scheme" in given:
        schemes = _split_multi(ctx.params["scheme"])
    elif spec.url and "://" in spec.url:
        schemes = spec.url_schemes()
    elif fwd.listen_port == 80:
        schemes = ["http"]
    elif fwd.listen_port in (0, 443):
        schemes = ["https"]
    else:
        raise CommandError(
            f"ERROR: remote port {fwd.listen_port}: use -R 443:... (https), -R 80:... (http) or -R 0:..."
        )
    bad = [s for s in schemes if s not in SCHEMES]
    if bad:
        raise CommandError(f"ERROR: --scheme: unknown scheme {bad[0]!r} (use http, https)")
    spec.schemes = schemes
    opts = spec.to_bind_opts()
    ordered = sorted(dict.fromkeys(schemes), key=lambda s: s != "https")
    return Plan([(s, dict(opts)) for s in ordered], verbose=verbose, metadata=spec.metadata)


def _plan_tcp(args: list[str], fwd: Forward, verbose: bool) -> Plan:
    if "--help" in args or "-h" in args:
        return Plan(
            [], help_text="usage: ... tcp [flags] [--verbose]\n" + _flag_help(_TCP, {"addr", *_AGENT_ONLY})
        )
    ctx = _parse(_TCP, ["localhost:22", *args])  # the upstream is on the client's side, as for http
    _refuse_agent_only(ctx)
    params = {k: v for k, v in ctx.params.items() if k in TCP_SPEC_FLAGS}
    if not params.get("remote_addr") and not params.get("url") and fwd.listen_port:
        params["remote_addr"] = f":{fwd.listen_port}"  # -R 10005:... asks for that port
    try:
        spec = tcp_endpoint_spec(**params)
    except FlagProblems as exc:
        raise CommandError(*(f"ERROR: {line}" for line in exc.lines)) from exc
    return Plan([("tcp", spec.to_bind_opts())], verbose=verbose, metadata=spec.metadata)
