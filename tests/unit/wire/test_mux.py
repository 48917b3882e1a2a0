"""The muxado session state machine (protocol.md §2.3, §2.4), tested as "bytes in, events out".

Each test plays the peer: it builds frames with ``frames.encode_*``, feeds them to
``MuxSession.receive_data``, checks the events, then decodes ``data_to_send()`` to see exactly which frames
the session answered with. Covers stream ids, open/half-close/close, every illegal frame the session must
answer (RST or GOAWAY, never an exception), flow control in both directions, limits and shutdown.
"""

from __future__ import annotations

import pytest

from hatchway.errors import LocalProtocolError
from hatchway.wire import frames
from hatchway.wire.frames import Data, ErrorCode, Frame, FrameDecoder, FrameType, GoAway, Rst, WndInc
from hatchway.wire.mux import (
    DEFAULT_WINDOW,
    DataReceived,
    GoAwayReceived,
    MuxSession,
    SessionTerminated,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)
from hatchway.wire.rpc import StreamType, stream_type_prefix

KIB = 1024
HEARTBEAT = stream_type_prefix(StreamType.HEARTBEAT)


def answered(session: MuxSession) -> list[Frame]:
    """Decode everything the session queued for the peer since the last call."""
    decoder = FrameDecoder()
    decoder.feed(session.data_to_send())
    out: list[Frame] = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    assert decoder.buffered == 0, "the session queued a partial frame"
    return out


def server() -> MuxSession:
    return MuxSession(client=False)


def client() -> MuxSession:
    return MuxSession(client=True)


def opened(session: MuxSession, stream_id: int, data: bytes = b"") -> MuxSession:
    """Have the peer open ``stream_id`` on ``session`` and forget the answer (there is none)."""
    session.receive_data(frames.encode_data(stream_id, data, syn=True))
    assert answered(session) == []
    return session


def terminated_with(session: MuxSession, events: list[object], code: int) -> None:
    """The session ended itself: one SessionTerminated event and a GOAWAY with ``code`` on the wire."""
    assert isinstance(events[-1], SessionTerminated)
    assert sum(isinstance(ev, SessionTerminated) for ev in events) == 1
    assert events[-1].code == code
    out = answered(session)
    assert isinstance(out[-1], GoAway)
    assert out[-1].code == code
    assert out[-1].last_stream_id == session.last_remote_id
    assert session.terminated


# ---- stream ids ---------------------------------------------------------------------------------------
def test_client_streams_are_odd_starting_at_3() -> None:
    session = client()
    assert [session.open_stream() for _ in range(4)] == [3, 5, 7, 9]


def test_server_streams_are_even_starting_at_2() -> None:
    session = server()
    assert [session.open_stream() for _ in range(4)] == [2, 4, 6, 8]


def test_open_stream_sends_syn_with_initial_bytes() -> None:
    session = client()
    assert session.open_stream(HEARTBEAT) == 3
    # Exactly the frame the Rust agent sends first (protocol.md §3, §4).
    assert session.data_to_send() == bytes.fromhex("00000412 00000003 ffffffff")
    assert session.is_open(3)
    assert session.send_window(3) == DEFAULT_WINDOW - 4


def test_open_stream_without_initial_bytes_sends_empty_syn() -> None:
    session = server()
    sid = session.open_stream()
    assert answered(session) == [Data(sid, b"", syn=True)]


def test_initial_data_larger_than_window_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        MuxSession(client=True, window=8).open_stream(b"123456789")


