"""The HTTPS port's accept loop: peek at each ClientHello, then start TLS with the context for its name.

Per-endpoint TLS terms (minimum version, mutual TLS) must be in the ``SSLContext`` a connection starts
with: OpenSSL's SNI callback can swap the certificate, not the verify mode or the protocol versions. So
each accepted socket is read with ``MSG_PEEK`` (the bytes stay in the kernel for the TLS layer) until the
ClientHello is complete, ``choose(hello)`` gives the context, and uvloop takes the socket over with
``connect_accepted_socket``. Costs one peek per connection, nothing per request.

Bounds: a connection whose ClientHello does not arrive within ``HELLO_TIMEOUT`` is closed, one that is
not TLS (or too large) gets the default context (its handshake then fails the usual way). Must not: read
(consume) client bytes, or let one slow client hold the accept loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable

from hatchway.edge.tls.hello import Hello, NotTls, parse_client_hello

logger = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0
_RETRY = (
    0.005  # a ClientHello split over segments: look again shortly (the peeked bytes keep the fd readable)
)
_ACCEPT_BATCH = 64

Choose = Callable[[Hello | None], ssl.SSLContext]


class TlsAcceptor:
    """Listens on ``sock``; each connection gets ``factory(server_name)`` as its protocol over TLS, with
    the server name its ClientHello asked for ("" without SNI)."""

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[str], asyncio.Protocol],
        choose: Choose,
        backlog: int = 1024,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.sockets = [sock]
        self._sock = sock
        self._factory = factory
        self._choose = choose
        self._pending: dict[int, tuple[socket.socket, asyncio.TimerHandle]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        sock.setblocking(False)
        sock.listen(backlog)
        self._loop.add_reader(sock.fileno(), self._accept)

    @classmethod
    def listen(
        cls, host: str, port: int, factory: Callable[[str], asyncio.Protocol], choose: Choose
    ) -> TlsAcceptor:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock, factory, choose)

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: log, keep serving the others
                logger.warning("accept failed: %s", exc)
                return
            conn.setblocking(False)
            fd = conn.fileno()
            timer = self._loop.call_later(HELLO_TIMEOUT, self._drop, fd)
            self._pending[fd] = (conn, timer)
            self._loop.add_reader(fd, self._peek, fd)

    def _drop(self, fd: int) -> None:
        entry = self._pending.pop(fd, None)
        if entry is not None:
            self._loop.remove_reader(fd)
            entry[1].cancel()
            entry[0].close()

    def _peek(self, fd: int) -> None:
        entry = self._pending.get(fd)
        if entry is None:
            return
        conn, _timer = entry
        try:
            data = conn.recv(16 * 1024 + 8, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        if not data:
            self._drop(fd)  # closed before saying anything
            return
        try:
            hello = parse_client_hello(data)
        except NotTls:
            self._start(fd, None)
            return
        if hello is None:
            # Incomplete: the peeked bytes keep the socket readable, so wait a moment instead of spinning.
            self._loop.remove_reader(fd)
            self._loop.call_later(_RETRY, self._rearm, fd)
            return
        self._start(fd, hello)

    def _rearm(self, fd: int) -> None:
        if fd in self._pending and not self._closed:
            self._loop.add_reader(fd, self._peek, fd)

    def _start(self, fd: int, hello: Hello | None) -> None:
        conn, timer = self._pending.pop(fd)
        self._loop.remove_reader(fd)
        timer.cancel()
        try:
            ctx = self._choose(hello)
        except Exception:
            logger.exception("choosing the TLS context failed")
            conn.close()
            return
        task = self._loop.create_task(self._connect(conn, ctx, (hello and hello.server_name) or ""))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket, ctx: ssl.SSLContext, server_name: str) -> None:
        try:
            await self._loop.connect_accepted_socket(
                lambda: self._factory(server_name), conn, ssl=ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            # A failed handshake (no client certificate, an old TLS version, ...) ends that connection only.
            logger.debug("TLS handshake failed: %s", exc)
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for fd in list(self._pending):
            self._drop(fd)

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=HANDSHAKE_TIMEOUT)
