"""Behaviour tests of ``hatchway.net.transport`` (MuxConnection / MuxStream) over real loopback sockets.

Each test starts a server and a client ``MuxConnection`` on 127.0.0.1 (plain TCP, and TLS where the
socket layer matters) and checks one promise of the transport: stream types on the SYN, half-close,
RST isolation, window backpressure, connection loss, hostile input answered with GOAWAY, TCP_NODELAY.
The loopback helpers live in ``tests/mux_pair.py``.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from hatchway.errors import LocalProtocolError, SessionClosedError, StreamResetError
from hatchway.net.transport import MuxStream
from hatchway.wire.frames import FLAG_SYN, ErrorCode, FrameDecoder, FrameType, GoAway, header
from hatchway.wire.mux import DEFAULT_WINDOW
from hatchway.wire.rpc import StreamType

import mux_pair as mp

WAIT = mp.WAIT


@pytest.fixture(scope="module")
def tls_setup() -> Any:
    return mp.make_tls()


async def test_stream_type_rides_on_syn_and_reaches_the_handler() -> None:
    async with mp.mux_pair() as pair, asyncio.timeout(WAIT):
        st = await pair.client.open_stream(StreamType.BIND, initial=b"first bytes")
        srv = await pair.next_accepted()
        assert srv.stream_type == StreamType.BIND
        assert st.stream_type == StreamType.BIND
        # The 4 type bytes were consumed by the transport; the initial bytes follow them.
        assert await srv.readexactly(11) == b"first bytes"
        # The client (agent) opens odd stream ids starting at 3 (protocol.md §2.3).
        assert st.id == srv.id == 3

        # A type with the high bit set (the heartbeat's 0xFFFFFFFF) survives as well.
        st2 = await pair.client.open_stream(StreamType.HEARTBEAT)
        srv2 = await pair.next_accepted()
        assert (st2.id, srv2.stream_type) == (5, StreamType.HEARTBEAT)


async def test_tls_echo_carries_stream_types_and_window_updates(tls_setup: Any) -> None:
    seen: list[int | None] = []

    async def handler(st: MuxStream) -> None:
        seen.append(st.stream_type)
        await mp.echo(st)

    async with mp.mux_pair(handler, tls_setup=tls_setup) as pair:
        assert pair.client.transport.get_extra_info("ssl_object") is not None
        data = bytes(range(256)) * 4096  # 1 MiB: four windows each way, so WNDINC must flow over TLS
        results = await asyncio.gather(*(mp.echo_round_trip(pair.client, data) for _ in range(4)))
        assert results == [data] * 4
        assert seen == [mp.ECHO_TYPE] * 4


async def test_half_close_then_reply() -> None:
    async with mp.mux_pair() as pair, asyncio.timeout(WAIT):
        st = await pair.client.open_stream(1)
        srv = await pair.next_accepted()
        await st.write(b"request body")
        await st.write_eof()
        # Our direction is finished: writing more is a local misuse.
        with pytest.raises(LocalProtocolError):
            await st.write(b"more")

        assert await srv.read_all() == b"request body"
        assert await srv.read() == b""  # EOF stays EOF
        assert srv.at_eof()

        # The peer's direction is still open: it answers after our FIN.
        await srv.write(b"response ")
        await srv.write(b"body", fin=True)
        assert await st.read_all() == b"response body"
        assert st.at_eof()

        # Both directions finished: neither session keeps the stream.
        srv_session = srv.connection.session
        await mp.wait_until(
            lambda: not pair.client.session.is_open(st.id) and not srv_session.is_open(srv.id),
            "both sessions to drop the finished stream",
        )


async def test_reset_aborts_that_stream_only() -> None:
    async with mp.mux_pair() as pair, asyncio.timeout(WAIT):
        a = await pair.client.open_stream(1)
        srv_a = await pair.next_accepted()
        b = await pair.client.open_stream(1)
        srv_b = await pair.next_accepted()

        pending_read = asyncio.create_task(srv_a.read())
        await b.write(b"before")
        assert await srv_b.readexactly(6) == b"before"
        assert not pending_read.done()

        a.reset(ErrorCode.STREAM_CANCELLED)
        with pytest.raises(StreamResetError) as info:
            await pending_read
        assert info.value.mux_code == ErrorCode.STREAM_CANCELLED
        with pytest.raises(StreamResetError):
            await srv_a.write(b"x")
        with pytest.raises(StreamResetError):
            await a.read()  # our own side is aborted as well

        # The other stream and the connection carry on.
        await b.write(b"after", fin=True)
        assert await srv_b.read_all() == b"after"
        await srv_b.write(b"reply", fin=True)
        assert await b.read_all() == b"reply"
        assert await mp.echo_round_trip(pair.client, b"new stream") == b"new stream"

        # The peer can reset towards us the same way.
        c = await pair.client.open_stream(1)
        srv_c = await pair.next_accepted()
        pending_read = asyncio.create_task(c.read())
        srv_c.reset(ErrorCode.STREAM_RESET)
        with pytest.raises(StreamResetError) as info:
            await pending_read
        assert info.value.mux_code == ErrorCode.STREAM_RESET
        assert not pair.client.is_closed


async def test_writer_waits_for_the_window_and_resumes_when_the_peer_reads() -> None:
    payload = bytes(range(251)) * (4 * DEFAULT_WINDOW // 251)  # ~4 windows, not a multiple of frames
    async with mp.mux_pair() as pair, asyncio.timeout(WAIT):
        st = await pair.client.open_stream(1)
        srv = await pair.next_accepted()
        writer = asyncio.create_task(st.write(payload, fin=True))

        # The peer reads nothing: the writer uses up exactly one window and stops there.
        await mp.wait_until(lambda: pair.client.session.send_window(st.id) == 0, "the window used up")
        await mp.wait_until(
            lambda: srv.buffered == DEFAULT_WINDOW - 4,  # the 4 type bytes were read by the transport
            "a full window buffered at the reader",
        )
        # A round trip on another stream lets every frame in flight arrive; still nothing moves.
        assert await mp.echo_round_trip(pair.client, b"ping") == b"ping"
        assert not writer.done()
        assert srv.buffered == DEFAULT_WINDOW - 4
        assert pair.client.session.send_window(st.id) == 0

        # Reading gives the window back (WNDINC) and the writer finishes.
        received = await srv.read_all()
        await writer
        assert received == payload


@pytest.mark.parametrize("closing_side", ["server", "client"])
async def test_connection_close_fails_pending_reads_and_writes(closing_side: str) -> None:
    async with mp.mux_pair() as pair, asyncio.timeout(WAIT):
        st = await pair.client.open_stream(1)
        srv = await pair.next_accepted()
        blocked = await pair.client.open_stream(1)
        await pair.next_accepted()
        client_read = asyncio.create_task(st.read())
        server_read = asyncio.create_task(srv.read())
        blocked_write = asyncio.create_task(blocked.write(bytes(2 * DEFAULT_WINDOW)))
        await mp.wait_until(lambda: pair.client.session.send_window(blocked.id) == 0, "a blocked writer")
        assert not (client_read.done() or server_read.done() or blocked_write.done())

        (srv.connection if closing_side == "server" else pair.client).close()

        for pending in (client_read, server_read, blocked_write):
            with pytest.raises(SessionClosedError):
                await pending
        await pair.client.wait_closed()
        assert pair.client.is_closed
        with pytest.raises(SessionClosedError):
            await pair.client.open_stream(1)
        with pytest.raises(SessionClosedError):
            await st.write(b"late")
        with pytest.raises(SessionClosedError):
            await st.read()


async def test_goaway_is_reported_and_refuses_new_streams() -> None:
    async with mp.mux_pair() as pair, asyncio.timeout(WAIT):
        await pair.client.open_stream(1)
        srv = await pair.next_accepted()
        srv.connection.go_away(ErrorCode.NONE, "draining for a restart")

        await mp.wait_until(lambda: pair.client.goaway is not None, "the GOAWAY to arrive")
        assert pair.client.goaway is not None
        assert pair.client.goaway.code == ErrorCode.NONE
        assert pair.client.goaway.message == b"draining for a restart"
        assert pair.client.goaway.last_stream_id == 3  # the last stream the server took
        with pytest.raises(SessionClosedError):
            await pair.client.open_stream(1)
        assert not pair.client.is_closed  # draining, not closed: closing is the peer's call


HOSTILE_INPUTS = {
    # Someone speaking HTTP to the tunnel port: "GET " decodes as a WNDINC header with a huge length.
    "http-request": b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
    # A frame header with type 0xF, which muxado does not define.
    "unknown-frame-type": header(0, 0xF, 0, 1) + b"\0" * 8,
    # A client opening a stream with the server's (even) parity.
    "wrong-parity-syn": header(4, FrameType.DATA, FLAG_SYN, 2) + b"\0\0\0\1",
}


@pytest.mark.parametrize("garbage", HOSTILE_INPUTS.values(), ids=HOSTILE_INPUTS.keys())
async def test_garbage_gets_goaway_and_close_while_other_connections_live(garbage: bytes) -> None:
    async with mp.mux_pair() as pair, asyncio.timeout(WAIT):
        assert await mp.echo_round_trip(pair.client, b"before") == b"before"

        reader, writer = await asyncio.open_connection(mp.LOCALHOST, pair.port)
        try:
            writer.write(garbage)
            await writer.drain()
            answer = await reader.read()  # until the server closes the socket
        finally:
            writer.close()
            await writer.wait_closed()

        decoder = FrameDecoder()
        decoder.feed(answer)
        frame = decoder.next_frame()
        assert isinstance(frame, GoAway), answer
        assert frame.code in (ErrorCode.PROTOCOL, ErrorCode.FRAME_SIZE)
        assert frame.last_stream_id == 0
        hostile_conn = pair.server_conns[1]
        await hostile_conn.wait_closed()

        # The first connection never noticed.
        assert not pair.client.is_closed
        assert not pair.server_conns[0].is_closed
        assert await mp.echo_round_trip(pair.client, b"after") == b"after"


@pytest.mark.parametrize("use_tls", [False, True], ids=["tcp", "tls"])
async def test_tcp_nodelay_on_both_ends(use_tls: bool, tls_setup: Any) -> None:
    async with mp.mux_pair(tls_setup=tls_setup if use_tls else None) as pair, asyncio.timeout(WAIT):
        await pair.client.open_stream(1)
        srv = await pair.next_accepted()
        for conn in (pair.client, srv.connection):
            sock = conn.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