def test_client_and_server_sessions_talk_to_each_other() -> None:
    agent, edge = client(), server()
    sid = agent.open_stream(HEARTBEAT)
    assert edge.receive_data(agent.data_to_send()) == [StreamOpened(3), DataReceived(3, HEARTBEAT)]
    agent.send_data(sid, b"\x81\x60\xe7\x2b")
    assert edge.receive_data(agent.data_to_send()) == [DataReceived(3, b"\x81\x60\xe7\x2b")]
    edge.send_data(sid, b"\x81\x60\xe7\x2b")
    assert agent.receive_data(edge.data_to_send()) == [DataReceived(3, b"\x81\x60\xe7\x2b")]
    proxy = edge.open_stream(stream_type_prefix(StreamType.PROXY))
    assert proxy == 2
    assert agent.receive_data(edge.data_to_send()) == [StreamOpened(2), DataReceived(2, b"\x00\x00\x00\x03")]


# ---- opening, data, half-close ------------------------------------------------------------------------
def test_peer_syn_opens_a_stream_with_its_data() -> None:
    session = server()
    events = session.receive_data(frames.encode_data(3, HEARTBEAT, syn=True))
    assert events == [StreamOpened(3), DataReceived(3, HEARTBEAT)]
    assert session.is_open(3)
    assert session.last_remote_id == 3
    assert answered(session) == []  # nothing acknowledges a SYN


def test_peer_empty_syn_opens_a_stream_without_data_event() -> None:
    session = client()
    assert session.receive_data(frames.encode_data(2, b"", syn=True)) == [StreamOpened(2)]


def test_type_and_payload_in_separate_frames() -> None:
    # The Rust agent writes the 4 type bytes in their own SYN frame; the payload follows later (pitfall 8).
    session = server()
    events = session.receive_data(
        frames.encode_data(5, stream_type_prefix(StreamType.AUTH), syn=True)
        + frames.encode_data(5, b'{"Version":["3","2"]}')
    )
    assert events == [
        StreamOpened(5),
        DataReceived(5, b"\x00\x00\x00\x00"),
        DataReceived(5, b'{"Version":["3","2"]}'),
    ]


def test_fin_ends_the_stream() -> None:
    session = opened(server(), 3)
    events = session.receive_data(frames.encode_data(3, b"last", fin=True))
    assert events == [DataReceived(3, b"last"), StreamEnded(3)]
    assert session.is_open(3)  # our direction is still open
    session.send_data(3, b"reply")
    assert answered(session) == [Data(3, b"reply")]


def test_syn_with_fin_opens_and_ends_at_once() -> None:
    session = server()
    events = session.receive_data(frames.encode_data(3, b"x", syn=True, fin=True))
    assert events == [StreamOpened(3), DataReceived(3, b"x"), StreamEnded(3)]


def test_stream_dropped_when_peer_fins_after_us() -> None:
    session = opened(server(), 3)
    session.send_eof(3)
    assert answered(session) == [Data(3, b"", fin=True)]
    assert session.is_open(3)
    assert session.receive_data(frames.encode_data(3, b"", fin=True)) == [StreamEnded(3)]
    assert not session.is_open(3)
    assert session.open_streams == 0


def test_stream_dropped_when_we_fin_after_peer() -> None:
    session = opened(server(), 3)
    assert session.receive_data(frames.encode_data(3, b"", fin=True)) == [StreamEnded(3)]
    session.send_data(3, b'{"Error":""}', fin=True)
    assert answered(session) == [Data(3, b'{"Error":""}', fin=True)]
    assert not session.is_open(3)


def test_send_after_own_fin_is_local_error() -> None:
    session = opened(server(), 3)
    session.send_eof(3)
    with pytest.raises(LocalProtocolError):
        session.send_data(3, b"more")


def test_send_on_unknown_stream_is_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        server().send_data(3, b"x")


def test_peer_rst_resets_the_stream() -> None:
    session = opened(server(), 3)
    events = session.receive_data(frames.encode_rst(3, ErrorCode.STREAM_CANCELLED))
    assert events == [StreamReset(3, ErrorCode.STREAM_CANCELLED, True)]
    assert not session.is_open(3)
    assert answered(session) == []
    with pytest.raises(LocalProtocolError):
        session.send_data(3, b"x")


