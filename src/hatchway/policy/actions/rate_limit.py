"""The ``rate-limit`` action (on_http_request): at most ``capacity`` requests per ``rate`` for each bucket.

Config (all required except ``enforce``): ``name`` (1..1023 characters), ``algorithm`` (only
``sliding_window``), ``capacity`` (1..2,000,000,000), ``rate`` (a duration, 60s..24h, a multiple of 10s:
``"60s"``, ``"1m"``, ``"90s"``), ``bucket_key`` (1..10 CEL expressions; their values together name one
bucket, e.g. ``[conn.client_ip, req.host]``), ``enforce`` (true; false records ``limited`` and lets all
traffic pass, counting exactly as if enforcing, so a dry run shows what enforcement would do).

Algorithm: the sliding window is approximated by two fixed windows of length ``rate`` aligned on ``ex.now``
(the monotonic clock the edge supplies; nothing here reads a clock). A request is admitted when
``previous_count * (share of the previous window still inside the sliding window) + current_count + 1 <=
capacity``; admitted requests count, refused ones do not. A refusal gets ``429`` with ``Retry-After``: the
whole seconds until the estimate leaves room for one more request (at least 1). ngrok gives no error code.

State lives in the compiled action (one per endpoint policy, per edge process, as ngrok keeps it per
ingress server); a policy reload starts with empty buckets, and two actions with the same ``name`` do not
share. Memory is bounded: a bucket untouched for two windows is dropped, and past ``MAX_BUCKETS`` the least
recently used bucket is evicted (its client gets a fresh allowance: the cost of a flood of distinct keys).

A bucket-key expression that fails to evaluate (e.g. a header the request lacks) contributes "" to the
key, so such requests share one bucket instead of escaping the limit. Results: ``rate_limit.{bucket_key,
limited}``; the key is the values joined with ``,``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from hatchway.policy.config import ConfigReader
from hatchway.policy.model import CompileEnv, Exchange, Expression, PolicyError, Reply

MAX_BUCKETS = 100_000
MAX_KEYS = 10
CAPACITY_MAX = 2_000_000_000
RATE_MIN, RATE_MAX, RATE_STEP = 60.0, 86400.0, 10.0
_PURGE_PER_REQUEST = 64  # bounds the work one request does dropping expired buckets
_BODY = b"429 Too Many Requests: the rate limit for this endpoint was reached; see Retry-After.\n"


def _key_text(value: Any) -> str:
    """A CEL value as bucket-key text: strings as they are, lists joined, other scalars in CEL spelling."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return ",".join(_key_text(v) for v in value)
    return str(value)


class RateLimit:
    needs_body = False

    def __init__(
        self, name: str, capacity: int, rate: float, keys: tuple[Expression, ...], enforce: bool
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.rate = rate
        self.keys = keys
        self.enforce = enforce
        # bucket -> [window index, previous window's count, current window's count]; oldest touch first.
        self.buckets: OrderedDict[tuple[str, ...], list[int]] = OrderedDict()
        self._latest = -math.inf  # the newest ``now`` seen: time never runs backwards for the buckets

    def _bucket(self, ex: Exchange) -> tuple[str, ...]:
        parts: list[str] = []
        for expr in self.keys:
            try:
                parts.append(_key_text(expr.evaluate(ex)))
            except Exception:  # a failed key must not let the request past the limit (see module docstring)
                parts.append("")
        return tuple(parts)

    def hit(self, bucket: tuple[str, ...], now: float) -> float | None:
        """Count a request for ``bucket`` at ``now``: None when admitted, else seconds until a retry fits."""
        now = self._latest = max(now, self._latest)
        rate = self.rate
        index = int(now // rate)
        state = self.buckets.get(bucket)
        if state is None:
            state = self.buckets[bucket] = [index, 0, 0]
            if len(self.buckets) > MAX_BUCKETS:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(bucket)
            if index > state[0]:
                state[1] = state[2] if index == state[0] + 1 else 0
                state[2] = 0
                state[0] = index
        self._purge(index)
        window_start = index * rate
        previous, current = state[1], state[2]
        weight = 1.0 - (now - window_start) / rate
        if previous * weight + current + 1 <= self.capacity:
            state[2] = current + 1
            return None
        if current + 1 > self.capacity:
            # Only the next window can help, and then this window's count still weighs on it.
            wait = window_start + rate - now + rate * max(0.0, 1.0 - (self.capacity - 1) / current)
        else:
            wait = window_start + rate * (1.0 - (self.capacity - 1 - current) / previous) - now
        return max(wait, 0.0)

    def _purge(self, index: int) -> None:
        buckets = self.buckets
        for _ in range(_PURGE_PER_REQUEST):
            if not buckets:
                return
            oldest = next(iter(buckets.values()))
            if oldest[0] >= index - 1:
                return
            buckets.popitem(last=False)

    def run(self, ex: Exchange) -> Reply | None:
        bucket = self._bucket(ex)
        wait = self.hit(bucket, ex.now)
        limited = wait is not None
        ex.results["rate_limit"] = {"bucket_key": ",".join(bucket), "limited": limited}
        if wait is None or not self.enforce:
            return None
        retry_after = max(1, math.ceil(wait))
        return Reply(
            429,
            headers=[("Retry-After", str(retry_after)), ("Content-Type", "text/plain; charset=utf-8")],
            body=_BODY,
        )


def compile(config: Mapping[str, Any] | None, path: str, env: CompileEnv, phase: str) -> RateLimit:
    r = ConfigReader(config, path)
    name = r.text("name", required=True)
    if r.raw("name") is not None and not 0 < len(name) < 1024:
        r.problem("name", "must be 1 to 1023 characters")
    algorithm = r.text("algorithm", required=True)
    if r.raw("algorithm") is not None and algorithm != "sliding_window":
        r.problem("algorithm", f"must be 'sliding_window', got {algorithm!r}")
    capacity = r.integer("capacity", 1, lo=1, hi=CAPACITY_MAX, required=True)
    rate = r.duration("rate", RATE_MIN, lo=RATE_MIN, hi=RATE_MAX, required=True)
    if abs(rate / RATE_STEP - round(rate / RATE_STEP)) > 1e-9:
        r.problem("rate", f"must be a multiple of 10s, got {r.raw('rate')!r}")
    sources = r.str_list("bucket_key", required=True, max_items=MAX_KEYS)
    keys: list[Expression] = []
    for i, source in enumerate(sources):
        try:
            keys.append(env.expression(source, f"{r.at('bucket_key')}[{i}]"))
        except PolicyError as e:
            r.problems.extend(e.problems)
    enforce = r.flag("enforce", True)
    r.done()
    return RateLimit(name, capacity, rate, tuple(keys), enforce)
