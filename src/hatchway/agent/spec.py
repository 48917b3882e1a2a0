"""What one endpoint should be: the model shared by CLI flags, config files and the SDK.

``EndpointSpec`` holds ngrok's option names; ``Upstream`` is the parsed forwarding address. Both are plain
data with validation that names the offending field. This module does no I/O and knows nothing of the
wire beyond ``to_bind_opts()``, which turns a spec into the ``Bind.Opts`` the edge understands.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from hatchway.errors import ConfigError

SCHEMES = ("http", "https")


@dataclass(frozen=True)
class Upstream:
    """Where proxied traffic goes. ``kind`` is one of http, https, h2c, unix, file."""

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""  # unix socket path or file-server root

    @property
    def addr(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "file":
            return f"file://{self.path}"
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        if self.kind in ("unix", "file"):
            return self.addr
        scheme = "https" if self.kind == "https" else "http"
        return f"{scheme}://{self.host}:{self.port}"


def parse_upstream(addr: str, *, upstream_protocol: str = "http1", field_path: str = "addr") -> Upstream:
    """ngrok's address forms: ``8080``, ``host:port``, ``http(s)://host:port``, ``file:///abs``, ``unix:/p``.

    Port 443 (or ``https://``) means TLS to the upstream, unverified. ``upstream_protocol="http2"`` means
    h2c with prior knowledge on a plain upstream.
    """
    addr = str(addr).strip()
    if not addr:
        raise ConfigError(field_path, "an upstream address is required (a port, host:port or URL)")
    if addr.startswith("file://"):
        path = addr[len("file://") :]
        # file:///abs -> "/abs"; Windows file://C:\dir -> "C:\dir"
        if not (path.startswith("/") or (len(path) > 2 and path[1] == ":")):
            raise ConfigError(
                field_path,
                f'file:// paths must be absolute, got {addr!r} (try "file://$(pwd)/{path}")',
            )
        return Upstream("file", path=os.path.normpath(path) if path.startswith("/") else path)
    if addr.startswith("unix:"):
        path = addr[len("unix:") :].removeprefix("//")
        if not path:
            raise ConfigError(field_path, "unix: needs a socket path, e.g. unix:/run/app.sock")
        return Upstream("unix", path=path)
    if addr.isdigit():
        return _host_port("localhost", int(addr), None, upstream_protocol, field_path)
    if "://" in addr:
        parts = urlsplit(addr)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                field_path, f"unsupported upstream URL {addr!r} (use http://, https://, file://)"
            )
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(field_path, f"bad port in {addr!r}") from exc
        return _host_port(parts.hostname, port, parts.scheme, upstream_protocol, field_path)
    host, sep, port_s = addr.rpartition(":")
    if not sep:
        return _host_port(addr, 80, None, upstream_protocol, field_path)
    if not port_s.isdigit():
        raise ConfigError(field_path, f"bad port in {addr!r}")
    return _host_port(host.strip("[]") or "localhost", int(port_s), None, upstream_protocol, field_path)


def _host_port(host: str, port: int | None, scheme: str | None, proto: str, field_path: str) -> Upstream:
    if port is None:
        port = 443 if scheme == "https" else 80
    if not 0 < port < 65536:
        raise ConfigError(field_path, f"port {port} is out of range")
    if proto not in ("http1", "http2", ""):
        raise ConfigError("upstream_protocol", f"must be http1 or http2, got {proto!r}")
    if scheme == "https" or (scheme is None and port == 443):
        return Upstream("https", host, port)
    return Upstream("h2c" if proto == "http2" else "http", host, port)


@dataclass
class EndpointSpec:
    """One HTTP endpoint as the user asked for it (ngrok's names)."""

    addr: str = ""
    name: str = ""
    domain: str = ""
    url: str = ""
    schemes: list[str] = field(default_factory=lambda: ["https"])
    metadata: str = ""
    basic_auth: list[str] = field(default_factory=list)
    oauth_provider: str = ""
    oauth_allow_emails: list[str] = field(default_factory=list)
    oauth_allow_domains: list[str] = field(default_factory=list)
    cidr_allow: list[str] = field(default_factory=list)
    cidr_deny: list[str] = field(default_factory=list)
    request_header_add: list[str] = field(default_factory=list)
    request_header_remove: list[str] = field(default_factory=list)
    response_header_add: list[str] = field(default_factory=list)
    response_header_remove: list[str] = field(default_factory=list)
    host_header: str = ""  # "", "rewrite", "preserve" or a literal host
    compression: bool = False
    circuit_breaker: float = 0.0
    ua_filter_allow: list[str] = field(default_factory=list)
    ua_filter_deny: list[str] = field(default_factory=list)
    verify_webhook: str = ""
    verify_webhook_secret: str = ""
    websocket_tcp_converter: bool = False
    mutual_tls_cas: str = ""  # path to a PEM bundle
    traffic_policy: str = ""  # document text (YAML or JSON)
    upstream_protocol: str = "http1"
    proxy_proto: str = ""
    pooling_enabled: bool = False
    inspect: bool = True

    def upstream(self) -> Upstream:
        return parse_upstream(self.addr, upstream_protocol=self.upstream_protocol)

    def requested_domain(self) -> str:
        """The host asked for through ``url`` or ``domain`` (``url`` wins, as in ngrok 3.16+)."""
        if self.url:
            u = self.url if "://" in self.url else f"https://{self.url}"
            host = urlsplit(u).hostname or ""
            return host
        return self.domain

    def url_schemes(self) -> list[str]:
        if self.url and "://" in self.url:
            return [urlsplit(self.url).scheme]
        return self.schemes

    def validate(self, prefix: str = "") -> list[ConfigError]:
        """Every problem with this spec, each naming its field (``prefix`` + field)."""
        errors: list[ConfigError] = []
        p = prefix

        def err(name: str, msg: str) -> None:
            errors.append(ConfigError(f"{p}{name}", msg))

        try:
            self.upstream()
        except ConfigError as exc:
            errors.append(ConfigError(f"{p}{exc.field_path}", exc.message))
        for s in self.url_schemes():
            if s not in SCHEMES:
                err("schemes", f"unknown scheme {s!r} (use http, https)")
        if not self.url_schemes():
            err("schemes", "at least one scheme is needed")
        for i, cred in enumerate(self.basic_auth):
            user, sep, password = cred.partition(":")
            if not sep or not user:
                err(f"basic_auth[{i}]", "must be username:password")
            elif not 8 <= len(password) <= 128:
                err(f"basic_auth[{i}]", "the password must be 8 to 128 characters long")
        for key in ("request_header_add", "response_header_add"):
            for i, h in enumerate(getattr(self, key)):
                name, sep, _ = h.partition(":")
                if not sep or not name.strip():
                    err(f"{key}[{i}]", f"must be 'name: value', got {h!r}")
        if not 0.0 <= self.circuit_breaker <= 1.0:
            err("circuit_breaker", "must be between 0 and 1")
        if self.proxy_proto not in ("", "1", "2"):
            err("proxy_proto", "must be 1 or 2")
        return errors

    def to_bind_opts(self) -> dict[str, Any]:
        """The HttpEndpoint ``Opts`` for Bind, spelled as the Rust SDKs spell them (protocol.md §5.2)."""
        opts: dict[str, Any] = {
            "Hostname": self.requested_domain(),
            "Auth": "",
            "Subdomain": "",
            "HostHeaderRewrite": self.host_header == "rewrite",
            "LocalUrlScheme": None,
            "ProxyProto": int(self.proxy_proto or 0),
        }
        if self.basic_auth:
            creds = []
            for c in self.basic_auth:
                user, _, password = c.partition(":")
                creds.append({"username": user, "cleartext_password": password})
            opts["BasicAuth"] = {"credentials": creds}
        if self.cidr_allow or self.cidr_deny:
            opts["IPRestriction"] = {"allow_cidrs": self.cidr_allow, "deny_cidrs": self.cidr_deny}
        if self.compression:
            opts["Compression"] = {}
        if self.circuit_breaker:
            opts["CircuitBreaker"] = {"error_threshold": self.circuit_breaker}
        req = _headers(self.request_header_add, self.request_header_remove)
        if self.host_header and self.host_header not in ("rewrite", "preserve"):
            req.setdefault("add", []).append(f"host:{self.host_header}")
        if req:
            opts["RequestHeaders"] = req
        resp = _headers(self.response_header_add, self.response_header_remove)
        if resp:
            opts["ResponseHeaders"] = resp
        if self.ua_filter_allow or self.ua_filter_deny:
            opts["UserAgentFilter"] = {"allow": self.ua_filter_allow, "deny": self.ua_filter_deny}
        if self.oauth_provider:
            opts["OAuth"] = {
                "provider": self.oauth_provider,
                "allow_emails": self.oauth_allow_emails,
                "allow_domains": self.oauth_allow_domains,
            }
        if self.verify_webhook:
            opts["WebhookVerification"] = {
                "provider": self.verify_webhook,
                "secret": self.verify_webhook_secret,
            }
        if self.websocket_tcp_converter:
            opts["WebsocketTCPConverter"] = {}
        if self.mutual_tls_cas:
            with open(self.mutual_tls_cas, "rb") as fh:
                opts["MutualTLSCA"] = {"mutual_tls_ca": base64.b64encode(fh.read()).decode()}
        if self.traffic_policy:
            opts["TrafficPolicy"] = self.traffic_policy
        return opts


def _headers(add: list[str], remove: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if add:
        # The SDKs send "name:value" with the name lowercased (protocol.md §5.2).
        out["add"] = [f"{n.strip().lower()}:{v.strip()}" for n, _, v in (h.partition(":") for h in add)]
    if remove:
        out["remove"] = [h.strip().lower() for h in remove]
    return out