def test_peer_rst_on_unknown_stream_is_ignored() -> None:
    session = server()
    assert session.receive_data(frames.encode_rst(9, ErrorCode.STREAM_CLOSED)) == []
    assert answered(session) == []


# ---- stream-level faults: RST, the session lives on ---------------------------------------------------
def test_data_on_unknown_stream_draws_rst_stream_closed() -> None:
    session = server()
    assert session.receive_data(frames.encode_data(3, b"x")) == []
    assert answered(session) == [Rst(3, ErrorCode.STREAM_CLOSED)]
    assert not session.terminated


def test_data_on_reset_stream_draws_rst_stream_closed() -> None:
    session = opened(server(), 3)
    session.reset_stream(3)
    assert answered(session) == [Rst(3, ErrorCode.STREAM_RESET)]
    assert session.receive_data(frames.encode_data(3, b"late")) == []
    assert answered(session) == [Rst(3, ErrorCode.STREAM_CLOSED)]


def test_data_on_fully_closed_stream_draws_rst_stream_closed() -> None:
    session = opened(server(), 3)
    session.receive_data(frames.encode_data(3, b"", fin=True))
    session.send_eof(3)
    answered(session)
    assert session.receive_data(frames.encode_data(3, b"ghost")) == []
    assert answered(session) == [Rst(3, ErrorCode.STREAM_CLOSED)]


def test_data_after_peer_fin_resets_the_stream() -> None:
    session = opened(server(), 3)
    session.receive_data(frames.encode_data(3, b"", fin=True))
    events = session.receive_data(frames.encode_data(3, b"after fin"))
    assert events == [StreamReset(3, ErrorCode.STREAM_CLOSED, False)]
    assert answered(session) == [Rst(3, ErrorCode.STREAM_CLOSED)]
    assert not session.is_open(3)
    assert not session.terminated


def test_reset_stream_emits_rst_once() -> None:
    session = opened(server(), 3)
    session.reset_stream(3, ErrorCode.STREAM_CANCELLED)
    session.reset_stream(3, ErrorCode.STREAM_CANCELLED)
    session.reset_stream(99)
    assert answered(session) == [Rst(3, ErrorCode.STREAM_CANCELLED)]
    assert not session.is_open(3)


def test_reset_stream_default_code_is_stream_reset() -> None:
    session = opened(server(), 3)
    session.reset_stream(3)
    assert answered(session) == [Rst(3, ErrorCode.STREAM_RESET)]


# ---- session-level faults: GOAWAY + SessionTerminated -------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "code"),
    [
        pytest.param(
            frames.header(3, FrameType.RST, 0, 3) + b"\x00\x00\x04", ErrorCode.FRAME_SIZE, id="rst-len-3"
        ),
        pytest.param(frames.header(5, FrameType.RST, 0, 3) + bytes(5), ErrorCode.FRAME_SIZE, id="rst-len-5"),
        pytest.param(frames.header(0, FrameType.WNDINC, 0, 3), ErrorCode.FRAME_SIZE, id="wndinc-len-0"),
        pytest.param(
            frames.header(8, FrameType.WNDINC, 0, 3) + bytes(8), ErrorCode.FRAME_SIZE, id="wndinc-len-8"
        ),
        pytest.param(frames.header(0, 4, 0, 3), ErrorCode.PROTOCOL, id="unknown-type-4"),
        pytest.param(frames.header(4, 0xF, 0, 3) + bytes(4), ErrorCode.PROTOCOL, id="unknown-type-15"),
        pytest.param(frames.encode_data(0, b"x"), ErrorCode.PROTOCOL, id="data-on-stream-0"),
        pytest.param(frames.encode_data(0, b"", syn=True), ErrorCode.PROTOCOL, id="syn-on-stream-0"),
        pytest.param(
            frames.header(4, FrameType.RST, 0, 0) + bytes(4), ErrorCode.PROTOCOL, id="rst-on-stream-0"
        ),
        pytest.param(
            frames.header(8, FrameType.GOAWAY, 0, 3) + bytes(8), ErrorCode.PROTOCOL, id="goaway-on-stream-3"
        ),
        pytest.param(frames.encode_data(2, b"", syn=True), ErrorCode.PROTOCOL, id="syn-with-our-parity"),
    ],
)
def test_illegal_frames_terminate_the_session(raw: bytes, code: int) -> None:
    session = server()
    opened(session, 5, b"x")
    events = session.receive_data(raw)
    assert events[:-1] == [StreamReset(5, ErrorCode.SESSION_CLOSED, False)]
    terminated_with(session, events, code)
    assert session.open_streams == 0


