"""``hatchway demo``: the main job on one machine — a dev edge, a sample app and an agent exposing it.

It starts a real edge (SQLite state and the dev CA under the data dir, ``*.hatchway.localhost`` names), a
small sample app on 127.0.0.1, and an agent that binds an HTTPS endpoint for it; then it fetches the URL
through the edge's HTTPS listener once, prints the URL and a ``curl`` line, and keeps serving until
Ctrl-C (``--check`` stops after the first request). Everything listens on loopback.
"""

from __future__ import annotations

import asyncio
import errno
import json
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path

import typer

from hatchway.agent.runner import Agent, AgentOptions
from hatchway.agent.spec import EndpointSpec
from hatchway.edge.app import Edge, EdgeConfig
from hatchway.net import tls


def say(line: str) -> None:
    typer.echo(line)


@dataclass
class DemoResult:
    url: str
    status_line: str
    body: str
    curl: str


async def _sample_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {
                k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            body = json.dumps(
                {
                    "hello": "from the Hatchway sample app",
                    "request": lines[0],
                    "x-forwarded-for": headers.get("x-forwarded-for", ""),
                    "x-forwarded-proto": headers.get("x-forwarded-proto", ""),
                },
                indent=2,
            ).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body) + 1}\r\n\r\n".encode()
                + body
                + b"\n"
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _start_edge(config: EdgeConfig) -> Edge:
    """Start on the default ports; any that are taken fall back to a free port."""
    edge = Edge(config)
    try:
        await edge.start()
        return edge
    except OSError as exc:
        await edge.aclose(drain=0)  # release whatever listeners did start
        if exc.errno != errno.EADDRINUSE:
            raise
    for attr in ("http_addr", "https_addr", "tunnel_addr"):
        setattr(config, attr, "127.0.0.1:0")
    edge = Edge(config)
    await edge.start()
    return edge


async def _fetch(url: str, port: int, ca_pem: bytes) -> tuple[str, str]:
    """GET ``url`` through the edge's HTTPS listener on 127.0.0.1, checking the dev CA, as curl would."""
    host = url.split("://", 1)[1].split(":", 1)[0]
    ctx = tls.client_context(ca_pem)
    ctx.set_alpn_protocols(["http/1.1"])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host)
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode("latin-1"), body.decode("utf-8", "replace")


async def run_demo(data_dir: Path | None = None, check_only: bool = False, echo: bool = True) -> DemoResult:
    config = EdgeConfig()
    if data_dir is not None:
        config.data_dir = data_dir
    app = await asyncio.start_server(_sample_app, "127.0.0.1", 0)
    app_port = app.sockets[0].getsockname()[1]
    edge = await _start_edge(config)
    tunnel_port = edge.addresses["tunnel"][1]
    https_port = edge.addresses["https"][1]
    token = (config.data_dir / "dev-token").read_text().strip()
    agent = Agent(
        AgentOptions(
            server_addr=f"localhost:{tunnel_port}",
            authtoken=token,
            ssl_context=tls.client_context(edge.certs.ca_pem),
        )
    )
    try:
        async with asyncio.timeout(20):
            (ep,) = await agent.start([EndpointSpec(addr=str(app_port), name="demo")])
            url = ep.urls[0]
            status, body = await _fetch(url, https_port, edge.certs.ca_pem)
        host = url.split("://", 1)[1].split(":", 1)[0]
        ca = config.data_dir / "ca.pem"
        curl = f"curl --cacert {ca} --resolve {host}:{https_port}:127.0.0.1 {url}/"
        result = DemoResult(url, status, body, curl)
        if echo:
            say(f"edge          https 127.0.0.1:{https_port}, agents 127.0.0.1:{tunnel_port}")
            say(f"data dir      {config.data_dir}")
            say(f"sample app    http://127.0.0.1:{app_port}")
            say(f"Forwarding    {url} -> http://localhost:{app_port}")
            say(f"checked       {status}")
            say(f"try it        {curl}")
        if not check_only:
            if echo:
                say("serving until Ctrl-C; agents on this machine can now run `hatchway http PORT`")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        return result
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        raise SystemExit(f"demo failed: {exc}") from exc
    finally:
        await agent.aclose()
        await edge.aclose(drain=1.0)
        app.close()
