"""A 1 GiB upload through the edge over HTTPS (the issue's "a 1 GiB upload works"): the body streams
client -> edge -> tunnel -> agent -> app in bounded memory, and the app's sha256 matches the client's."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
from pathlib import Path

import pytest

from e2e_support import Agents, EdgeProc

GiB = 1 << 30
BLOCK = 1 << 20


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def _hashing_app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    digest = hashlib.sha256()
    left = length
    while left:
        piece = await reader.read(min(left, BLOCK))
        if not piece:
            break
        digest.update(piece)
        left -= len(piece)
    body = json.dumps({"sha256": digest.hexdigest(), "len": length - left}).encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    await writer.drain()
    writer.close()


@pytest.mark.slow
async def test_one_gib_upload_streams_in_bounded_memory(edge_proc: EdgeProc, agents: Agents) -> None:
    app = await asyncio.start_server(_hashing_app, "127.0.0.1", 0)
    port = app.sockets[0].getsockname()[1]
    try:
        agent = await asyncio.to_thread(agents.start, "http", str(port))
        host = agent.host
        ctx = ssl.create_default_context(cafile=str(edge_proc.ca))
        ctx.set_alpn_protocols(["http/1.1"])
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", edge_proc.https_port, ssl=ctx, server_hostname=host
        )
        writer.write(
            f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {GiB}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        block = os.urandom(BLOCK)
        digest = hashlib.sha256()
        peak = 0
        async with asyncio.timeout(240):
            for i in range(GiB // BLOCK):
                # Vary each block so the app cannot pass by hashing one block many times.
                piece = i.to_bytes(8, "big") + block[8:]
                digest.update(piece)
                writer.write(piece)
                await writer.drain()
                if i % 64 == 0:
                    peak = max(peak, _rss(edge_proc.proc.pid), _rss(agent.proc.pid))
            answer = await reader.read()
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        result = json.loads(body)
        assert result == {"sha256": digest.hexdigest(), "len": GiB}
        # Streaming, not buffering: neither process came near the size of the body.
        assert peak < 200 * (1 << 20), peak
    finally:
        app.close()
