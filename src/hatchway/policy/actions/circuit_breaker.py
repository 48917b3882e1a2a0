"""The ``circuit-breaker`` action (on_http_request): stop sending traffic to an upstream that keeps failing.

Config: ``error_threshold`` (0.5, 0..1), ``volume_threshold`` (10, 1..2,000,000,000), ``window_duration``
(10s, 1s..2m), ``tripped_duration`` (10s, 1s..2m), ``num_buckets`` (10, the only value accepted, as ngrok
fixes it), ``enforce`` (true).

Hystrix-style, driven only by ``ex.now`` (no clock reads): outcomes are counted in a rolling window of
``num_buckets`` buckets. An outcome is an error when the final status is >= 500, or 0 (the upstream could
not be reached); it arrives through ``ex.on_complete``, which the edge calls when the exchange ends.
- closed: requests pass. When the window holds at least ``volume_threshold`` outcomes and the error share
  is >= ``error_threshold`` (and at least one error, so a threshold of 0 means "any error"), it opens.
- open: requests get ``503`` ERR_NGROK_3202 without reaching the upstream. Once ``tripped_duration`` has
  passed, the next request goes through as the single probe (half-open) and the others still get 503.
- the probe's outcome: success closes the breaker with a fresh window; failure reopens it for another
  ``tripped_duration``. A probe whose outcome never arrives is replaced after ``tripped_duration``, so a
  lost callback cannot wedge the breaker half-open.
Outcomes of requests admitted before the last open/close change are ignored (a generation counter), so a
slow request from the failing era cannot trip a freshly closed breaker.

With ``enforce: false`` the state machine runs as it would (a dry run) but nothing is rejected; requests it
would have refused pass uncounted with decision ``allow_while_open``. The state lives in this compiled
object: one breaker per endpoint policy per edge process, as ngrok keeps one per edge server. Results
(Hatchway's, ngrok documents none): ``circuit_breaker.{decision: allow|block|allow_while_open, state}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from hatchway.policy.config import ConfigReader
from hatchway.policy.model import CompileEnv, Exchange, Reply

ERROR_CODE = "ERR_NGROK_3202"
NUM_BUCKETS = 10
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    needs_body = False

    def __init__(
        self,
        error_threshold: float,
        volume_threshold: int,
        window: float,
        tripped: float,
        enforce: bool,
        num_buckets: int = NUM_BUCKETS,
    ) -> None:
        self.error_threshold = error_threshold
        self.volume_threshold = volume_threshold
        self.tripped = tripped
        self.enforce = enforce
        self.bucket_len = window / num_buckets
        self.state = CLOSED
        self._num = num_buckets
        # Ring of buckets: [bucket index, requests, errors]; a slot whose index is stale counts as empty.
        self._ring: list[list[int]] = [[-1, 0, 0] for _ in range(num_buckets)]
        self._clock = 0.0  # newest ``now`` seen (outcome callbacks carry no time of their own)
        self._opened_at = 0.0
        self._probe_at: float | None = None  # when the half-open probe was let through
        self._generation = 0

    # ---- the rolling window ------------------------------------------------------------------------
    def _index(self) -> int:
        return math.floor(self._clock / self.bucket_len)

    def _record(self, error: bool) -> None:
        index = self._index()
        slot = self._ring[index % self._num]
        if slot[0] != index:
            slot[0], slot[1], slot[2] = index, 0, 0
        slot[1] += 1
        slot[2] += error

    def totals(self) -> tuple[int, int]:
        """(requests, errors) in the rolling window ending at the newest ``now`` seen."""
        oldest = self._index() - self._num + 1
        requests = errors = 0
        for index, n, e in self._ring:
            if index >= oldest:
                requests += n
                errors += e
        return requests, errors

    def _reset_window(self) -> None:
        for slot in self._ring:
            slot[0], slot[1], slot[2] = -1, 0, 0

    # ---- state changes -----------------------------------------------------------------------------
    def _open(self) -> None:
        self.state = OPEN
        self._opened_at = self._clock
        self._probe_at = None
        self._generation += 1

    def _close(self) -> None:
        self.state = CLOSED
        self._probe_at = None
        self._generation += 1
        self._reset_window()

    def _outcome(self, generation: int, probe: bool) -> Callable[[int], None]:
        def done(status: int) -> None:
            if generation != self._generation:
                return
            error = status == 0 or status >= 500
            if probe:
                if self.state == HALF_OPEN and error:
                    self._open()
                elif self.state == HALF_OPEN:
                    self._close()
                return
            if self.state != CLOSED:
                return
            self._record(error)
            requests, errors = self.totals()
            # errors > 0: a threshold of 0 means "any error trips", not "trip on a healthy window".
            if requests >= self.volume_threshold and errors > 0 and errors >= self.error_threshold * requests:
                self._open()

        return done

    def admit(self, now: float) -> tuple[str, Callable[[int], None] | None]:
        """The decision for a request at ``now``, and the callback for its outcome (None when refused)."""
        self._clock = max(self._clock, now)
        if self.state == OPEN and self._clock - self._opened_at >= self.tripped:
            self.state = HALF_OPEN
        # No probe yet, or the last one's outcome is overdue (lost): let one through.
        needs_probe = self._probe_at is None or self._clock - self._probe_at >= self.tripped
        if self.state == HALF_OPEN and needs_probe:
            self._probe_at = self._clock
            self._generation += 1  # only the newest probe's outcome counts
            return "allow", self._outcome(self._generation, probe=True)
        if self.state == CLOSED:
            return "allow", self._outcome(self._generation, probe=False)
        return "block", None

    def run(self, ex: Exchange) -> Reply | None:
        decision, callback = self.admit(ex.now)
        if callback is not None:
            ex.on_complete.append(callback)
        if decision == "block" and not self.enforce:
            decision = "allow_while_open"
        ex.results["circuit_breaker"] = {"decision": decision, "state": self.state}
        if decision != "block":
            return None
        return Reply(
            503,
            error_code=ERROR_CODE,
            message="The circuit breaker for this endpoint is open because its upstream service is failing.",
        )


def compile(config: Mapping[str, Any] | None, path: str, env: CompileEnv, phase: str) -> CircuitBreaker:
    r = ConfigReader(config, path)
    error_threshold = r.number("error_threshold", 0.5, lo=0.0, hi=1.0)
    volume_threshold = r.integer("volume_threshold", 10, lo=1, hi=2_000_000_000)
    window = r.duration("window_duration", 10.0, lo=1.0, hi=120.0)
    tripped = r.duration("tripped_duration", 10.0, lo=1.0, hi=120.0)
    num_buckets = r.integer("num_buckets", NUM_BUCKETS)
    if num_buckets != NUM_BUCKETS:
        r.problem("num_buckets", f"must be {NUM_BUCKETS} (ngrok fixes it), got {num_buckets}")
    enforce = r.flag("enforce", True)
    r.done()
    return CircuitBreaker(error_threshold, volume_threshold, window, tripped, enforce)
