"""The HTTPS listener's protocol: picks HTTP/2 or HTTP/1.1 for each client by the ALPN it negotiated.

asyncio calls ``connection_made`` on an SSL transport only after the handshake, so ALPN is known there:
``h2`` gets an ``Http2Connection``, anything else (``http/1.1`` or no ALPN) an ``Http1Connection``. Every
later Protocol callback is forwarded to that object. This module holds no HTTP logic and never reads or
writes the socket itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hatchway.edge.listeners.http1 import Http1Connection
from hatchway.edge.listeners.http2 import Http2Connection
from hatchway.edge.registry import Registry


class HttpsConnection(asyncio.Protocol):
    """One TLS client connection; ``inner`` is the HTTP/1.1 or HTTP/2 protocol object serving it."""

    def __init__(
        self,
        registry: Registry,
        on_close: Callable[[HttpsConnection], None],
        scheme: str = "https",
        sni: str = "",
    ) -> None:
        self.registry = registry
        self.scheme = scheme
        self.sni = sni  # the server name the ClientHello asked for (read before the handshake)
        self._on_close = on_close
        self.inner: Http1Connection | Http2Connection | None = None

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        return self.inner.transport if self.inner is not None else None

    def in_flight(self) -> list[asyncio.Future[None]]:
        """Exchanges still running on this connection (the edge waits for them when it shuts down)."""
        inner = self.inner
        if inner is None:
            return []
        return list(inner.in_flight())

    @property
    def last_active(self) -> float | None:
        """When the client last sent bytes (None before the TLS handshake finished)."""
        return self.inner.last_active if self.inner is not None else None

    def close(self) -> None:
        """Close the connection (an HTTP/2 client gets a GOAWAY first)."""
        inner = self.inner
        if isinstance(inner, Http2Connection):
            inner.shutdown()
        elif inner is not None and inner.transport is not None:
            inner.transport.close()

    # ---- asyncio.Protocol, forwarded --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        proto = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        done = self._closed
        self.inner = (
            Http2Connection(self.registry, self.scheme, done, self.sni)
            if proto == "h2"
            else Http1Connection(self.registry, self.scheme, done, sni=self.sni)
        )
        self.inner.connection_made(transport)

    def _closed(self, _inner: object) -> None:
        self._on_close(self)

    def data_received(self, data: bytes) -> None:
        assert self.inner is not None
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is None:
            self._on_close(self)
        else:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()
