"""Entry point of the ``hatchway`` console script (typer). Commands only parse and call; no logic here."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from hatchway import __version__

T = TypeVar("T")

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Hatchway: a self-hosted tunnel edge.")


def _mount() -> None:
    from hatchway.cli.agent_cmd import config_app, http, start, tcp
    from hatchway.cli.edge_cmd import edge_app

    app.add_typer(edge_app, name="edge")
    app.add_typer(config_app, name="config")
    app.command()(http)
    app.command()(tcp)
    app.command()(start)


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (the data path is built for it), else stdlib asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    result: T = uvloop.run(coro)
    return result


@app.command()
def version() -> None:
    """Print Hatchway's version."""
    typer.echo(f"hatchway {__version__}")


@app.command()
def demo(
    check: Annotated[
        bool, typer.Option("--check", help="Stop after the first request (for scripts).")
    ] = False,
    data_dir: Annotated[Path | None, typer.Option(help="Edge data dir (default ~/.hatchway/edge).")] = None,
) -> None:
    """Start a dev edge, a sample app and an agent exposing it; print the URL and a curl line."""
    from hatchway.cli.demo import DemoResult, run_demo

    result: DemoResult = run_loop(run_demo(data_dir, check_only=check))
    if not result.status_line.startswith("HTTP/1.1 200"):
        sys.exit(1)


def main() -> None:
    _mount()
    app()
