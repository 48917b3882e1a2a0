"""DNS-01 record publishers for the ACME manager: put the ``_acme-challenge`` TXT record up, take it down.

Two providers. ``exec`` runs a command of the operator's choosing as ``CMD present FQDN VALUE`` and
``CMD cleanup FQDN VALUE`` (FQDN with its trailing dot, e.g. ``_acme-challenge.example.com.``; VALUE is
the TXT value); exit status 0 means done, and ``present`` should return only once the record is
visible to the CA. ``rfc2136`` sends a DNS UPDATE (over TCP, TSIG-signed when a key is given) to the
zone's primary server. This module publishes records only: it must not order certificates, decide
names, or leave a record behind after ``cleanup`` succeeded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import shlex
import subprocess
from dataclasses import dataclass
from typing import Protocol

import dns.exception
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update

EXEC_TIMEOUT = 120.0  # a hook that takes longer is killed and the order fails (and is retried later)
DNS_TIMEOUT = 10.0
TXT_TTL = 60
_ALGORITHMS = {
    "hmac-md5": dns.tsig.HMAC_MD5,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}


class DnsError(Exception):
    """The record could not be published or removed."""


class DnsProvider(Protocol):
    async def present(self, fqdn: str, value: str) -> None: ...

    async def cleanup(self, fqdn: str, value: str) -> None: ...


class ExecDns:
    """Runs ``CMD present|cleanup FQDN VALUE`` (see the module docstring)."""

    def __init__(self, command: str, timeout: float = EXEC_TIMEOUT) -> None:
        self.argv = shlex.split(command)
        if not self.argv:
            raise ValueError("the DNS exec command is empty")
        self.timeout = timeout

    async def present(self, fqdn: str, value: str) -> None:
        await self._run("present", fqdn, value)

    async def cleanup(self, fqdn: str, value: str) -> None:
        await self._run("cleanup", fqdn, value)

    async def _run(self, action: str, fqdn: str, value: str) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                action,
                fqdn,
                value,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            raise DnsError(f"cannot run {self.argv[0]!r}: {exc}") from exc
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.timeout)
        except BaseException as exc:  # a timeout, or the order was cancelled: the hook must not outlive it
            if proc.returncode is None:
                proc.kill()
                await asyncio.shield(proc.wait())
            if isinstance(exc, TimeoutError):
                raise DnsError(f"{self.argv[0]} {action} {fqdn} took over {self.timeout:.0f}s") from exc
            raise
        if proc.returncode != 0:
            tail = out.decode(errors="replace").strip()[-500:]
            raise DnsError(f"{self.argv[0]} {action} {fqdn} exited with {proc.returncode}: {tail}")


@dataclass(frozen=True)
class TsigKey:
    name: str
    algorithm: str
    secret: str  # base64

    def key(self) -> dns.tsig.Key:
        return dns.tsig.Key(self.name, self.secret, _ALGORITHMS[self.algorithm])


def parse_tsig(text: str) -> TsigKey:
    """``NAME:ALGORITHM:BASE64SECRET`` (algorithm e.g. ``hmac-sha256``); ``ValueError`` when malformed."""
    name, _, rest = text.partition(":")
    algorithm, _, secret = rest.partition(":")
    algorithm = algorithm.strip().lower()
    if not name or not secret:
        raise ValueError("the TSIG key must be NAME:ALGORITHM:SECRET (e.g. acme:hmac-sha256:c2VjcmV0)")
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"unknown TSIG algorithm {algorithm!r} (known: {', '.join(sorted(_ALGORITHMS))})")
    try:
        base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the TSIG secret must be base64") from exc
    return TsigKey(name.strip(), algorithm, secret.strip())


def parse_server(text: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (port 53 when left out; ``[v6]:PORT`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep or (text.count(":") > 1 and not text.startswith("[")):
        host, port = text, "53"
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"the DNS server must be HOST:PORT, not {text!r}")
    return host, int(port)


def zone_for(fqdn: str, zone: str | None) -> str:
    """The zone to update: the configured one, else the name the challenge is for."""
    if zone:
        return zone.rstrip(".") + "."
    name = fqdn.rstrip(".") + "."
    return name.removeprefix("_acme-challenge.")


def update_message(
    zone: str, fqdn: str, value: str, *, add: bool, key: TsigKey | None = None, ttl: int = TXT_TTL
) -> dns.update.UpdateMessage:
    """The RFC 2136 UPDATE that adds (or deletes) one TXT value at ``fqdn`` in ``zone``."""
    msg = dns.update.UpdateMessage(zone, keyring=key.key() if key is not None else None)
    name = dns.name.from_text(fqdn)
    if add:
        msg.add(name, ttl, dns.rdatatype.TXT, f'"{value}"')
    else:
        msg.delete(name, dns.rdatatype.TXT, f'"{value}"')
    return msg


class Rfc2136Dns:
    """Publishes TXT records with DNS UPDATE (RFC 2136) to ``server``, signed with ``key`` if given."""

    def __init__(self, server: str, zone: str | None = None, key: TsigKey | None = None) -> None:
        self.host, self.port = parse_server(server)
        self.zone = zone
        self.key = key

    async def present(self, fqdn: str, value: str) -> None:
        await asyncio.to_thread(self._send, fqdn, value, True)

    async def cleanup(self, fqdn: str, value: str) -> None:
        await asyncio.to_thread(self._send, fqdn, value, False)

    def _send(self, fqdn: str, value: str, add: bool) -> None:
        msg = update_message(zone_for(fqdn, self.zone), fqdn, value, add=add, key=self.key)
        try:
            resp = dns.query.tcp(msg, self.host, port=self.port, timeout=DNS_TIMEOUT)
        except (OSError, dns.exception.DNSException) as exc:
            raise DnsError(f"DNS UPDATE to {self.host}:{self.port} failed: {exc}") from exc
        if resp.rcode() != dns.rcode.NOERROR:
            raise DnsError(
                f"DNS UPDATE for {fqdn} refused by {self.host}:{self.port}: {dns.rcode.to_text(resp.rcode())}"
            )


def make_provider(
    kind: str, *, server: str = "", tsig_key: str = "", zone: str = "", command: str = ""
) -> DnsProvider | None:
    """The configured provider (None when ``kind`` is empty); ``ValueError`` names what is missing."""
    kind = kind.strip().lower()
    if not kind:
        return None
    if kind == "exec":
        if not command.strip():
            raise ValueError("--acme-dns-provider exec needs --acme-dns-exec CMD")
        return ExecDns(command)
    if kind == "rfc2136":
        if not server.strip():
            raise ValueError("--acme-dns-provider rfc2136 needs --acme-dns-server HOST:PORT")
        key = parse_tsig(tsig_key) if tsig_key.strip() else None
        return Rfc2136Dns(server.strip(), zone.strip() or None, key)
    raise ValueError(f"unknown ACME DNS provider {kind!r} (rfc2136 or exec)")