def test_client_rejects_odd_syn_from_server() -> None:
    session = client()
    events = session.receive_data(frames.encode_data(3, b"", syn=True))
    terminated_with(session, events, ErrorCode.PROTOCOL)


def test_duplicate_syn_on_open_stream_terminates() -> None:
    session = opened(server(), 3)
    events = session.receive_data(frames.encode_data(3, b"", syn=True))
    terminated_with(session, events, ErrorCode.PROTOCOL)


def test_frames_before_the_fault_in_the_same_chunk_still_count() -> None:
    session = server()
    events = session.receive_data(frames.encode_data(3, b"hi", syn=True) + frames.header(0, 9, 0, 3))
    assert events[:3] == [
        StreamOpened(3),
        DataReceived(3, b"hi"),
        StreamReset(3, ErrorCode.SESSION_CLOSED, False),
    ]
    terminated_with(session, events, ErrorCode.PROTOCOL)
    assert session.last_remote_id == 3


def test_after_termination_input_is_ignored_and_nothing_more_is_sent() -> None:
    session = server()
    session.receive_data(frames.header(0, 7, 0, 1))
    answered(session)
    assert session.receive_data(frames.encode_data(3, b"x", syn=True)) == []
    assert session.receive_data(b"\xff" * 100) == []
    assert answered(session) == []
    with pytest.raises(LocalProtocolError):
        session.open_stream()


def test_termination_after_our_goaway_sends_no_second_goaway() -> None:
    session = server()
    session.go_away(ErrorCode.NONE, b"draining")
    assert answered(session) == [GoAway(0, ErrorCode.NONE, b"draining")]
    events = session.receive_data(frames.header(0, 6, 0, 1))
    assert events == [SessionTerminated(ErrorCode.PROTOCOL, "invalid frame")]
    assert answered(session) == []


# ---- GOAWAY both ways ---------------------------------------------------------------------------------
def test_goaway_received_event_and_no_new_streams() -> None:
    session = client()
    sid = session.open_stream(HEARTBEAT)
    answered(session)
    events = session.receive_data(frames.encode_goaway(0, ErrorCode.NONE, b"probe: please reconnect"))
    assert events == [GoAwayReceived(0, ErrorCode.NONE, b"probe: please reconnect")]
    assert session.goaway_received
    with pytest.raises(LocalProtocolError):
        session.open_stream()
    # Existing streams may finish.
    session.send_data(sid, b"1234")
    assert answered(session) == [Data(sid, b"1234")]


def test_rust_short_goaway_is_received_and_trailing_bytes_ignored() -> None:
    session = client()
    raw = frames.header(3, FrameType.GOAWAY, 0, 0) + bytes.fromhex("00000005 0000000b") + b"bye"
    events = session.receive_data(raw + frames.encode_data(2, b"junk", syn=True))
    assert events == [GoAwayReceived(5, ErrorCode.REMOTE_GONE_AWAY, b"bye")]
    assert session.receive_data(frames.encode_data(4, b"more", syn=True)) == []
    assert not session.terminated
    assert answered(session) == []


