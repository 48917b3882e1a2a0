"""circuit-breaker: it opens after failures, answers 503 while open, probes, and closes again.

Time moves only through ``ex.now``; outcomes arrive the way the edge delivers them, by calling the
callbacks the action put in ``ex.on_complete`` with the final status.
"""

from __future__ import annotations

from typing import Any

import pytest

from hatchway.policy.actions import circuit_breaker
from hatchway.policy.model import Conn, EndpointInfo, Exchange, HttpRequest, LiteralEnv, PolicyError, Reply

PATH = "on_http_request[2].actions[0]"


def action(**config: Any) -> circuit_breaker.CircuitBreaker:
    return circuit_breaker.compile(config, PATH, LiteralEnv(), "on_http_request")


def exchange(now: float) -> Exchange:
    return Exchange(
        conn=Conn("203.0.113.7", 50123),
        endpoint=EndpointInfo("ep_1", "https://a.test", "a.test", 443, "https"),
        req=HttpRequest("GET", "https", "a.test", 443, "/", "", "1.1"),
        now=now,
    )


def request(cb: circuit_breaker.CircuitBreaker, now: float, status: int | None) -> Reply | None:
    """One request at ``now``; when it passes, the upstream answers ``status`` (None: not yet)."""
    ex = exchange(now)
    reply = cb.run(ex)
    if reply is None and status is not None:
        for done in ex.on_complete:
            done(status)
    return reply


def is_open_reply(reply: Reply | None) -> bool:
    return reply is not None and (reply.status, reply.error_code, reply.body) == (503, "ERR_NGROK_3202", b"")


def trip(cb: circuit_breaker.CircuitBreaker, now: float = 0.0, n: int = 10) -> None:
    for _ in range(n):
        assert request(cb, now, 500) is None
    assert cb.state == "open"


def test_opens_after_failures_then_a_successful_probe_closes_it() -> None:
    cb = action()
    trip(cb, now=1.0)
    assert is_open_reply(request(cb, 2.0, 200))
    assert is_open_reply(request(cb, 10.9, 200))  # tripped_duration (10 s) not over yet
    # Half-open: one probe goes through while it is in flight, the others still get 503.
    probe = exchange(11.0)
    assert cb.run(probe) is None
    assert probe.results["circuit_breaker"] == {"decision": "allow", "state": "half_open"}
    assert is_open_reply(request(cb, 11.5, 200))
    for done in probe.on_complete:
        done(200)
    assert cb.state == "closed"
    assert request(cb, 12.0, 200) is None


def test_a_failed_probe_reopens_for_another_tripped_duration() -> None:
    cb = action(tripped_duration="5s")
    trip(cb)
    assert request(cb, 5.0, 502) is None  # the probe, which fails
    assert cb.state == "open"
    assert is_open_reply(request(cb, 9.9, 200))
    assert request(cb, 10.0, 200) is None  # the next probe succeeds
    assert cb.state == "closed"


def test_an_upstream_that_could_not_be_reached_counts_as_an_error() -> None:
    cb = action()
    for _ in range(10):
        request(cb, 0.0, 0)
    assert cb.state == "open"


@pytest.mark.parametrize(
    ("config", "outcomes", "opens"),
    [
        ({}, [500] * 9, False),  # below volume_threshold
        ({}, [500] * 5 + [200] * 5, True),  # 50 % >= 0.5
        ({}, [500] * 4 + [200] * 6, False),
        ({"error_threshold": 0.2}, [503] * 2 + [200] * 8, True),
        ({"volume_threshold": 3}, [500, 500, 200], True),
        ({"error_threshold": 0}, [200] * 20, False),  # 0 means "any error", not "always"
        ({"error_threshold": 0}, [200] * 19 + [500], True),
        ({}, [404] * 10 + [499] * 10, False),  # only 5xx (and 0) are errors
    ],
)
def test_thresholds(config: dict[str, Any], outcomes: list[int], opens: bool) -> None:
    cb = action(**config)
    for status in outcomes:
        request(cb, 0.0, status)
    assert (cb.state == "open") is opens


def test_errors_roll_out_of_the_window() -> None:
    cb = action()  # 10 s window in ten 1 s buckets
    for _ in range(9):
        request(cb, 0.5, 500)
    request(cb, 10.5, 500)  # the first nine fell out of the window
    assert cb.state == "closed"
    assert cb.totals() == (1, 1)
    for _ in range(9):
        request(cb, 15.0, 500)
    assert cb.state == "open"


def test_slow_requests_from_before_a_state_change_are_ignored() -> None:
    cb = action()
    slow = [exchange(0.0) for _ in range(10)]
    for ex in slow:
        assert cb.run(ex) is None
    trip(cb, now=0.5)
    assert request(cb, 11.0, 200) is None  # probe closes it
    for ex in slow:  # these finish only now, with errors from the failing era
        for done in ex.on_complete:
            done(500)
    assert cb.state == "closed"
    assert cb.totals() == (0, 0)


def test_a_probe_that_never_reports_is_replaced() -> None:
    cb = action()
    trip(cb)
    assert request(cb, 10.0, None) is None  # probe lost: its outcome never arrives
    assert is_open_reply(request(cb, 15.0, 200))
    assert request(cb, 20.0, 200) is None  # a new probe after another tripped_duration
    assert cb.state == "closed"


def test_enforce_false_never_rejects_but_reports_what_it_would_do() -> None:
    cb = action(enforce=False)
    trip(cb)
    ex = exchange(1.0)
    assert cb.run(ex) is None
    assert ex.results["circuit_breaker"] == {"decision": "allow_while_open", "state": "open"}
    assert ex.on_complete == []  # not counted: enforcement would not have let it reach the upstream


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"error_threshold": 1.5}, "error_threshold: must be between 0.0 and 1.0"),
        ({"error_threshold": "half"}, "error_threshold: must be a number"),
        ({"volume_threshold": 0}, "volume_threshold: must be between 1 and 2000000000"),
        ({"window_duration": "3m"}, "window_duration: must be between 1s and 120s"),
        ({"window_duration": "500ms"}, "window_duration: must be between"),
        ({"tripped_duration": "0s"}, "tripped_duration: must be between"),
        ({"num_buckets": 20}, "num_buckets: must be 10"),
        ({"enforce": 1}, "enforce: must be true or false"),
        ({"threshold": 0.5}, "threshold: unknown field"),
    ],
)
def test_bad_configs_are_refused_with_the_path(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(PolicyError) as err:
        action(**config)
    assert any(str(p).startswith(f"{PATH}.config.{problem}") for p in err.value.problems), err.value.problems


def test_defaults_and_ngrok_durations() -> None:
    cb = action(window_duration="1m", tripped_duration="30s", num_buckets=10)
    assert (cb.error_threshold, cb.volume_threshold, cb.bucket_len, cb.tripped) == (0.5, 10, 6.0, 30.0)
