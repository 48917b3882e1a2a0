"""Shared fixtures: a dev CA, an edge tunnel listener on loopback, and a small local HTTP app.

Everything binds 127.0.0.1 on a free port and is torn down by the fixture; nothing here sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from hatchway.edge.registry import Registry
from hatchway.edge.tunnels import AgentSession, TunnelServer
from hatchway.net import tls
from hatchway.wire import messages as m

TOKEN = "test-token"


@pytest.fixture(scope="session")
def dev_ca() -> tls.KeyPair:
    return tls.create_ca("Hatchway Test CA")


class RecordingRegistry(Registry):
    """The in-memory registry, also keeping every Auth and Bind it saw (for asserting the wire)."""

    def __init__(self) -> None:
        super().__init__({TOKEN}, base_domain="hatchway.localhost")
        self.auths: list[m.Auth] = []
        self.binds: list[m.Bind] = []
        self.unbinds: list[str] = []
        self.changed = asyncio.Event()

    async def authenticate(self, session: AgentSession, auth: m.Auth) -> m.AuthResp:
        self.auths.append(auth)
        self.changed.set()
        return await super().authenticate(session, auth)

    async def bind(self, session: AgentSession, bind: m.Bind) -> m.BindResp:
        self.binds.append(bind)
        if bind.proto in ("tcp", "tls"):
            # Test double: the edge's TCP/TLS endpoints are a later issue. Answering the Bind lets the
            # wire tests check how the SDKs encode those options; nothing listens on this address.
            where = bind.tcp_opts().addr if bind.proto == "tcp" else bind.tls_opts().requested_domain
            self.changed.set()
            return m.BindResp(
                id=f"tn_{bind.proto}_{len(self.binds)}",
                url=f"{bind.proto}://{where}",
                proto=bind.proto,
                opts=bind.opts,
                extra=m.BindRespExtra(token="t"),
            )
        resp = await super().bind(session, bind)
        self.changed.set()
        return resp

    async def unbind(self, session: AgentSession, tunnel_id: str) -> None:
        self.unbinds.append(tunnel_id)
        await super().unbind(session, tunnel_id)
        self.changed.set()

    async def wait_for(self, predicate: object, within: float = 10.0) -> None:
        """Wait until ``predicate()`` holds, re-checking whenever the registry changes."""
        assert callable(predicate)
        async with asyncio.timeout(within):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Edge:
    registry: RecordingRegistry
    server: TunnelServer
    ca: tls.KeyPair
    port: int
    ca_pem: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.ca_pem = self.ca.cert_pem

    @property
    def addr(self) -> str:
        return f"localhost:{self.port}"


@pytest.fixture
async def edge(dev_ca: tls.KeyPair) -> AsyncIterator[Edge]:
    registry = RecordingRegistry()
    server = TunnelServer(registry, tls.server_context(tls.issue_cert(dev_ca, ["localhost", "127.0.0.1"])))
    _, port = await server.start("127.0.0.1", 0)
    try:
        yield Edge(registry, server, dev_ca, port)
    finally:
        await server.aclose(drain=1.0)


@dataclass
class App:
    port: int
    requests: list[bytes]


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
        return
    seen.append(head)
    path = head.split(b" ", 2)[1]
    body = b"hello from the local app: " + path
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    await writer.drain()
    writer.close()


@pytest.fixture
async def http_app() -> AsyncIterator[App]:
    """A local upstream answering every request with its path (one request per connection)."""
    seen: list[bytes] = []
    server = await asyncio.start_server(lambda r, w: _answer(r, w, seen), "127.0.0.1", 0)
    try:
        yield App(server.sockets[0].getsockname()[1], seen)
    finally:
        server.close()


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """Run every async test on uvloop: it is the loop the edge and agent run on in production."""
    import uvloop

    return {"uvloop": uvloop.new_event_loop}
