"""Custom-domain verification decisions (``edge/verify.py``) with an in-memory resolver: which names need a
CNAME, which codes and messages a wrong or missing record gives, what is cached, and how the registry
refuses a bind. The same code against a real DNS server is in tests/e2e/test_domain_verification.py."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any, cast

import pytest

from hatchway.edge.registry import Registry
from hatchway.edge.tunnels import AgentSession
from hatchway.edge.verify import (
    DnsResolver,
    DomainVerifier,
    LookupFailed,
    default_cname_base,
    dns_record,
    new_cname_target,
    parse_resolver,
)
from hatchway.store.sqlite import SqliteStore
from hatchway.wire import messages as m

TARGET = "0123456789abcdef0123.cname.edge.test"


class FakeDns:
    """CNAME and A records in dicts; counts questions; can fail or hang."""

    def __init__(self) -> None:
        self.cnames: dict[str, str] = {}
        self.a: dict[str, list[str]] = {}
        self.asked: list[str] = []
        self.fail: str | None = None
        self.hang = False

    def describe(self) -> str:
        return "fake"

    async def cname(self, name: str) -> str | None:
        self.asked.append(name)
        if self.hang:
            await asyncio.sleep(60)
        if self.fail is not None:
            raise LookupFailed(self.fail)
        return self.cnames.get(name)

    async def addresses(self, name: str) -> list[str]:
        return self.a.get(name, [])


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _verifier(
    dns: FakeDns,
    reservations: dict[str, str] | None = None,
    *,
    skip: bool = False,
    clock: Clock | None = None,
    records: list[tuple[str, bool, str]] | None = None,
) -> DomainVerifier:
    table = {"app.example.com": TARGET} if reservations is None else reservations

    def reservation(host: str) -> tuple[str, str] | None:
        for name, target in table.items():
            if host == name or host.endswith("." + name.removeprefix("*.")):
                return name, target
        return None

    def record(name: str, ok: bool, detail: str) -> None:
        if records is not None:
            records.append((name, ok, detail))

    return DomainVerifier(
        "edge.test", reservation, dns, skip=skip, record=record, clock=clock or Clock(), timeout=0.5
    )


async def test_cname_to_the_target_verifies_and_is_recorded() -> None:
    dns, records = FakeDns(), []  # type: ignore[var-annotated]
    dns.cnames["app.example.com"] = TARGET
    v = _verifier(dns, records=records)
    assert await v.check("App.Example.com.") is None
    assert await v.verified("app.example.com")
    assert records[0] == ("app.example.com", True, "")


async def test_missing_cname_names_the_record_to_create() -> None:
    dns, records = FakeDns(), []  # type: ignore[var-annotated]
    problem = await _verifier(dns, records=records).check("app.example.com")
    assert problem is not None and problem.code == "ERR_NGROK_425"
    assert f"`app.example.com CNAME {TARGET}`" in problem.message
    assert records == [("app.example.com", False, f"ERR_NGROK_425: {problem.message}")]


async def test_a_record_instead_of_cname_says_so() -> None:
    dns = FakeDns()
    dns.a["app.example.com"] = ["192.0.2.7"]
    problem = await _verifier(dns).check("app.example.com")
    assert problem is not None and problem.code == "ERR_NGROK_426"
    assert "192.0.2.7" in problem.message and TARGET in problem.message


async def test_wrong_target_is_refused_with_both_names() -> None:
    dns = FakeDns()
    dns.cnames["app.example.com"] = "someone-else.cname.edge.test"
    problem = await _verifier(dns).check("app.example.com")
    assert problem is not None and problem.code == "ERR_NGROK_427"
    assert (
        "someone-else.cname.edge.test" in problem.message and f"should have been {TARGET}" in problem.message
    )


async def test_cname_chains_are_followed_a_few_hops() -> None:
    dns = FakeDns()
    dns.cnames |= {"app.example.com": "app.cdn.example.net", "app.cdn.example.net": TARGET}
    assert await _verifier(dns).check("app.example.com") is None
    # Too long a chain (or a loop) is not followed for ever.
    long = FakeDns()
    long.cnames |= {f"h{i}.example.net": f"h{i + 1}.example.net" for i in range(10)}
    long.cnames["app.example.com"] = "h0.example.net"
    problem = await _verifier(long).check("app.example.com")
    assert problem is not None and problem.code == "ERR_NGROK_427"
    assert len(long.asked) == 4
    loop = FakeDns()
    loop.cnames |= {"app.example.com": "x.example.net", "x.example.net": "app.example.com"}
    problem = await _verifier(loop).check("app.example.com")
    assert problem is not None and problem.code == "ERR_NGROK_427"


async def test_lookup_failure_and_timeout_refuse_without_hanging() -> None:
    dns = FakeDns()
    dns.fail = "SERVFAIL from fake"
    problem = await _verifier(dns).check("app.example.com")
    assert problem is not None and problem.code == "ERR_NGROK_425"
    assert "SERVFAIL from fake" in problem.message and TARGET in problem.message
    dns.fail, dns.hang = None, True
    async with asyncio.timeout(5):
        problem = await _verifier(dns).check("app.example.com")
    assert problem is not None and "no answer within 0.5s" in problem.message


async def test_success_is_cached_for_a_while_failure_never() -> None:
    dns, clock = FakeDns(), Clock()
    v = _verifier(dns, clock=clock)
    assert await v.check("app.example.com") is not None
    dns.cnames["app.example.com"] = TARGET
    assert await v.check("app.example.com") is None  # the failure was not remembered
    asked = len(dns.asked)
    del dns.cnames["app.example.com"]
    clock.now += 299
    assert await v.check("app.example.com") is None  # trusted for VERIFIED_TTL (300 s)
    assert len(dns.asked) == asked
    clock.now += 2
    assert await v.check("app.example.com") is not None  # expired: asked again
    assert len(dns.asked) > asked


async def test_base_domain_names_skip_and_unreserved() -> None:
    dns = FakeDns()
    v = _verifier(dns)
    for host in ("edge.test", "x.edge.test", "a.b.edge.test"):
        assert not v.needs_check(host) and await v.check(host) is None
    assert dns.asked == []
    unreserved = await v.check("nobody.example.org")
    assert unreserved is not None and unreserved.code == "ERR_NGROK_319"
    assert not await v.verified("nobody.example.org")  # the ACME manager must not issue for it
    skipping = _verifier(dns, skip=True)
    assert await skipping.check("app.example.com") is None and await skipping.verified("nobody.example.org")
    assert dns.asked == []


async def test_wildcard_is_checked_on_the_wildcard_name_and_names_below() -> None:
    dns = FakeDns()
    v = _verifier(dns, {"*.example.com": TARGET})
    problem = await v.check("*.example.com")
    assert problem is not None and f"`*.example.com CNAME {TARGET}`" in problem.message
    assert dns.asked == ["*.example.com"]
    dns.cnames["*.example.com"] = TARGET
    assert await v.check("*.example.com") is None
    problem = await v.check("a.example.com")  # a name below: its own CNAME (a real server synthesises it)
    assert problem is not None and f"`a.example.com CNAME {TARGET}`" in problem.message


def _session() -> AgentSession:
    class _Conn:
        is_closed = False

    class _Session:
        conn = _Conn()

    return cast(AgentSession, _Session())


def _bind(host: str) -> m.Bind:
    opts: dict[str, Any] = {"Hostname": host}
    return m.Bind(id="", proto="https", opts=opts, extra=m.BindExtra(token=""))


async def test_registry_refuses_an_unverified_custom_domain(tmp_path: Path) -> None:
    dns = FakeDns()
    with SqliteStore(tmp_path / "state.db") as store:
        store.add_domain("app.example.com", "default", TARGET)
        store.add_domain("mine.edge.test", "default")
        check = DomainVerifier.for_store(store, "edge.test", "cname.edge.test", dns)
        reg = Registry({"t"}, base_domain="edge.test", domain_owner=store.domain_owner, domain_check=check)
        refused = await reg.bind(_session(), _bind("app.example.com"))
        assert "ERR_NGROK_425" in refused.error and f"app.example.com CNAME {TARGET}" in refused.error
        assert reg.route("https", "app.example.com") is None
        # Names under the base domain are bound without a question to DNS.
        assert not (await reg.bind(_session(), _bind("mine.edge.test"))).error
        assert dns.asked == ["app.example.com"]
        dns.cnames["app.example.com"] = TARGET
        ok = await reg.bind(_session(), _bind("app.example.com"))
        assert not ok.error and ok.url == "https://app.example.com"
        (info,) = [d for d in store.list_domains() if d.name == "app.example.com"]
        assert info.verified and info.checked_at is not None and info.check_detail == ""


async def test_a_reservation_without_target_gets_one_on_first_check(tmp_path: Path) -> None:
    dns = FakeDns()
    with SqliteStore(tmp_path / "state.db") as store:
        store.add_domain("old.example.com")  # as made before targets existed
        check = DomainVerifier.for_store(store, "edge.test", "cname.edge.test", dns)
        problem = await check.check("old.example.com")
        (info,) = store.list_domains()
        assert info.cname_target.endswith(".cname.edge.test") and not info.verified
        assert problem is not None and dns_record("old.example.com", info.cname_target) in problem.message
        dns.cnames["old.example.com"] = info.cname_target
        assert await check.verified("old.example.com")
        assert store.list_domains()[0].cname_target == info.cname_target  # stable


def test_targets_and_resolver_addresses() -> None:
    t = new_cname_target("CNAME.Edge.Test")
    label, _, base = t.partition(".")
    assert base == "cname.edge.test" and len(label) == 20 and int(label, 16) >= 0
    assert new_cname_target("cname.edge.test") != t
    assert default_cname_base("Edge.Test") == "cname.edge.test"
    assert parse_resolver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_resolver("10.0.0.2") == ("10.0.0.2", 53)
    assert parse_resolver("[::1]:5353") == ("::1", 5353)
    assert parse_resolver("::1") == ("::1", 53)
    for bad in ("dns.example.com:53", "127.0.0.1:0", "127.0.0.1:x", "[::1", ""):
        with pytest.raises(ValueError):
            parse_resolver(bad)
    with pytest.raises(ValueError):
        DnsResolver("resolver.example:53")


async def test_dns_resolver_with_nobody_listening_fails_in_time() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))  # a UDP port that never answers
    try:
        resolver = DnsResolver(f"127.0.0.1:{sock.getsockname()[1]}", timeout=0.5)
        v = DomainVerifier("edge.test", lambda h: (h, TARGET), resolver, timeout=2.0)
        async with asyncio.timeout(5):
            problem = await v.check("app.example.com")
        assert problem is not None and problem.code == "ERR_NGROK_425" and "failed" in problem.message
    finally:
        sock.close()
