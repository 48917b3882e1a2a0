"""The WebSocket TCP converter's codec: handshakes and frames as bytes in, events and bytes out.

Client frames are built by ``masked_frame`` below, written for these tests and independent of the codec;
server frames are read back with the ``websockets`` package's parser as a second opinion.
"""

from __future__ import annotations

import base64
import itertools
import random
import struct
from collections.abc import Generator, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from hatchway.http.websocket import (
    BinaryData,
    CloseReceived,
    Event,
    HandshakeError,
    Ping,
    ProtocolFailure,
    ServerConnection,
    accept_handshake,
)

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MASK = b"\x37\xfa\x21\x3d"


# ---- an independent client-side encoder and a server-side decoder ------------------------------------


def masked_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bytes = MASK,
    rsv: int = 0,
    masked: bool = True,
    length_form: str | None = None,
) -> bytes:
    """A client frame, laid out byte by byte from RFC 6455 §5.2 (deliberately naive)."""
    n = len(payload)
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if masked else 0
    form = length_form or ("7" if n < 126 else "16" if n < 65536 else "64")
    if form == "7":
        head = bytes([first, mask_bit | n])
    elif form == "16":
        head = bytes([first, mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, mask_bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[Frame]:
    """Server frames parsed by ``websockets`` (which also insists that they are unmasked)."""
    pos = 0

    def read_exact(n: int) -> Generator[None, None, bytes]:
        nonlocal pos
        assert pos + n <= len(data), "truncated frame"
        pos += n
        return data[pos - n : pos]
        yield  # a generator, as Frame.parse expects; it never has to wait here

    frames = []
    while pos < len(data):
        parser = Frame.parse(read_exact, mask=False, max_size=None)
        with pytest.raises(StopIteration) as done:
            next(parser)
        frames.append(done.value.value)
    return frames


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return masked_frame(CLOSE, struct.pack("!H", code) + reason)


def feed(conn: ServerConnection, stream: bytes, cuts: Iterable[int] = ()) -> list[Event]:
    """Feed ``stream`` split at ``cuts``, checking after every read that the codec holds no more than one
    header and one control payload."""
    events: list[Event] = []
    bounds = [0, *sorted(cuts), len(stream)]
    for start, end in itertools.pairwise(bounds):
        events += conn.receive(stream[start:end])
        assert len(conn._hdr) < 14 and len(conn._ctrl) <= 125
    return events


def data_of(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, BinaryData))


# ---- handshake ---------------------------------------------------------------------------------------

RFC_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
GOOD = [
    (b"Host", b"server.example.com"),
    (b"Upgrade", b"websocket"),
    (b"Connection", b"Upgrade"),
    (b"Sec-WebSocket-Key", RFC_KEY),
    (b"Sec-WebSocket-Version", b"13"),
]


def with_headers(*pairs: tuple[bytes, bytes], drop: bytes = b"") -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in GOOD if k.lower() != drop] + list(pairs)


def swap(name: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    """The good handshake with header ``name`` replaced by ``value``."""
    return with_headers((name, value), drop=name.lower())


def response_headers(response: bytes) -> dict[bytes, bytes]:
    head, _, rest = response.partition(b"\r\n\r\n")
    assert rest == b""
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 101 Switching Protocols"
    return {k.lower(): v for k, _, v in (line.partition(b": ") for line in lines[1:])}


def test_accept_value_is_the_rfc_6455_example() -> None:
    response = accept_handshake(b"GET", GOOD)
    assert response == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"\r\n"
    )


@pytest.mark.parametrize(
    "headers",
    [
        swap(b"UPGRADE", b"WebSocket"),
        swap(b"upgrade", b"foo/1, websocket"),
        swap(b"Connection", b"keep-alive, Upgrade"),
        with_headers((b"connection", b"keep-alive"), (b"Connection", b"UPGRADE"), drop=b"connection"),
        swap(b"sec-websocket-key", b" " + RFC_KEY + b" "),
    ],
    ids=["upgrade-case", "upgrade-list", "connection-list", "connection-two-headers", "key-padded"],
)
def test_handshake_accepts_header_variants(headers: list[tuple[bytes, bytes]]) -> None:
    assert response_headers(accept_handshake(b"GET", headers))[b"sec-websocket-accept"] == (
        b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    )


