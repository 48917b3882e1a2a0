"""The ACME manager with a fake CA: which names are ordered, one order per name, backoff after failures,
renewal, DNS-01 publishing, shutdown. (The real CA is pebble, in tests/e2e/test_acme.py.)"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field

import pytest

from hatchway.edge.tls.acme import AcmeManager, Backoff, orderable, parse_duration
from hatchway.edge.tls.acme_client import Challenge, Publisher
from hatchway.store.base import CertificateInfo, DomainInfo

DAY = 86400.0


# ---- pure helpers --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 30 * DAY), ("2w", 14 * DAY),
     ("1d12h", 1.5 * DAY), ("1.5h", 5400), (" 3D ", 3 * DAY), (45, 45), (2.5, 2.5)],
)  # fmt: skip
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10x", "d", "5d garbage", "-3", "1d-2h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_orderable() -> None:
    assert orderable("app.example.com")
    assert orderable("*.example.com")
    for name in (
        "localhost",
        "abc.hatchway.localhost",
        "*.hatchway.localhost",
        "127.0.0.1",
        "::1",
        "intranet",
    ):
        assert not orderable(name), name


def test_backoff_doubles_up_to_the_cap() -> None:
    b = Backoff(first=30, cap=3600)
    assert [b.delay(n) for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert b.delay(8) == 3600
    assert b.delay(10_000) == 3600


# ---- fakes ---------------------------------------------------------------------------------------------
@dataclass
class FakeStore:
    certs: list[CertificateInfo] = field(default_factory=list)
    domains: list[DomainInfo] = field(default_factory=list)

    def put_certificate(self, name: str, cert_pem: bytes, key_pem: bytes, source: str = "manual") -> None:
        self.certs = [c for c in self.certs if (c.name, c.source) != (name, source)]
        self.certs.append(
            CertificateInfo(name, source, cert_pem, key_pem, (name,), time.time() + 90 * DAY, 0)
        )

    def list_certificates(self) -> list[CertificateInfo]:
        return list(self.certs)

    def list_domains(self, account: str | None = None) -> list[DomainInfo]:
        return list(self.domains)


class Covered:
    """Stands in for ``StoredCerts``: names with a certificate (exact, or a one-label wildcard)."""

    def __init__(self, store: FakeStore) -> None:
        self.store = store

    def certificate_for(self, host: str) -> object | None:
        names = {c.name for c in self.store.certs if c.not_after > time.time()}
        parent = host.partition(".")[2]
        return True if host in names or f"*.{parent}" in names else None


class FakeIssuer:
    """Counts orders, fails the first ``fail`` of them, can hold an order until released."""

    def __init__(self, fail: int = 0, hold: bool = False, challenge: Challenge | None = None) -> None:
        self.fail = fail
        self.calls: list[tuple[str, float]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        if not hold:
            self.release.set()
        self.challenge = challenge
        self.seen_published: list[bytes | None] = []

    async def issue(self, name: str, publisher: Publisher) -> tuple[bytes, bytes]:
        self.calls.append((name, time.monotonic()))
        self.started.set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.challenge is not None:
                await publisher.publish(self.challenge)
            await self.release.wait()
            await asyncio.sleep(0)
            if len(self.calls) <= self.fail:
                raise RuntimeError(f"validation failed for {name} (attempt {len(self.calls)})")
            return b"CHAIN " + name.encode(), b"KEY"
        finally:
            if self.challenge is not None:
                self.seen_published.append(self.manager_token())
                await publisher.withdraw(self.challenge)
            self.in_flight -= 1

    manager: AcmeManager | None = None

    def manager_token(self) -> bytes | None:
        assert self.manager is not None and self.challenge is not None
        return self.manager.challenge(self.challenge.name)


class FakeDns:
    def __init__(self) -> None:
        self.records: dict[str, str] = {}
        self.log: list[tuple[str, str, str]] = []

    async def present(self, fqdn: str, value: str) -> None:
        self.log.append(("present", fqdn, value))
        self.records[fqdn] = value

    async def cleanup(self, fqdn: str, value: str) -> None:
        self.log.append(("cleanup", fqdn, value))
        self.records.pop(fqdn, None)


def manager(
    issuer: FakeIssuer,
    store: FakeStore | None = None,
    *,
    online: tuple[str, ...] = (),
    verified: bool = True,
    **kw: object,
) -> tuple[AcmeManager, FakeStore, list[int]]:
    store = store or FakeStore()
    issued: list[int] = []

    async def on_issued() -> None:
        issued.append(1)

    async def check(name: str) -> bool:
        return verified

    m = AcmeManager(
        store,
        issuer,
        Covered(store),
        on_issued,
        online_hosts=lambda: online,
        verified=check,
        **kw,
    )
    issuer.manager = m
    return m, store, issued


async def settle(m: AcmeManager, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while m.orders or m._tasks:
            await asyncio.gather(*m.orders.values(), *m._tasks, return_exceptions=True)


# ---- orders ------------------------------------------------------------------------------------------
async def test_bound_host_gets_one_certificate() -> None:
    issuer = FakeIssuer()
    m, store, issued = manager(issuer)
    m.on_bound("App.Example.com")
    await settle(m)
    assert [n for n, _ in issuer.calls] == ["app.example.com"]
    assert [(c.name, c.source, c.cert_pem) for c in store.certs] == [
        ("app.example.com", "acme", b"CHAIN app.example.com")
    ]
    assert issued == [1]
    m.on_bound("app.example.com")  # covered now: nothing more
    await settle(m)
    assert len(issuer.calls) == 1
    await m.aclose()


async def test_never_two_orders_for_one_name() -> None:
    issuer = FakeIssuer(hold=True)
    m, store, _ = manager(issuer)
    for _ in range(5):
        m.on_bound("app.example.com")
        await asyncio.sleep(0)
    m.want("app.example.com", "renewal")
    assert list(m.orders) == ["app.example.com"]
    issuer.release.set()
    await settle(m)
    assert len(issuer.calls) == 1
    assert issuer.max_in_flight == 1
    assert [c.name for c in store.certs] == ["app.example.com"]
    await m.aclose()


async def test_failures_back_off_exponentially_then_succeed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "hatchway.edge.tls.acme")
    issuer = FakeIssuer(fail=3)
    m, _store, issued = manager(issuer, online=("app.example.com",), backoff=Backoff(first=0.05, cap=0.12))
    m.on_bound("app.example.com")
    m.on_bound("app.example.com")  # while backing off: still the same single order
    await settle(m)
    times = [t for _, t in issuer.calls]
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 0.05, 0.10, then capped at 0.12 (timers may be late, never early)
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095 and gaps[2] >= 0.115, gaps
    assert gaps[2] < 0.5
    assert issuer.max_in_flight == 1
    assert issued == [1] and "app.example.com" not in m.failures
    failed = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(failed) == 3 and "retrying in" in failed[0] and "(3 in a row)" in failed[2]
    await m.aclose()


async def test_failed_order_is_dropped_when_the_endpoint_went_away() -> None:
    issuer = FakeIssuer(fail=100)
    m, _store, _ = manager(issuer, online=(), backoff=Backoff(first=0.01, cap=0.01))
    m.on_bound("gone.example.com")
    await settle(m)
    assert len(issuer.calls) == 1
    assert not m.orders
    await m.aclose()


async def test_unverified_custom_domain_is_not_ordered() -> None:
    issuer = FakeIssuer()
    m, _store, _ = manager(issuer, verified=False, backoff=Backoff(first=0.01, cap=0.01))
    m.on_bound("app.example.com")  # and then the endpoint went away
    await settle(m)
    assert issuer.calls == []
    await m.aclose()


async def test_reserved_wildcard_is_ordered_once_its_cname_verifies() -> None:
    issuer = FakeIssuer()
    store = FakeStore(domains=[DomainInfo("*.example.com", "default", 0)])
    answers = [False, False, True]
    checked: list[str] = []

    async def verified(name: str) -> bool:
        checked.append(name)
        return answers[len(checked) - 1]

    m, _store, _ = manager(issuer, store, dns=FakeDns(), backoff=Backoff(first=0.02, cap=0.02))
    m.verified = verified
    m.on_store_change()
    await asyncio.sleep(0.005)
    for _ in range(5):  # store changes while it waits (its own verification notes, say) start nothing new
        m.on_store_change()
        await asyncio.sleep(0)
    await settle(m)
    assert checked == ["*.example.com"] * 3
    assert [n for n, _ in issuer.calls] == ["*.example.com"]
    await m.aclose()


async def test_names_a_ca_cannot_issue_for_are_skipped() -> None:
    issuer = FakeIssuer()
    m, _store, _ = manager(issuer, base_domain="hatchway.localhost")
    m.on_bound("abc123.hatchway.localhost")
    m.on_bound("localhost")
    await settle(m)
    assert issuer.calls == []
    await m.aclose()


async def test_http01_token_is_served_only_while_the_order_runs() -> None:
    ch = Challenge("http-01", "tok-123", "tok-123.thumb")
    issuer = FakeIssuer(challenge=ch)
    m, _store, _ = manager(issuer)
    m.on_bound("app.example.com")
    await settle(m)
    assert issuer.seen_published == [b"tok-123.thumb"]
    assert m.challenge("tok-123") is None
    assert m.challenge("other") is None
    await m.aclose()


# ---- wildcards and DNS-01 ----------------------------------------------------------------------------------
async def test_wildcard_without_dns_provider_is_not_ordered(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "hatchway.edge.tls.acme")
    issuer = FakeIssuer()
    m, _store, _ = manager(issuer)
    m.on_bound("*.example.com")
    m.on_bound("*.example.com")
    await settle(m)
    assert issuer.calls == []
    assert sum("no DNS provider" in r.getMessage() for r in caplog.records) == 1
    await m.aclose()


async def test_dns01_records_go_through_the_provider() -> None:
    dns = FakeDns()
    ch = Challenge("dns-01", "_acme-challenge.example.com.", "txt-value")
    issuer = FakeIssuer(challenge=ch)
    m, store, _ = manager(issuer, dns=dns)
    m.on_bound("*.example.com")
    await settle(m)
    assert [n for n, _ in issuer.calls] == ["*.example.com"]
    assert dns.log == [
        ("present", "_acme-challenge.example.com.", "txt-value"),
        ("cleanup", "_acme-challenge.example.com.", "txt-value"),
    ]
    assert dns.records == {}
    assert [c.name for c in store.certs] == ["*.example.com"]
    await m.aclose()


async def test_reserved_wildcards_are_ordered_and_cover_hosts_below() -> None:
    issuer = FakeIssuer()
    store = FakeStore(
        domains=[DomainInfo("*.example.com", "default", 0), DomainInfo("app.other.com", "a", 0)]
    )
    m, _store, _ = manager(issuer, store, dns=FakeDns())
    m.on_store_change()
    await settle(m)
    assert [n for n, _ in issuer.calls] == ["*.example.com"]  # plain reservations wait for a bind
    m.on_bound("x.example.com")  # covered by the wildcard now
    await settle(m)
    assert len(issuer.calls) == 1
    await m.aclose()


async def test_host_below_reserved_wildcard_or_base_domain_gets_the_wildcard() -> None:
    issuer = FakeIssuer(hold=True)
    store = FakeStore(domains=[DomainInfo("*.example.com", "default", 0)])
    m, _store, _ = manager(issuer, store, dns=FakeDns(), base_domain="tunnels.example.net")
    m.wildcards = {"*.example.com"}
    m.on_bound("x.example.com")
    m.on_bound("abc.tunnels.example.net")
    m.on_bound("deep.abc.tunnels.example.net")
    assert sorted(m.orders) == ["*.example.com", "*.tunnels.example.net", "deep.abc.tunnels.example.net"]
    issuer.release.set()
    await settle(m)
    await m.aclose()


# ---- renewal -----------------------------------------------------------------------------------------------
def cert(name: str, days_left: float, source: str = "acme") -> CertificateInfo:
    return CertificateInfo(name, source, b"C", b"K", (name,), time.time() + days_left * DAY, 0)


async def test_renewal_picks_certificates_due() -> None:
    issuer = FakeIssuer()
    store = FakeStore(
        certs=[
            cert("due.example.com", 10),
            cert("fresh.example.com", 60),
            cert("manual.example.com", 5),
            cert("manual.example.com", 400, source="manual"),  # the user's own wins: not renewed
            cert("brought.example.com", 1, source="manual"),  # not ours to renew
        ]
    )
    m, store, _ = manager(issuer, store, renew_before=30 * DAY)
    assert await m.renew_due() == ["due.example.com"]
    await settle(m)
    assert [n for n, _ in issuer.calls] == ["due.example.com"]
    # Renewed a moment ago: not again before the check interval passed, even when still "due".
    m.renew_before = 1000 * DAY
    assert "due.example.com" not in await m.renew_due()
    await m.aclose()


async def test_renew_loop_runs_and_aclose_cancels_everything() -> None:
    issuer = FakeIssuer(hold=True)
    store = FakeStore(certs=[cert("due.example.com", 1)])
    m, _store, _ = manager(issuer, store, renew_check=0.05)
    m.start()
    async with asyncio.timeout(5):
        await issuer.started.wait()
    assert issuer.calls[0][0] == "due.example.com"
    task = m.orders["due.example.com"]
    await m.aclose()
    assert task.cancelled()
    assert m._renewer is not None and m._renewer.done()
    m.want("late.example.com", "new")  # after close: nothing starts
    assert not m.orders
