"""Custom-domain verification: a reserved name outside the edge's base domain is bound (and gets a
certificate) only once its DNS has a CNAME record to the target the edge gave the reservation.

How it works, like ngrok's custom domains (ngrok-reference §7):
- ``hatchway edge domain add app.example.com`` stores a target with the reservation,
  ``<20 hex>.<cname_target_base>`` (default base ``cname.<base_domain>``), and prints the record to create,
  ``app.example.com CNAME <target>``. The operator points ``*.<cname_target_base>`` at the edge once.
  Targets are random per reservation, so a record left behind after a reservation was removed does not
  verify a new reservation of the same name by someone else.
- Before a Bind of such a name (``Registry._check_domain``) and before ACME issuance (``verified``), the
  edge asks its resolver (``--dns-resolver HOST:PORT``, default the system's) for the CNAME of the very name
  being bound, follows up to ``MAX_HOPS`` CNAMEs and accepts when one of them is the stored target. A
  nested name (``a.app.example.com`` under ``app.example.com``, or ``x.example.com`` under
  ``*.example.com``) needs a CNAME to its reservation's target too.
- Wildcards: ngrok-reference.md does not say; as ngrok asks, the record is a CNAME *on the wildcard name
  itself* (``*.example.com CNAME <target>``), and the edge checks it by querying the literal name
  ``*.example.com``, which a DNS server answers from that wildcard record (RFC 4592).
- Names under the edge's base domain need nothing; ``--skip-domain-verification`` turns checks off (dev).
- Answers: a success is trusted for ``VERIFIED_TTL`` seconds in this process; a failure is never cached (the
  next bind asks DNS again). Each real lookup's outcome is written to the reservation (``domain list``).

Error codes are ngrok's: ERR_NGROK_425 CNAME record not found (also used when the lookup itself fails:
ngrok has no code for that), ERR_NGROK_426 not found but A records found, ERR_NGROK_427 the CNAME
resolves to something else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.resolver

from hatchway.edge import domains
from hatchway.store.base import Store

logger = logging.getLogger(__name__)

VERIFIED_TTL = 300.0  # a verified (host, target) is not looked up again for this long
DNS_TIMEOUT = 3.0  # the whole check of one name, every hop included
MAX_HOPS = 4  # CNAMEs followed from the bound name towards the target
_MAX_CACHED = 4096  # verified entries kept before expired ones are swept


def default_cname_base(base_domain: str) -> str:
    """Where CNAME targets live unless configured: ``cname.<base_domain>``."""
    return f"cname.{domains.normalize(base_domain)}"


def new_cname_target(cname_base: str) -> str:
    """A fresh random target for one reservation: ``<20 hex digits>.<cname_base>``."""
    return f"{secrets.token_hex(10)}.{domains.normalize(cname_base)}"


def dns_record(host: str, target: str) -> str:
    """The record a user creates, as ``domain add`` prints it: ``app.example.com CNAME <target>``."""
    return f"{host} CNAME {target}"


def parse_resolver(value: str) -> tuple[str, int]:
    """``HOST[:PORT]`` of a DNS server (``[v6]:PORT`` or a bare IPv6 address too); ``ValueError`` if not
    an IP address and a port."""
    value = value.strip()
    port = "53"
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"dns_resolver: expected [IPv6]:PORT, got {value!r}")
        port = rest[1:] or port
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host = value
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError as exc:
        raise ValueError(f"dns_resolver: expected an IP address and optional port, got {value!r}") from exc
    if not 0 < number < 65536:
        raise ValueError(f"dns_resolver: port out of range in {value!r}")
    return host, number


class LookupFailed(Exception):
    """The resolver gave no usable answer (timeout, SERVFAIL, no resolver configured)."""


class CnameResolver(Protocol):
    async def cname(self, name: str) -> str | None:
        """The target of ``name``'s CNAME record (lowercase, no final dot), None when it has none."""
        ...

    async def addresses(self, name: str) -> list[str]:
        """``name``'s A records (for a more helpful error only)."""
        ...

    def describe(self) -> str:
        """Which server it asks, for messages."""
        ...


class DnsResolver:
    """dnspython's asyncio resolver, asking one server (``HOST[:PORT]``) or the system's (``""``).
    It keeps no cache of its own (dnspython's default), so a fixed record is seen at once."""

    def __init__(self, server: str = "", timeout: float = DNS_TIMEOUT) -> None:
        self.server = server.strip()
        if self.server:
            parse_resolver(self.server)  # fail at startup, not at the first bind
        self.timeout = timeout
        self._resolver: dns.asyncresolver.Resolver | None = None

    def describe(self) -> str:
        return self.server or "the system resolver"

    def _get(self) -> dns.asyncresolver.Resolver:
        if self._resolver is not None:
            return self._resolver
        try:
            if self.server:
                host, port = parse_resolver(self.server)
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [host]
                resolver.port = port
            else:
                resolver = dns.asyncresolver.Resolver()
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"no DNS resolver: {exc}") from exc
        resolver.timeout = min(1.0, self.timeout)  # per try; lifetime bounds the retries
        resolver.lifetime = self.timeout
        self._resolver = resolver
        return resolver

    async def _ask(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        resolver = self._get()
        try:
            return await resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return None
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"asking {self.describe()}: {exc.__class__.__name__}: {exc}") from exc

    async def cname(self, name: str) -> str | None:
        answer = await self._ask(name, "CNAME")
        if answer is None or answer.rrset is None:
            return None
        for rr in answer.rrset:
            if isinstance(rr, dns.rdtypes.ANY.CNAME.CNAME):
                return domains.normalize(rr.target.to_text(omit_final_dot=True))
        return None

    async def addresses(self, name: str) -> list[str]:
        answer = await self._ask(name, "A")
        if answer is None or answer.rrset is None:
            return []
        return [rr.to_text() for rr in answer.rrset if rr.rdtype == dns.rdatatype.A]


