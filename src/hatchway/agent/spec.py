"""What one endpoint should be: the model shared by CLI flags, config files and the SDK.

``EndpointSpec`` holds ngrok's option names; ``Upstream`` is the parsed forwarding address. Both are plain
data with validation that names the offending field. ``validate()`` checks everything the edge would refuse
at Bind, so a broken endpoint is reported before anything goes online: the module values (CIDRs, regexes,
webhook providers, ...) and the user's Traffic Policy, compiled with the edge's own compiler
(``hatchway.policy``) so each problem keeps its path, e.g. ``traffic_policy.on_http_request[1].actions[0]``.

Must not: import ``hatchway.edge`` (the layering keeps agent and edge apart), or load the policy engine
when no policy is set (it pulls in a large CEL library). I/O is limited to reading the ``mutual_tls_cas``
file, in ``validate()`` and ``to_bind_opts()``; nothing here opens sockets. ``to_bind_opts()`` is the only
place that knows the wire spelling of the options (``Bind.Opts`` as the Rust SDKs send it).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from hatchway.errors import ConfigError

SCHEMES = ("http", "https")

# The providers ngrok's OAuth module knows (ngrok-reference.md §4.4); others are ERR_NGROK_363-365.
OAUTH_PROVIDERS = ("amazon", "facebook", "github", "gitlab", "google", "linkedin", "microsoft", "twitch")
# The edge's basic-auth action takes at most this many credentials (policy/actions/basic_auth.py).
BASIC_AUTH_MAX = 10


@dataclass(frozen=True)
class Upstream:
    """Where proxied traffic goes. ``kind`` is one of http, https, h2c, unix, file, tcp (raw bytes)."""

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
        if self.kind == "tcp":
            return f"tcp://{self.host}:{self.port}"
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
    """One endpoint as the user asked for it (ngrok's names). ``proto`` is "http" (the default) or "tcp";
    the TCP specifics (``remote_addr``, the raw upstream, its Bind opts) live in ``tcp_spec.py``."""

    addr: str = ""
    proto: str = "http"
    remote_addr: str = ""  # tcp only: HOST:PORT or :PORT to ask the edge for
    name: str = ""
    domain: str = ""
    url: str = ""
    schemes: list[str] = field(default_factory=lambda: ["https"])
    metadata: str = ""
    basic_auth: list[str] = field(default_factory=list)
    oauth_provider: str = ""
    oauth_allow_emails: list[str] = field(default_factory=list)
    oauth_allow_domains: list[str] = field(default_factory=list)
    oauth_scopes: list[str] = field(default_factory=list)
    oauth_client_id: str = ""
    oauth_client_secret: str = ""
    oidc_issuer_url: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    oidc_allow_emails: list[str] = field(default_factory=list)
    oidc_allow_domains: list[str] = field(default_factory=list)
    oidc_scopes: list[str] = field(default_factory=list)
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
    mutual_tls_ca_pem: bytes = b""  # the bundle itself (the SDKs pass PEM bytes, not a path)
    traffic_policy: str = ""  # document text (YAML or JSON)
    upstream_protocol: str = "http1"
    proxy_proto: str = ""
    pooling_enabled: bool = False
    inspect: bool = True

    def upstream(self) -> Upstream:
        if self.proto == "tcp":
            from hatchway.agent.tcp_spec import parse_tcp_upstream

            return parse_tcp_upstream(self.addr)
        return parse_upstream(self.addr, upstream_protocol=self.upstream_protocol)

    def requested_domain(self) -> str:
        """The host asked for through ``url`` or ``domain`` (``url`` wins, as in ngrok 3.16+)."""
        if self.url:
            u = self.url if "://" in self.url else f"https://{self.url}"
            host = urlsplit(u).hostname or ""
            return host
        return self.domain

    def url_schemes(self) -> list[str]:
        if self.proto == "tcp":
            return ["tcp"]
        if self.url and "://" in self.url:
            return [urlsplit(self.url).scheme]
        return self.schemes

    def validate(self, prefix: str = "") -> list[ConfigError]:
        """Every problem with this spec, each naming its field (``prefix`` + field).

        Covers what the edge would refuse at Bind, so ``hatchway http``, ``config check`` and the SDK all
        fail before connecting. Problems inside the Traffic Policy are named below ``traffic_policy``
        (``traffic_policy.on_http_request[1].actions[0].config.status_code``); a document that does not
        parse at all is ``traffic_policy`` itself.
        """
        errors: list[ConfigError] = []
        p = prefix

        def err(name: str, msg: str) -> None:
            errors.append(ConfigError(f"{p}{name}", msg))

        if self.proto not in ("http", "tcp"):
            err("proto", f"must be http or tcp, got {self.proto!r}")
            return errors
        if self.proto == "tcp":
            from hatchway.agent.tcp_spec import tcp_problems

            for name, msg in tcp_problems(self):
                err(name, msg)
            self._validate_cidrs(err)
            self._validate_proxy_and_policy(err)
            return errors
        try:
            self.upstream()
        except ConfigError as exc:
            errors.append(ConfigError(f"{p}{exc.field_path}", exc.message))
        if self.remote_addr:
            err("remote_addr", "is a TCP option (proto tcp); HTTP endpoints use url or domain")
        for s in self.url_schemes():
            if s not in SCHEMES:
                err("schemes", f"unknown scheme {s!r} (use http, https)")
        if not self.url_schemes():
            err("schemes", "at least one scheme is needed")
        if len(self.basic_auth) > BASIC_AUTH_MAX:
            err("basic_auth", f"at most {BASIC_AUTH_MAX} credentials, got {len(self.basic_auth)}")
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
        self._validate_cidrs(err)
        # NaN fails both comparisons, so it is refused too.
        if not 0.0 <= self.circuit_breaker <= 1.0:
            err("circuit_breaker", "must be between 0 and 1")
        for key in ("ua_filter_allow", "ua_filter_deny"):
            for i, pattern in enumerate(getattr(self, key)):
                # The edge matches with Python's ``re`` (policy/actions/user_agent_filter.py).
                try:
                    re.compile(pattern)
                except re.error as exc:
                    err(f"{key}[{i}]", f"not a valid regular expression {pattern!r}: {exc}")
        self._validate_webhook(err)
        self._validate_sso(err)
        if self.mutual_tls_cas:
            problem = _pem_problem(self.mutual_tls_cas)
            if problem:
                err("mutual_tls_cas", problem)
        self._validate_proxy_and_policy(err)
        return errors

    def _validate_cidrs(self, err: _Report) -> None:
        for key in ("cidr_allow", "cidr_deny"):
            for i, cidr in enumerate(getattr(self, key)):
                if not is_cidr(cidr):
                    err(
                        f"{key}[{i}]",
                        f"not an IPv4 or IPv6 CIDR: {cidr!r} (e.g. 192.0.2.0/24 or 2001:db8::/32)",
                    )

    def _validate_proxy_and_policy(self, err: _Report) -> None:
        """Checks HTTP and TCP endpoints share (with ``_validate_cidrs``)."""
        if self.proxy_proto not in ("", "1", "2"):
            err("proxy_proto", "must be 1 or 2")
        if self.traffic_policy:
            for path, message in policy_problems(self.traffic_policy):
                err(f"traffic_policy.{path}" if path else "traffic_policy", message)

    def _validate_webhook(self, err: _Report) -> None:
        if not self.verify_webhook:
            if self.verify_webhook_secret:
                err("verify_webhook_secret", "a webhook secret needs a webhook provider too (e.g. github)")
            return
        # Imported here: only endpoints that verify webhooks need the provider table.
        from hatchway.policy.webhooks import PROVIDERS

        provider = PROVIDERS.get(self.verify_webhook)
        if provider is None:
            known = ", ".join(sorted(PROVIDERS))
            err(
                "verify_webhook",
                f"unknown webhook provider {self.verify_webhook!r}; known providers: {known}",
            )
        if not self.verify_webhook_secret:
            err("verify_webhook_secret", f"verifying {self.verify_webhook} webhooks needs the signing secret")
        elif provider is not None and "$" not in self.verify_webhook_secret:
            # A literal secret in the wrong format can never verify anything; one with ${...} is only
            # known per request. Same test as the edge's (policy/actions/verify_webhook.py).
            problem = provider.secret_problem(self.verify_webhook_secret)
            if problem:
                err("verify_webhook_secret", problem)

    def _validate_sso(self, err: _Report) -> None:
        if self.oauth_provider and self.oauth_provider not in OAUTH_PROVIDERS:
            known = ", ".join(OAUTH_PROVIDERS)
            err("oauth_provider", f"unknown OAuth provider {self.oauth_provider!r}; known providers: {known}")
        oauth_extras = ("oauth_allow_emails", "oauth_allow_domains", "oauth_scopes")
        oauth_app = ("oauth_client_id", "oauth_client_secret")
        for key in () if self.oauth_provider else (*oauth_extras, *oauth_app):
            if getattr(self, key):
                err(key, "needs an OAuth provider too (e.g. google)")
        if self.oauth_provider and bool(self.oauth_client_id) != bool(self.oauth_client_secret):
            # ngrok's ERR_NGROK_383/384: your own OAuth app needs both.
            err("oauth_client_id", "your own OAuth app needs both a client id and a client secret")
        oidc_extras = ("oidc_client_id", "oidc_client_secret", "oidc_allow_emails", "oidc_allow_domains")
        if not self.oidc_issuer_url:
            for key in (*oidc_extras, "oidc_scopes"):
                if getattr(self, key):
                    err(key, "needs an OIDC issuer URL too")
            return
        if not self.oidc_issuer_url.startswith(("https://", "http://")):
            err("oidc_issuer_url", f"must be an http(s) URL, got {self.oidc_issuer_url!r}")
        for key in ("oidc_client_id", "oidc_client_secret"):
            # ngrok's ERR_NGROK_385/386: the issuer, client id and secret are all required.
            if not getattr(self, key):
                err(key, "is required for OpenID Connect")

    def to_bind_opts(self) -> dict[str, Any]:
        """The HttpEndpoint ``Opts`` for Bind, spelled as the Rust SDKs spell them (protocol.md §5.2);
        the TcpEndpoint ones for a TCP spec (``tcp_spec.tcp_bind_opts``)."""
        if self.proto == "tcp":
            from hatchway.agent.tcp_spec import tcp_bind_opts

            return tcp_bind_opts(self)
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
            opts["OAuth"] = _non_empty(
                provider=self.oauth_provider,
                allow_emails=self.oauth_allow_emails,
                allow_domains=self.oauth_allow_domains,
                scopes=self.oauth_scopes,
                client_id=self.oauth_client_id,
                client_secret=self.oauth_client_secret,
            )
        if self.oidc_issuer_url:
            opts["OIDC"] = _non_empty(
                issuer_url=self.oidc_issuer_url,
                client_id=self.oidc_client_id,
                client_secret=self.oidc_client_secret,
                allow_emails=self.oidc_allow_emails,
                allow_domains=self.oidc_allow_domains,
                scopes=self.oidc_scopes,
            )
        if self.verify_webhook:
            opts["WebhookVerification"] = {
                "provider": self.verify_webhook,
                "secret": self.verify_webhook_secret,
            }
        if self.websocket_tcp_converter:
            opts["WebsocketTCPConverter"] = {}
        pem = self.mutual_tls_ca_pem
        if self.mutual_tls_cas:
            with open(os.path.expanduser(self.mutual_tls_cas), "rb") as fh:
                pem += fh.read()
        if pem:
            opts["MutualTLSCA"] = {"mutual_tls_ca": base64.b64encode(pem).decode()}
        if self.traffic_policy:
            opts["TrafficPolicy"] = self.traffic_policy
        return opts


class _Report(Protocol):
    def __call__(self, name: str, msg: str) -> None: ...


def policy_problems(document: str) -> list[tuple[str, str]]:
    """(path, message) for every problem the edge's compiler finds in ``document``; [] when it compiles.

    The path is relative to the document (``on_http_request[1].actions[0].type``); "" means the whole
    document (it does not parse, or is not a map of phases). An action of a type ngrok has but this build
    does not know (``oauth``, ``jwt-validation``, ...) is left for the edge to judge: the edge may be newer
    than this agent, and if it lacks the action too it refuses the endpoint with its own message.
    """
    # Imported here: the engine loads the CEL library, which endpoints without a policy never need.
    from hatchway.policy.document import load
    from hatchway.policy.engine import compile_policy
    from hatchway.policy.model import PolicyError

    try:
        compile_policy(document)
    except PolicyError as exc:
        problems = exc.problems
    else:
        return []
    try:
        deferred = _edge_only_actions(load(document))
    except PolicyError:
        deferred = []
    return [
        ("" if pr.path == "policy" else pr.path, pr.message)  # the engine's name for the whole document
        for pr in problems
        if not any(pr.path == d or pr.path.startswith(f"{d}.") for d in deferred)
    ]


# Every action type ngrok documents (ngrok-reference.md §4.4).
NGROK_ACTIONS = frozenset(
    {
        "add-headers", "ai-gateway", "basic-auth", "circuit-breaker", "close-connection",
        "compress-response", "custom-response", "deny", "forward-internal", "http-request",
        "jwt-validation", "log", "oauth", "openid-connect", "owasp-crs-request", "owasp-crs-response",
        "rate-limit", "redirect", "remove-headers", "request-body-find-replace", "response-body-find-replace",
        "restrict-ips", "saml", "set-vars", "sse-find-replace", "terminate-tls", "url-rewrite",
        "verify-webhook",
    }
)  # fmt: skip


def _edge_only_actions(doc: Mapping[str, Any]) -> list[str]:
    """Paths of the actions in ``doc`` whose type ngrok has and this build's catalogue lacks."""
    from hatchway.policy.actions import CATALOGUE

    found: list[str] = []
    for phase, rules in doc.items():
        for i, rule in enumerate(rules if isinstance(rules, list) else []):
            actions = rule.get("actions") if isinstance(rule, Mapping) else None
            for j, action in enumerate(actions if isinstance(actions, list) else []):
                kind = action.get("type") if isinstance(action, Mapping) else None
                if kind in NGROK_ACTIONS and kind not in CATALOGUE:
                    found.append(f"{phase}[{i}].actions[{j}]")
    return found


def is_cidr(text: str) -> bool:
    """What the edge's restrict-ips accepts: a CIDR or a bare address; host bits are allowed (masked)."""
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return False
    return True


def _pem_problem(path: str) -> str:
    """Why the CA bundle at ``path`` cannot be sent, or "". Its content is the edge's to judge."""
    try:
        with open(os.path.expanduser(path), "rb"):
            pass
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return ""


def _non_empty(**values: object) -> dict[str, object]:
    # The SDKs leave empty middleware fields out of Bind (wire/messages.py: omit_defaults).
    return {k: v for k, v in values.items() if v}


def _headers(add: list[str], remove: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if add:
        # The SDKs send "name:value" with the name lowercased (protocol.md §5.2).
        out["add"] = [f"{n.strip().lower()}:{v.strip()}" for n, _, v in (h.partition(":") for h in add)]
    if remove:
        out["remove"] = [h.strip().lower() for h in remove]
    return out
