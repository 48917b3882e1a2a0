"""``hatchway demo``: one HTTP request through a loopback tunnel made of Hatchway's own parts.

It starts a sample app, an edge tunnel listener with a fresh dev CA, and an agent that binds an HTTPS
endpoint; then the edge opens a Proxy stream exactly as it does for a public client and prints what the
sample app answered. Everything listens on 127.0.0.1 and stops by itself. It must not be used as a server.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hatchway.agent.forward import splice_tcp
from hatchway.agent.session import AgentSession
from hatchway.edge.registry import Registry
from hatchway.edge.tunnels import TunnelServer
from hatchway.net import tls
from hatchway.net.transport import MuxStream
from hatchway.wire import messages as m


@dataclass
class DemoResult:
    url: str
    status_line: str
    body: str
    tunnel_addr: str


async def _sample_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    body = json.dumps({"hello": "from the sample app", "request": request_line}).encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    writer.close()


async def run_demo(data_dir: Path | None = None) -> DemoResult:
    async with asyncio.timeout(30):
        tmp = tempfile.TemporaryDirectory(prefix="hatchway-demo-") if data_dir is None else None
        directory = Path(tmp.name) if tmp is not None else data_dir
        assert directory is not None
        try:
            return await _run(directory)
        finally:
            if tmp is not None:
                tmp.cleanup()


async def _run(directory: Path) -> DemoResult:
    app = await asyncio.start_server(_sample_app, "127.0.0.1", 0)
    app_port = app.sockets[0].getsockname()[1]
    ca = tls.load_or_create_ca(directory)
    edge_ctx = tls.server_context(tls.issue_cert(ca, ["localhost", "127.0.0.1"]))
    registry = Registry({"demo-token"})
    edge = TunnelServer(registry, edge_ctx)
    host, port = await edge.start("127.0.0.1", 0)
    agent = await AgentSession.connect(
        f"localhost:{port}", "demo-token", ssl_context=tls.client_context(ca.cert_pem)
    )
    try:

        async def forward(header: m.ProxyHeader, stream: MuxStream, first: bytes) -> None:
            await splice_tcp("127.0.0.1", app_port, header, stream, first)

        tunnel = await agent.bind("https", {"Hostname": "demo.hatchway.localhost"}, forward)
        # What the edge does for a public client: find the endpoint, open a Proxy stream, send the request.
        found = registry.lookup("demo.hatchway.localhost")
        assert found is not None
        session, tunnel_id = found
        stream = await session.open_proxy(tunnel_id, "127.0.0.1:50000", "https")
        await stream.write(
            b"GET /hello HTTP/1.1\r\nHost: demo.hatchway.localhost\r\nConnection: close\r\n\r\n"
        )
        response = await stream.read_all(limit=1 << 20)
        head, _, body = response.partition(b"\r\n\r\n")
        return DemoResult(
            url=tunnel.url,
            status_line=head.split(b"\r\n", 1)[0].decode("latin-1"),
            body=body.decode("utf-8", "replace"),
            tunnel_addr=f"{host}:{port}",
        )
    finally:
        await agent.aclose()
        await edge.aclose(drain=1.0)
        app.close()
