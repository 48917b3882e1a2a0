"""What makes an ``EndpointSpec`` with ``proto="tcp"`` different: its upstream, its checks and its Bind opts.

A TCP endpoint forwards raw bytes to ``host:port`` (``22``, ``db:5432``, ``tcp://host:port``) and is asked
for at the edge by ``remote_addr`` (ngrok's name: ``host:port``, ``:port``, or nothing for any port) or by
``url`` (``tcp://host:port``; ``tcp://`` alone means any). Its options are ngrok's TCP ones: the IP
restriction (``cidr_allow``/``cidr_deny``), ``proxy_proto``, ``metadata``, a Traffic Policy.
``spec.py`` calls these helpers for TCP specs; the problems name the spec's fields as ``validate()`` does.

Must not: open sockets or read files, import ``hatchway.edge`` (the edge judges the port and host), or
decide anything about HTTP endpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from hatchway.errors import ConfigError

if TYPE_CHECKING:
    from hatchway.agent.spec import EndpointSpec, Upstream

# Spec fields that only HTTP endpoints have, with the value that means "not set".
HTTP_ONLY: dict[str, object] = {
    "domain": "",
    "basic_auth": [],
    "oauth_provider": "",
    "oidc_issuer_url": "",
    "request_header_add": [],
    "request_header_remove": [],
    "response_header_add": [],
    "response_header_remove": [],
    "host_header": "",
    "compression": False,
    "circuit_breaker": 0.0,
    "ua_filter_allow": [],
    "ua_filter_deny": [],
    "verify_webhook": "",
    "websocket_tcp_converter": False,
    "mutual_tls_cas": "",
    "mutual_tls_ca_pem": b"",
}


def parse_tcp_upstream(addr: str, field_path: str = "addr") -> Upstream:
    """``22`` (localhost), ``host:port``, ``[v6]:port`` or ``tcp://host:port``; anything else is refused."""
    from hatchway.agent.spec import Upstream

    text = str(addr).strip()
    if not text:
        raise ConfigError(field_path, "a local address is required (a port or host:port)")
    if text.startswith("tcp://"):
        text = text[len("tcp://") :].rstrip("/")
    elif "://" in text or text.startswith("unix:"):
        scheme = text.partition(":")[0]
        raise ConfigError(
            field_path,
            f"{addr!r} is not a TCP address: give a port or host:port ({scheme}: addresses are for "
            "http endpoints)",
        )
    if text.isdigit():
        host, port_s = "localhost", text
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(
                field_path, f"{addr!r} has no port: give a port or host:port, e.g. localhost:22"
            )
        host = host.strip("[]")
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ConfigError(field_path, f"bad port in {addr!r} (1-65535)")
    return Upstream("tcp", host, int(port_s))


def requested_addr(spec: EndpointSpec) -> str:
    """The ``Addr`` to ask the edge for: ``remote_addr``, or the host:port of a ``tcp://`` ``url``."""
    if spec.remote_addr:
        return spec.remote_addr.strip()
    if spec.url:
        return spec.url.strip().removeprefix("tcp://").rstrip("/")
    return ""


def _addr_problem(text: str) -> str:
    """Why ``text`` (host:port, :port or a port) cannot be asked for, or ""."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_s = rest.removeprefix(":")
    elif text.isdigit():
        host, port_s = "", text
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            return f"{text!r} has no port: use HOST:PORT or :PORT"
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        return f"bad port in {text!r} (use HOST:PORT or :PORT)"
    if host and any(c in host for c in "/@?# "):
        return f"bad host in {text!r}"
    return ""


def tcp_problems(spec: EndpointSpec) -> list[tuple[str, str]]:
    """(field, message) for what is wrong with a TCP spec beyond the checks it shares with HTTP ones."""
    problems: list[tuple[str, str]] = []
    if spec.addr:
        try:
            parse_tcp_upstream(spec.addr)
        except ConfigError as exc:
            problems.append((exc.field_path, exc.message))
    else:
        problems.append(("addr", "a local address is required (a port or host:port)"))
    if spec.url:
        parts = urlsplit(spec.url if "://" in spec.url else f"//{spec.url}")
        if parts.scheme != "tcp":
            problems.append(("url", f"a TCP endpoint's URL is tcp://HOST:PORT, got {spec.url!r}"))
        elif spec.remote_addr:
            problems.append(("remote_addr", "give either it or a tcp:// URL, not both"))
        else:
            rest = spec.url.strip()[len("tcp://") :].rstrip("/")
            problem = _addr_problem(rest) if rest else ""
            if problem:
                problems.append(("url", problem))
    if spec.remote_addr:
        problem = _addr_problem(spec.remote_addr.strip())
        if problem:
            problems.append(("remote_addr", problem))
    for name, unset in HTTP_ONLY.items():
        if getattr(spec, name) != unset:
            problems.append((name, "is an HTTP option; TCP endpoints do not have it"))
    if spec.upstream_protocol not in ("", "http1"):
        problems.append(("upstream_protocol", "is an HTTP option; TCP endpoints forward raw bytes"))
    return problems


def tcp_bind_opts(spec: EndpointSpec) -> dict[str, Any]:
    """The TcpEndpoint ``Opts`` for Bind as the SDKs send them; unset options are left out."""
    opts: dict[str, Any] = {"Addr": requested_addr(spec)}
    if spec.cidr_allow or spec.cidr_deny:
        opts["IPRestriction"] = {"allow_cidrs": spec.cidr_allow, "deny_cidrs": spec.cidr_deny}
    if spec.proxy_proto:
        opts["ProxyProto"] = int(spec.proxy_proto)
    if spec.traffic_policy:
        opts["TrafficPolicy"] = spec.traffic_policy
    return opts
