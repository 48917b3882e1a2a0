"""The ``restrict-ips`` action: allow or deny by the connection's source address (``conn.client_ip``).

Config: ``allow`` and ``deny`` (lists of IPv4/IPv6 CIDRs; a bare address means that one host; host bits
are masked, so ``10.1.2.3/8`` is ``10.0.0.0/8``), ``enforce`` (true). At least one list must be given.
ngrok's ``ip_policies`` (ids of dashboard objects) has no meaning here and is refused.

A client is allowed iff (there is no allow list, or it matches an allow CIDR) and it matches no deny CIDR.
ngrok documents "must match an allow"; with only a deny list that would shut everyone out, so a missing
allow list means "everyone not denied". Only the L4 address counts, never X-Forwarded-For. An IPv4-mapped
IPv6 address (``::ffff:192.0.2.1``, what a dual-stack socket reports) is checked as the IPv4 address, and
an address that does not parse matches nothing.

Denied: ``403`` with ERR_NGROK_3205 (the edge closes a TCP connection instead in ``on_tcp_connect``).
With ``enforce: false`` the result is recorded and traffic passes. Results: ``restrict_ips.{action,
matched_cidr}`` (the first matching CIDR as configured, "" when none). ``run`` does one address parse and
integer mask compares; it never reads headers or the body.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from hatchway.policy.config import ConfigReader
from hatchway.policy.model import CompileEnv, Exchange, Problem, Reply

ERROR_CODE = "ERR_NGROK_3205"

# (version, network address as int, netmask as int, the CIDR as the user wrote it)
_Net = tuple[int, int, int, str]


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        # Client addresses are compared in IPv4 form (see the module docstring), so the CIDR must be too.
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((int(mapped), net.prefixlen - 96))
    return net


def _client_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _first_match(nets: tuple[_Net, ...], version: int, value: int) -> str | None:
    for net_version, network, mask, source in nets:
        if net_version == version and value & mask == network:
            return source
    return None


class RestrictIps:
    needs_body = False

    def __init__(self, allow: tuple[_Net, ...], deny: tuple[_Net, ...], enforce: bool) -> None:
        self.allow = allow
        self.deny = deny
        self.enforce = enforce

    def decide(self, client_ip: str) -> tuple[bool, str]:
        """(allowed, the CIDR that decided it or "")."""
        addr = _client_address(client_ip)
        if addr is None:
            return (not self.allow, "")
        version, value = addr.version, int(addr)
        denied_by = _first_match(self.deny, version, value)
        if denied_by is not None:
            return (False, denied_by)
        if not self.allow:
            return (True, "")
        allowed_by = _first_match(self.allow, version, value)
        return (allowed_by is not None, allowed_by or "")

    def run(self, ex: Exchange) -> Reply | None:
        allowed, cidr = self.decide(ex.conn.client_ip)
        ex.results["restrict_ips"] = {"action": "allow" if allowed else "deny", "matched_cidr": cidr}
        if allowed or not self.enforce:
            return None
        return Reply(
            403,
            error_code=ERROR_CODE,
            message=f"The IP address {ex.conn.client_ip} is not allowed to access this endpoint.",
        )


def _networks(r: ConfigReader, key: str) -> tuple[_Net, ...]:
    nets: list[_Net] = []
    for i, text in enumerate(r.str_list(key)):
        net = _parse_cidr(text)
        if net is None:
            r.problem(f"{key}[{i}]", f"not a CIDR: {text!r} (use e.g. '192.0.2.0/24' or '2001:db8::/32')")
            continue
        nets.append((net.version, int(net.network_address), int(net.netmask), text.strip()))
    return tuple(nets)


def compile(config: Mapping[str, Any] | None, path: str, env: CompileEnv, phase: str) -> RestrictIps:
    r = ConfigReader(config, path)
    allow = _networks(r, "allow")
    deny = _networks(r, "deny")
    enforce = r.flag("enforce", True)
    if r.raw("ip_policies") is not None:
        r.problem("ip_policies", "IP policies are an ngrok dashboard feature; list the CIDRs in allow/deny")
    if not allow and not deny and not r.problems:
        r.problems.append(Problem(r.path, "give at least one CIDR in allow or deny"))
    r.done()
    return RestrictIps(allow, deny, enforce)
