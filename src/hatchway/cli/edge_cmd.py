"""``hatchway edge``: run the edge, plus ``token`` and ``domain`` admin subcommands. Parses flags only."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from hatchway.cli.edge_admin import cert_app, domain_app, ssh_key_app, token_app
from hatchway.edge.app import Edge, EdgeConfig, ListenError
from hatchway.edge.domains import validate_domain
from hatchway.edge.tcp import DEFAULT_RANGE, parse_range
from hatchway.edge.tls.acme import parse_duration
from hatchway.edge.tls.acme_dns import make_provider
from hatchway.edge.verify import parse_resolver
from hatchway.store.base import DomainError

edge_app = typer.Typer(invoke_without_command=True, no_args_is_help=False, help="Run a Hatchway edge.")
edge_app.add_typer(token_app, name="token", help="Create, list and revoke authtokens.")
edge_app.add_typer(domain_app, name="domain", help="Reserve custom and wildcard domains.")
edge_app.add_typer(ssh_key_app, name="ssh-key", help="Register SSH public keys for the SSH entry.")
edge_app.add_typer(cert_app, name="cert", help="Bring your own certificates (served by SNI).")

# ACME certificates (``edge/tls/acme.py``); every key is also a flag (``--acme-directory``, ...).
_ACME_KEYS = (
    "acme_directory",
    "acme_email",
    "acme_root_cas",
    "acme_renew_before",
    "acme_renew_check",
    "acme_dns_provider",
    "acme_dns_server",
    "acme_dns_tsig_key",
    "acme_dns_zone",
    "acme_dns_exec",
)

_KEYS = {
    "data_dir",
    "base_domain",
    "http_addr",
    "https_addr",
    "tunnel_addr",
    "ssh_addr",
    "idle_timeout",
    "tcp_addr_range",
    "tcp_host",
    "cname_target_base",
    "dns_resolver",
    "skip_domain_verification",
    *_ACME_KEYS,
}


def load_edge_config(path: Path | None, **flags: object) -> EdgeConfig:
    """Flags win over the config file; the file's unknown keys are errors that name the key."""
    values: dict[str, object] = {}
    if path is not None:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise typer.BadParameter(f"{path}: {exc}", param_hint="--config") from exc
        if not isinstance(doc, dict):
            raise typer.BadParameter(f"{path}: the edge config must be a mapping", param_hint="--config")
        for key, value in doc.items():
            if key not in _KEYS:
                raise typer.BadParameter(
                    f"{path}: unknown key {key!r} (known: {sorted(_KEYS)})", param_hint="--config"
                )
            values[key] = value
    values.update({k: v for k, v in flags.items() if v is not None})
    cfg = EdgeConfig()
    for key, value in values.items():
        if key == "data_dir":
            cfg.data_dir = Path(str(value)).expanduser()
        elif key == "idle_timeout":
            try:
                cfg.idle_timeout = float(str(value))
            except ValueError as exc:
                raise typer.BadParameter(f"idle_timeout: not a number of seconds: {value!r}") from exc
        elif key == "tcp_addr_range":
            try:
                parse_range(str(value))
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--tcp-addr-range") from exc
            cfg.tcp_addr_range = str(value)
        elif key == "skip_domain_verification":
            cfg.skip_domain_verification = _flag(key, value)
        elif key == "dns_resolver":
            try:
                if str(value).strip():
                    parse_resolver(str(value))
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--dns-resolver") from exc
            cfg.dns_resolver = str(value).strip()
        elif key == "cname_target_base":
            try:
                cfg.cname_target_base = validate_domain(str(value)) if str(value).strip() else ""
            except DomainError as exc:
                raise typer.BadParameter(exc.message, param_hint="--cname-target-base") from exc
        elif key in ("acme_renew_before", "acme_renew_check"):
            try:
                setattr(cfg, key, parse_duration(value if isinstance(value, int | float) else str(value)))
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--" + key.replace("_", "-")) from exc
        else:
            setattr(cfg, key, str(value))
    if cfg.acme_directory:
        try:
            make_provider(
                cfg.acme_dns_provider,
                server=cfg.acme_dns_server,
                tsig_key=cfg.acme_dns_tsig_key,
                zone=cfg.acme_dns_zone,
                command=cfg.acme_dns_exec,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--acme-dns-provider") from exc
    return cfg


def _flag(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise typer.BadParameter(f"{key}: expected true or false, got {value!r}")


@edge_app.callback()
def edge(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None, typer.Option(help="State, CA and certificates (default ~/.hatchway/edge).")
    ] = None,
    base_domain: Annotated[str | None, typer.Option(help="Random and static names live under it.")] = None,
    http_addr: Annotated[
        str | None, typer.Option(help="Plain HTTP listener (default 127.0.0.1:8080).")
    ] = None,
    https_addr: Annotated[str | None, typer.Option(help="HTTPS listener (default 127.0.0.1:8443).")] = None,
    tunnel_addr: Annotated[str | None, typer.Option(help="Agent listener (default 127.0.0.1:4443).")] = None,
    ssh_addr: Annotated[
        str | None, typer.Option(help="SSH entry for ssh -R (default 127.0.0.1:2222; 'off' for none).")
    ] = None,
    idle_timeout: Annotated[
        float | None, typer.Option(help="Close idle client connections (s, 300).")
    ] = None,
    tcp_addr_range: Annotated[
        str | None,
        typer.Option(help=f"TCP endpoints listen on HOST:FIRST-LAST (default {DEFAULT_RANGE})."),
    ] = None,
    tcp_host: Annotated[
        str | None,
        typer.Option(
            help="Host in tcp:// URLs (default: the range's host, or the base domain for 0.0.0.0 / ::)."
        ),
    ] = None,
    cname_target_base: Annotated[
        str | None,
        typer.Option(help="Custom domains CNAME to <random>.<this> (default cname.<base domain>)."),
    ] = None,
    dns_resolver: Annotated[
        str | None,
        typer.Option(help="DNS server HOST[:PORT] asked for custom domains' CNAMEs (default: the system's)."),
    ] = None,
    skip_domain_verification: Annotated[
        bool | None,
        typer.Option(
            "--skip-domain-verification/--verify-domains",
            help="Bind custom domains without checking their CNAME record (dev only; default: verify).",
            show_default=False,
        ),
    ] = None,
    acme_directory: Annotated[
        str | None,
        typer.Option(
            help="ACME directory URL (e.g. Let's Encrypt's): endpoints get certificates from it. "
            "Unset: ACME is off and the dev CA signs everything.",
            rich_help_panel="ACME certificates",
        ),
    ] = None,
    acme_email: Annotated[
        str | None,
        typer.Option(help="Contact e-mail for the ACME account.", rich_help_panel="ACME certificates"),
    ] = None,
    acme_root_cas: Annotated[
        str | None,
        typer.Option(
            help="CA bundle (PEM) to trust the ACME server's HTTPS with (default: the system's).",
            rich_help_panel="ACME certificates",
        ),
    ] = None,
    acme_renew_before: Annotated[
        str | None,
        typer.Option(
            help="Renew a certificate when less than this is left (30d, 12h, 90s; default 30d).",
            rich_help_panel="ACME certificates",
        ),
    ] = None,
    acme_renew_check: Annotated[
        str | None,
        typer.Option(
            help="Look for certificates due for renewal this often; a name renews at most once per look "
            "(default 1h).",
            rich_help_panel="ACME certificates",
        ),
    ] = None,
    acme_dns_provider: Annotated[
        str | None,
        typer.Option(
            help="DNS-01 for wildcards: rfc2136 (DNS UPDATE) or exec (a command). Unset: no wildcards.",
            rich_help_panel="ACME certificates",
        ),
    ] = None,
    acme_dns_server: Annotated[
        str | None,
        typer.Option(
            help="rfc2136: the zone's primary DNS server, HOST:PORT.", rich_help_panel="ACME certificates"
        ),
    ] = None,
    acme_dns_tsig_key: Annotated[
        str | None,
        typer.Option(
            help="rfc2136: TSIG key NAME:ALGORITHM:BASE64SECRET (e.g. acme:hmac-sha256:...).",
            rich_help_panel="ACME certificates",
        ),
    ] = None,
    acme_dns_zone: Annotated[
        str | None,
        typer.Option(
            help="rfc2136: the zone to update (default: the domain being validated).",
            rich_help_panel="ACME certificates",
        ),
    ] = None,
    acme_dns_exec: Annotated[
        str | None,
        typer.Option(
            help="exec: command run as 'CMD present|cleanup FQDN VALUE' (FQDN like "
            "_acme-challenge.example.com., VALUE the TXT value); exit 0 once done (present: once visible).",
            rich_help_panel="ACME certificates",
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Edge config file (YAML).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warn, error.")] = "info",
) -> None:
    """Run the edge (with no subcommand)."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = load_edge_config(
        config,
        data_dir=data_dir,
        base_domain=base_domain,
        http_addr=http_addr,
        https_addr=https_addr,
        tunnel_addr=tunnel_addr,
        ssh_addr=ssh_addr,
        idle_timeout=idle_timeout,
        tcp_addr_range=tcp_addr_range,
        tcp_host=tcp_host,
        cname_target_base=cname_target_base,
        dns_resolver=dns_resolver,
        skip_domain_verification=skip_domain_verification,
        acme_directory=acme_directory,
        acme_email=acme_email,
        acme_root_cas=acme_root_cas,
        acme_renew_before=acme_renew_before,
        acme_renew_check=acme_renew_check,
        acme_dns_provider=acme_dns_provider,
        acme_dns_server=acme_dns_server,
        acme_dns_tsig_key=acme_dns_tsig_key,
        acme_dns_zone=acme_dns_zone,
        acme_dns_exec=acme_dns_exec,
    )
    logging.basicConfig(
        level=getattr(logging, log_level.upper().replace("WARN", "WARNING"), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from hatchway.cli.main import run_loop

    run_loop(_serve(cfg))


async def _serve(cfg: EdgeConfig) -> None:
    edge = Edge(cfg)
    if cfg.ssh_addr.strip().lower() not in ("", "off", "false"):
        from hatchway.ssh.server import serve_ssh

        edge.add_service("ssh", lambda e: serve_ssh(e, cfg.ssh_addr))
    try:
        await edge.start()
    except ListenError as exc:
        flag = "--" + exc.key.replace("_", "-")
        typer.echo(f"ERROR: {flag}{str(exc).removeprefix(exc.key)}", err=True)
        await edge.aclose(drain=0)
        raise typer.Exit(1) from None
    a = edge.addresses
    typer.echo(f"hatchway edge: data dir {cfg.data_dir}", err=True)
    typer.echo(
        f"  agents connect to   {a['tunnel'][0]}:{a['tunnel'][1]} (CA {cfg.data_dir / 'ca.pem'})", err=True
    )
    typer.echo(f"  http  listener      {a['http'][0]}:{a['http'][1]}", err=True)
    typer.echo(f"  https listener      {a['https'][0]}:{a['https'][1]}", err=True)
    if "ssh" in a:
        typer.echo(f"  ssh entry           {a['ssh'][0]}:{a['ssh'][1]}", err=True)
    typer.echo(f"  tcp endpoints       {edge.tcp.range} (URLs tcp://{edge.tcp.url_host}:PORT)", err=True)
    typer.echo(f"  base domain         {cfg.base_domain}", err=True)
    if cfg.acme_directory:
        dns01 = cfg.acme_dns_provider or "off (no wildcards)"
        typer.echo(f"  acme                {cfg.acme_directory} (DNS-01: {dns01})", err=True)
    if cfg.skip_domain_verification:
        typer.echo("  custom domains      not verified (--skip-domain-verification)", err=True)
    else:
        typer.echo(
            f"  custom domains      CNAME to *.{edge.cname_target_base}, checked with "
            f"{edge.domain_check.resolver.describe()}",
            err=True,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    typer.echo("hatchway edge: shutting down (draining requests in flight)", err=True)
    await edge.aclose(drain=5.0)
