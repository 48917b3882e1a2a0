"""Small helpers shared by tests (importable because pytest's ``pythonpath`` includes ``tests/``)."""

from __future__ import annotations

import asyncio

from hatchway.edge.policy_run import OutcomeMemo
from hatchway.edge.tunnels import AgentSession
from hatchway.policy.model import Conn, EndpointInfo, Exchange, HttpRequest


async def proxy_get(
    session: AgentSession, tunnel_id: str, path: str = "/", client: str = "203.0.113.7:54321"
) -> bytes:
    """What the edge does for a public request: a Proxy stream, a raw HTTP/1.1 request, the whole answer."""
    stream = await session.open_proxy(tunnel_id, client, "https")
    await stream.write(f"GET {path} HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n".encode())
    async with asyncio.timeout(10):
        return await stream.read_all(limit=1 << 20)


async def wait_until(predicate: object, within: float = 10.0, step: float = 0.02) -> None:
    """Poll ``predicate()`` until it holds; fail after ``within`` seconds (for state without an event)."""
    assert callable(predicate)
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 -- polls state that has no event to wait on
            await asyncio.sleep(step)


class EndpointDouble:
    """The ``Endpoint`` fields the request path reads (``PolicyRun``, ``upstream_head``), for tests that
    run it without a registry: no header changes, no Host rewrite, no memo unless ``request_outcomes``."""

    tunnel_id = "tn_1"
    url = "https://app.hatchway.localhost:8443"
    host = "app.hatchway.localhost"
    scheme = "https"

    def __init__(
        self,
        remove: set[bytes] | None = None,
        add: list[tuple[bytes, bytes]] | None = None,
        rewrite: bytes = b"",
        memo: bool = False,
    ) -> None:
        self.request_remove: set[bytes] = remove or set()
        self.request_add: list[tuple[bytes, bytes]] = add or []
        self.rewrite_host = rewrite
        self.request_outcomes = OutcomeMemo() if memo else None


def policy_exchange(
    target: str = "/", method: str = "GET", headers: list[tuple[str, str]] | None = None
) -> Exchange:
    """A Traffic Policy exchange for ``target`` (path and query) on https://app.example.com."""
    path, _, query = target.partition("?")
    return Exchange(
        conn=Conn("198.51.100.7", 40000, "192.0.2.1", 443),
        endpoint=EndpointInfo("ep_1", "https://app.example.com", "app.example.com", 443, "https"),
        req=HttpRequest(
            method,
            "https",
            "app.example.com",
            443,
            path,
            query,
            "1.1",
            headers or [("Host", "app.example.com")],
        ),
        wall=1714564800.0,
    )