def test_go_away_refuses_new_peer_streams_with_remote_gone_away() -> None:
    session = opened(server(), 3)
    session.go_away(ErrorCode.NONE, b"maintenance")
    session.go_away(ErrorCode.INTERNAL, b"again")  # only once
    assert answered(session) == [GoAway(3, ErrorCode.NONE, b"maintenance")]
    assert session.receive_data(frames.encode_data(5, b"\x00\x00\x00\x01", syn=True)) == []
    assert answered(session) == [Rst(5, ErrorCode.REMOTE_GONE_AWAY)]
    assert not session.is_open(5)
    # The stream opened before the GOAWAY keeps working.
    assert session.receive_data(frames.encode_data(3, b"ok")) == [DataReceived(3, b"ok")]
    with pytest.raises(LocalProtocolError):
        session.open_stream()


# ---- limits -------------------------------------------------------------------------------------------
def test_max_streams_exceeded_draws_rst_streams_exhausted() -> None:
    session = MuxSession(client=False, max_streams=2)
    opened(session, 3)
    opened(session, 5)
    assert session.receive_data(frames.encode_data(7, b"x", syn=True)) == []
    assert answered(session) == [Rst(7, ErrorCode.STREAMS_EXHAUSTED)]
    assert session.open_streams == 2
    # Data that follows on the refused stream is for a closed stream.
    assert session.receive_data(frames.encode_data(7, b"y")) == []
    assert answered(session) == [Rst(7, ErrorCode.STREAM_CLOSED)]
    # Once a slot frees up, the next stream is accepted.
    session.receive_data(frames.encode_rst(3, ErrorCode.STREAM_CANCELLED))
    assert session.receive_data(frames.encode_data(9, b"", syn=True)) == [StreamOpened(9)]


