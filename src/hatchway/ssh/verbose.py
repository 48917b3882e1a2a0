"""``--verbose`` for SSH sessions: one line per proxied HTTP request, ``GET /path 200``.

A ``RequestLog`` follows the bytes of one proxied connection in both directions with httptools and
pairs each request head with the next response head. It only watches: bytes pass on unchanged whatever
it makes of them, and on anything it cannot parse (an upgrade, a protocol it does not know) it stops.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

import httptools


class _Requests:
    def __init__(self, log: RequestLog) -> None:
        self.log = log
        self.url = bytearray()
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.url = bytearray()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        self.log.pending.append(f"{method} {self.url.decode('latin-1')}")


class _Responses:
    def __init__(self, log: RequestLog) -> None:
        self.log = log
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status >= 200 or status == 101:
            line = self.log.pending.popleft() if self.log.pending else "(request)"
            self.log.emit(f"{line} {status}")


class RequestLog:
    """Watches one connection; ``emit`` gets a line per answered request."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit
        self.pending: collections.deque[str] = collections.deque()
        self._requests: _Requests | None = _Requests(self)
        self._responses: _Responses | None = _Responses(self)

    def request_bytes(self, data: bytes | bytearray | memoryview) -> None:
        if self._requests is not None:
            try:
                self._requests.parser.feed_data(bytes(data))
            except (httptools.HttpParserError, httptools.HttpParserUpgrade):
                self._requests = None  # past an upgrade (or not HTTP): nothing more to report

    def response_bytes(self, data: bytes) -> None:
        if self._responses is not None:
            try:
                self._responses.parser.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade):
                self._responses = None


class TappedTransport:
    """A channel as the splice's transport, showing what is written to ``log`` on the way."""

    def __init__(self, chan: asyncio.Transport, log: RequestLog) -> None:
        self._chan = chan
        self._log = log

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._log.request_bytes(data)
        self._chan.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chan, name)
