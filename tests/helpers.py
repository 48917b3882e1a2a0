"""Small helpers shared by tests (importable because pytest's ``pythonpath`` includes ``tests/``)."""

from __future__ import annotations

import asyncio
from typing import Any

from hatchway.edge.policy_run import OutcomeMemo
from hatchway.edge.proxy import Request, upstream_head
from hatchway.edge.tunnels import AgentSession
from hatchway.http import headers as hh
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


def listener_request(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> Request:
    """A request as the HTTP/1.1 listener hands it on, from a client at 10.0.0.7 over HTTPS."""
    return Request(
        method,
        target,
        list(headers),
        "1.1",
        "app.hatchway.localhost",
        "10.0.0.7",
        5000,
        "https",
        lower=[k.lower() for k, _ in headers],
        connection=frozenset(hh.connection_tokens(headers)),
    )


def head_of(req: Request) -> tuple[Any, ...]:
    """Everything of ``req`` that reaches the upstream, and the head bytes the edge writes for it."""
    ep: Any = EndpointDouble()
    return (req.method, req.target, req.headers, req.lower, req.connection, upstream_head(ep, req))