# ---- flow control -------------------------------------------------------------------------------------
def test_send_data_is_limited_by_the_window_and_resumes_after_wndinc() -> None:
    session = opened(server(), 3)
    body = bytes(range(256)) * (300 * KIB // 256)
    taken = session.send_data(3, body, fin=True)
    assert taken == DEFAULT_WINDOW
    out = answered(session)
    assert b"".join(f.data for f in out if isinstance(f, Data)) == body[:taken]
    assert not any(f.fin for f in out if isinstance(f, Data))  # FIN waits for the last byte
    assert session.send_window(3) == 0
    assert session.send_data(3, body[taken:], fin=True) == 0
    assert answered(session) == []

    events = session.receive_data(frames.encode_wndinc(3, 10 * KIB))
    assert events == [WindowUpdated(3, 10 * KIB)]
    assert session.send_data(3, body[taken:], fin=True) == 10 * KIB
    assert answered(session) == [Data(3, body[taken : taken + 10 * KIB])]

    session.receive_data(frames.encode_wndinc(3, DEFAULT_WINDOW))
    rest = body[taken + 10 * KIB :]
    assert session.send_data(3, rest, fin=True) == len(rest)
    out = answered(session)
    assert b"".join(f.data for f in out if isinstance(f, Data)) == rest
    assert isinstance(out[-1], Data) and out[-1].fin


def test_initial_bytes_count_against_the_send_window() -> None:
    session = MuxSession(client=True, window=10)
    sid = session.open_stream(b"\x00\x00\x00\x01")
    answered(session)
    assert session.send_data(sid, b"0123456789") == 6


def test_wndinc_zero_changes_nothing() -> None:
    session = opened(server(), 3)
    assert session.receive_data(frames.encode_wndinc(3, 0)) == []


def test_wndinc_on_unknown_stream_is_ignored() -> None:
    session = server()
    assert session.receive_data(frames.encode_wndinc(7, 1000)) == []
    assert answered(session) == []
    assert not session.terminated


def test_frames_are_split_at_max_frame() -> None:
    session = MuxSession(client=False, max_frame=10)
    opened(session, 3)
    assert session.send_data(3, b"abcdefghijklmnopqrstuvwxy", fin=True) == 25
    assert answered(session) == [
        Data(3, b"abcdefghij"),
        Data(3, b"klmnopqrst"),
        Data(3, b"uvwxy", fin=True),
    ]


def test_default_max_frame_keeps_frames_at_64k() -> None:
    session = opened(server(), 3)
    session.send_data(3, bytes(200 * KIB))
    assert [len(f.data) for f in answered(session) if isinstance(f, Data)] == [64 * KIB] * 3 + [8 * KIB]


def test_consumed_sends_wndinc_once_a_quarter_window_is_read() -> None:
    session = opened(server(), 3)
    quarter = DEFAULT_WINDOW // 4
    session.receive_data(frames.encode_data(3, bytes(quarter)))
    session.consumed(3, quarter - 1)
    assert answered(session) == []
    session.consumed(3, 1)
    assert answered(session) == [WndInc(3, quarter)]
    session.consumed(3, 0)
    session.consumed(99, quarter)
    assert answered(session) == []


def test_no_wndinc_after_peer_fin() -> None:
    session = opened(server(), 3)
    session.receive_data(frames.encode_data(3, bytes(DEFAULT_WINDOW), fin=True))
    session.consumed(3, DEFAULT_WINDOW)
    assert answered(session) == []


def test_window_overrun_resets_with_flow_control() -> None:
    session = opened(server(), 3)
    chunk = bytes(64 * KIB)
    events = session.receive_data(b"".join(frames.encode_data(3, chunk) for _ in range(4)))
    assert events == [DataReceived(3, chunk)] * 4  # exactly the window: fine
    assert answered(session) == []
    events = session.receive_data(frames.encode_data(3, b"!"))
    assert events == [StreamReset(3, ErrorCode.FLOW_CONTROL, False)]
    assert answered(session) == [Rst(3, ErrorCode.FLOW_CONTROL)]
    assert not session.is_open(3)
    assert not session.terminated


def test_window_overrun_in_one_syn_frame() -> None:
    session = server()
    events = session.receive_data(frames.encode_data(3, bytes(DEFAULT_WINDOW + 1), syn=True))
    assert events == [StreamOpened(3), StreamReset(3, ErrorCode.FLOW_CONTROL, False)]
    assert answered(session) == [Rst(3, ErrorCode.FLOW_CONTROL)]


def test_consumed_window_lets_the_peer_send_more() -> None:
    session = opened(server(), 3)
    session.receive_data(frames.encode_data(3, bytes(DEFAULT_WINDOW)))
    session.consumed(3, DEFAULT_WINDOW // 4)
    assert answered(session) == [WndInc(3, DEFAULT_WINDOW // 4)]
    events = session.receive_data(frames.encode_data(3, bytes(DEFAULT_WINDOW // 4)))
    assert events == [DataReceived(3, bytes(DEFAULT_WINDOW // 4))]
    events = session.receive_data(frames.encode_data(3, b"!"))
    assert events == [StreamReset(3, ErrorCode.FLOW_CONTROL, False)]


# ---- the driver's view --------------------------------------------------------------------------------
def test_data_to_send_drains_once_and_counts_bytes() -> None:
    session = client()
    session.open_stream(HEARTBEAT)
    session.open_stream(b"\x00\x00\x00\x00")
    assert session.bytes_to_send == 24
    assert len(session.data_to_send()) == 24
    assert session.bytes_to_send == 0
    assert session.data_to_send() == b""


def test_receive_data_accepts_bytes_in_any_split() -> None:
    raw = (
        frames.encode_data(3, HEARTBEAT, syn=True)
        + frames.encode_data(3, b"\x81\x60\xe7\x2b")
        + frames.encode_data(5, b"\x00\x00\x00\x00", syn=True)
        + frames.encode_data(5, b"", fin=True)
    )
    whole = server().receive_data(raw)
    for split in range(len(raw) + 1):
        session = server()
        assert (
            session.receive_data(memoryview(raw)[:split]) + session.receive_data(bytearray(raw[split:]))
            == whole
        )
