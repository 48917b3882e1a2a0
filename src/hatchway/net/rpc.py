"""RPC over typed muxado streams, for both rims: send one JSON request and read the reply, or serve one.

A request is one JSON object with no delimiter and no FIN; a reply is one JSON object followed by FIN
(protocol.md §5, pitfalls 4-5). Protocol decisions live in ``hatchway.wire.rpc``; this module only moves
bytes between a ``MuxStream`` and those readers, and never decides what an answer says.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

import msgspec

from hatchway.errors import RemoteProtocolError, RpcError
from hatchway.net.transport import MuxConnection, MuxStream
from hatchway.wire import messages as m
from hatchway.wire.rpc import JsonReader

T = TypeVar("T", bound=msgspec.Struct)

RPC_TIMEOUT = 30.0


async def read_json(stream: MuxStream) -> dict[str, object]:
    """Read one JSON object from ``stream`` (incrementally; the peer need not send FIN)."""
    reader = JsonReader()
    while True:
        chunk = await stream.read()
        obj = reader.feed(chunk, eof=not chunk)
        if obj is not None:
            return obj


async def read_message(stream: MuxStream, struct_type: type[T]) -> T:
    return m.decode_obj(await read_json(stream), struct_type)


async def reply(stream: MuxStream, msg: msgspec.Struct) -> None:
    """Write the answer and FIN: the Rust SDK reads replies with ``read_to_end``."""
    await stream.write(m.encode(msg), fin=True)


async def call(
    conn: MuxConnection,
    stream_type: int,
    request: msgspec.Struct,
    response_type: type[T],
    within: float = RPC_TIMEOUT,
) -> T:
    """Open a typed stream, send ``request``, return the decoded reply; ``Error`` raises ``RpcError``."""
    stream = await conn.open_stream(stream_type)
    try:
        async with asyncio.timeout(within):
            await stream.write(m.encode(request))
            obj = await read_json(stream)
    finally:
        await stream.write_eof()
    error = obj.get("Error") or obj.get("error")
    if isinstance(error, str) and error:
        message, code = m.split_error(error)
        raise RpcError(message, code)
    try:
        return m.decode_obj(obj, response_type)
    except RemoteProtocolError as exc:
        raise RpcError(f"malformed reply: {exc}") from exc
