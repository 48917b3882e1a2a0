"""Client connections that stay silent with no request in flight are closed after ``idle_timeout``
(ngrok closes idle connections after 5 minutes); a connection with a request in flight is kept."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hatchway.edge.app import Edge, EdgeConfig


async def test_idle_connections_are_closed(tmp_path: Path) -> None:
    edge = Edge(
        EdgeConfig(
            data_dir=tmp_path,
            http_addr="127.0.0.1:0",
            https_addr="127.0.0.1:0",
            tunnel_addr="127.0.0.1:0",
            idle_timeout=0.3,
        )
    )
    await edge.start()
    try:
        port = edge.addresses["http"][1]
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # One request (to an offline endpoint: a 404 from the edge), then silence on a kept-alive connection.
        writer.write(b"GET / HTTP/1.1\r\nHost: nobody.hatchway.localhost\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 404")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        await reader.readexactly(length)
        start = loop.time()
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed by the edge
        assert 0.25 <= loop.time() - start <= 3.0
        writer.close()
    finally:
        await edge.aclose(drain=0.5)