def test_first_offered_subprotocol_is_echoed_and_extensions_are_declined() -> None:
    headers = with_headers(
        (b"Sec-WebSocket-Protocol", b"chat, superchat"),
        (b"Sec-WebSocket-Protocol", b"other"),
        (b"Sec-WebSocket-Extensions", b"permessage-deflate; client_max_window_bits"),
    )
    got = response_headers(accept_handshake(b"GET", headers))
    assert got[b"sec-websocket-protocol"] == b"chat"
    assert b"sec-websocket-extensions" not in got


def test_no_subprotocol_header_when_none_offered() -> None:
    assert b"sec-websocket-protocol" not in response_headers(accept_handshake(b"GET", GOOD))


BAD_HANDSHAKES = {
    "post": (b"POST", GOOD, "GET"),
    "lowercase-method": (b"get", GOOD, "GET"),
    "no-upgrade": (b"GET", with_headers(drop=b"upgrade"), "Upgrade"),
    "upgrade-h2c": (b"GET", swap(b"Upgrade", b"h2c"), "Upgrade"),
    "upgrade-near-miss": (b"GET", swap(b"Upgrade", b"websockets"), "Upgrade"),
    "no-connection": (b"GET", with_headers(drop=b"connection"), "Connection"),
    "connection-no-upgrade": (b"GET", swap(b"Connection", b"close"), "Connection"),
    "connection-near-miss": (b"GET", swap(b"Connection", b"upgraded"), "Connection"),
    "no-version": (b"GET", with_headers(drop=b"sec-websocket-version"), "Version"),
    "version-8": (b"GET", swap(b"Sec-WebSocket-Version", b"8"), "13"),
    "two-versions": (b"GET", with_headers((b"Sec-WebSocket-Version", b"13")), "Version"),
    "no-key": (b"GET", with_headers(drop=b"sec-websocket-key"), "Key"),
    "two-keys": (b"GET", with_headers((b"Sec-WebSocket-Key", RFC_KEY)), "Key"),
    "key-not-base64": (b"GET", swap(b"Sec-WebSocket-Key", b"not base64!"), "base64"),
    "key-15-bytes": (b"GET", swap(b"Sec-WebSocket-Key", base64.b64encode(b"x" * 15)), "16 bytes"),
    "key-17-bytes": (b"GET", swap(b"Sec-WebSocket-Key", base64.b64encode(b"x" * 17)), "16 bytes"),
    "protocol-not-token": (b"GET", with_headers((b"Sec-WebSocket-Protocol", b"a b, c")), "token"),
    "protocol-control-char": (b"GET", with_headers((b"Sec-WebSocket-Protocol", b"x\x00y")), "token"),
}


@pytest.mark.parametrize(("method", "headers", "words"), BAD_HANDSHAKES.values(), ids=BAD_HANDSHAKES.keys())
def test_bad_handshakes_say_what_is_wrong(
    method: bytes, headers: list[tuple[bytes, bytes]], words: str
) -> None:
    with pytest.raises(HandshakeError, match=words):
        accept_handshake(method, headers)
    assert issubclass(HandshakeError, ValueError)


