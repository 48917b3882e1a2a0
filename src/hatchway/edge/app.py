"""Builds the edge from its configuration and runs its listeners: the only file that knows all the parts.

Listeners: the agent tunnel (TLS, muxado), plain HTTP and HTTPS for clients, and one socket per TCP
endpoint (``edge/tcp.py``, opened on Bind). State: the store under the data dir (tokens, reserved
domains), the dev CA for certificates, the in-memory registry of online endpoints. It wires parts
together and owns their lifetimes; it holds no protocol or routing logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hatchway.edge.listeners.http1 import Http1Connection
from hatchway.edge.listeners.https import HttpsConnection
from hatchway.edge.listeners.tls_accept import TlsAcceptor
from hatchway.edge.registry import Registry
from hatchway.edge.tcp import DEFAULT_RANGE, TcpEndpoints, default_url_host, parse_range
from hatchway.edge.tls.acme import AcmeManager
from hatchway.edge.tls.acme_client import AcmeIssuer
from hatchway.edge.tls.acme_dns import make_provider
from hatchway.edge.tls.certs import DevCertStore
from hatchway.edge.tls.stored import StoredCerts
from hatchway.edge.tunnels import TunnelServer
from hatchway.edge.verify import DnsResolver, DomainVerifier, default_cname_base
from hatchway.store.sqlite import SqliteStore

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(os.environ.get("HATCHWAY_DATA_DIR", "~/.hatchway/edge")).expanduser()


def split_hostport(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        return default_host, int(value)
    return (host.strip("[]") or default_host), int(port)


class Service(Protocol):
    """A listener started with the edge by someone outside ``edge/`` (the SSH entry): it reports where it
    listens and closes with the edge."""

    address: tuple[str, int]

    async def aclose(self) -> None: ...


ServiceStarter = Callable[["Edge"], Awaitable[Service]]


@dataclass
class EdgeConfig:
    data_dir: Path = DEFAULT_DATA_DIR
    base_domain: str = "hatchway.localhost"
    http_addr: str = "127.0.0.1:8080"
    https_addr: str = "127.0.0.1:8443"
    tunnel_addr: str = "127.0.0.1:4443"
    ssh_addr: str = "127.0.0.1:2222"
    # TCP endpoints listen on a port of this range; their URLs carry ``tcp_host`` (default: the range's
    # host when it is one address, else the base domain).
    tcp_addr_range: str = DEFAULT_RANGE
    tcp_host: str = ""
    # Public ports put in URLs when they differ from the listen ports (behind a port forward, say).
    public_http_port: int | None = None
    public_https_port: int | None = None
    extra_tokens: set[str] = field(default_factory=set)
    # Client connections with no request in flight are closed after this long without a byte (ngrok: 5 min).
    idle_timeout: float = 300.0
    # Custom domains (reserved names outside base_domain) are bound and get certificates only once their
    # DNS has a CNAME to the target given at reservation (``edge/verify.py``). Targets live under
    # ``cname_target_base`` ("" = ``cname.<base_domain>``; point ``*.<it>`` at the edge); CNAMEs are asked
    # of ``dns_resolver`` (HOST[:PORT]; "" = the system's resolver). ``skip_domain_verification``: dev only.
    cname_target_base: str = ""
    dns_resolver: str = ""
    skip_domain_verification: bool = False
    # ACME (``edge/tls/acme.py``): off while ``acme_directory`` is empty (the dev CA serves everything).
    # Names get certificates when an endpoint binds them (HTTP-01 on the plain HTTP listener), wildcards
    # when bound or reserved (DNS-01 through ``acme_dns_provider``: ``rfc2136`` or ``exec``).
    acme_directory: str = ""
    acme_email: str = ""
    acme_root_cas: str = ""  # CA bundle that signs the ACME server's HTTPS certificate ("" = system CAs)
    acme_renew_before: float = 30 * 86400.0  # renew when less than this is left (seconds)
    acme_renew_check: float = 3600.0  # look for certificates due this often; a name renews once per look
    acme_dns_provider: str = ""
    acme_dns_server: str = ""  # rfc2136: HOST:PORT of the zone's primary
    acme_dns_tsig_key: str = ""  # rfc2136: NAME:ALGORITHM:BASE64SECRET
    acme_dns_zone: str = ""  # rfc2136: the zone to update ("" = the name being validated)
    acme_dns_exec: str = ""  # exec: CMD, run as ``CMD present|cleanup FQDN VALUE``


class Edge:
    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.certs = DevCertStore(config.data_dir, config.base_domain)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store: SqliteStore | None = SqliteStore(config.data_dir / "state.db")
        tcp_range = parse_range(config.tcp_addr_range)
        self.tcp = TcpEndpoints(tcp_range, config.tcp_host or default_url_host(tcp_range, config.base_domain))
        self.cname_target_base = config.cname_target_base or default_cname_base(config.base_domain)
        # Before a custom domain is bound (Registry) or gets a certificate (ACME: ``domain_check.verified``).
        self.domain_check = DomainVerifier.for_store(
            self.store,
            config.base_domain,
            self.cname_target_base,
            DnsResolver(config.dns_resolver),
            skip=config.skip_domain_verification,
        )
        self.registry = Registry(
            self._check_token,
            base_domain=config.base_domain,
            domain_owner=self._domain_owner,
            key=_secret_key(config.data_dir / "registry.key"),
            tcp=self.tcp,
            domain_check=self.domain_check,
        )
        # Certificates by SNI: the endpoint's own (terminate-tls), then the store's (brought, then ACME),
        # then the dev CA; each endpoint's TLS terms on top.
        self.stored_certs = StoredCerts(self.store)
        self.certs.sources.append(self.stored_certs)
        self.certs.terms_for = self.registry.tls_terms
        self.acme = self._make_acme()
        self.tunnels = TunnelServer(self.registry, self.certs.tunnel_context())
        self._servers: list[asyncio.Server | TlsAcceptor] = []
        self._clients: set[Http1Connection | HttpsConnection] = set()
        self.addresses: dict[str, tuple[str, int]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._revision = -1
        self._starters: list[tuple[str, ServiceStarter]] = []
        self.services: list[Service] = []

    def _make_acme(self) -> AcmeManager | None:
        """The ACME manager when a directory is configured (``ValueError`` for a bad DNS-01 setting)."""
        cfg = self.config
        if not cfg.acme_directory or self.store is None:
            return None
        dns = make_provider(
            cfg.acme_dns_provider,
            server=cfg.acme_dns_server,
            tsig_key=cfg.acme_dns_tsig_key,
            zone=cfg.acme_dns_zone,
            command=cfg.acme_dns_exec,
        )
        root_cas = Path(cfg.acme_root_cas).expanduser() if cfg.acme_root_cas else None
        issuer = AcmeIssuer(cfg.acme_directory, self.store, cfg.acme_email, root_cas)

        async def issued() -> None:
            await asyncio.to_thread(self.stored_certs.reload)
            self.certs.invalidate()  # the next handshake gets the new certificate

        manager = AcmeManager(
            self.store,
            issuer,
            self.stored_certs,
            issued,
            dns=dns,
            base_domain=cfg.base_domain,
            renew_before=cfg.acme_renew_before,
            renew_check=cfg.acme_renew_check,
            online_hosts=lambda: [host for _scheme, host in self.registry.endpoints],
            verified=self.domain_check.verified,
        )
        self.registry.on_bound = manager.on_bound
        return manager

    def add_service(self, name: str, starter: ServiceStarter) -> None:
        """Start ``starter(edge)`` with the edge (before discovery is written: its address is in
        ``edge.json`` as ``NAME_addr``) and close it at shutdown. Call before ``start``."""
        self._starters.append((name, starter))

    # ---- store glue ----------------------------------------------------------------------------------
    def account_for_token(self, token: str) -> str | None:
        """The account an authtoken belongs to, or None (unknown or revoked)."""
        return self._check_token(token)

    def account_for_ssh_key(self, fingerprint: str) -> str | None:
        """The account an SSH public key (SHA-256 fingerprint) is registered to, or None."""
        return self.store.ssh_key_owner(fingerprint) if self.store is not None else None

    def _check_token(self, token: str) -> str | None:
        if token and token in self.config.extra_tokens:
            return "default"
        if self.store is None:
            return None
        info = self.store.check_token(token)
        return info.account if info is not None else None

    def _domain_owner(self, host: str) -> str | None:
        return self.store.domain_owner(host) if self.store is not None else None

    async def _watch_store(self) -> None:
        """Notice tokens revoked by another process (the CLI) and close their sessions."""
        while True:
            await asyncio.sleep(0.5)
            if self.store is None:
                return
            rev = await asyncio.to_thread(self.store.revision)
            if rev == self._revision:
                continue
            self._revision = rev
            # Certificates added or renewed by the CLI or the ACME manager: serve them from now on.
            await asyncio.to_thread(self.stored_certs.reload)
            self.certs.invalidate()
            if self.acme is not None:
                self.acme.on_store_change()  # a wildcard reserved: order its certificate
            for session in list(self.tunnels.sessions):
                auth = session.auth
                if auth is None or auth.extra.auth_token in self.config.extra_tokens:
                    continue
                if await asyncio.to_thread(self.store.check_token, auth.extra.auth_token) is None:
                    logger.info("authtoken revoked: closing session %s", session.client_id)
                    session.go_away("authtoken revoked")
                    session.close()

    async def _sweep_idle(self) -> None:
        """Close client connections idle past ``idle_timeout`` (one sweep, not a timer per connection)."""
        limit = self.config.idle_timeout
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.05, min(30.0, limit / 4)))
            now = loop.time()
            for c in list(self._clients):
                last = c.last_active
                if last is not None and now - last > limit and not c.in_flight():
                    c.close()

    # ---- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        with _listening("tunnel_addr", self.config.tunnel_addr):
            host, port = split_hostport(self.config.tunnel_addr)
            self.addresses["tunnel"] = await self.tunnels.start(host, port)
        with _listening("http_addr", self.config.http_addr):
            host, port = split_hostport(self.config.http_addr)
            server = await loop.create_server(self._factory("http"), host, port, backlog=1024)
        # HTTPS picks each connection's whole TLS context from its ClientHello (see tls_accept.py).
        with _listening("https_addr", self.config.https_addr):
            host, port = split_hostport(self.config.https_addr)
            acceptor = TlsAcceptor.listen(host, port, self._factory("https"), self.certs.choose)
        for scheme, listener in (("http", server), ("https", acceptor)):
            self._servers.append(listener)
            bound = listener.sockets[0].getsockname()
            self.addresses[scheme] = (str(bound[0]), int(bound[1]))
        self.registry.ports = {
            "http": self.config.public_http_port or self.addresses["http"][1],
            "https": self.config.public_https_port or self.addresses["https"][1],
        }
        if self.store is not None:
            self._revision = self.store.revision()
            self._poller = asyncio.ensure_future(self._watch_store())
        self._sweeper = asyncio.ensure_future(self._sweep_idle())
        if self.acme is not None:
            self.acme.start()
        for name, starter in self._starters:
            with _listening(f"{name}_addr", ""):
                service = await starter(self)
            self.services.append(service)
            self.addresses[name] = service.address
        settle_heap()
        self._write_discovery()

    def _write_discovery(self) -> None:
        """Let an agent on this machine find this edge with no flags: where to dial, which CA, a token."""
        d = self.config.data_dir
        host, port = self.addresses["tunnel"]
        dial = f"localhost:{port}" if host in ("127.0.0.1", "0.0.0.0", "::1", "::") else f"{host}:{port}"
        info = {
            "tunnel_addr": dial,
            "http": self.registry.url_for("http", self.config.base_domain),
            "https": self.registry.url_for("https", self.config.base_domain),
            "base_domain": self.config.base_domain,
            "cname_target_base": self.cname_target_base,  # ``hatchway edge domain add`` reads it
        }
        for name, (shost, sport) in self.addresses.items():
            if name not in ("tunnel", "http", "https"):
                info[f"{name}_addr"] = f"{shost}:{sport}"
        (d / "edge.json").write_text(json.dumps(info, indent=2) + "\n")
        token_file = d / "dev-token"
        if self.store is not None and not token_file.exists():
            _info, secret = self.store.create_token("default", "dev token for agents on this machine")
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secret + "\n")

    def _factory(self, scheme: str) -> Callable[..., Http1Connection | HttpsConnection]:
        def make(sni: str = "") -> Http1Connection | HttpsConnection:
            # HTTPS clients get HTTP/2 or HTTP/1.1 by ALPN; plain HTTP is HTTP/1.1 only. ``sni``: the
            # server name of an HTTPS client's ClientHello (TlsAcceptor passes it).
            conn: Http1Connection | HttpsConnection = (
                HttpsConnection(self.registry, self._clients.discard, sni=sni)
                if scheme == "https"
                else Http1Connection(
                    self.registry,
                    scheme,
                    self._clients.discard,
                    acme=self.acme.challenge if self.acme is not None else None,
                )
            )
            self._clients.add(conn)
            return conn

        return make

    async def aclose(self, drain: float = 5.0) -> None:
        """Stop accepting, GOAWAY every agent, give requests in flight ``drain`` seconds, then close."""
        for s in self._servers:
            s.close()
        # A raw TCP connection has no request boundary to drain to: TCP endpoints close now.
        await self.tcp.aclose()
        if self._poller is not None:
            self._poller.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.acme is not None:
            await self.acme.aclose()
        in_flight: list[asyncio.Future[None]] = []
        for c in list(self._clients):
            in_flight += c.in_flight()
        if in_flight:
            await asyncio.wait(in_flight, timeout=drain)
        for service in self.services:
            await service.aclose()
        for c in list(self._clients):
            if isinstance(c, HttpsConnection):
                c.close()
            elif c.transport is not None:
                c.transport.close()
        await self.tunnels.aclose(drain=1.0)


class ListenError(Exception):
    """A listener could not open its socket; ``key`` is the config key (``http_addr``, ...) to fix."""

    def __init__(self, key: str, addr: str, reason: str) -> None:
        super().__init__(f"{key}: cannot listen on {addr}: {reason}" if addr else f"{key}: {reason}")
        self.key = key


@contextlib.contextmanager
def _listening(key: str, addr: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise ListenError(key, addr, exc.strerror or str(exc)) from exc
    except ValueError as exc:  # a malformed HOST:PORT
        raise ListenError(key, addr, f"not HOST:PORT ({exc})") from exc


def settle_heap() -> None:
    """Move what is alive now (modules, config, compiled policies) out of the cyclic GC's way.

    A full collection walks every tracked object; with the CEL engine loaded that took over 10 ms and
    showed up as the p99 of small requests. Frozen objects are skipped by later collections. Called once
    the edge has started and after a policy is compiled (both rare)."""
    gc.collect()
    gc.freeze()


def _secret_key(path: Path) -> bytes:
    """A 32-byte key kept in the data dir (0600): bind tokens and random names survive edge restarts."""
    try:
        key = path.read_bytes()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    key = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key
