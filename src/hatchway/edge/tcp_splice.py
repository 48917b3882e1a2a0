"""The edge's byte splice for TCP endpoints: one public TCP connection <-> one Proxy stream to the agent.

``Splice`` is a callback-style ``asyncio.Protocol``. Client bytes go into the stream's send window from
``data_received``; when the window is full the socket stops being read until the window opens (a task
exists only for that wait). Stream bytes go to the client from the stream's sink, on the tunnel's
receive path; while the client's socket buffer is full the sink declines them, so they wait in the
stream's receive window and the agent is held back. A FIN from either side becomes a half-close on the
other; the connection closes once both directions have ended. A stream reset (the agent could not reach
its upstream, or its session ended) closes the client; a client that goes away resets only its stream.
Must not: look at or change the bytes, raise into the tunnel's receive path, or import ``agent/``.
``proxy_protocol_header`` builds the PROXY v1/v2 header a tunnel bound with ``ProxyProto`` expects.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
from typing import Protocol, cast

from hatchway.errors import LocalProtocolError, SessionClosedError, StreamResetError
from hatchway.net.sockets import tune
from hatchway.net.transport import MuxStream
from hatchway.wire.frames import ErrorCode

logger = logging.getLogger(__name__)

_STREAM_ERRORS = (SessionClosedError, StreamResetError, LocalProtocolError)


class Endpoint(Protocol):
    """What a splice needs from the TCP endpoint that accepted it (``tcp._Listener``)."""

    conns: set[Splice]

    def allows(self, ip: str) -> bool: ...

    async def open_stream(self, client_addr: str) -> MuxStream: ...

    def header(self, client: tuple[str, int], local: tuple[str, int]) -> bytes: ...


def _plain_ip(ip: str) -> str:
    """An IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 client) as plain IPv4."""
    if ip.startswith("::ffff:"):
        try:
            mapped = ipaddress.IPv6Address(ip).ipv4_mapped
        except ValueError:
            return ip
        return str(mapped) if mapped is not None else ip
    return ip


def _hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_protocol_header(version: int, client: tuple[str, int], local: tuple[str, int]) -> bytes:
    """The PROXY protocol header (v1 text or v2 binary) telling the upstream who the client is."""
    # Ends that are not IP, or not one family, are sent as "unknown" (v2: LOCAL) rather than invented.
    unknown = b"PROXY UNKNOWN\r\n" if version == 1 else _V2_SIGNATURE + b"\x20\x00\x00\x00"
    try:
        src, dst = ipaddress.ip_address(client[0]), ipaddress.ip_address(local[0])
    except ValueError:
        return unknown
    if src.version != dst.version:
        return unknown
    if version == 1:
        name = "TCP4" if src.version == 4 else "TCP6"
        return f"PROXY {name} {src} {dst} {client[1]} {local[1]}\r\n".encode()
    family = 0x11 if src.version == 4 else 0x21  # AF_INET / AF_INET6, over STREAM
    body = src.packed + dst.packed + struct.pack("!HH", client[1], local[1])
    # 0x21: version 2, command PROXY.
    return _V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(body)) + body


class Splice(asyncio.Protocol):
    """One public connection of a TCP endpoint and the Proxy stream that carries it."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.stream: MuxStream | None = None
        self._opening: asyncio.Task[None] | None = None
        self._up: asyncio.Task[None] | None = None  # writing client bytes that did not fit the window
        self._up_queue: list[bytes] = []  # client bytes that came before the stream, or during that write
        self._down: asyncio.Task[None] | None = None  # writing stream bytes held while the client was full
        self._client_paused = False  # the client's socket buffer is over its high-water mark
        self._client_eof = False  # the client sent FIN
        self._agent_eof = False  # the agent sent FIN (maybe with bytes still held for the client)
        self._up_done = False  # our FIN went on the stream
        self._down_done = False  # the agent's FIN went to the client
        self._closed = False

    # ---- the client's socket -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr = self.transport = cast(asyncio.Transport, transport)
        ip, port = tune(tr)
        ip = _plain_ip(ip)
        if not self.endpoint.allows(ip):
            logger.info("tcp connection from %s refused by the IP restriction", ip)
            self._closed = True
            tr.close()
            return
        self.endpoint.conns.add(self)
        # Nothing takes the bytes until the stream is open. uvloop starts reading after this callback
        # anyway, so data_received queues what comes early and pauses again.
        tr.pause_reading()
        # Not cancelled on close: it ends by itself (the stream opens, or the session is gone), and
        # cancelling it after the SYN went out would leave a stream the agent keeps open.
        self._opening = asyncio.ensure_future(self._open((ip, port)))

    async def _open(self, client: tuple[str, int]) -> None:
        tr = self.transport
        assert tr is not None
        try:
            stream = await self.endpoint.open_stream(_hostport(*client))
        except _STREAM_ERRORS as exc:
            logger.info("tcp connection from %s: no stream to the agent (%s)", client[0], exc)
            self._fail()
            return
        finally:
            self._opening = None
        if self._closed:
            stream.reset(ErrorCode.STREAM_CANCELLED)  # the client left while the stream was opening
            return
        self.stream = stream
        local = tr.get_extra_info("sockname")
        header = self.endpoint.header(client, (_plain_ip(str(local[0])), int(local[1])) if local else ("", 0))
        try:
            if header:
                stream.write_nowait(header)  # a fresh stream's window always holds it
        except _STREAM_ERRORS:
            self._fail()
            return
        stream.set_sink(self._sink, self._stream_ended)
        if self._up_queue:
            early = b"".join(self._up_queue)
            self._up_queue.clear()
            self._forward(stream, early)
        if self._up is not None or self._closed:
            return  # _send_rest resumes reading (or passes the FIN on) once the window takes the rest
        if self._client_eof:
            self._finish_up()
        elif not tr.is_closing():
            tr.resume_reading()

    def data_received(self, data: bytes) -> None:
        stream = self.stream
        if self._closed:
            return
        if stream is None or self._up is not None:
            self._up_queue.append(data)  # sent in order once the stream is open / the window opens
            if self.transport is not None and not self.transport.is_closing():
                self.transport.pause_reading()
            return
        self._forward(stream, data)

    def _forward(self, stream: MuxStream, data: bytes) -> None:
        try:
            sent = stream.write_nowait(data)
        except _STREAM_ERRORS:
            self._fail()
            return
        if sent < len(data):
            # The window is full: stop reading the client until the rest is sent (backpressure).
            assert self.transport is not None
            self.transport.pause_reading()
            self._up = asyncio.ensure_future(self._send_rest(stream, memoryview(data)[sent:]))

    async def _send_rest(self, stream: MuxStream, rest: memoryview) -> None:
        try:
            await stream.write(rest)
            while self._up_queue:
                await stream.write(self._up_queue.pop(0))
        except _STREAM_ERRORS:
            self._fail()
            return
        finally:
            self._up = None
        tr = self.transport
        if self._closed or tr is None:
            return
        if self._client_eof:
            self._finish_up()
        elif not tr.is_closing():
            tr.resume_reading()

    def eof_received(self) -> bool:
        self._client_eof = True
        if self.stream is not None and self._up is None and not self._closed:
            self._finish_up()
        return True  # keep our side open: the agent may still be sending

    def pause_writing(self) -> None:
        self._client_paused = True

    def resume_writing(self) -> None:
        self._client_paused = False
        stream = self.stream
        if stream is None or self._down is not None or self._closed:
            return
        if stream.buffered or (self._agent_eof and not self._down_done):
            self._down = asyncio.ensure_future(self._drain_held(stream))

    def connection_lost(self, exc: Exception | None) -> None:
        self.endpoint.conns.discard(self)
        was_closed, self._closed = self._closed, True
        for task in (self._up, self._down):
            if task is not None:
                task.cancel()
        stream = self.stream
        if stream is not None and not was_closed and not (self._up_done and self._down_done):
            stream.reset(ErrorCode.STREAM_CANCELLED)  # the client went away: only its stream ends

    # ---- the stream ----------------------------------------------------------------------------------
    def _sink(self, data: bytes) -> bool:
        # Runs on the tunnel's receive path: never raise, never block.
        tr = self.transport
        if self._closed or tr is None or tr.is_closing():
            return True  # the client is gone: drop (its stream is being reset)
        if self._client_paused:
            return False  # held in the stream's window until resume_writing
        tr.write(data)
        return True

    def _stream_ended(self) -> None:
        """The agent's FIN, or the stream's reset / the session's end (told once; the sink is dropped)."""
        stream = self.stream
        if self._closed or stream is None:
            return
        if stream.buffered or stream.at_eof():  # a reset drops what was held, so this is a FIN
            self._agent_eof = True
            if not stream.buffered:
                self._finish_down()
            elif not self._client_paused and self._down is None:
                self._down = asyncio.ensure_future(self._drain_held(stream))
        else:
            logger.debug("tcp stream %s reset: closing the client connection", stream.id)
            self._fail()

    async def _drain_held(self, stream: MuxStream) -> None:
        tr = self.transport
        try:
            # Only what is held already: ``read`` returns at once, so this never waits on the agent.
            while stream.buffered and not self._client_paused and not self._closed and tr is not None:
                tr.write(await stream.read())
        except _STREAM_ERRORS:
            self._fail()
            return
        finally:
            self._down = None
        if self._agent_eof and not stream.buffered and not self._closed and not self._down_done:
            self._finish_down()

    # ---- endings -------------------------------------------------------------------------------------
    def _finish_up(self) -> None:
        """The client's FIN goes to the agent."""
        assert self.stream is not None and self.transport is not None
        self._up_done = True
        self.stream.send_eof()
        if self._down_done:
            self.transport.close()

    def _finish_down(self) -> None:
        """The agent's FIN goes to the client."""
        tr, stream = self.transport, self.stream
        assert tr is not None and stream is not None
        self._down_done = True
        if self._up_done:
            tr.close()
            return
        if not tr.is_closing() and tr.can_write_eof():
            tr.write_eof()
        # Still told if the stream is reset later (the client's bytes would go nowhere): close then.
        stream.set_sink(lambda data: True, self._reset_after_fin)

    def _reset_after_fin(self) -> None:
        if not self._closed and self.transport is not None:
            self._closed = True
            self.transport.close()  # the client has every byte the agent sent; let them flush

    def _fail(self) -> None:
        """The stream is gone: end the client's connection at once."""
        if self._closed:
            return
        self._closed = True
        if self.transport is not None:
            self.transport.abort()

    def abort(self) -> None:
        """The endpoint went offline: reset the stream and drop the client."""
        if self._closed:
            return
        self._closed = True
        if self.stream is not None:
            self.stream.reset(ErrorCode.STREAM_CANCELLED)
        if self.transport is not None:
            self.transport.abort()