def test_interoperates_with_the_websockets_client() -> None:
    """Handshake, data both ways, ping and close against the ``websockets`` sans-IO client."""
    client = ClientProtocol(
        parse_uri("ws://example.com/feed"),
        subprotocols=[Subprotocol("chat"), Subprotocol("superchat")],
        extensions=[ClientPerMessageDeflateFactory()],
    )
    request = client.connect()
    client.send_request(request)
    client.data_to_send()
    headers = [(k.encode(), v.encode()) for k, v in request.headers.raw_items()]
    client.receive_data(accept_handshake(b"GET", headers))
    assert client.state is State.OPEN and client.handshake_exc is None
    assert client.subprotocol == "chat" and client.extensions == []
    client.events_received()

    server = ServerConnection()
    client.send_binary(b"hello " * 50, fin=False)
    client.send_ping(b"are you there")
    client.send_continuation(b"world", fin=True)
    events = [e for chunk in client.data_to_send() for e in server.receive(chunk)]
    assert data_of(events) == b"hello " * 50 + b"world"
    assert Ping(b"are you there") in events

    client.receive_data(server.data_to_send() + server.send_data(bytes(range(256)) * 300))
    got = client.events_received()
    assert all(isinstance(f, Frame) for f in got)
    assert [(f.opcode, bytes(f.data)) for f in got if isinstance(f, Frame)] == [
        (Opcode.PONG, b"are you there"),
        (Opcode.BINARY, bytes(range(256)) * 300),
    ]

    client.send_close(1001, "going away")
    events = [e for chunk in client.data_to_send() for e in server.receive(chunk)]
    assert events == [CloseReceived(1001, "going away")]
    client.receive_data(server.data_to_send())
    assert client.close_rcvd is not None and client.close_rcvd.code == 1001
    assert client.state.name == "CLOSING"  # the echo was accepted; only the TCP close remains


# ---- receiving data ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 125, 126, 127, 1000, 65535, 65536, 70000])
def test_binary_frame_of_every_length_form(size: int) -> None:
    payload = random.Random(size).randbytes(size)
    events = feed(ServerConnection(), masked_frame(BINARY, payload))
    assert data_of(events) == payload
    assert not any(isinstance(e, ProtocolFailure) for e in events)


def test_large_frame_uses_the_64_bit_length_and_streams_as_it_arrives() -> None:
    payload = random.Random(7).randbytes(70000)
    frame = masked_frame(BINARY, payload)
    assert frame[1] == 0x80 | 127 and int.from_bytes(frame[2:10], "big") == 70000
    conn = ServerConnection()
    pieces = [frame[i : i + 1000] for i in range(0, len(frame), 1000)]
    per_read = [conn.receive(piece) for piece in pieces]
    # Every read hands on its share of the payload at once; nothing waits for the frame's end.
    assert all(len(events) == 1 and isinstance(events[0], BinaryData) for events in per_read)
    assert b"".join(data_of(events) for events in per_read) == payload


def test_byte_at_a_time() -> None:
    payload = random.Random(1).randbytes(300)
    stream = (
        masked_frame(BINARY, payload[:100], fin=False)
        + masked_frame(PING, b"hi")
        + masked_frame(CONT, payload[100:], mask=b"\x00\xff\x10\x01")
    )
    events = feed(ServerConnection(), stream, range(1, len(stream)))
    assert data_of(events) == payload
    assert [e for e in events if not isinstance(e, BinaryData)] == [Ping(b"hi")]


def test_empty_frames_carry_nothing() -> None:
    conn = ServerConnection()
    stream = (
        masked_frame(BINARY, b"", fin=False) + masked_frame(CONT, b"x", fin=False) + masked_frame(CONT, b"")
    )
    assert conn.receive(stream) == [BinaryData(b"x")]
    assert conn.receive(masked_frame(BINARY, b"next")) == [BinaryData(b"next")]


def test_fragmented_message_with_interleaved_control_frames_keeps_order() -> None:
    conn = ServerConnection()
    stream = (
        masked_frame(BINARY, b"ab", fin=False)
        + masked_frame(PING, b"1")
        + masked_frame(CONT, b"cd", fin=False)
        + masked_frame(PONG, b"unsolicited")
        + masked_frame(PING, b"2")
        + masked_frame(CONT, b"ef")
        + masked_frame(BINARY, b"gh")
    )
    events = conn.receive(stream)
    assert events == [
        BinaryData(b"ab"),
        Ping(b"1"),
        BinaryData(b"cd"),
        Ping(b"2"),
        BinaryData(b"ef"),
        BinaryData(b"gh"),
    ]
    pongs = server_frames(conn.data_to_send())
    assert [(f.opcode, f.fin, bytes(f.data)) for f in pongs] == [
        (Opcode.PONG, True, b"1"),
        (Opcode.PONG, True, b"2"),
    ]
    assert conn.data_to_send() == b""


