"""Micro-benchmark: the edge's Python cost of Traffic Policy per request, without sockets.

Builds a ``PolicyRun`` for a small GET (three headers), runs the request phase of the same policies as
``bench/policy_rules.py`` (1, 5 and 20 rules) and writes the upstream head, as the edge's fast path does;
prints microseconds per request for each (the best of ``REPEAT`` runs of ``N``: the machine's other work only
ever adds time), and for no policy at all (the head alone); also with a new path on every request (no
memo can answer: every rule runs), and for a static policy with the endpoint's memo of request-phase
outcomes, which answers a repeated request without running the rules. Then a cProfile of the 20-rule
case (new paths, without the memo). Run: ``.venv/bin/python bench/policy_micro.py``. Numbers
are for comparing changes on one machine in one run, not absolute.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hatchway.edge.policy_run import OutcomeMemo, PolicyRun, shortcut
from hatchway.edge.proxy import Request, upstream_head
from hatchway.policy.engine import CompiledPolicy, compile_policy
from policy_rules import policy_for

N = 20000
REPEAT = 5


class _Endpoint:
    """The Endpoint fields the request path reads."""

    tunnel_id = "tn_bench"
    url = "http://bench.hatchway.localhost:9080"
    host = "bench.hatchway.localhost"
    scheme = "http"

    def __init__(self) -> None:
        self.request_remove: set[bytes] = set()
        self.rewrite_host = b""
        self.request_add: list[tuple[bytes, bytes]] = []
        self.request_outcomes: OutcomeMemo | None = None  # a static policy's memo (None: off)


EP: Any = _Endpoint()


_counter = iter(range(1 << 62))


def request(new_path: bool = False) -> Request:
    headers = [(b"Host", b"bench.hatchway.localhost:9080"), (b"User-Agent", b"wrk"), (b"Accept", b"*/*")]
    return Request(
        method=b"GET",
        target=b"/small.bin/%d" % next(_counter) if new_path else b"/small.bin",
        headers=headers,
        version="1.1",
        host="bench.hatchway.localhost",
        client_ip="127.0.0.1",
        client_port=5000,
        scheme="http",
        lower=[k.lower() for k, _ in headers],
        connection=frozenset(),  # as the HTTP/1.1 listener fills them in
    )


def one(policy: CompiledPolicy | None, ep: Any = EP, new_path: bool = False) -> None:
    """What the listener does per request (``Http1Connection._fast_start``)."""
    req = request(new_path)
    if policy is not None:
        settled, key = shortcut(policy, ep, req)
        if not settled:
            run = PolicyRun(ep, policy, req)
            if run.request(req) is None and key is not None:
                run.remember(ep, key)
            run.finish(200)
    upstream_head(ep, req)


def main() -> None:
    policies: dict[int, CompiledPolicy | None] = {0: None}
    for n in (1, 5, 20):
        policies[n] = compile_policy(policy_for(n))
    for n, policy in policies.items():
        per = min(timeit.repeat(lambda policy=policy: one(policy), number=N, repeat=REPEAT)) / N * 1e6
        fresh = min(timeit.repeat(lambda policy=policy: one(policy, EP, True), number=N, repeat=REPEAT))
        line = f"{n:2d} rules: {per:6.2f} us per request, {fresh / N * 1e6:6.2f} us with a new path each"
        if policy is not None and policy.static_request:
            memo: Any = _Endpoint()
            memo.request_outcomes = OutcomeMemo()
            best = min(timeit.repeat(lambda p=policy, e=memo: one(p, e), number=N, repeat=REPEAT))
            line += f", {best / N * 1e6:6.2f} us with the request-phase memo (a repeated request)"
        print(line)
    profile = cProfile.Profile()
    profile.runcall(lambda: [one(policies[20], EP, True) for _ in range(N)])
    pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
