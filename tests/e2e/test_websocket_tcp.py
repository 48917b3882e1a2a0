"""The WebSocket-TCP converter: WebSocket clients reach a raw TCP service through the edge.

``hatchway http PORT --websocket-tcp-converter`` fronts a plain TCP server (it upper-cases what it gets and
closes after "quit"). A ``websockets`` client (an independent implementation) sends binary messages; the
edge answers the handshake itself and carries their payloads as a byte stream to the agent, which splices
them to the TCP service; the service's bytes come back as binary messages. A plain HTTP request to such an
endpoint gets 400 ERR_NGROK_3206, a text message closes the WebSocket with 1003, and the service closing
its connection closes the WebSocket. Loopback only.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from e2e_support import Agents, EdgeProc, curl

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def tcp_service() -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data.upper())
                await writer.drain()
                if data.endswith(b"quit"):
                    break
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def _connect(uri: str, edge: EdgeProc) -> connect:
    parts = urlsplit(uri)
    kwargs: dict[str, object] = {"host": "127.0.0.1", "port": parts.port, "proxy": None}
    if parts.scheme == "wss":
        ctx = ssl.create_default_context(cafile=str(edge.ca))
        ctx.set_alpn_protocols(["http/1.1"])
        kwargs |= {"ssl": ctx, "server_hostname": parts.hostname}
    return connect(uri, open_timeout=10, close_timeout=10, **kwargs)  # type: ignore[arg-type]


async def _recv_until(ws: ClientConnection, n: int) -> bytes:
    """Binary payloads until ``n`` bytes came (TCP has no message boundaries to preserve)."""
    got = b""
    async with asyncio.timeout(15):
        while len(got) < n:
            message = await ws.recv()
            assert isinstance(message, bytes)
            got += message
    return got


async def test_binary_messages_reach_a_tcp_service_and_back(
    edge_proc: EdgeProc, agents: Agents, tcp_service: int
) -> None:
    agent = agents.start(
        "http", str(tcp_service), "--websocket-tcp-converter", "--scheme", "http,https", urls=2
    )
    urls = [str(line["url"]) for line in agent.lines if "url" in line]
    for url in urls:
        uri = url.replace("https://", "wss://").replace("http://", "ws://") + "/anything"
        async with _connect(uri, edge_proc) as ws:
            await ws.send(b"hello ")
            assert await _recv_until(ws, 6) == b"HELLO "
            big = bytes(range(97, 123)) * 10000  # 260 kB: many frames each way
            await ws.send(big)
            assert await _recv_until(ws, len(big)) == big.upper()
            await ws.send(b"quit")  # the service closes: the WebSocket closes too
            assert await _recv_until(ws, 4) == b"QUIT"
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(15):
                    await ws.recv()


async def test_text_frames_and_plain_requests_are_refused(
    edge_proc: EdgeProc, agents: Agents, tcp_service: int
) -> None:
    agent = agents.start("http", str(tcp_service), "--websocket-tcp-converter", "--scheme", "http")
    res = await asyncio.to_thread(curl, edge_proc, agent.url + "/", "-i")
    assert b" 400 " in res.stdout.split(b"\r\n", 1)[0]
    assert b"ngrok-error-code: ERR_NGROK_3206" in res.stdout
    async with _connect(agent.url.replace("http://", "ws://"), edge_proc) as ws:
        await ws.send("text is not carried")
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(15):
                await ws.recv()
    assert ws.close_code == 1003