message = st.lists(st.binary(max_size=300), min_size=1, max_size=4)  # one message's fragments


@settings(max_examples=300, deadline=None)
@given(st.lists(message, max_size=6), st.data())
def test_frames_split_anywhere_decode_to_the_same_bytes(
    messages: list[list[bytes]], data: st.DataObject
) -> None:
    stream = b""
    expected: list[tuple[str, bytes]] = []  # ("data" | "ping", bytes), in wire order
    for fragments in messages:
        for i, fragment in enumerate(fragments):
            mask = data.draw(st.binary(min_size=4, max_size=4))
            stream += masked_frame(CONT if i else BINARY, fragment, fin=i == len(fragments) - 1, mask=mask)
            expected.append(("data", fragment))
            if data.draw(st.booleans()):
                ping = data.draw(st.binary(max_size=125))
                stream += masked_frame(PING, ping, mask=mask[::-1])
                expected.append(("ping", ping))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    conn = ServerConnection()
    events = feed(conn, stream, cuts)

    def merged(items: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        # Data boundaries depend on where reads were cut; only the bytes between pings matter.
        out: list[tuple[str, bytes]] = []
        for kind, value in items:
            if kind == "data" and out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + value)
            elif kind == "ping" or value:
                out.append((kind, value))
        return out

    got: list[tuple[str, bytes]] = []
    for event in events:
        assert isinstance(event, BinaryData | Ping), event
        got.append(("data", event.data) if isinstance(event, BinaryData) else ("ping", event.payload))
    assert merged(got) == merged(expected)
    pings = [value for kind, value in expected if kind == "ping"]
    assert [bytes(f.data) for f in server_frames(conn.data_to_send())] == pings
    assert not conn.closed


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 6000), st.binary(min_size=4, max_size=4), st.lists(st.integers(0, 6020), max_size=8))
def test_one_frame_split_anywhere_unmasks_every_chunk_size(size: int, mask: bytes, cuts: list[int]) -> None:
    """Chunks land on both unmasking paths (short and long) and at every mask offset."""
    payload = random.Random(size).randbytes(size)
    stream = masked_frame(BINARY, payload, mask=mask)
    events = feed(ServerConnection(max_message=size or 1), stream, [c for c in cuts if c <= len(stream)])
    assert data_of(events) == payload and all(isinstance(e, BinaryData) for e in events)


def test_message_size_limit_counts_fragments_and_resets_per_message() -> None:
    conn = ServerConnection(max_message=10)
    assert data_of(conn.receive(masked_frame(BINARY, b"x" * 10))) == b"x" * 10
    assert data_of(
        conn.receive(masked_frame(BINARY, b"y" * 6, fin=False) + masked_frame(CONT, b"z" * 4))
    ) == (b"y" * 6 + b"z" * 4)
    events = conn.receive(masked_frame(BINARY, b"a" * 6, fin=False) + masked_frame(CONT, b"b" * 5))
    assert events[0] == BinaryData(b"a" * 6)
    assert isinstance(events[1], ProtocolFailure) and events[1].code == 1009


def test_max_message_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ServerConnection(max_message=0)


# ---- protocol failures ------------------------------------------------------------------------------

