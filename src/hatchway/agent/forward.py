"""Proxy streams to upstreams: for now plain TCP (``host:port``), spliced both ways with backpressure.

Each Proxy stream from the edge becomes one upstream connection. This module moves bytes; it never
parses HTTP (the edge already did) and never talks to the edge other than through the stream. When the
upstream cannot be reached it writes a 502 page on the stream itself, as the official SDKs do.
"""

from __future__ import annotations

import asyncio
import contextlib

from hatchway.errors import SessionClosedError, StreamResetError
from hatchway.net.transport import MuxStream
from hatchway.wire import messages as m
from hatchway.wire.frames import ErrorCode

BAD_GATEWAY = (
    b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)


def bad_gateway(reason: str) -> bytes:
    body = f"The agent could not reach its upstream: {reason}\n".encode()
    return BAD_GATEWAY % (len(body), body)


async def splice_tcp(host: str, port: int, header: m.ProxyHeader, stream: MuxStream, first: bytes) -> None:
    """Dial ``host:port`` and copy bytes both ways until both directions have ended."""
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        if header.proto in ("http", "https"):
            with contextlib.suppress(SessionClosedError, StreamResetError):
                await stream.write(bad_gateway(str(exc) or type(exc).__name__), fin=True)
        else:
            stream.reset(ErrorCode.STREAM_REFUSED)
        return

    async def up() -> None:
        try:
            if first:
                writer.write(first)
            while chunk := await stream.read():
                writer.write(chunk)
                await writer.drain()  # backpressure: stop reading the stream while the upstream is full
            if writer.can_write_eof():
                writer.write_eof()
        except (SessionClosedError, StreamResetError, ConnectionError):
            writer.close()

    async def down() -> None:
        try:
            while chunk := await reader.read(65536):
                await stream.write(chunk)
            await stream.write_eof()
        except (SessionClosedError, StreamResetError):
            writer.close()
        except ConnectionError:
            stream.reset(ErrorCode.STREAM_RESET)

    try:
        await asyncio.gather(up(), down())
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
