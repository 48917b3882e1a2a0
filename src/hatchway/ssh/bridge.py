"""One SSH connection as an agent session of the edge, in process: the two ends of a socketpair.

The edge side is an ordinary ``edge.tunnels.AgentSession`` whose Bind RPCs go to the registry, so an
endpoint opened over SSH gets every edge behaviour (routing, modules, Traffic Policy, error pages) with
no special case. The agent side is ``agent.session.AgentSession``; its Proxy streams are spliced by
``agent.forward.splice`` into ``forwarded-tcpip`` channels the SSH server opens back to the client,
which connects each to its local address (the ``-R`` destination).

Authentication happened in SSH, so the edge session is admitted for the account directly instead of
through an Auth RPC; there are no heartbeats because both ends live in one process. Must not: parse
HTTP (the edge does), or touch the SSH connection beyond opening channels on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any, cast

import asyncssh

from hatchway.agent.forward import splice
from hatchway.agent.session import AgentSession as AgentSide
from hatchway.agent.session import BoundTunnel
from hatchway.edge.registry import Registry
from hatchway.edge.tunnels import AgentSession as EdgeSide
from hatchway.net.transport import MuxConnection, MuxStream
from hatchway.ssh.verbose import RequestLog, TappedTransport
from hatchway.wire import messages as m
from hatchway.wire.heartbeat import Heartbeater
from hatchway.wire.mux import MuxSession

#: Opens a channel for one proxied connection: (protocol factory, client "ip:port") -> when connected.
OpenChannel = Callable[[Callable[[], asyncio.Protocol], str], Awaitable[object]]


class ChannelSession(asyncssh.SSHTCPSession[bytes]):
    """Lets a plain ``asyncio.Protocol`` (the splice's upstream side) drive an SSH channel: the channel
    has a transport's methods, only the callbacks differ in signature. ``log`` watches the bytes."""

    def __init__(self, proto: asyncio.Protocol, log: RequestLog | None = None) -> None:
        self._proto = proto
        self._log = log

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        transport: Any = chan if self._log is None else TappedTransport(cast(Any, chan), self._log)
        self._proto.connection_made(transport)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._log is not None:
            self._log.response_bytes(data)
        self._proto.data_received(data)

    def eof_received(self) -> bool:
        return bool(self._proto.eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self._proto.connection_lost(exc)

    def pause_writing(self) -> None:
        self._proto.pause_writing()

    def resume_writing(self) -> None:
        self._proto.resume_writing()


class Bridge:
    """The in-process agent session of one SSH connection. ``await Bridge.open(...)``, then ``bind``."""

    def __init__(self, registry: Registry, edge: EdgeSide, agent: AgentSide, open_channel: OpenChannel):
        self.registry = registry
        self.edge = edge
        self.agent = agent
        self._open_channel = open_channel
        self.tunnels: list[BoundTunnel] = []

    @classmethod
    async def open(cls, registry: Registry, account: str, open_channel: OpenChannel) -> Bridge:
        loop = asyncio.get_running_loop()
        edge_end, agent_end = socket.socketpair()
        holder: list[Bridge] = []

        async def on_edge_stream(stream: MuxStream) -> None:
            await holder[0].edge.handle_stream(stream)

        async def on_agent_stream(stream: MuxStream) -> None:
            await holder[0].agent._server_stream(stream)

        try:
            _, edge_conn = await loop.create_unix_connection(
                lambda: MuxConnection(MuxSession(client=False), on_edge_stream), sock=edge_end
            )
            _, agent_conn = await loop.create_unix_connection(
                lambda: MuxConnection(MuxSession(client=True), on_agent_stream), sock=agent_end
            )
        except BaseException:
            edge_end.close()
            agent_end.close()
            raise
        edge = EdgeSide(edge_conn, registry)
        edge.client_id = f"ssh_{secrets.token_hex(8)}"
        registry.admit(edge, account)
        self = cls(registry, edge, AgentSide(agent_conn, Heartbeater()), open_channel)
        holder.append(self)
        return self

    async def bind(self, proto: str, opts: dict[str, Any], *, forwards_to: str, metadata: str = "") -> str:
        """Bind one endpoint through the edge's own Bind path; its URL. ``RpcError`` when refused."""
        tunnel = await self.agent.bind(proto, opts, self._forward, forwards_to=forwards_to, metadata=metadata)
        self.tunnels.append(tunnel)
        return tunnel.url

    async def _forward(self, header: m.ProxyHeader, stream: MuxStream, first: bytes) -> None:
        async def dial(factory: Callable[[], asyncio.Protocol]) -> object:
            try:
                return await self._open_channel(factory, header.client_addr)
            except asyncssh.ChannelOpenError as exc:
                # The client could not reach its local address: for the edge this is a refused upstream.
                raise ConnectionRefusedError(exc.reason) from exc

        await splice(stream, first, dial)

    async def aclose(self) -> None:
        """Take the endpoints offline and close both ends."""
        self.registry.session_closed(self.edge)
        self.agent.conn.close()
        self.edge.conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.edge.conn.wait_closed(), 2.0)