@dataclass(frozen=True, slots=True)
class DomainProblem:
    """Why a name is not verified: ngrok's code and a message that names the record to create."""

    code: str
    message: str


Reservation = Callable[[str], tuple[str, str] | None]  # host -> (reservation name, CNAME target)
Recorder = Callable[[str, bool, str], None]  # (reservation name, verified, detail)


class DomainVerifier:
    """Decides whether a custom domain may be bound and get a certificate (``edge.domain_check``)."""

    def __init__(
        self,
        base_domain: str,
        reservation: Reservation,
        resolver: CnameResolver,
        *,
        skip: bool = False,
        record: Recorder | None = None,
        ttl: float = VERIFIED_TTL,
        timeout: float = DNS_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_domain = domains.normalize(base_domain)
        self.skip = skip
        self.resolver = resolver
        self._reservation = reservation
        self._record = record
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._verified: dict[tuple[str, str], float] = {}  # (host, target) -> trusted until

    @classmethod
    def for_store(
        cls,
        store: Store | None,
        base_domain: str,
        cname_base: str,
        resolver: CnameResolver,
        *,
        skip: bool = False,
    ) -> DomainVerifier:
        """A verifier over the edge's store. A reservation without a target (one made before targets
        existed) gets one under ``cname_base`` the first time it is checked."""

        def reservation(host: str) -> tuple[str, str] | None:
            info = store.domain_reservation(host) if store is not None else None
            if info is None or store is None:
                return None
            target = info.cname_target or store.set_cname_target(info.name, new_cname_target(cname_base))
            return info.name, target

        record = store.record_domain_check if store is not None else None
        return cls(base_domain, reservation, resolver, skip=skip, record=record)

    def needs_check(self, host: str) -> bool:
        host = domains.normalize(host)
        return not (self.skip or host == self.base_domain or domains.under_base(host, self.base_domain))

    async def verified(self, host: str) -> bool:
        """True when ``host`` may get a certificate: under the base domain, checks off, or its CNAME
        points at its reservation's target. False for names nobody reserved. For the ACME manager."""
        return await self.check(host) is None

    async def check(self, host: str) -> DomainProblem | None:
        """None when ``host`` may be served; else why not (ngrok code, message naming the record)."""
        host = domains.normalize(host)
        if not self.needs_check(host):
            return None
        found = await asyncio.to_thread(self._reservation, host)
        if found is None:
            return DomainProblem(
                "ERR_NGROK_319",
                f"The domain '{host}' is not reserved. Reserve it first with "
                f"`hatchway edge domain add {host}`.",
            )
        name, target = found
        key = (host, target)
        now = self._clock()
        if self._verified.get(key, 0.0) > now:
            return None
        problem = await self._lookup(host, target)
        if problem is None:
            if len(self._verified) >= _MAX_CACHED:
                self._verified = {k: t for k, t in self._verified.items() if t > now}
            self._verified[key] = now + self._ttl
            logger.info("domain %s verified (CNAME %s)", host, target)
        else:
            self._verified.pop(key, None)
            logger.info("domain %s not verified: %s", host, problem.message)
        if self._record is not None:
            detail = "" if problem is None else f"{problem.code}: {problem.message}"
            try:
                await asyncio.to_thread(self._record, name, problem is None, detail)
            except Exception:  # the verdict stands even if the note about it cannot be written
                logger.exception("could not record the verification of %s", name)
        return problem

    async def _lookup(self, host: str, target: str) -> DomainProblem | None:
        record = f"`{dns_record(host, target)}`"
        chain: list[str] = []
        try:
            async with asyncio.timeout(self._timeout):
                name = host
                for _ in range(MAX_HOPS):
                    nxt = await self.resolver.cname(name)
                    if nxt is None or nxt in chain:
                        break
                    if nxt == target:
                        return None
                    chain.append(nxt)
                    name = nxt
        except (TimeoutError, LookupFailed) as exc:
            why = str(exc) or f"no answer within {self._timeout:g}s from {self.resolver.describe()}"
            return DomainProblem(
                "ERR_NGROK_425",
                f"Domain {host} could not be verified: the DNS lookup of its CNAME record failed ({why}). "
                f"Make sure the DNS record {record} exists, then try again.",
            )
        if chain:
            return DomainProblem(
                "ERR_NGROK_427",
                f"Domain {host} CNAME record resolved to {' -> '.join(chain)}, should have been {target}. "
                f"Change the DNS record to {record}, then try again.",
            )
        try:
            async with asyncio.timeout(self._timeout):
                ips = await self.resolver.addresses(host)
        except (TimeoutError, LookupFailed):
            ips = []
        if ips:
            return DomainProblem(
                "ERR_NGROK_426",
                f"Domain {host} CNAME record not found, A record {', '.join(ips)} found. "
                f"Replace it with the DNS record {record}, then try again.",
            )
        return DomainProblem(
            "ERR_NGROK_425",
            f"Domain {host} CNAME record not found. Create the DNS record {record}, then try again.",
        )
