"""The agent's session with an edge: TLS dial, heartbeats, Auth, Bind/Unbind, and proxy stream dispatch.

This is the SDK core. It speaks the protocol the way the official SDKs do (heartbeat stream first, then
Auth, then one Bind at a time) so our agent and theirs look alike to the edge. It does not know what the
upstream is: each Proxy stream goes to the ``on_proxy`` callback of the tunnel it names (see
``forward.py``). Reconnecting with rebind builds on ``ClientId``/``Cookie`` kept here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hatchway import __version__
from hatchway.errors import RemoteProtocolError, SessionClosedError, StreamResetError
from hatchway.net import rpc
from hatchway.net.heartbeat import run_beats
from hatchway.net.transport import MuxConnection, MuxStream
from hatchway.wire import messages as m
from hatchway.wire.frames import ErrorCode
from hatchway.wire.heartbeat import DEFAULT_INTERVAL, DEFAULT_TOLERANCE, Heartbeater
from hatchway.wire.mux import MuxSession
from hatchway.wire.rpc import NO_CALLBACK_ERROR, ProxyHeaderReader, StreamType

logger = logging.getLogger(__name__)

ProxyHandler = Callable[[m.ProxyHeader, MuxStream, bytes], Awaitable[None]]
_NS = 1_000_000_000


@dataclass
class BoundTunnel:
    id: str
    url: str
    proto: str
    token: str
    opts: dict[str, Any]
    on_proxy: ProxyHandler
    bind: m.Bind = field(default_factory=m.Bind)


def split_addr(addr: str, default_port: int = 443) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep:
        return addr, default_port
    return host.strip("[]"), int(port)


class AgentSession:
    """A connected, authenticated session. Create with ``await AgentSession.connect(...)``."""

    def __init__(self, conn: MuxConnection, heartbeat: Heartbeater) -> None:
        self.conn = conn
        self.heartbeat = heartbeat
        self.auth_resp = m.AuthResp()
        self.tunnels: dict[str, BoundTunnel] = {}
        self.latency: float | None = None
        self._bind_lock = asyncio.Lock()

    @classmethod
    async def connect(
        cls,
        server_addr: str,
        authtoken: str = "",
        *,
        ssl_context: ssl.SSLContext | None = None,
        metadata: str = "",
        heartbeat_interval: float = DEFAULT_INTERVAL,
        heartbeat_tolerance: float = DEFAULT_TOLERANCE,
        client_id: str = "",
        cookie: str = "",
        connect_timeout: float = 10.0,
    ) -> AgentSession:
        """Dial, start heartbeats, authenticate. An Auth refusal raises ``RpcError`` with the ngrok code."""
        host, port = split_addr(server_addr)
        loop = asyncio.get_running_loop()
        holder: list[AgentSession] = []

        async def on_stream(stream: MuxStream) -> None:
            await holder[0]._server_stream(stream)

        server_hostname = host if ssl_context is not None else None
        async with asyncio.timeout(connect_timeout):
            _, conn = await loop.create_connection(
                lambda: MuxConnection(MuxSession(client=True), on_stream),
                host,
                port,
                ssl=ssl_context,
                server_hostname=server_hostname,
            )
        hb = Heartbeater(heartbeat_interval, heartbeat_tolerance)
        self = cls(conn, hb)
        holder.append(self)
        conn.spawn(run_beats(conn, hb, self._heartbeat_dead, self._on_latency), name="heartbeat")
        auth = m.Auth(
            version=["3", "2"],
            client_id=client_id,
            extra=m.AuthExtra(
                os=platform.system().lower(),
                arch=platform.machine(),
                auth_token=authtoken,
                version=__version__,
                hostname=platform.node(),
                user_agent=f"hatchway/{__version__}",
                metadata=metadata,
                cookie=cookie,
                heartbeat_interval=int(heartbeat_interval * _NS),
                heartbeat_tolerance=int(heartbeat_tolerance * _NS),
                update_unsupported_error=NO_CALLBACK_ERROR,
                stop_unsupported_error=NO_CALLBACK_ERROR,
                restart_unsupported_error=NO_CALLBACK_ERROR,
                client_type="hatchway",
            ),
        )
        try:
            self.auth_resp = await rpc.call(conn, StreamType.AUTH, auth, m.AuthResp, within=connect_timeout)
        except BaseException:
            conn.close()
            raise
        return self

    @property
    def client_id(self) -> str:
        return self.auth_resp.client_id

    def _on_latency(self, latency: float) -> None:
        self.latency = latency

    def _heartbeat_dead(self) -> None:
        logger.warning("edge missed heartbeats for %.1fs; closing the session", self.heartbeat.tolerance)
        self.conn.close()

    async def bind(
        self,
        proto: str,
        opts: dict[str, Any],
        on_proxy: ProxyHandler,
        *,
        forwards_to: str = "",
        metadata: str = "",
        tunnel_id: str = "",
        token: str = "",
    ) -> BoundTunnel:
        """Bind one endpoint; ``tunnel_id``/``token`` re-bind a tunnel after a reconnect."""
        req = m.Bind(
            id=tunnel_id,
            proto=proto,
            forwards_to=forwards_to,
            opts=opts,
            extra=m.BindExtra(token=token, metadata=metadata),
        )
        # One Bind at a time, as the SDKs do: the edge may rely on the order.
        async with self._bind_lock:
            resp = await rpc.call(self.conn, StreamType.BIND, req, m.BindResp)
        tunnel = BoundTunnel(resp.id, resp.url, resp.proto, resp.extra.token, opts, on_proxy, req)
        self.tunnels[resp.id] = tunnel
        return tunnel

    async def unbind(self, tunnel_id: str) -> None:
        if self.tunnels.pop(tunnel_id, None) is not None and not self.conn.is_closed:
            await rpc.call(self.conn, StreamType.UNBIND, m.Unbind(id=tunnel_id), m.UnbindResp)

    async def _server_stream(self, stream: MuxStream) -> None:
        st = stream.stream_type
        if st == StreamType.PROXY:
            reader = ProxyHeaderReader()
            got = None
            while got is None:
                chunk = await stream.read()
                if not chunk:
                    return
                got = reader.feed(chunk)
            header, first = got
            tunnel = self.tunnels.get(header.id)
            if tunnel is None:
                stream.reset(ErrorCode.STREAM_REFUSED)  # a header for a tunnel we no longer have
                return
            await tunnel.on_proxy(header, stream, first)
        elif st == StreamType.HEARTBEAT:
            # The edge may beat too: echo what it sends (protocol.md §4).
            with contextlib.suppress(SessionClosedError, StreamResetError):
                while chunk := await stream.read():
                    await stream.write(chunk)
        elif st == StreamType.STOP_TUNNEL:
            try:
                msg = await rpc.read_message(stream, m.StopTunnel)
            except RemoteProtocolError:
                stream.reset(ErrorCode.PROTOCOL)
                return
            self.tunnels.pop(msg.id, None)
            logger.warning("edge stopped tunnel %s: %s %s", msg.id, msg.message, msg.error_code)
            await stream.write_eof()
        elif st in (StreamType.RESTART, StreamType.STOP, StreamType.UPDATE):
            await rpc.read_json(stream)
            await rpc.reply(stream, m.CommandResp(error=NO_CALLBACK_ERROR))
        else:
            logger.warning("ignoring server stream of unknown type %s", st)
            stream.reset(ErrorCode.PROTOCOL)

    async def aclose(self) -> None:
        for tid in list(self.tunnels):
            with contextlib.suppress(Exception):
                await self.unbind(tid)
        await self.conn.aclose(2.0)
