"""Heartbeats (protocol.md §4) as clock-free state machines: every time is passed in, nothing sleeps.

``Heartbeater`` (the agent side) beats at once and then every interval, matches the 4-byte echo and
measures latency, and calls the peer dead only after interval + tolerance without a good echo.
``HeartbeatMonitor`` (the edge side) echoes whole 4-byte groups unchanged and calls the agent dead after
interval + tolerance of silence.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hatchway.wire.heartbeat import DEFAULT_INTERVAL, DEFAULT_TOLERANCE, Heartbeater, HeartbeatMonitor

T0 = 1000.0
NONCE = bytes.fromhex("8160e72b")
EPS = 1e-6


def test_defaults_match_the_sdks() -> None:
    # 10 s + 15 s, sent by the SDKs as 10000000000 / 15000000000 ns in AuthExtra.
    assert (DEFAULT_INTERVAL, DEFAULT_TOLERANCE) == (10.0, 15.0)


# ---- Heartbeater ------------------------------------------------------------------------------------------
def test_first_beat_is_due_at_once() -> None:
    hb = Heartbeater(interval=10.0, tolerance=15.0)
    hb.start(T0)
    assert hb.due(T0)
    assert hb.beat(NONCE, T0) == NONCE
    assert not hb.due(T0)


@pytest.mark.parametrize("t0", [0.0, -5.0, T0])
def test_beats_follow_the_interval_whatever_the_clock_origin(t0: float) -> None:
    # A clock that starts at 0.0 (a test clock, a fresh monotonic source) must not make beats back to back.
    hb = Heartbeater(interval=10.0, tolerance=15.0)
    hb.start(t0)
    assert hb.due(t0)
    hb.beat(NONCE, t0)
    assert hb.receive(NONCE, t0 + 0.5) == 0.5
    assert not hb.due(t0 + 0.5)
    assert not hb.due(t0 + 10.0 - EPS)
    assert hb.next_due() == t0 + 10.0
    assert hb.due(t0 + 10.0)


def test_matching_echo_gives_latency() -> None:
    hb = Heartbeater()
    hb.start(T0)
    hb.beat(NONCE, T0)
    assert hb.latency is None
    assert hb.receive(NONCE, T0 + 0.25) == pytest.approx(0.25)
    assert hb.latency == pytest.approx(0.25)


def test_echo_split_across_reads() -> None:
    hb = Heartbeater()
    hb.beat(NONCE, T0)
    assert hb.receive(NONCE[:1], T0 + 0.1) is None
    assert hb.receive(NONCE[1:3], T0 + 0.2) is None
    assert hb.receive(NONCE[3:], T0 + 0.3) == pytest.approx(0.3)


def test_non_matching_echo_is_ignored() -> None:
    hb = Heartbeater(interval=10.0, tolerance=15.0)
    hb.start(T0)
    hb.beat(NONCE, T0)
    assert hb.receive(b"\x00\x00\x00\x00", T0 + 1) is None
    assert hb.latency is None
    assert not hb.due(T0 + 20)  # still waiting for the real echo
    assert hb.is_dead(T0 + 25 + EPS)  # a wrong echo does not count as a sign of life


def test_wrong_group_then_right_group_in_one_read() -> None:
    hb = Heartbeater()
    hb.beat(NONCE, T0)
    assert hb.receive(b"abcd" + NONCE, T0 + 2) == pytest.approx(2.0)


def test_echo_with_nothing_pending_is_ignored() -> None:
    hb = Heartbeater()
    hb.start(T0)
    assert hb.receive(NONCE, T0 + 1) is None
    hb.beat(NONCE, T0 + 2)
    assert hb.receive(NONCE + NONCE, T0 + 3) == pytest.approx(1.0)  # the second copy matches nothing
    assert hb.due(T0 + 12)


def test_is_dead_after_interval_plus_tolerance_without_echo_and_not_before() -> None:
    hb = Heartbeater(interval=10.0, tolerance=15.0)
    hb.start(T0)
    hb.beat(NONCE, T0)
    assert hb.deadline() == T0 + 25.0
    assert not hb.is_dead(T0 + 24.0)
    assert not hb.is_dead(T0 + 25.0)
    assert hb.is_dead(T0 + 25.0 + EPS)


def test_echo_moves_the_deadline() -> None:
    hb = Heartbeater(interval=10.0, tolerance=15.0)
    hb.start(T0)
    hb.beat(NONCE, T0)
    hb.receive(NONCE, T0 + 20.0)
    assert not hb.is_dead(T0 + 30.0)
    assert not hb.is_dead(T0 + 45.0)
    assert hb.is_dead(T0 + 45.0 + EPS)


def test_not_dead_before_anything_happened() -> None:
    hb = Heartbeater()
    assert not hb.is_dead(T0 + 1e9)


def test_silence_counts_from_the_first_beat_without_start() -> None:
    hb = Heartbeater(interval=1.0, tolerance=2.0)
    hb.beat(NONCE, T0)
    assert not hb.is_dead(T0 + 3.0)
    assert hb.is_dead(T0 + 3.0 + EPS)


@pytest.mark.parametrize("nonce", [b"", b"abc", b"abcde"])
def test_nonce_must_be_four_bytes(nonce: bytes) -> None:
    with pytest.raises(ValueError, match="4 bytes"):
        Heartbeater().beat(nonce, T0)


def test_a_session_of_beats() -> None:
    hb = Heartbeater(interval=10.0, tolerance=15.0)
    hb.start(T0)
    now = T0
    for i in range(5):
        assert hb.due(now)
        nonce = bytes([i, i, i, i])
        hb.beat(nonce, now)
        assert hb.receive(nonce, now + 0.01) == pytest.approx(0.01)
        assert not hb.is_dead(now + 0.01)
        now += 10.0


# ---- HeartbeatMonitor --------------------------------------------------------------------------------------
def test_monitor_echoes_whole_four_byte_groups_only() -> None:
    mon = HeartbeatMonitor()
    mon.start(T0)
    assert mon.receive(b"abcdef", T0 + 1) == b"abcd"
    assert mon.receive(b"g", T0 + 2) == b""
    assert mon.receive(b"hijklmno", T0 + 3) == b"efghijkl"  # "efg" held + 8 new: two groups out, "mno" kept
    assert mon.receive(b"p", T0 + 4) == b"mnop"
    assert mon.receive(b"", T0 + 4) == b""
    assert mon.receive(b"", T0 + 4) == b""


@given(data=st.binary(max_size=64), cuts=st.lists(st.integers(0, 64), max_size=8))
def test_monitor_echo_is_the_input_in_any_split(data: bytes, cuts: list[int]) -> None:
    mon = HeartbeatMonitor()
    mon.start(T0)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    out = b"".join(mon.receive(data[a:b], T0) for a, b in itertools.pairwise(bounds))
    whole = len(data) - len(data) % 4
    assert out == data[:whole]


def test_monitor_is_dead_after_interval_plus_tolerance_of_silence() -> None:
    mon = HeartbeatMonitor(interval=10.0, tolerance=15.0)
    mon.start(T0)
    assert not mon.is_dead(T0 + 25.0)
    assert mon.is_dead(T0 + 25.0 + EPS)


def test_monitor_beat_resets_the_silence_clock() -> None:
    mon = HeartbeatMonitor(interval=10.0, tolerance=15.0)
    mon.start(T0)
    mon.receive(NONCE, T0 + 20.0)
    assert mon.last_seen == T0 + 20.0
    assert not mon.is_dead(T0 + 45.0)
    assert mon.is_dead(T0 + 45.0 + EPS)


def test_monitor_partial_group_is_not_a_beat() -> None:
    mon = HeartbeatMonitor(interval=10.0, tolerance=15.0)
    mon.start(T0)
    assert mon.receive(b"\x81\x60", T0 + 20.0) == b""
    assert mon.last_seen == T0
    assert mon.is_dead(T0 + 25.0 + EPS)
    assert mon.receive(b"\xe7\x2b", T0 + 26.0) == NONCE
    assert not mon.is_dead(T0 + 26.0)


def test_monitor_and_heartbeater_together() -> None:
    hb = Heartbeater(interval=10.0, tolerance=15.0)
    mon = HeartbeatMonitor(interval=10.0, tolerance=15.0)
    hb.start(T0)
    mon.start(T0)
    beat = hb.beat(NONCE, T0)
    echo = mon.receive(beat, T0 + 0.05)
    assert hb.receive(echo, T0 + 0.1) == pytest.approx(0.1)
    assert not hb.is_dead(T0 + 25.1) and not mon.is_dead(T0 + 25.05)
    assert hb.is_dead(T0 + 25.2) and mon.is_dead(T0 + 25.1)
