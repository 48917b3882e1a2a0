"""Shared helpers for the transport tests: a real loopback pair of ``MuxConnection`` objects.

``mux_pair()`` starts a listener on 127.0.0.1 (plain TCP, or TLS with a throwaway CA from
``hatchway.net.tls``), dials it once and yields a ``MuxPair`` holding the client connection, every
server-side connection and a queue of the streams the server accepted. Everything is closed on exit,
with bounded waits. ``wait_until()`` waits for a condition that no future or event signals (for example
"the send window of stream 3 is 0"), always under a timeout.

This is a plain module, not a conftest: the integration tests import it directly; the unit tests under
``tests/unit/net`` load it by file path, so both use the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from hatchway.net import tls
from hatchway.net.transport import MuxConnection, MuxStream
from hatchway.wire.mux import MuxSession

LOCALHOST = "127.0.0.1"
#: Streams of this type are echoed by the default server handler (all others are queued for the test).
ECHO_TYPE = 0xEC40
#: Every wait in these helpers is bounded; tests use the same figure for "should be quick".
WAIT = 10.0

Handler = Callable[[MuxStream], Awaitable[None]]


@dataclass(frozen=True)
class TlsSetup:
    """A throwaway CA and the two contexts a loopback TLS pair needs."""

    ca: tls.KeyPair
    server: ssl.SSLContext
    client: ssl.SSLContext


def make_tls(names: tuple[str, ...] = ("localhost", LOCALHOST)) -> TlsSetup:
    ca = tls.create_ca()
    leaf = tls.issue_cert(ca, list(names))
    return TlsSetup(ca, tls.server_context(leaf), tls.client_context(ca.cert_pem))


@dataclass
class MuxPair:
    """One listener, one client connection to it, and what the server side saw."""

    listener: asyncio.Server
    client: MuxConnection
    port: int
    server_conns: list[MuxConnection] = field(default_factory=list)
    accepted: asyncio.Queue[MuxStream] = field(default_factory=asyncio.Queue)

    async def next_accepted(self) -> MuxStream:
        """The next stream a peer opened on the server side (handed over by the default handler)."""
        async with asyncio.timeout(WAIT):
            return await self.accepted.get()


async def dial(
    port: int, ssl_ctx: ssl.SSLContext | None = None, server_hostname: str | None = None
) -> MuxConnection:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(WAIT):
        _, conn = await loop.create_connection(
            lambda: MuxConnection(MuxSession(client=True)),
            LOCALHOST,
            port,
            ssl=ssl_ctx,
            server_hostname=server_hostname if ssl_ctx is not None else None,
        )
    return conn


async def close_conn(conn: MuxConnection) -> None:
    """Close ``conn`` and wait (bounded) until its socket is really gone."""
    conn.close()
    try:
        async with asyncio.timeout(WAIT):
            await conn.wait_closed()
    except TimeoutError:
        conn.abort()
        async with asyncio.timeout(WAIT):
            await conn.wait_closed()


@contextlib.asynccontextmanager
async def mux_pair(
    handler: Handler | None = None,
    *,
    tls_setup: TlsSetup | None = None,
    server_hostname: str = "localhost",
) -> AsyncIterator[MuxPair]:
    """A listening server and one connected client. Without ``handler`` the server echoes streams of
    type ``ECHO_TYPE`` and queues every other stream it accepts on ``pair.accepted``, keeping that
    handler task alive (owned by its connection) until the connection closes, so the stream is not
    reset behind the test's back."""
    loop = asyncio.get_running_loop()
    server_conns: list[MuxConnection] = []
    accepted: asyncio.Queue[MuxStream] = asyncio.Queue()

    async def queue_handler(st: MuxStream) -> None:
        if st.stream_type == ECHO_TYPE:
            await echo(st)
            return
        accepted.put_nowait(st)
        await st.connection.wait_closed()

    def factory() -> MuxConnection:
        conn = MuxConnection(MuxSession(client=False), handler or queue_handler)
        server_conns.append(conn)
        return conn

    listener = await loop.create_server(
        factory, LOCALHOST, 0, ssl=tls_setup.server if tls_setup is not None else None
    )
    port = listener.sockets[0].getsockname()[1]
    client: MuxConnection | None = None
    try:
        client = await dial(port, tls_setup.client if tls_setup else None, server_hostname)
        yield MuxPair(listener, client, port, server_conns, accepted)
    finally:
        listener.close()
        if client is not None:
            await close_conn(client)
        for conn in server_conns:
            # A server connection whose TLS handshake never finished never saw connection_made.
            if conn.transport is not None:
                await close_conn(conn)
        async with asyncio.timeout(WAIT):
            await listener.wait_closed()


async def echo(st: MuxStream) -> None:
    """Echo everything back, then FIN."""
    async with asyncio.timeout(WAIT):
        while chunk := await st.read():
            await st.write(chunk)
        await st.write_eof()


async def echo_round_trip(conn: MuxConnection, data: bytes) -> bytes:
    """Send ``data`` with FIN on a new ``ECHO_TYPE`` stream and return what comes back.

    Writing and reading run concurrently: with more than a window of data, an echo whose sender only
    reads after writing everything deadlocks (both sides wait for window) - correctly so."""
    async with asyncio.timeout(WAIT):
        st = await conn.open_stream(ECHO_TYPE)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(st.write(data, fin=True))
            reply = tg.create_task(st.read_all())
        return reply.result()


async def wait_until(predicate: Callable[[], bool], what: str, limit: float = WAIT) -> None:
    """Wait until ``predicate()`` holds; fail naming ``what`` after ``limit`` seconds.

    Only for conditions that nothing signals, such as "the send window of stream 3 is 0" (it changes
    inside ``MuxStream.write`` and the session, which expose no event for it). The condition is checked
    every millisecond, so this is a bounded wait for a state, never a sleep that hopes for one.
    """
    try:
        async with asyncio.timeout(limit):
            while not predicate():  # noqa: ASYNC110 - there is no event to wait on (see above)
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"timed out after {limit}s waiting for: {what}") from None
