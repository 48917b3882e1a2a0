"""The ACME manager: which names get a certificate from the CA, when, and what happens when it fails.

It is told of each host an HTTP endpoint comes online for (``Registry.on_bound``) and of store changes
(wildcard reservations), and orders a certificate for any such name that no stored certificate covers:
a plain name with HTTP-01 (answered by the edge's plain HTTP listener through ``challenge()``), a
wildcard with DNS-01 through the configured provider. A host one label below the base domain, or below
a reserved ``*.parent``, gets the wildcard instead when a DNS provider is set. Certificates and the
account go to the store, so a restarted edge neither orders again nor registers again; after storing,
``on_issued`` makes the edge serve the new certificate at once. A background task renews ACME
certificates with less than ``renew_before`` left (a name at most once per ``renew_check``). A failed
order is retried by the same task after an exponential, capped backoff, so one name never has two
orders in flight; a custom domain whose CNAME does not verify (``edge/verify.py``) waits the same way.
Every task is owned here and cancelled by ``aclose``.

Must not: talk to the CA itself (``acme_client.py`` does), publish DNS records itself
(``acme_dns.py``), build TLS contexts, or block the loop (store calls run in threads).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Protocol

from hatchway.edge.tls.acme_client import Challenge, Publisher
from hatchway.edge.tls.acme_dns import DnsProvider
from hatchway.store.base import Store

logger = logging.getLogger(__name__)

DAY = 86400.0
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY, "w": 7 * DAY}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str | float) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``12h``, ``30d``, ``2w`` or ``1d12h``; else ``ValueError``."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        s = text.strip().lower()
        try:
            value = float(s)
        except ValueError:
            parts = _DURATION.findall(s)
            if not parts or "".join(n + u for n, u in parts) != s.replace(" ", ""):
                raise ValueError(f"not a duration: {text!r} (e.g. 30d, 12h, 90s)") from None
            value = sum(float(n) * _UNITS[u] for n, u in parts)
    if value < 0:
        raise ValueError(f"a duration cannot be negative: {text!r}")
    return value


def orderable(name: str) -> bool:
    """Whether a public CA could issue for ``name`` at all (not localhost, not an IP, has a dot)."""
    bare = name.removeprefix("*.")
    if "." not in bare or bare == "localhost" or bare.endswith(".localhost"):
        return False
    try:
        ipaddress.ip_address(bare.strip("[]"))
    except ValueError:
        return True
    return False


class NotVerified(Exception):
    """A custom domain whose DNS does not (yet) prove it points at this edge (``edge/verify.py``)."""


class Issuer(Protocol):
    async def issue(self, name: str, publisher: Publisher) -> tuple[bytes, bytes]: ...


class Covered(Protocol):
    def certificate_for(self, host: str) -> object | None: ...


@dataclass
class Backoff:
    """Seconds to wait after the n-th failure in a row: ``first * 2**(n-1)``, at most ``cap``."""

    first: float = 30.0
    cap: float = 6 * 3600.0

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.first * 2.0 ** min(failures - 1, 40)))


class AcmeManager:
    def __init__(
        self,
        store: Store,
        issuer: Issuer,
        covered: Covered,
        on_issued: Callable[[], Awaitable[None]],
        *,
        dns: DnsProvider | None = None,
        base_domain: str = "",
        renew_before: float = 30 * DAY,
        renew_check: float = 3600.0,
        backoff: Backoff | None = None,
        online_hosts: Callable[[], Iterable[str]] = tuple,
        verified: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.store = store
        self.issuer = issuer
        self.covered = covered  # the stored certificates being served (``StoredCerts``)
        self.on_issued = on_issued
        self.dns = dns
        self.base_domain = base_domain.lower().strip(".")
        self.renew_before = renew_before
        self.renew_check = renew_check
        self.backoff = backoff or Backoff()
        self.online_hosts = online_hosts  # hosts with an HTTP endpoint online now (the registry's)
        # Whether a custom domain's DNS proves it is pointed at this edge (``edge/verify.py``).
        self.verified = verified
        self.tokens: dict[str, bytes] = {}  # HTTP-01 token -> key authorization
        self.orders: dict[str, asyncio.Task[None]] = {}  # name -> its one order (with its retries)
        self.failures: dict[str, int] = {}
        self.issued_at: dict[str, float] = {}  # monotonic time of the last certificate per name
        self.wildcards: set[str] = set()  # reserved wildcard domains
        self._warned: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False

    # ---- hooks -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._renewer = asyncio.get_running_loop().create_task(self._renew_loop())
        self.on_store_change()

    def challenge(self, token: str) -> bytes | None:
        """The HTTP-01 answer for ``token`` (the plain HTTP listener asks), or None: not ours."""
        return self.tokens.get(token)

    def on_bound(self, host: str) -> None:
        """An HTTP endpoint came online for ``host``: get it a certificate unless one covers it."""
        host = host.lower().rstrip(".")
        if self.covered.certificate_for(host) is not None:
            return
        name = host
        if self.dns is not None and not host.startswith("*."):
            parent = host.partition(".")[2]
            if parent == self.base_domain or f"*.{parent}" in self.wildcards:
                name = f"*.{parent}"
        self.want(name, "new")

    def on_store_change(self) -> None:
        """Reservations may have changed: order certificates for reserved wildcards that lack one."""
        if self._closed:
            return
        self._spawn(self._check_reservations())

    async def _check_reservations(self) -> None:
        domains = await asyncio.to_thread(self.store.list_domains)
        self.wildcards = {d.name for d in domains if d.name.startswith("*.")}
        for name in sorted(self.wildcards):
            if self.covered.certificate_for(name) is None:
                self.want(name, "new")

    def want(self, name: str, reason: str) -> None:
        """Order a certificate for ``name`` unless an order for it is in flight (or backing off)."""
        if self._closed or name in self.orders or not orderable(name):
            return
        if name.startswith("*.") and self.dns is None:
            if name not in self._warned:
                self._warned.add(name)
                logger.warning(
                    "acme: %s needs DNS-01 but no DNS provider is set (--acme-dns-provider): "
                    "the fallback certificate is served",
                    name,
                )
            return
        task = asyncio.get_running_loop().create_task(self._order(name, reason))
        self.orders[name] = task
        task.add_done_callback(functools.partial(self._order_done, name))

    def _order_done(self, name: str, task: asyncio.Task[None]) -> None:
        if self.orders.get(name) is task:
            del self.orders[name]
        if not task.cancelled() and task.exception() is not None:
            logger.error("acme: order task for %s failed", name, exc_info=task.exception())

    # ---- orders ------------------------------------------------------------------------------------------
    async def _order(self, name: str, reason: str) -> None:
        """One name's order, retried with backoff until a certificate is stored, the name is no longer
        wanted, or the edge closes. A custom domain whose CNAME does not verify yet counts as a failure:
        it is checked again after the backoff (never in a loop driven by store changes)."""
        while True:
            try:
                if self.verified is not None and not await self.verified(name):
                    raise NotVerified(
                        "its DNS does not point at this edge yet (see `hatchway edge domain list`)"
                    )
                kind = "dns-01" if name.startswith("*.") else "http-01"
                logger.info("acme: ordering a certificate for %s (%s, %s)", name, reason, kind)
                chain, key = await self.issuer.issue(name, _Publish(self))
                await asyncio.to_thread(self.store.put_certificate, name, chain, key, "acme")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                n = self.failures[name] = self.failures.get(name, 0) + 1
                delay = self.backoff.delay(n)
                what = "not ordered" if isinstance(exc, NotVerified) else "order failed"
                logger.warning("acme: %s %s (%d in a row): %s; retrying in %.0fs", name, what, n, exc, delay)
                await asyncio.sleep(delay)
                if not self._still_wanted(name, reason):
                    logger.info("acme: %s is no longer served or already covered: order dropped", name)
                    self.failures.pop(name, None)
                    return
                continue
            self.failures.pop(name, None)
            self.issued_at[name] = time.monotonic()
            logger.info("acme: certificate for %s stored", name)
            await self.on_issued()
            return

    def _still_wanted(self, name: str, reason: str) -> bool:
        """Whether a failed order should be tried again: a renewal always; a new name while no certificate
        covers it and it is reserved (wildcards) or an endpoint for it (or below it) is online."""
        if reason == "renewal":
            return True
        if self.covered.certificate_for(name) is not None:
            return False  # a manual certificate, or another edge node's order, covers it meanwhile
        if name in self.wildcards:
            return True
        parent = name[2:] if name.startswith("*.") else None
        return any(
            h == name or (parent is not None and h.partition(".")[2] == parent) for h in self.online_hosts()
        )

    # ---- renewal -----------------------------------------------------------------------------------------
    async def _renew_loop(self) -> None:
        while True:
            try:
                await self.renew_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("acme: renewal check failed")
            await asyncio.sleep(self.renew_check)

    async def renew_due(self) -> list[str]:
        """Start renewals for ACME certificates with less than ``renew_before`` left; the names."""
        now, mono = time.time(), time.monotonic()
        started: list[str] = []
        certs = await asyncio.to_thread(self.store.list_certificates)
        manual = {c.name for c in certs if c.source == "manual" and c.not_after > now}
        for info in certs:
            if info.source != "acme" or info.name in manual or info.not_after - now >= self.renew_before:
                continue
            last = self.issued_at.get(info.name)
            if last is not None and mono - last < self.renew_check:
                continue  # renewed a moment ago: at most once per check interval, whatever renew_before says
            if info.name not in self.orders:
                self.want(info.name, "renewal")
                started.append(info.name)
        return started

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        self._closed = True
        tasks = [*self._tasks, *self.orders.values()]
        if self._renewer is not None:
            tasks.append(self._renewer)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.tokens.clear()


class _Publish:
    """Publishes one order's challenges: HTTP-01 tokens in the manager's table, DNS-01 via the provider."""

    def __init__(self, manager: AcmeManager) -> None:
        self.m = manager

    async def publish(self, challenge: Challenge) -> None:
        if challenge.kind == "http-01":
            self.m.tokens[challenge.name] = challenge.value.encode()
        elif self.m.dns is not None:
            await self.m.dns.present(challenge.name, challenge.value)
        else:
            raise RuntimeError(f"no DNS provider for {challenge.name}")

    async def withdraw(self, challenge: Challenge) -> None:
        if challenge.kind == "http-01":
            self.m.tokens.pop(challenge.name, None)
        elif self.m.dns is not None:
            await self.m.dns.cleanup(challenge.name, challenge.value)
