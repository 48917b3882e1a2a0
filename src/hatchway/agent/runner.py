"""A long-lived agent: one session to the edge, endpoints bound from ``EndpointSpec``s, automatic reconnect.

After the connection drops it redials with a short capped backoff, authenticates with its old
``ClientId`` and re-binds every endpoint with the old tunnel id, token and host, so each keeps its URL
(random ones included). It counts proxy streams for the status screen. It knows nothing of terminals or
flags (``cli/``), nor of upstream protocols (``forward.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from hatchway.agent.forward import make_forwarder
from hatchway.agent.session import AgentSession, BoundTunnel, ProxyHandler
from hatchway.agent.spec import EndpointSpec
from hatchway.errors import RpcError, SessionClosedError
from hatchway.net.transport import MuxStream
from hatchway.wire import messages as m
from hatchway.wire.frames import ErrorCode

logger = logging.getLogger(__name__)


@dataclass
class AgentOptions:
    server_addr: str
    authtoken: str = ""
    ssl_context: ssl.SSLContext | None = None
    metadata: str = ""
    heartbeat_interval: float = 10.0
    heartbeat_tolerance: float = 15.0
    connect_timeout: float = 10.0


@dataclass
class Stats:
    """Connection counts and stream durations (the status screen's ``ttl opn p50 p90``)."""

    total: int = 0
    open: int = 0
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=1000))

    def percentile(self, p: float) -> float:
        if not self.durations:
            return 0.0
        ordered = sorted(self.durations)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@dataclass
class Endpoint:
    """One spec and, while online, the tunnels bound for it (one per scheme; one "tcp" for TCP).

    ``forwarder`` may change while the endpoint is online (the SDK's ``listen()`` then ``forward()``);
    with none set, proxy streams are refused, which the edge reports as ERR_NGROK_8012.
    """

    spec: EndpointSpec
    forwarder: ProxyHandler | None = None
    tunnels: dict[str, BoundTunnel] = field(default_factory=dict)  # scheme -> tunnel
    host: str = ""

    async def handle(self, header: m.ProxyHeader, stream: MuxStream, first: bytes) -> None:
        if self.forwarder is None:
            stream.reset(ErrorCode.STREAM_REFUSED)
            return
        await self.forwarder(header, stream, first)

    def forward_to(self, addr: str) -> None:
        self.spec.addr = addr
        self.forwarder = make_forwarder(self.spec.upstream())

    @property
    def upstream_addr(self) -> str:
        return self.spec.upstream().addr if self.spec.addr else ""

    @property
    def upstream_url(self) -> str:
        return self.spec.upstream().url if self.spec.addr else ""

    @property
    def urls(self) -> list[str]:
        return [t.url for t in self.tunnels.values()]


class Agent:
    def __init__(
        self, options: AgentOptions, on_event: Callable[[str, dict[str, object]], None] | None = None
    ):
        self.options = options
        self.session: AgentSession | None = None
        self.endpoints: list[Endpoint] = []
        self.stats = Stats()
        self.state = "connecting"
        self._on_event = on_event or (lambda kind, data: None)
        self._closing = False
        self._runner: asyncio.Task[None] | None = None

    def _emit(self, kind: str, **data: object) -> None:
        self._on_event(kind, data)

    async def _connect(self) -> AgentSession:
        o = self.options
        old = self.session
        session = await AgentSession.connect(
            o.server_addr,
            o.authtoken,
            ssl_context=o.ssl_context,
            metadata=o.metadata,
            heartbeat_interval=o.heartbeat_interval,
            heartbeat_tolerance=o.heartbeat_tolerance,
            connect_timeout=o.connect_timeout,
            client_id=old.client_id if old is not None else "",
            cookie=old.auth_resp.extra.cookie if old is not None else "",
        )
        self.session = session
        return session

    def _counting(self, handler: ProxyHandler) -> ProxyHandler:
        stats = self.stats

        async def counted(header: m.ProxyHeader, stream: MuxStream, first: bytes) -> None:
            stats.total += 1
            stats.open += 1
            start = time.monotonic()
            try:
                await handler(header, stream, first)
            finally:
                stats.open -= 1
                stats.durations.append(time.monotonic() - start)

        return counted

    async def start(self, specs: list[EndpointSpec]) -> list[Endpoint]:
        """Connect and bind every spec; errors (bad token, refused domain) raise here, not later."""
        for spec in specs:
            forwarder = make_forwarder(spec.upstream()) if spec.addr else None
            self.endpoints.append(Endpoint(spec, forwarder))
        session = await self._connect()
        try:
            for ep in self.endpoints:
                await self._bind(session, ep)
        except BaseException:
            await session.aclose()
            raise
        self.state = "online"
        self._emit("online", urls=[u for ep in self.endpoints for u in ep.urls])
        self._runner = asyncio.ensure_future(self._watch())
        return self.endpoints

    async def _bind(self, session: AgentSession, ep: Endpoint) -> None:
        spec = ep.spec
        opts = spec.to_bind_opts()
        tcp = spec.proto == "tcp"
        # A TCP endpoint is one Bind with proto "tcp"; its old tunnel id gets the same port back.
        schemes = ["tcp"] if tcp else list(dict.fromkeys(spec.url_schemes()))
        # https first so a random name chosen for it is reused for http (ngrok's "both schemes").
        schemes.sort(key=lambda s: s != "https")
        for scheme in schemes:
            old = ep.tunnels.get(scheme)
            if ep.host and not tcp:
                opts = {**opts, "Hostname": ep.host}
            tunnel = await session.bind(
                scheme,
                opts,
                self._counting(ep.handle),
                forwards_to=ep.upstream_addr,
                metadata=spec.metadata,
                tunnel_id=old.id if old is not None else "",
                token=old.token if old is not None else "",
            )
            ep.tunnels[scheme] = tunnel
            ep.host = urlsplit(tunnel.url).hostname or ep.host
            self._emit("bound", name=spec.name, url=tunnel.url, addr=ep.upstream_url)

    async def _watch(self) -> None:
        """Wait for the session to end; then reconnect and re-bind until closed."""
        while not self._closing:
            session = self.session
            assert session is not None
            await session.conn.wait_closed()
            if self._closing:
                return
            self.state = "reconnecting"
            self._emit("reconnecting")
            attempt = 0
            while not self._closing:
                # Short, capped backoff: an edge restart should cost seconds, not minutes (protocol.md §7).
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                attempt += 1
                try:
                    session = await self._connect()
                    for ep in self.endpoints:
                        await self._bind(session, ep)
                except RpcError as exc:
                    logger.warning("reconnect refused: %s %s", exc.message, exc.ngrok_code)
                    self._emit("error", error=exc.message, code=exc.ngrok_code)
                    if self.session is not None:
                        await self.session.aclose()
                    continue
                except (OSError, TimeoutError, SessionClosedError, ssl.SSLError) as exc:
                    logger.debug("reconnect attempt %d failed: %s", attempt, exc)
                    continue
                self.state = "online"
                self._emit("online", urls=[u for ep in self.endpoints for u in ep.urls], reconnected=True)
                break

    async def aclose(self) -> None:
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self.session is not None:
            await self.session.aclose()
        self.state = "closed"
