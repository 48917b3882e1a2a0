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

from hatchway.cli.edge_admin import domain_app, token_app
from hatchway.edge.app import Edge, EdgeConfig

edge_app = typer.Typer(invoke_without_command=True, no_args_is_help=False, help="Run a Hatchway edge.")
edge_app.add_typer(token_app, name="token", help="Create, list and revoke authtokens.")
edge_app.add_typer(domain_app, name="domain", help="Reserve custom and wildcard domains.")

_KEYS = {"data_dir", "base_domain", "http_addr", "https_addr", "tunnel_addr", "ssh_addr", "idle_timeout"}


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
        else:
            setattr(cfg, key, str(value))
    return cfg


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
    ssh_addr: Annotated[str | None, typer.Option(help="SSH listener (default 127.0.0.1:2222).")] = None,
    idle_timeout: Annotated[
        float | None, typer.Option(help="Close idle client connections (s, 300).")
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
    await edge.start()
    a = edge.addresses
    typer.echo(f"hatchway edge: data dir {cfg.data_dir}", err=True)
    typer.echo(
        f"  agents connect to   {a['tunnel'][0]}:{a['tunnel'][1]} (CA {cfg.data_dir / 'ca.pem'})", err=True
    )
    typer.echo(f"  http  listener      {a['http'][0]}:{a['http'][1]}", err=True)
    typer.echo(f"  https listener      {a['https'][0]}:{a['https'][1]}", err=True)
    typer.echo(f"  base domain         {cfg.base_domain}", err=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    typer.echo("hatchway edge: shutting down (draining requests in flight)", err=True)
    await edge.aclose(drain=5.0)
