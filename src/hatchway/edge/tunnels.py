"""Agent sessions at the edge: TLS accept, heartbeats, and the Auth / Bind / Unbind / label RPCs.

The policy of who may connect and which URL a tunnel gets belongs to ``TunnelHooks`` (the registry and
the store will implement it); this module only speaks the protocol: it answers each RPC with the hook's
decision, opens Proxy streams with a ProxyHeader, and sends server commands. It never routes HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from hatchway.errors import RemoteProtocolError, RpcError, SessionClosedError, StreamResetError
from hatchway.net import rpc
from hatchway.net.heartbeat import echo_beats, watch_silence
from hatchway.net.transport import MuxConnection, MuxStream
from hatchway.wire import messages as m
from hatchway.wire.frames import ErrorCode
from hatchway.wire.heartbeat import DEFAULT_INTERVAL, DEFAULT_TOLERANCE, HeartbeatMonitor
from hatchway.wire.mux import MuxSession
from hatchway.wire.rpc import StreamType, encode_proxy_header

logger = logging.getLogger(__name__)

_NS = 1_000_000_000


@dataclass
class Tunnel:
    """One bound endpoint or labeled tunnel of an agent session."""

    id: str
    proto: str
    url: str
    token: str
    bind: m.Bind | None = None
    labels: dict[str, str] = field(default_factory=dict)


class TunnelHooks(Protocol):
    """What the edge decides; the protocol layer calls these and reports the answers."""

    async def authenticate(self, session: AgentSession, auth: m.Auth) -> m.AuthResp: ...

    async def bind(self, session: AgentSession, bind: m.Bind) -> m.BindResp: ...

    async def unbind(self, session: AgentSession, tunnel_id: str) -> None: ...

    async def start_labeled(
        self, session: AgentSession, req: m.StartTunnelWithLabel
    ) -> m.StartTunnelWithLabelResp: ...

    def session_closed(self, session: AgentSession) -> None: ...


_ids = itertools.count(1)


class AgentSession:
    """One connected agent: its mux connection, its Auth, its tunnels."""

    def __init__(self, conn: MuxConnection, hooks: TunnelHooks) -> None:
        self.conn = conn
        self.hooks = hooks
        self.number = next(_ids)
        self.auth: m.Auth | None = None
        self.client_id = ""
        self.tunnels: dict[str, Tunnel] = {}
        self.monitor = HeartbeatMonitor(DEFAULT_INTERVAL, DEFAULT_TOLERANCE)
        self._watchdog: asyncio.Task[None] | None = None
        self._auth_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<AgentSession #{self.number} client_id={self.client_id!r} peer={self.conn.peername}>"

    @property
    def authenticated(self) -> bool:
        return bool(self.client_id)

    # ---- incoming streams -------------------------------------------------------------------------------
    async def handle_stream(self, stream: MuxStream) -> None:
        st = stream.stream_type
        if st == StreamType.HEARTBEAT:
            await echo_beats(stream, self.monitor)
        elif st == StreamType.AUTH:
            await self._auth(stream)
        elif not self.authenticated:
            await rpc.reply(stream, m.UnbindResp(error=m.join_error("authenticate first", "ERR_NGROK_105")))
        elif st == StreamType.BIND:
            await self._bind(stream)
        elif st == StreamType.UNBIND:
            req = await rpc.read_message(stream, m.Unbind)
            if self.tunnels.pop(req.id, None) is not None:
                await self.hooks.unbind(self, req.id)
            await rpc.reply(stream, m.UnbindResp())  # idempotent: Unbind arrives twice (pitfall 12)
        elif st == StreamType.START_TUNNEL_WITH_LABEL:
            req_l = await rpc.read_message(stream, m.StartTunnelWithLabel)
            resp_l = await self.hooks.start_labeled(self, req_l)
            if not resp_l.error:
                self.tunnels[resp_l.id] = Tunnel(resp_l.id, "", "", "", labels=dict(req_l.labels))
            await rpc.reply(stream, resp_l)
        elif st == StreamType.SRV_INFO:
            await rpc.read_json(stream)
            await rpc.reply(stream, m.SrvInfoResp(region="local"))
        else:
            # Unknown or server-only types from an agent: refuse that stream, keep the session.
            stream.reset(ErrorCode.PROTOCOL)

    async def _auth(self, stream: MuxStream) -> None:
        try:
            auth = await rpc.read_message(stream, m.Auth)
        except RemoteProtocolError as exc:
            await rpc.reply(stream, m.AuthResp(error=m.join_error(f"malformed Auth: {exc}", "ERR_NGROK_100")))
            self.conn.close()
            return
        async with self._auth_lock:
            resp = await self.hooks.authenticate(self, auth)
            if resp.error:
                await rpc.reply(stream, resp)
                # Flush the answer before closing so the SDK can show the reason (protocol.md §5.1).
                self.conn.close()
                return
            self.auth = auth
            if auth.extra.client_type != "hatchway":
                self.conn.quick_ack()  # the official SDKs write with Nagle on (see MuxConnection.quick_ack)
            self.client_id = resp.client_id or auth.client_id or f"sess_{secrets.token_hex(10)}"
            resp.client_id = self.client_id
            ex = auth.extra
            self.monitor.interval = (
                ex.heartbeat_interval / _NS if ex.heartbeat_interval > 0 else DEFAULT_INTERVAL
            )
            self.monitor.tolerance = (
                ex.heartbeat_tolerance / _NS if ex.heartbeat_tolerance > 0 else DEFAULT_TOLERANCE
            )
            # The Auth itself is a sign of life: count silence from now, not from the epoch.
            self.monitor.last_seen = max(self.monitor.last_seen, asyncio.get_running_loop().time())
            if self._watchdog is None:
                self._watchdog = self.conn.spawn(
                    watch_silence(self.conn, self.monitor, self._silent), name="heartbeat-watch"
                )
            await rpc.reply(stream, resp)

    def _silent(self) -> None:
        logger.info("agent session %s missed its heartbeats; closing it", self.client_id)
        self.conn.go_away(ErrorCode.NONE, "heartbeat timeout")
        self.conn.close()

    async def _bind(self, stream: MuxStream) -> None:
        try:
            req = await rpc.read_message(stream, m.Bind)
        except RemoteProtocolError as exc:
            await rpc.reply(stream, m.BindResp(error=m.join_error(f"malformed Bind: {exc}", "ERR_NGROK_100")))
            return
        resp = await self.hooks.bind(self, req)
        if not resp.error:
            self.tunnels[resp.id] = Tunnel(resp.id, resp.proto, resp.url, resp.extra.token, bind=req)
        await rpc.reply(stream, resp)

    # ---- server-opened streams ----------------------------------------------------------------------------
    async def open_proxy(
        self, tunnel_id: str, client_addr: str, proto: str, edge_type: str = "", passthrough_tls: bool = False
    ) -> MuxStream:
        """Open a Proxy stream whose first bytes are the ProxyHeader; the client's bytes follow."""
        header = m.ProxyHeader(
            id=tunnel_id,
            client_addr=client_addr,
            proto=proto,
            edge_type=edge_type,
            passthrough_tls=passthrough_tls,
        )
        # The type and header ride on the SYN frame: one frame, one write, no extra round trip.
        return await self.conn.open_stream(None, encode_proxy_header(header))

    async def command(self, stream_type: StreamType, msg: msgspec.Struct) -> m.CommandResp:
        """Send Restart / Stop / Update and return the agent's answer (``error`` set if it refused)."""
        try:
            return await rpc.call(self.conn, stream_type, msg, m.CommandResp, within=10.0)
        except RpcError as exc:
            return m.CommandResp(error=exc.message)

    async def stop_tunnel(self, tunnel_id: str, message: str, error_code: str = "") -> None:
        """Tell the agent to drop one tunnel (StopTunnel gets no reply, only FIN; protocol.md §6.3)."""
        self.tunnels.pop(tunnel_id, None)
        stream = await self.conn.open_stream(StreamType.STOP_TUNNEL)
        await stream.write(
            m.encode(m.StopTunnel(id=tunnel_id, message=message, error_code=error_code)), fin=True
        )
        with contextlib.suppress(SessionClosedError, StreamResetError, TimeoutError):
            async with asyncio.timeout(5):
                await stream.read_all(limit=1 << 16)

    def go_away(self, message: str = "") -> None:
        """Ask the agent to reconnect (agents treat GOAWAY as "reconnect now", protocol.md §7)."""
        self.conn.go_away(ErrorCode.NONE, message)

    def close(self) -> None:
        self.conn.close()