FRAGMENT = masked_frame(BINARY, b"start", fin=False)
FAILURES = {
    "unmasked": (masked_frame(BINARY, b"data", masked=False), 1002),
    "unmasked-ping": (masked_frame(PING, b"", masked=False), 1002),
    "text": (masked_frame(TEXT, b"hello"), 1003),
    "text-fragment-start": (masked_frame(TEXT, b"hel", fin=False), 1003),
    "rsv1": (masked_frame(BINARY, b"data", rsv=4), 1002),
    "rsv2": (masked_frame(BINARY, b"data", rsv=2), 1002),
    "rsv3": (masked_frame(PING, b"", rsv=1), 1002),
    "opcode-3": (masked_frame(0x3, b""), 1002),
    "opcode-7": (masked_frame(0x7, b""), 1002),
    "opcode-b": (masked_frame(0xB, b""), 1002),
    "opcode-f": (masked_frame(0xF, b""), 1002),
    "ping-126": (masked_frame(PING, b"p" * 126), 1002),
    "close-126": (masked_frame(CLOSE, b"\x03\xe8" + b"r" * 124), 1002),
    "pong-16-bit-length": (masked_frame(PONG, b"p" * 10, length_form="16"), 1002),
    "fragmented-ping": (masked_frame(PING, b"p", fin=False), 1002),
    "fragmented-close": (masked_frame(CLOSE, b"", fin=False), 1002),
    "continuation-first": (masked_frame(CONT, b"orphan"), 1002),
    "binary-inside-fragmented": (FRAGMENT + masked_frame(BINARY, b"again"), 1002),
    "text-inside-fragmented": (FRAGMENT + masked_frame(TEXT, b"again"), 1002),
    "continuation-after-final": (masked_frame(BINARY, b"done") + masked_frame(CONT, b"more"), 1002),
    "16-bit-length-not-minimal": (masked_frame(BINARY, b"x" * 125, length_form="16"), 1002),
    "64-bit-length-not-minimal": (masked_frame(BINARY, b"x" * 200, length_form="64"), 1002),
    "64-bit-length-msb": (bytes([0x82, 0xFF]) + (1 << 63).to_bytes(8, "big") + MASK, 1002),
    "too-big-frame": (masked_frame(BINARY, b"x" * 1025), 1009),
    "too-big-fragments": (FRAGMENT + masked_frame(CONT, b"x" * 1020), 1009),
    "close-one-byte": (masked_frame(CLOSE, b"\x03"), 1002),
    "close-code-0": (close_frame(0), 1002),
    "close-code-999": (close_frame(999), 1002),
    "close-code-1004": (close_frame(1004), 1002),
    "close-code-1005": (close_frame(1005), 1002),
    "close-code-1006": (close_frame(1006), 1002),
    "close-code-1015": (close_frame(1015), 1002),
    "close-code-2000": (close_frame(2000), 1002),
    "close-code-5000": (close_frame(5000), 1002),
    "close-reason-bad-utf8": (close_frame(1000, b"\xce\xba\xff"), 1007),
    "close-reason-truncated-utf8": (close_frame(1000, b"ok \xe2\x82"), 1007),
}


@pytest.mark.parametrize(("stream", "code"), FAILURES.values(), ids=FAILURES.keys())
def test_protocol_failure(stream: bytes, code: int) -> None:
    conn = ServerConnection(max_message=1024)
    events = conn.receive(stream)
    failure = events[-1]
    assert isinstance(failure, ProtocolFailure) and failure.code == code and failure.reason
    assert not any(isinstance(e, ProtocolFailure | CloseReceived) for e in events[:-1])
    (close,) = server_frames(conn.data_to_send())
    assert close.opcode is Opcode.CLOSE
    assert struct.unpack("!H", close.data[:2])[0] == code
    assert bytes(close.data[2:]).decode() == failure.reason
    assert conn.closed
    # Nothing more is decoded, answered or sent.
    assert conn.receive(masked_frame(PING, b"x") + masked_frame(BINARY, b"y")) == []
    assert conn.data_to_send() == b""
    assert conn.close() == b"" and conn.send_data(b"late") == b""


@pytest.mark.parametrize(("stream", "code"), FAILURES.values(), ids=FAILURES.keys())
def test_protocol_failure_byte_at_a_time(stream: bytes, code: int) -> None:
    conn = ServerConnection(max_message=1024)
    events = feed(conn, stream, range(1, len(stream)))
    assert [e.code for e in events if isinstance(e, ProtocolFailure)] == [code]


def test_text_is_refused_as_unsupported_data() -> None:
    (failure,) = ServerConnection().receive(masked_frame(TEXT, b"hello"))
    assert isinstance(failure, ProtocolFailure) and failure.code == 1003
    assert failure.reason.startswith("unsupported data")


def test_failure_is_found_from_the_first_two_bytes() -> None:
    conn = ServerConnection()
    events = conn.receive(b"\x82\x05")  # unmasked; the rest of the frame has not arrived yet
    assert [type(e) for e in events] == [ProtocolFailure]


