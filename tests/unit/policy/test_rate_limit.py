"""rate-limit: the 429 a client sees, Retry-After, buckets, the sliding window, bounded memory, configs.

The CEL engine is written alongside this action, so ``bucket_key`` expressions come from ``FakeEnv``: a
CompileEnv whose "expressions" are Python callables looked up by their source text. The action only relies
on ``env.expression(text, path).evaluate(ex)``, which is what the fake provides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from hatchway.policy.actions import rate_limit
from hatchway.policy.model import (
    Conn,
    EndpointInfo,
    Exchange,
    Expression,
    HttpRequest,
    PolicyError,
    Problem,
    Reply,
    Template,
)

PATH = "on_http_request[0].actions[0]"


def _header(name: str) -> Callable[[Exchange], Any]:
    def get(ex: Exchange) -> Any:
        value = ex.req.header(name)
        if value is None:
            raise KeyError(name)  # as CEL does for a missing map key
        return value

    return get


FAKE_CEL: dict[str, Callable[[Exchange], Any]] = {
    "conn.client_ip": lambda ex: ex.conn.client_ip,
    "req.host": lambda ex: ex.req.host,
    "req.headers['x-api-key'][0]": _header("x-api-key"),
    "[1, true]": lambda ex: [1, True],
}


@dataclass
class _FakeExpression:
    source: str
    fn: Callable[[Exchange], Any]

    def evaluate(self, ex: Exchange) -> Any:
        return self.fn(ex)


class FakeEnv:
    def template(self, text: str, path: str) -> Template:
        raise AssertionError("rate-limit uses no templates")

    def expression(self, text: str, path: str) -> Expression:
        if text not in FAKE_CEL:
            raise PolicyError([Problem(path, f"undeclared reference in {text!r}")])
        return _FakeExpression(text, FAKE_CEL[text])


def action(**config: Any) -> rate_limit.RateLimit:
    base: dict[str, Any] = {
        "name": "per client",
        "algorithm": "sliding_window",
        "capacity": 10,
        "rate": "60s",
        "bucket_key": ["conn.client_ip"],
    }
    return rate_limit.compile({**base, **config}, PATH, FakeEnv(), "on_http_request")


def exchange(
    now: float, ip: str = "203.0.113.7", *headers: tuple[str, str], host: str = "a.test"
) -> Exchange:
    return Exchange(
        conn=Conn(ip, 50123),
        endpoint=EndpointInfo("ep_1", "https://a.test", host, 443, "https"),
        req=HttpRequest("GET", "https", host, 443, "/", "", "1.1", list(headers)),
        now=now,
    )


def retry_after(reply: Reply | None) -> int:
    assert reply is not None and reply.status == 429
    assert reply.error_code == ""  # ngrok gives no code, only the status and retry-after
    values = [v for k, v in reply.headers if k == "Retry-After"]
    assert len(values) == 1
    return int(values[0])


def test_eleventh_request_in_the_window_gets_429_with_retry_after() -> None:
    rl = action()
    for i in range(10):
        ex = exchange(1000.0 + i)
        assert rl.run(ex) is None
        assert ex.results["rate_limit"] == {"bucket_key": "203.0.113.7", "limited": False}
    ex = exchange(1010.0)
    wait = retry_after(rl.run(ex))
    assert ex.results["rate_limit"] == {"bucket_key": "203.0.113.7", "limited": True}
    assert 1 <= wait <= 120
    # Refused requests do not count, and waiting the advertised time is enough.
    assert rl.run(exchange(1010.0 + wait - 1)) is not None
    assert rl.run(exchange(1010.0 + wait)) is None


def test_the_window_slides_rather_than_resetting() -> None:
    rl = action()  # windows are aligned on multiples of 60 s of ex.now
    for _ in range(10):
        assert rl.run(exchange(59.0)) is None  # a burst at the end of one window
    # Just after the boundary almost all of the previous window still weighs: still limited.
    assert rl.run(exchange(61.0)) is not None
    # Halfway through the next window, half of the burst has slid out: five more fit.
    admitted = sum(rl.run(exchange(90.0)) is None for _ in range(10))
    assert admitted == 5
    # Two windows later nothing is left.
    assert all(rl.run(exchange(200.0)) is None for _ in range(10))


def test_retry_after_when_the_previous_window_is_what_limits() -> None:
    rl = action(capacity=4)
    for _ in range(4):
        rl.run(exchange(50.0))
    wait = retry_after(rl.run(exchange(60.0)))  # 4 * 1.0 + 0 >= 4
    assert wait == 15  # at 75 s the old window weighs 4 * 0.75 = 3, leaving room for one
    assert rl.run(exchange(60.0 + wait - 0.5)) is not None
    assert rl.run(exchange(60.0 + wait)) is None


def test_each_client_has_its_own_bucket() -> None:
    rl = action(capacity=1)
    assert rl.run(exchange(0.0, "192.0.2.1")) is None
    assert rl.run(exchange(0.0, "192.0.2.1")) is not None
    assert rl.run(exchange(0.0, "192.0.2.2")) is None


def test_several_keys_form_one_combined_bucket() -> None:
    rl = action(capacity=1, bucket_key=["conn.client_ip", "req.host"])
    ex = exchange(0.0, "192.0.2.1", host="a.test")
    assert rl.run(ex) is None
    assert ex.results["rate_limit"]["bucket_key"] == "192.0.2.1,a.test"
    assert rl.run(exchange(0.0, "192.0.2.1", host="b.test")) is None
    assert rl.run(exchange(0.0, "192.0.2.2", host="a.test")) is None
    assert rl.run(exchange(0.0, "192.0.2.1", host="a.test")) is not None


def test_non_string_key_values_are_rendered() -> None:
    ex = exchange(0.0)
    action(bucket_key=["[1, true]"]).run(ex)
    assert ex.results["rate_limit"]["bucket_key"] == "1,true"


def test_a_failing_key_shares_one_bucket_instead_of_escaping_the_limit() -> None:
    rl = action(capacity=2, bucket_key=["req.headers['x-api-key'][0]"])
    assert rl.run(exchange(0.0, "192.0.2.1", ("X-Api-Key", "k1"))) is None
    assert rl.run(exchange(0.0, "192.0.2.1")) is None
    assert rl.run(exchange(0.0, "192.0.2.2")) is None
    assert rl.run(exchange(0.0, "192.0.2.3")) is not None  # all keyless requests share ""
    assert rl.run(exchange(0.0, "192.0.2.3", ("X-Api-Key", "k2"))) is None


def test_enforce_false_records_limited_but_passes() -> None:
    rl = action(capacity=1, enforce=False)
    assert rl.run(exchange(0.0)) is None
    ex = exchange(0.0)
    assert rl.run(ex) is None
    assert ex.results["rate_limit"]["limited"] is True


def test_time_running_backwards_does_not_reset_counts() -> None:
    rl = action(capacity=1)
    assert rl.run(exchange(130.0)) is None
    assert rl.run(exchange(10.0)) is not None  # treated as 130 s


def test_idle_buckets_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    rl = action()
    for i in range(50):
        rl.run(exchange(0.0, f"10.0.0.{i}"))
    assert len(rl.buckets) == 50
    rl.run(exchange(200.0, "10.0.1.1"))  # two windows later: all 50 are empty and dropped
    assert list(rl.buckets) == [("10.0.1.1",)]


def test_bucket_count_is_capped_by_evicting_the_least_recent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rate_limit, "MAX_BUCKETS", 3)
    rl = action(capacity=1)
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        rl.run(exchange(0.0, ip))
    rl.run(exchange(0.0, "10.0.0.1"))  # refreshes .1, so .2 is now the least recent
    rl.run(exchange(0.0, "10.0.0.4"))
    assert set(rl.buckets) == {("10.0.0.1",), ("10.0.0.3",), ("10.0.0.4",)}


@pytest.mark.parametrize(
    ("rate", "seconds"), [("60s", 60.0), ("1m", 60.0), ("90s", 90.0), ("1m30s", 90.0), ("24h", 86400.0)]
)
def test_ngrok_duration_strings(rate: str, seconds: float) -> None:
    assert action(rate=rate).rate == seconds


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"rate": "65s"}, "rate: must be a multiple of 10s"),
        ({"rate": "30s"}, "rate: must be between 60s and 86400s"),
        ({"rate": "25h"}, "rate: must be between"),
        ({"rate": "soon"}, "rate: must be a duration"),
        ({"algorithm": "token_bucket"}, "algorithm: must be 'sliding_window'"),
        ({"algorithm": None}, "algorithm: is required"),
        ({"name": None}, "name: is required"),
        ({"name": ""}, "name: must be 1 to 1023 characters"),
        ({"capacity": 0}, "capacity: must be between 1 and 2000000000"),
        ({"capacity": 2_000_000_001}, "capacity: must be between"),
        ({"capacity": "10"}, "capacity: must be an integer"),
        ({"bucket_key": []}, "bucket_key: must not be empty"),
        ({"bucket_key": ["conn.client_ip"] * 11}, "bucket_key: may hold at most 10"),
        ({"bucket_key": ["conn.client_ip", "nope()"]}, "bucket_key[1]: undeclared reference"),
        ({"burst": 3}, "burst: unknown field"),
    ],
)
def test_bad_configs_are_refused_with_the_path(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(PolicyError) as err:
        action(**config)
    assert any(str(p).startswith(f"{PATH}.config.{problem}") for p in err.value.problems), err.value.problems
