"""Small socket settings shared by every listener: TCP_NODELAY and the peer's address.

Both rims call these from ``connection_made``; nothing here keeps state or owns a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket


def tune(transport: asyncio.BaseTransport) -> tuple[str, int]:
    """Turn Nagle off (small writes must not wait for delayed ACKs) and return the peer's (ip, port)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple):
        return str(peer[0]), int(peer[1])
    return "", 0