def test_data_before_a_failure_is_delivered_first() -> None:
    conn = ServerConnection()
    events = conn.receive(masked_frame(BINARY, b"good") + masked_frame(TEXT, b"bad"))
    assert events[0] == BinaryData(b"good") and isinstance(events[1], ProtocolFailure)


# ---- ping, close ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"x", bytes(range(125))])
def test_ping_is_answered_with_a_matching_pong(payload: bytes) -> None:
    conn = ServerConnection()
    assert conn.receive(masked_frame(PING, payload)) == [Ping(payload)]
    (pong,) = server_frames(conn.data_to_send())
    assert (pong.opcode, pong.fin, bytes(pong.data)) == (Opcode.PONG, True, payload)


def test_unsolicited_pong_is_ignored() -> None:
    conn = ServerConnection()
    assert conn.receive(masked_frame(PONG, b"beat")) == []
    assert conn.data_to_send() == b""


def test_close_is_echoed_and_ends_input() -> None:
    conn = ServerConnection()
    events = conn.receive(close_frame(1000, "bye κ".encode()) + masked_frame(BINARY, b"ignored"))
    assert events == [CloseReceived(1000, "bye κ")]
    assert conn.closed
    assert conn.data_to_send() == b"\x88\x02\x03\xe8"  # the status code echoed, unmasked
    assert conn.receive(masked_frame(PING, b"")) == []
    assert conn.data_to_send() == b""
    assert conn.close() == b"" and conn.send_data(b"late") == b""


def test_empty_close_is_answered_with_an_empty_close() -> None:
    conn = ServerConnection()
    assert conn.receive(masked_frame(CLOSE, b"")) == [CloseReceived(None, "")]
    assert conn.data_to_send() == b"\x88\x00"


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999])
def test_valid_close_codes_are_accepted(code: int) -> None:
    conn = ServerConnection()
    assert conn.receive(close_frame(code)) == [CloseReceived(code, "")]
    assert conn.data_to_send() == b"\x88\x02" + struct.pack("!H", code)


def test_server_close_then_client_reply() -> None:
    conn = ServerConnection()
    frame = conn.close(1001, "restarting")
    (parsed,) = server_frames(frame)
    assert parsed.opcode is Opcode.CLOSE and bytes(parsed.data) == b"\x03\xe9restarting"
    assert conn.closed
    assert conn.close() == b""
    assert conn.send_data(b"too late") == b""
    # Until the client's close arrives its data is still decoded; pings get no pong after our close.
    events = conn.receive(masked_frame(BINARY, b"in flight") + masked_frame(PING, b"p") + close_frame(1001))
    assert events == [BinaryData(b"in flight"), Ping(b"p"), CloseReceived(1001, "")]
    assert conn.data_to_send() == b""  # our close already went out: no echo


@pytest.mark.parametrize(
    ("code", "reason"), [(1005, ""), (1006, ""), (999, ""), (2500, ""), (5000, ""), (1000, "x" * 124)]
)
def test_close_refuses_what_cannot_be_sent(code: int, reason: str) -> None:
    conn = ServerConnection()
    with pytest.raises(ValueError):
        conn.close(code, reason)
    assert not conn.closed


def test_close_default_is_normal_closure() -> None:
    assert ServerConnection().close() == b"\x88\x02\x03\xe8"


# ---- sending -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "length_bytes"),
    [
        (0, b"\x00"),
        (125, b"\x7d"),
        (126, b"\x7e\x00\x7e"),
        (65535, b"\x7e\xff\xff"),
        (65536, b"\x7f" + (65536).to_bytes(8, "big")),
        (70000, b"\x7f" + (70000).to_bytes(8, "big")),
    ],
)
def test_send_data_is_one_unmasked_final_binary_frame(size: int, length_bytes: bytes) -> None:
    payload = random.Random(size).randbytes(size)
    for buffer in (payload, bytearray(payload), memoryview(payload)):
        out = ServerConnection().send_data(buffer)
        assert out == b"\x82" + length_bytes + payload
        (frame,) = server_frames(out)
        assert (frame.opcode, frame.fin, bytes(frame.data)) == (Opcode.BINARY, True, payload)
