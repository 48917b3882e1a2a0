"""Fuzzing ``MuxSession.receive_data`` with hostile bytes (hypothesis).

Random byte strings, and valid frame sequences mutated by bit flips, truncation, deletion, duplication and
splicing, go into client and server sessions in random chunk sizes. Whatever arrives, the session must:
raise nothing (a ``hatchway.errors.ProtocolError`` would be tolerated, anything else is a bug); report
events that make sense (streams open before they carry data, peer-opened ids have the peer's parity);
answer only with well-formed frames; queue a GOAWAY with the right code whenever it reports
``SessionTerminated`` and ignore all input afterwards; and keep memory bounded: the decoder never holds
more than one maximal frame (16 MiB + 8 bytes) and the stream table never exceeds ``max_streams``, even
after megabytes of hostile input.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hatchway.errors import ProtocolError
from hatchway.wire import frames
from hatchway.wire.frames import (
    MAX_LENGTH,
    Data,
    ErrorCode,
    Frame,
    FrameDecoder,
    FrameType,
    GoAway,
    Rst,
    WndInc,
)
from hatchway.wire.mux import (
    DataReceived,
    Event,
    GoAwayReceived,
    MuxSession,
    SessionTerminated,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)

MAX_BUFFERED = 16 * 1024 * 1024 + 8


def fuzz(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


class Harness:
    """Plays the application on top of a session and checks every answer it gives to the peer."""

    def __init__(self, session: MuxSession, local_streams: int = 2) -> None:
        self.session = session
        self.peer_parity = 0 if session.client else 1
        # Streams the events say are open, starting with a few of our own for the peer's frames to hit.
        self.live = {session.open_stream(b"\x00\x00\x00\x01") for _ in range(local_streams)}
        self.ended: set[int] = set()  # streams the peer half-closed
        self.terminated = False
        self.protocol_errors = 0
        self.rst_codes: Counter[int] = Counter()  # RSTs the session answered with, by code
        self.expect_frames(self.session.data_to_send())

    def feed(self, chunk: bytes) -> None:
        session = self.session
        try:
            events = session.receive_data(chunk)
        except ProtocolError:  # tolerated by the contract; receive_data should not even do this
            self.protocol_errors += 1
            self.terminated = True
            return
        if self.terminated:
            assert events == []
            assert session.data_to_send() == b""
            return
        terminated: SessionTerminated | None = None
        for ev in events:
            assert terminated is None, "no event may follow SessionTerminated"
            self.check_event(ev)
            if isinstance(ev, SessionTerminated):
                terminated = ev
        out = self.expect_frames(session.data_to_send())
        self.rst_codes.update(f.code for f in out if isinstance(f, Rst))
        if terminated is not None:
            self.terminated = True
            assert session.terminated
            assert out and isinstance(out[-1], GoAway), "SessionTerminated without a GOAWAY queued"
            assert out[-1].code == terminated.code
            assert session.open_streams == 0
        else:
            assert not any(isinstance(f, GoAway) for f in out)
        assert session._decoder.buffered < MAX_BUFFERED
        assert session.open_streams <= session.max_streams
        # Nobody here sends FIN, so a stream leaves the session only with an event that says so.
        assert session.open_streams == len(self.live)
        assert all(session.is_open(sid) for sid in self.live)

    def check_event(self, ev: Event) -> None:
        session = self.session
        if isinstance(ev, StreamOpened):
            assert ev.stream_id % 2 == self.peer_parity
            assert ev.stream_id not in self.live
            assert 0 < ev.stream_id <= frames.MAX_STREAM_ID
            self.live.add(ev.stream_id)
            self.ended.discard(ev.stream_id)
        elif isinstance(ev, DataReceived):
            assert ev.stream_id in self.live and ev.stream_id not in self.ended
            assert ev.data
            session.consumed(ev.stream_id, len(ev.data))  # the application reads everything at once
        elif isinstance(ev, StreamEnded):
            assert ev.stream_id in self.live and ev.stream_id not in self.ended
            self.ended.add(ev.stream_id)
        elif isinstance(ev, StreamReset):
            assert ev.stream_id in self.live
            self.live.discard(ev.stream_id)
        elif isinstance(ev, WindowUpdated):
            assert ev.stream_id in self.live
            assert ev.window > 0
        elif isinstance(ev, GoAwayReceived):
            assert session.goaway_received
        else:
            assert isinstance(ev, SessionTerminated)

    @staticmethod
    def expect_frames(out: bytes) -> list[Frame]:
        """Everything the session writes must be whole, well-formed frames."""
        decoder = FrameDecoder()
        decoder.feed(out)
        got: list[Frame] = []
        while (frame := decoder.next_frame()) is not None:
            got.append(frame)
        assert decoder.buffered == 0
        return got


def chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    pos = 0
    i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        i += 1
        yield data[pos : pos + size]
        pos += size


def run(client: bool, data: bytes, sizes: list[int], max_streams: int = 16) -> Harness:
    harness = Harness(MuxSession(client=client, max_streams=max_streams))
    for chunk in chunks(data, sizes):
        harness.feed(chunk)
    assert harness.protocol_errors == 0
    return harness


# ---- strategies ---------------------------------------------------------------------------------------
# Small stream ids, so that frames hit the same streams, both parities, and the locally opened ones.
small_ids = st.integers(1, 12)
peer_frames = st.one_of(
    st.builds(Data, small_ids, st.binary(max_size=64), st.booleans(), st.booleans()),
    st.builds(Data, small_ids, st.binary(max_size=64), st.just(False), st.just(True)),
    st.builds(Rst, small_ids, st.integers(0, 20)),
    st.builds(WndInc, small_ids, st.integers(0, frames.MAX_WINDOW_INCREMENT)),
    st.builds(GoAway, st.integers(0, 12), st.integers(0, 20), st.binary(max_size=16)),
)
chunk_sizes = st.lists(st.integers(1, 300), min_size=1, max_size=10)

Mutation = tuple[str, int, "int | bytes | Frame"]
mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 16)),
    st.tuples(st.just("duplicate"), st.integers(0, 1 << 20), st.integers(1, 32)),
    st.tuples(st.just("splice"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("splice"), st.integers(0, 1 << 20), peer_frames),
)


def mutate(data: bytes, ops: list[Mutation]) -> bytes:
    buf = bytearray(data)
    for kind, at, arg in ops:
        pos = at % (len(buf) + 1)
        if kind == "splice":
            buf[pos:pos] = arg if isinstance(arg, bytes) else frames.encode(arg)  # type: ignore[arg-type]
            continue
        assert isinstance(arg, int)
        if kind == "flip" and pos < len(buf):
            buf[pos] ^= 1 << arg
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "delete":
            del buf[pos : pos + arg]
        elif kind == "duplicate":
            buf[pos:pos] = buf[pos : pos + arg]
    return bytes(buf)


# ---- fuzz tests ---------------------------------------------------------------------------------------
@fuzz(300)
@given(client=st.booleans(), data=st.binary(max_size=3000), sizes=chunk_sizes)
def test_random_bytes(client: bool, data: bytes, sizes: list[int]) -> None:
    run(client, data, sizes)


@fuzz(300)
@given(client=st.booleans(), seq=st.lists(peer_frames, max_size=40), sizes=chunk_sizes)
def test_valid_frame_sequences(client: bool, seq: list[Frame], sizes: list[int]) -> None:
    run(client, b"".join(frames.encode(f) for f in seq), sizes)


@fuzz(600)
@given(
    client=st.booleans(),
    seq=st.lists(peer_frames, min_size=1, max_size=40),
    ops=st.lists(mutation, min_size=1, max_size=6),
    sizes=chunk_sizes,
)
def test_mutated_frame_sequences(
    client: bool, seq: list[Frame], ops: list[Mutation], sizes: list[int]
) -> None:
    run(client, mutate(b"".join(frames.encode(f) for f in seq), ops), sizes)


# Headers with valid types but any flags, ids and (mis)matched lengths: deeper than plain random bytes.
raw_frames = st.builds(
    lambda ftype, flags, sid, body, length: (
        frames.header(len(body) if length is None else length, ftype, flags, sid) + body
    ),
    st.integers(0, 3),
    st.integers(0, 15),
    st.integers(0, 12) | st.integers(0, frames.MAX_STREAM_ID),
    st.binary(max_size=24),
    st.none() | st.integers(0, 32),
)


@fuzz(400)
@given(client=st.booleans(), seq=st.lists(raw_frames, max_size=40), sizes=chunk_sizes)
def test_random_frame_headers(client: bool, seq: list[bytes], sizes: list[int]) -> None:
    run(client, b"".join(seq), sizes)


@fuzz(200)
@given(
    client=st.booleans(),
    a=st.lists(peer_frames, min_size=1, max_size=20),
    b=st.lists(peer_frames, min_size=1, max_size=20),
    cut_a=st.integers(0, 1 << 16),
    cut_b=st.integers(0, 1 << 16),
    sizes=chunk_sizes,
)
def test_spliced_frame_sequences(
    client: bool, a: list[Frame], b: list[Frame], cut_a: int, cut_b: int, sizes: list[int]
) -> None:
    # The head of one valid stream glued to the tail of another: frame boundaries no longer line up.
    raw_a = b"".join(frames.encode(f) for f in a)
    raw_b = b"".join(frames.encode(f) for f in b)
    run(client, raw_a[: cut_a % (len(raw_a) + 1)] + raw_b[cut_b % (len(raw_b) + 1) :], sizes)


# ---- memory bounds under megabytes of hostile input ---------------------------------------------------
HOSTILE_TOTAL = 5 * 1024 * 1024

# Each kind builds one frame (or a header only) from a running counter, so repeated patterns keep opening
# fresh streams, overrunning windows and leaving huge frames unfinished.
HOSTILE_KINDS = [
    "syn-flood",  # a new peer stream each time, never closed
    "syn-big",  # a new peer stream with a 64 KiB first frame
    "overrun",  # 128 KiB on a recent stream: windows run out
    "unknown-data",  # DATA without SYN on a stream that does not exist: draws an RST each time
    "wndinc",  # huge window increments
    "rst",  # resets of recent streams
    "huge-header",  # a DATA header announcing 16 MiB - 1 bytes, followed by whatever comes next
    "garbage",  # random bytes
]


def hostile_stream(client: bool, kinds: list[str], seed: int) -> Iterator[bytes]:
    """Yield hostile frames following ``kinds`` round-robin until HOSTILE_TOTAL bytes were produced."""
    rng = random.Random(seed)
    parity = 0 if client else 1
    next_id = 2 + parity if client else 1  # the peer's ids: even towards a client, odd towards a server
    total = 0
    big = bytes(64 * 1024)
    while total < HOSTILE_TOTAL:
        for kind in kinds:
            if kind in ("syn-flood", "syn-big"):
                next_id += 2
                raw = frames.encode_data(next_id, big if kind == "syn-big" else b"\x00\x00\x00\x03", syn=True)
            elif kind == "overrun":
                raw = frames.encode_data(next_id, big) + frames.encode_data(next_id, big)
            elif kind == "unknown-data":
                raw = frames.encode_data(next_id + 1000, b"x" * rng.randrange(64))
            elif kind == "wndinc":
                raw = frames.encode_wndinc(
                    max(1, next_id - 2 * rng.randrange(4)), frames.MAX_WINDOW_INCREMENT
                )
            elif kind == "rst":
                raw = frames.encode_rst(max(1, next_id - 2 * rng.randrange(8)), rng.randrange(16))
            elif kind == "huge-header":
                raw = frames.header(MAX_LENGTH, FrameType.DATA, 0, next_id)
            else:
                raw = rng.randbytes(rng.randrange(1, 256))
            total += len(raw)
            yield raw
            if total >= HOSTILE_TOTAL:
                return


@fuzz(5)
@given(
    client=st.booleans(),
    kinds=st.lists(st.sampled_from(HOSTILE_KINDS), min_size=1, max_size=6),
    seed=st.integers(0, 2**32),
    chunk=st.integers(512, 128 * 1024),
)
def test_memory_stays_bounded_under_megabytes_of_hostile_input(
    client: bool, kinds: list[str], seed: int, chunk: int
) -> None:
    harness = Harness(MuxSession(client=client, max_streams=8))
    pending = bytearray()
    fed = 0
    for raw in hostile_stream(client, kinds, seed):
        pending += raw
        while len(pending) >= chunk:
            harness.feed(bytes(pending[:chunk]))  # checks the buffer and stream bounds after every chunk
            fed += chunk
            del pending[:chunk]
    harness.feed(bytes(pending))
    fed += len(pending)
    assert fed >= HOSTILE_TOTAL
    assert harness.protocol_errors == 0
    assert harness.session.open_streams <= 8


def test_syn_flood_is_capped_at_max_streams() -> None:
    harness = Harness(MuxSession(client=False, max_streams=8), local_streams=0)
    for batch in range(200):
        raw = b"".join(
            frames.encode_data(1 + 2 * (batch * 50 + i), b"\x00\x00\x00\x03", syn=True) for i in range(50)
        )
        harness.feed(raw)  # checks open_streams <= max_streams after every batch
    assert harness.session.open_streams == 8
    assert not harness.terminated
    # Every SYN beyond the cap was refused on the wire, and nothing else was sent.
    assert harness.rst_codes == {ErrorCode.STREAMS_EXHAUSTED: 200 * 50 - 8}


def test_unfinished_maximal_frame_is_the_most_the_decoder_holds() -> None:
    # A peer announces the largest frame, then sends its body in pieces: the decoder holds that one frame.
    session = MuxSession(client=False)
    harness = Harness(session, local_streams=0)
    harness.feed(frames.encode_data(1, b"", syn=True))
    harness.feed(frames.header(MAX_LENGTH, FrameType.DATA, 0, 1))
    step = b"\xaa" * (1024 * 1024)
    for _ in range(15):
        harness.feed(step)
    assert session._decoder.buffered == 8 + 15 * len(step)
    harness.feed(step)  # completes the frame (and overruns the window): the buffer drains
    assert session._decoder.buffered == 8 + 16 * len(step) - (8 + MAX_LENGTH)
    assert not session.is_open(1)
