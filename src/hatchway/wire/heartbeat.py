"""Heartbeats (protocol.md §4) as two small clock-free state machines.

``Heartbeater`` is the side that beats (the agent): it makes 4-byte nonces, matches the echo and measures
latency. ``HeartbeatMonitor`` is the side that echoes (the edge): it records when beats arrive. Both
decide "the peer is silent" from times the caller passes in; neither reads a clock or does I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DEFAULT_INTERVAL = 10.0  # seconds; AuthExtra carries these in nanoseconds
DEFAULT_TOLERANCE = 15.0


@dataclass(slots=True)
class Heartbeater:
    interval: float = DEFAULT_INTERVAL
    tolerance: float = DEFAULT_TOLERANCE
    _pending: bytes | None = None
    _sent_at: float = -math.inf  # no beat yet (0.0 is a valid time: it must not mean "never")
    _last_ok: float | None = None
    _echo: bytearray = field(default_factory=bytearray)
    latency: float | None = None

    def start(self, now: float) -> None:
        self._last_ok = now

    def due(self, now: float) -> bool:
        """True when a new beat should go out (the first one goes out at once, as tokio's interval)."""
        if self._pending is not None:
            return False
        return now - self._sent_at >= self.interval

    def next_due(self) -> float:
        """When the next beat goes out (only meaningful once the current one is answered)."""
        return self._sent_at + self.interval

    def beat(self, nonce: bytes, now: float) -> bytes:
        if len(nonce) != 4:
            raise ValueError("a heartbeat nonce is 4 bytes")
        self._pending = nonce
        self._sent_at = now
        if self._last_ok is None:
            self._last_ok = now
        return nonce

    def receive(self, data: bytes, now: float) -> float | None:
        """Feed echoed bytes; returns the round-trip latency when a whole matching echo arrived."""
        self._echo += data
        result = None
        while len(self._echo) >= 4:
            got = bytes(self._echo[:4])
            del self._echo[:4]
            if self._pending is not None and got == self._pending:
                self._pending = None
                self._last_ok = now
                self.latency = result = now - self._sent_at
        return result

    def deadline(self) -> float:
        """When the peer counts as silent if no good echo arrives before."""
        base = self._last_ok if self._last_ok is not None else self._sent_at
        return base + self.interval + self.tolerance

    def is_dead(self, now: float) -> bool:
        return self._last_ok is not None and now > self.deadline()


@dataclass(slots=True)
class HeartbeatMonitor:
    """Edge side: echo every 4-byte group unchanged and note when the last one arrived."""

    interval: float = DEFAULT_INTERVAL
    tolerance: float = DEFAULT_TOLERANCE
    last_seen: float = 0.0
    _buf: bytearray = field(default_factory=bytearray)

    def start(self, now: float) -> None:
        self.last_seen = now

    def receive(self, data: bytes, now: float) -> bytes:
        """Return the bytes to echo (whole 4-byte groups only)."""
        self._buf += data
        whole = len(self._buf) - len(self._buf) % 4
        if not whole:
            return b""
        out = bytes(self._buf[:whole])
        del self._buf[:whole]
        self.last_seen = now
        return out

    def is_dead(self, now: float) -> bool:
        return now - self.last_seen > self.interval + self.tolerance