class TunnelServer:
    """Accepts agent connections on one listener and runs an ``AgentSession`` for each."""

    def __init__(self, hooks: TunnelHooks, ssl_context: ssl.SSLContext | None) -> None:
        self.hooks = hooks
        self.ssl_context = ssl_context
        self.sessions: set[AgentSession] = set()
        self._server: asyncio.Server | None = None
        self._watchers: set[asyncio.Task[None]] = set()

    def _make_protocol(self) -> MuxConnection:
        holder: list[AgentSession] = []

        async def on_stream(stream: MuxStream) -> None:
            await holder[0].handle_stream(stream)

        conn = MuxConnection(MuxSession(client=False), on_stream)
        session = AgentSession(conn, self.hooks)
        holder.append(session)
        self.sessions.add(session)
        task = asyncio.ensure_future(self._on_closed(session))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return conn

    async def _on_closed(self, session: AgentSession) -> None:
        with contextlib.suppress(Exception):
            await session.conn.wait_closed()
        self.sessions.discard(session)
        session.tunnels.clear()
        self.hooks.session_closed(session)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._make_protocol, host, port, ssl=self.ssl_context, ssl_handshake_timeout=10
        )
        addr = self._server.sockets[0].getsockname()
        return str(addr[0]), int(addr[1])

    async def aclose(self, drain: float = 2.0) -> None:
        """Stop accepting, send GOAWAY to every agent, give streams ``drain`` seconds, then close."""
        if self._server is not None:
            self._server.close()
        for s in list(self.sessions):
            s.go_away("edge shutting down")
        # Requests in flight were drained by the client listeners already; the GOAWAY only needs flushing.
        # Rust agents never answer a TLS close_notify, so waiting for one would cost the whole grace.
        grace = min(drain, 0.25)
        await asyncio.gather(*(s.conn.aclose(grace) for s in list(self.sessions)), return_exceptions=True)
        for t in list(self._watchers):
            t.cancel()
        if self._server is not None:
            await self._server.wait_closed()


OnClosed = Callable[[AgentSession], None]
