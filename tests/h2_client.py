"""An HTTP/2 client for tests, written with the h2 library over TLS (ALPN h2, the dev CA verified).

It sends requests as streams, reads every response into a ``Response`` (headers, informational heads,
body, reset code), gives flow-control window back unless told not to, and can reset a stream. It is a
test helper only: no retries, no timeouts of its own (callers bound their waits).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events

from hatchway.net import tls


@dataclass
class Response:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    informational: list[list[tuple[bytes, bytes]]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    got_headers: asyncio.Event = field(default_factory=asyncio.Event)
    reset: int | None = None

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


class H2Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.responses: dict[int, Response] = {}
        self.window = asyncio.Event()
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.closed = asyncio.Event()
        self.acknowledge = True
        self.authority = ""  # the default :authority (the SNI name given to ``connect``)
        self.conn.initiate_connection()
        self.flush()
        self._task = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def connect(cls, port: int, ca_pem: bytes, sni: str) -> H2Client:
        ctx = tls.client_context(ca_pem)
        ctx.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        client = cls(reader, writer)
        client.authority = sni
        return client

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def _read_loop(self) -> None:
        try:
            while data := await self.reader.read(65536):
                for ev in self.conn.receive_data(data):
                    self._on_event(ev)
                self.flush()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self.closed.set()
            for r in self.responses.values():
                r.done.set()
                r.got_headers.set()

    def _on_event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            r = self.responses[ev.stream_id]
            r.headers = list(ev.headers)
            r.got_headers.set()
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            self.responses[ev.stream_id].informational.append(list(ev.headers))
        elif isinstance(ev, h2.events.DataReceived):
            self.responses[ev.stream_id].body += ev.data
            if self.acknowledge:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            self.responses[ev.stream_id].done.set()
        elif isinstance(ev, h2.events.StreamReset):
            r = self.responses[ev.stream_id]
            r.reset = ev.error_code
            r.done.set()
            r.got_headers.set()
        elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.window.set()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.terminated = ev

    async def start(
        self,
        path: str,
        method: str = "GET",
        headers: Iterable[tuple[str, str]] = (),
        body: AsyncIterator[bytes] | None = None,
        authority: str | None = None,
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.responses[sid] = Response()
        pseudo = [(":method", method), (":authority", authority or self.authority)]
        if method != "CONNECT":  # a CONNECT request has no :scheme and no :path (RFC 9113 §8.5)
            pseudo += [(":scheme", "https"), (":path", path)]
        hdrs = [*pseudo, *headers]
        self.conn.send_headers(sid, hdrs, end_stream=body is None)
        self.flush()
        if body is not None:
            async for chunk in body:
                await self.send(sid, chunk)
            self.conn.end_stream(sid)
            self.flush()
        return sid

    async def send(self, sid: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                self.window.clear()
                await self.window.wait()
                continue
            self.conn.send_data(sid, view[:room])
            self.flush()
            view = view[room:]
            await self.writer.drain()

    async def response(self, sid: int) -> Response:
        r = self.responses[sid]
        await r.done.wait()
        return r

    async def request(self, path: str, **kw: object) -> Response:
        sid = await self.start(path, **kw)  # type: ignore[arg-type]
        return await self.response(sid)

    def reset(self, sid: int) -> None:
        self.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        self.flush()

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close_connection()
            self.flush()
        self.writer.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, ssl.SSLError):
            await self._task
            await self.writer.wait_closed()
