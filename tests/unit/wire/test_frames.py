"""muxado frames (protocol.md §2.1, §2.2): byte-exact vectors, decoder errors and hypothesis round-trips.

Every frame type goes through ``frames.encode`` and back through ``FrameDecoder``, whole and cut into
random chunks. The vectors pin the header layout (``word0 = LENGTH<<8 | TYPE<<4 | FLAGS``, SYN = 0x2 in the
low nibble) and the Rust short-GOAWAY variant the decoder must survive.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hatchway.errors import RemoteProtocolError
from hatchway.wire import frames
from hatchway.wire.frames import (
    MAX_LENGTH,
    MAX_STREAM_ID,
    Data,
    ErrorCode,
    Frame,
    FrameDecoder,
    FrameType,
    GoAway,
    Rst,
    WndInc,
)

U32_MAX = 0xFFFFFFFF


def decode_all(data: bytes) -> list[Frame]:
    decoder = FrameDecoder()
    decoder.feed(data)
    out: list[Frame] = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


def decode_chunked(data: bytes, sizes: list[int]) -> list[Frame]:
    """Feed ``data`` in pieces of the given sizes (cycled), draining frames after every piece."""
    decoder = FrameDecoder()
    out: list[Frame] = []
    pos = 0
    i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        i += 1
        decoder.feed(data[pos : pos + size])
        pos += size
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    return out


# ---- strategies ---------------------------------------------------------------------------------------
stream_ids = st.integers(1, MAX_STREAM_ID)
u32 = st.integers(0, U32_MAX)
payloads = st.binary(max_size=600)

data_frames = st.builds(Data, stream_ids, payloads, st.booleans(), st.booleans())
rst_frames = st.builds(Rst, stream_ids, u32)
wndinc_frames = st.builds(WndInc, stream_ids, st.integers(0, frames.MAX_WINDOW_INCREMENT))
goaway_frames = st.builds(GoAway, st.integers(0, MAX_STREAM_ID), u32, st.binary(max_size=300))
any_frame = st.one_of(data_frames, rst_frames, wndinc_frames, goaway_frames)
# A GOAWAY ends decoding for good, so in a sequence it can only come last.
sequences = st.tuples(
    st.lists(st.one_of(data_frames, rst_frames, wndinc_frames), max_size=12),
    st.none() | goaway_frames,
).map(lambda t: [*t[0], t[1]] if t[1] is not None else t[0])
chunk_sizes = st.lists(st.integers(1, 64), min_size=1, max_size=16)


# ---- byte-exact vectors -------------------------------------------------------------------------------
VECTORS = [
    pytest.param(
        # The Rust agent's first frame: its heartbeat stream type, alone in a DATA+SYN on stream 3 (§3, §4).
        Data(3, b"\xff\xff\xff\xff", syn=True),
        "00000412 00000003 ffffffff",
        id="agent-heartbeat-stream-type-syn-on-3",
    ),
    pytest.param(
        # Auth request stream: type 0 in its own SYN frame on stream 5.
        Data(5, b"\x00\x00\x00\x00", syn=True),
        "00000412 00000005 00000000",
        id="auth-stream-type-syn-on-5",
    ),
    pytest.param(
        # The edge echoing the heartbeat nonce seen on the wire (§4): plain DATA, no flags.
        Data(3, bytes.fromhex("8160e72b")),
        "00000410 00000003 8160e72b",
        id="heartbeat-echo",
    ),
    pytest.param(Data(2, b"", fin=True), "00000011 00000002", id="empty-fin-half-close"),
    pytest.param(Data(2, b"", syn=True), "00000012 00000002", id="empty-syn"),
    pytest.param(Data(4, b"hi", fin=True, syn=True), "00000213 00000004 6869", id="syn-fin-with-data"),
    pytest.param(Rst(5, ErrorCode.STREAM_CLOSED), "00000400 00000005 00000004", id="rst-stream-closed"),
    pytest.param(Rst(7, ErrorCode.FLOW_CONTROL), "00000400 00000007 00000003", id="rst-flow-control"),
    pytest.param(WndInc(2, 0x40000), "00000420 00000002 00040000", id="wndinc-256k"),
    pytest.param(WndInc(3, 108), "00000420 00000003 0000006c", id="wndinc-small"),
    pytest.param(GoAway(0, ErrorCode.NONE), "00000830 00000000 00000000 00000000", id="goaway-empty"),
    pytest.param(
        GoAway(7, ErrorCode.NONE, b"probe: please reconnect"),
        "00001f30 00000000 00000007 00000000" + b"probe: please reconnect".hex(),
        id="goaway-with-message",
    ),
    pytest.param(
        GoAway(4, ErrorCode.PROTOCOL, b"invalid frame"),
        "00001530 00000000 00000004 00000001" + b"invalid frame".hex(),
        id="goaway-protocol",
    ),
]


@pytest.mark.parametrize(("frame", "wire_hex"), VECTORS)
def test_vector_encodes_byte_exact(frame: Frame, wire_hex: str) -> None:
    assert frames.encode(frame) == bytes.fromhex(wire_hex)


@pytest.mark.parametrize(("frame", "wire_hex"), VECTORS)
def test_vector_decodes(frame: Frame, wire_hex: str) -> None:
    assert decode_all(bytes.fromhex(wire_hex)) == [frame]


def test_header_layout_word0() -> None:
    # word0 = LENGTH<<8 | TYPE<<4 | FLAGS; word1 = stream id.
    raw = frames.header(0xABCDEF, FrameType.WNDINC, frames.FLAG_FIN | frames.FLAG_SYN, 0x01020304)
    assert raw == bytes([0xAB, 0xCD, 0xEF, 0x23, 0x01, 0x02, 0x03, 0x04])


def test_syn_is_0x2_in_the_low_nibble_not_0x10() -> None:
    assert frames.FLAG_SYN == 0x2
    assert frames.FLAG_FIN == 0x1
    raw = frames.encode_data(3, b"", syn=True)
    assert raw[3] == 0x12  # TYPE=1 (DATA) in the high nibble, SYN in the low nibble
    assert raw[3] & 0x10 == 0x10 and raw[3] & 0xF == 0x2


def test_muxado_protocol_md_syn_0x10_reads_as_type_not_flag() -> None:
    # A writer that follows PROTOCOL.md ORs 0x10 into byte 3, which is DATA's own type nibble: the frame
    # arrives as plain DATA without SYN, so the peer never sees a stream open.
    raw = bytes.fromhex("00000010 00000003")
    assert decode_all(raw) == [Data(3, b"", fin=False, syn=False)]


def test_reserved_bit_of_stream_id_is_masked() -> None:
    raw = bytes.fromhex("00000410 80000003 01020304")
    assert decode_all(raw) == [Data(3, b"\x01\x02\x03\x04")]


def test_wndinc_top_bit_is_masked_both_ways() -> None:
    assert frames.encode_wndinc(3, 0x80000010)[8:] == bytes.fromhex("00000010")
    assert decode_all(bytes.fromhex("00000420 00000003 80000010")) == [WndInc(3, 0x10)]


def test_goaway_last_stream_id_top_bit_is_masked() -> None:
    raw = bytes.fromhex("00000830 00000000 80000005 00000000")
    assert decode_all(raw) == [GoAway(5, 0)]


def test_error_codes_match_the_spec_table() -> None:
    names = [
        "NONE", "PROTOCOL", "INTERNAL", "FLOW_CONTROL", "STREAM_CLOSED", "STREAM_REFUSED",
        "STREAM_CANCELLED", "STREAM_RESET", "FRAME_SIZE", "ACCEPT_QUEUE_FULL", "ENHANCE_YOUR_CALM",
        "REMOTE_GONE_AWAY", "STREAMS_EXHAUSTED", "WRITE_TIMEOUT", "SESSION_CLOSED", "PEER_EOF",
    ]  # fmt: skip
    assert [(c.name, c.value) for c in ErrorCode] == [(n, i) for i, n in enumerate(names)]
    assert [(t.name, t.value) for t in FrameType] == [("RST", 0), ("DATA", 1), ("WNDINC", 2), ("GOAWAY", 3)]


# ---- the Rust short GOAWAY ----------------------------------------------------------------------------
def rust_goaway(last_stream_id: int, code: int, message: bytes) -> bytes:
    """What Rust muxado 0.4-0.5 writes: LENGTH = len(message), leaving out the 8 fixed bytes."""
    return (
        frames.header(len(message), FrameType.GOAWAY, 0, 0)
        + bytes.fromhex(f"{last_stream_id:08x}{code:08x}")
        + message
    )


TRAILER = frames.encode_data(3, b"must not be parsed") + frames.encode_rst(3, 1)


def test_rust_short_goaway_empty_message_vector() -> None:
    raw = rust_goaway(9, ErrorCode.NONE, b"")
    assert raw == bytes.fromhex("00000030 00000000 00000009 00000000")
    decoder = FrameDecoder()
    decoder.feed(raw + TRAILER)
    assert decoder.next_frame() == GoAway(9, ErrorCode.NONE, b"")
    assert decoder.finished
    assert decoder.next_frame() is None


def test_rust_short_goaway_short_message_is_recovered_whole() -> None:
    raw = rust_goaway(5, ErrorCode.REMOTE_GONE_AWAY, b"bye")
    assert raw[:4].hex() == "00000330"
    assert decode_all(raw + TRAILER) == [GoAway(5, ErrorCode.REMOTE_GONE_AWAY, b"bye")]


def test_rust_short_goaway_long_message_keeps_id_and_code_and_stops() -> None:
    message = b"session closed by the agent"
    got = decode_all(rust_goaway(11, ErrorCode.SESSION_CLOSED, message) + TRAILER)
    assert len(got) == 1
    goaway = got[0]
    assert isinstance(goaway, GoAway)
    assert (goaway.last_stream_id, goaway.code) == (11, ErrorCode.SESSION_CLOSED)
    # LENGTH is 8 too small, so only a prefix of the message can be trusted.
    assert message.startswith(goaway.message)


@given(
    last=st.integers(0, MAX_STREAM_ID),
    code=u32,
    message=st.binary(max_size=64),
    sizes=chunk_sizes,
)
def test_rust_short_goaway_any_message_in_chunks(
    last: int, code: int, message: bytes, sizes: list[int]
) -> None:
    got = decode_chunked(rust_goaway(last, code, message) + TRAILER + b"\x00" * 16, sizes)
    assert len(got) == 1
    goaway = got[0]
    assert isinstance(goaway, GoAway)
    assert (goaway.last_stream_id, goaway.code) == (last, code)
    assert message.startswith(goaway.message)


def test_nothing_after_goaway_is_decoded_and_feed_is_ignored() -> None:
    decoder = FrameDecoder()
    decoder.feed(frames.encode_goaway(3, 0) + frames.encode_data(5, b"x"))
    assert decoder.next_frame() == GoAway(3, 0)
    decoder.feed(frames.encode_data(7, b"y"))
    assert decoder.next_frame() is None
    assert decoder.buffered == 0


# ---- decoder errors -----------------------------------------------------------------------------------
def decode_error(raw: bytes) -> RemoteProtocolError:
    decoder = FrameDecoder()
    decoder.feed(raw)
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    return info.value


@pytest.mark.parametrize("ftype", [FrameType.RST, FrameType.WNDINC])
@pytest.mark.parametrize("length", [0, 3, 5, 8, MAX_LENGTH])
def test_rst_and_wndinc_with_wrong_length_are_frame_size_errors(ftype: int, length: int) -> None:
    # The error is raised from the header alone: the peer cannot make us wait for a bogus body.
    err = decode_error(frames.header(length, ftype, 0, 3))
    assert err.mux_code == ErrorCode.FRAME_SIZE


@pytest.mark.parametrize("ftype", range(4, 16))
def test_unknown_frame_types_are_protocol_errors(ftype: int) -> None:
    err = decode_error(frames.header(0, ftype, 0, 1))
    assert err.mux_code == ErrorCode.PROTOCOL


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(frames.encode_data(0, b"x"), id="data"),
        pytest.param(frames.header(4, FrameType.RST, 0, 0) + b"\x00\x00\x00\x01", id="rst"),
        pytest.param(frames.header(4, FrameType.WNDINC, 0, 0) + b"\x00\x00\x00\x01", id="wndinc"),
    ],
)
def test_stream_frames_on_stream_zero_are_protocol_errors(raw: bytes) -> None:
    assert decode_error(raw).mux_code == ErrorCode.PROTOCOL


def test_goaway_on_a_stream_is_a_protocol_error() -> None:
    raw = frames.header(8, FrameType.GOAWAY, 0, 1) + bytes(8)
    assert decode_error(raw).mux_code == ErrorCode.PROTOCOL


def test_partial_frames_wait_for_more() -> None:
    raw = frames.encode_data(3, b"hello", fin=True)
    decoder = FrameDecoder()
    for i, byte in enumerate(raw):
        assert decoder.next_frame() is None
        assert decoder.buffered == i
        decoder.feed(bytes([byte]))
    assert decoder.next_frame() == Data(3, b"hello", fin=True)
    assert decoder.buffered == 0


def test_largest_data_frame_round_trips() -> None:
    payload = b"\xab" * MAX_LENGTH
    raw = frames.encode_data(1, payload)
    assert raw[:4] == b"\xff\xff\xff\x10"
    assert decode_all(raw) == [Data(1, payload)]


@pytest.mark.parametrize(
    ("length", "stream_id"), [(MAX_LENGTH + 1, 1), (-1, 1), (0, MAX_STREAM_ID + 1), (0, -1)]
)
def test_header_refuses_out_of_range_values(length: int, stream_id: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        frames.header(length, FrameType.DATA, 0, stream_id)


def test_encode_data_refuses_oversized_payload() -> None:
    with pytest.raises(ValueError, match="out of range"):
        frames.encode_data(1, bytes(MAX_LENGTH + 1))


# ---- round-trips --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("fin", "syn"), [(False, False), (True, False), (False, True), (True, True)])
@given(stream_id=stream_ids, payload=payloads)
def test_data_round_trip_every_flag_combination(fin: bool, syn: bool, stream_id: int, payload: bytes) -> None:
    frame = Data(stream_id, payload, fin=fin, syn=syn)
    raw = frames.encode(frame)
    assert len(raw) == 8 + len(payload)
    assert raw[3] == 0x10 | (fin and frames.FLAG_FIN) | (syn and frames.FLAG_SYN)
    assert decode_all(raw) == [frame]


@pytest.mark.parametrize(("fin", "syn"), [(False, False), (True, False), (False, True), (True, True)])
def test_empty_data_round_trip(fin: bool, syn: bool) -> None:
    frame = Data(2, b"", fin=fin, syn=syn)
    assert decode_all(frames.encode(frame)) == [frame]


@given(frame=rst_frames)
def test_rst_round_trip(frame: Rst) -> None:
    raw = frames.encode(frame)
    assert len(raw) == 12
    assert decode_all(raw) == [frame]


@given(frame=wndinc_frames)
def test_wndinc_round_trip(frame: WndInc) -> None:
    raw = frames.encode(frame)
    assert len(raw) == 12
    assert decode_all(raw) == [frame]


@given(frame=goaway_frames)
def test_goaway_round_trip_with_and_without_message(frame: GoAway) -> None:
    raw = frames.encode(frame)
    assert int.from_bytes(raw[:3], "big") == 8 + len(frame.message)
    assert decode_all(raw) == [frame]


@given(frame=any_frame, sizes=chunk_sizes)
def test_any_frame_round_trips_in_random_chunks(frame: Frame, sizes: list[int]) -> None:
    assert decode_chunked(frames.encode(frame), sizes) == [frame]


@settings(max_examples=200)
@given(seq=sequences, sizes=chunk_sizes)
def test_frame_sequences_round_trip_in_random_chunks(seq: list[Frame], sizes: list[int]) -> None:
    raw = b"".join(frames.encode(f) for f in seq)
    assert decode_chunked(raw, sizes) == seq
    assert decode_all(raw) == seq
