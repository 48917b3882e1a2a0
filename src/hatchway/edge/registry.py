"""Live endpoints: which agent session and tunnel serve ``(scheme, host)``. Implements ``TunnelHooks``.

It checks authtokens, gives each HTTP endpoint its URL (the requested domain, or a random name under
the base domain), enforces domain ownership, custom-domain CNAMEs (``DomainCheck``) and "already
online" (ngrok's error codes), and answers lookups with the most specific online endpoint (exact name
first, then the nearest wildcard). TCP
endpoints get their address from the ``TcpListeners`` hook it is given (``edge/tcp.py``), which it
tells when a tunnel goes offline. It holds no sockets and writes nothing to disk: durable tokens and
reservations come from the callables it is given (the store).
"""

from __future__ import annotations

import gc
import hmac
import logging
import random
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

from hatchway.edge import domains, modules
from hatchway.edge.tcp import NOT_SERVED, TcpRefused
from hatchway.edge.tls.terms import TermsError, TlsTerms
from hatchway.edge.tunnels import AgentSession
from hatchway.errors import RemoteProtocolError
from hatchway.http.h1 import general_path_pattern
from hatchway.http.headers import parse_header_line
from hatchway.store.base import DomainError
from hatchway.wire import messages as m

if TYPE_CHECKING:
    from hatchway.edge.policy_run import OutcomeMemo
    from hatchway.edge.verify import DomainProblem
    from hatchway.policy.actions.terminate_tls import TerminateTls
    from hatchway.policy.engine import CompiledPolicy

logger = logging.getLogger(__name__)

TokenCheck = Callable[[str], str | None]  # authtoken -> account name, or None when not valid
DomainOwner = Callable[[str], str | None]  # host -> account that reserved it (or a covering wildcard)


@dataclass
class Endpoint:
    """One online HTTP endpoint: where its traffic goes and how the edge treats it."""

    scheme: str
    host: str
    url: str
    tunnel_id: str
    session: AgentSession
    account: str
    opts: m.HttpEndpoint
    forwards_to: str = ""
    pooling: bool = False
    request_add: list[tuple[bytes, bytes]] = field(default_factory=list)
    request_remove: set[bytes] = field(default_factory=set)
    response_add: list[tuple[bytes, bytes]] = field(default_factory=list)
    response_remove: set[bytes] = field(default_factory=set)
    rewrite_host: bytes = b""  # Host sent upstream when --host-header=rewrite
    # For the listeners' fast path (``h1.passthrough_head``): response heads that need the general path,
    # and the response header additions as ready lines (None: additions the fast path cannot make).
    fast_pattern: re.Pattern[bytes] = field(default_factory=general_path_pattern)
    fast_add: bytes | None = b""
    policy: CompiledPolicy | None = None  # modules and Traffic Policy (``edge/modules.py``); None: none
    # Outcomes of a static request phase by request (``policy_run.remembered``); None: not static.
    request_outcomes: OutcomeMemo | None = None
    ws_tcp: bool = False  # the WebSocket-TCP converter: WebSocket clients, a raw TCP upstream
    tls: TlsTerms | None = None  # terminate-tls: applied by SNI at the handshake (``tls/certs.py``)

    @property
    def online(self) -> bool:
        return not self.session.conn.is_closed

    @classmethod
    def build(
        cls,
        scheme: str,
        host: str,
        url: str,
        tunnel_id: str,
        session: AgentSession,
        account: str,
        bind: m.Bind,
    ) -> Endpoint:
        opts = bind.http_opts()
        ep = cls(
            scheme, host, url, tunnel_id, session, account, opts, bind.forwards_to, bind.extra.pooling_enabled
        )
        if opts.request_headers is not None:
            ep.request_add = [parse_header_line(h) for h in opts.request_headers.add]
            ep.request_remove = {h.strip().lower().encode("latin-1") for h in opts.request_headers.remove}
        if opts.response_headers is not None:
            ep.response_add = [parse_header_line(h) for h in opts.response_headers.add]
            ep.response_remove = {h.strip().lower().encode("latin-1") for h in opts.response_headers.remove}
        if opts.host_header_rewrite and bind.forwards_to and "://" not in bind.forwards_to:
            ep.rewrite_host = bind.forwards_to.encode("latin-1")
        ep.ws_tcp = opts.websocket_tcp_converter is not None
        ep.fast_pattern = general_path_pattern(frozenset(ep.response_remove))
        if ep.ws_tcp or any(k == b"host" for k, _ in ep.response_add):
            ep.fast_add = None
        else:
            ep.fast_add = b"".join(k + b": " + v + b"\r\n" for k, v in ep.response_add)
        return ep


class DomainCheck(Protocol):
    """Checks a custom domain's DNS before it is bound (``edge.verify.DomainVerifier``)."""

    def needs_check(self, host: str) -> bool: ...

    async def check(self, host: str) -> DomainProblem | None:
        """None when ``host`` may be bound; else ngrok's code and a message naming the record to create."""
        ...


class TcpListeners(Protocol):
    """Opens and closes the sockets of TCP endpoints (``edge.tcp.TcpEndpoints``)."""

    async def listen(self, session: AgentSession, tunnel_id: str, opts: m.TcpEndpoint, seed: int) -> str:
        """Listen for ``tunnel_id`` (or hand its listener to ``session``); the URL. Raises ``TcpRefused``."""
        ...

    def close(self, tunnel_id: str) -> None: ...


@dataclass
class TcpEntry:
    """One online TCP endpoint (its socket lives in ``TcpListeners``)."""

    url: str
    tunnel_id: str
    session: AgentSession
    account: str

    @property
    def online(self) -> bool:
        return not self.session.conn.is_closed


def _bind_error(message: str, code: str) -> m.BindResp:
    return m.BindResp(error=m.join_error(message, code))


class Registry:
    def __init__(
        self,
        tokens: TokenCheck | set[str],
        base_domain: str = "hatchway.localhost",
        ports: dict[str, int] | None = None,
        domain_owner: DomainOwner | None = None,
        key: bytes | None = None,
        tcp: TcpListeners | None = None,
        domain_check: DomainCheck | None = None,
    ) -> None:
        self._check = tokens if callable(tokens) else self._in_set(tokens)
        self.base_domain = base_domain.lower().strip(".")
        self.ports = ports or {}
        # Without an owner lookup (tests, demos) any domain may be bound; with one, names outside the
        # base domain must be reserved by the binding account.
        self._owner = domain_owner
        # With a domain check, a reserved name outside the base domain must also have its CNAME record.
        self._domain_check = domain_check
        # Signs tunnel ids: the bind token proves a re-bind comes from the agent that got the id, and the
        # random name derived from it survives reconnects and (with a persistent key) edge restarts.
        self._key = key if key is not None else secrets.token_bytes(32)
        self.endpoints: dict[tuple[str, str], list[Endpoint]] = {}
        # Bumped whenever ``endpoints`` changes: a listener may keep a connection's route until then.
        self.generation = 0
        self.tcp = tcp  # None: TCP binds are refused
        # Told of each host an HTTP endpoint comes online for (the ACME manager gets it a certificate).
        self.on_bound: Callable[[str], None] | None = None
        self.tcp_endpoints: dict[str, TcpEntry] = {}  # tunnel id -> endpoint
        self._accounts: dict[int, str] = {}  # id(session) -> account

    @staticmethod
    def _in_set(tokens: set[str]) -> TokenCheck:
        def check(token: str) -> str | None:
            ok = any(hmac.compare_digest(token.encode(), t.encode()) for t in tokens)
            return "default" if ok else None

        return check

    def url_for(self, scheme: str, host: str) -> str:
        port = self.ports.get(scheme)
        default = 443 if scheme == "https" else 80
        if port and port != default:
            return f"{scheme}://{host}:{port}"
        return f"{scheme}://{host}"

    # ---- TunnelHooks ---------------------------------------------------------------------------------
    async def authenticate(self, session: AgentSession, auth: m.Auth) -> m.AuthResp:
        account = self._check(auth.extra.auth_token)
        if account is None:
            return m.AuthResp(
                error=m.join_error("The authtoken you specified is not valid.", "ERR_NGROK_107")
            )
        self._accounts[id(session)] = account
        return m.AuthResp(
            version="3",
            client_id=auth.client_id or f"sess_{secrets.token_hex(8)}",
            extra=m.AuthRespExtra(
                version="hatchway", region="local", cookie=secrets.token_hex(8), account_name=account
            ),
        )

    def admit(self, session: AgentSession, account: str) -> None:
        """Count ``session`` as authenticated for ``account`` without an Auth RPC (the SSH entry checked
        the user's key or token itself)."""
        self._accounts[id(session)] = account

    def _tunnel_id(self, bind: m.Bind) -> str:
        tunnel_id = bind.id
        if tunnel_id and not hmac.compare_digest(bind.extra.token.encode(), self._token(tunnel_id).encode()):
            tunnel_id = ""  # an id we did not issue (or from another edge key): treat as a new tunnel
        return tunnel_id or f"tn_{secrets.token_hex(12)}"

    async def bind(self, session: AgentSession, bind: m.Bind) -> m.BindResp:
        if bind.proto == "tcp":
            return await self._bind_tcp(session, bind)
        if bind.proto not in ("http", "https"):
            return _bind_error(f"protocol {bind.proto!r} is not served by this edge yet", NOT_SERVED)
        account = self._accounts.get(id(session), "default")
        opts = bind.http_opts()
        tunnel_id = self._tunnel_id(bind)
        requested = (opts.requested_domain or "").lower().strip().rstrip(".")
        if requested:
            problem = await self._check_domain(requested, account)
            if problem is not None:
                return problem
            host = requested
        else:
            host = self._fresh_name(bind.proto, tunnel_id)
        key = (bind.proto, host)
        current = [e for e in self.endpoints.get(key, []) if e.online and e.tunnel_id != tunnel_id]
        pooling = bind.extra.pooling_enabled
        if current and not (pooling and all(e.pooling for e in current)):
            return _bind_error(
                f"The endpoint '{self.url_for(bind.proto, host)}' is already online. Stop the other agent "
                "or enable pooling on every endpoint that shares the URL.",
                "ERR_NGROK_334",
            )
        policy = None
        if modules.wants_policy(opts):
            try:
                policy = modules.endpoint_policy(opts)
            except modules.ModuleError as exc:
                return _bind_error(str(exc), exc.code)
            # Compiled policies (and the CEL engine on first use) live as long as the endpoint: keep them
            # out of the cyclic GC's full passes, which otherwise cost the p99 of small requests.
            gc.collect()
            gc.freeze()
        url = self.url_for(bind.proto, host)
        ep = Endpoint.build(bind.proto, host, url, tunnel_id, session, account, bind)
        if policy is not None and policy.tls is not None:
            if bind.proto != "https":
                return _bind_error("terminate-tls needs an https endpoint", modules.POLICY_INVALID)
            try:
                ep.tls = TlsTerms.from_action(cast("TerminateTls", policy.tls))
            except TermsError as exc:
                return _bind_error(f"The traffic policy is invalid: {exc}", modules.POLICY_INVALID)
        if policy is not None and policy.empty:
            policy = None  # only terminate-tls: nothing to run per request
        if policy is not None:
            ep.policy = policy
            if policy.static_request:
                from hatchway.edge.policy_run import OutcomeMemo

                ep.request_outcomes = OutcomeMemo(policy.static_query_free)
            # The fast path runs request-phase rules only (no body to read, no response head to change).
            if policy.needs_request_body or policy.has_response_phase or policy.has_tcp_phase:
                ep.fast_add = None
        self.endpoints[key] = [*current, ep]
        self.generation += 1
        if self.on_bound is not None:
            self.on_bound(host)
        return self._online(bind, url, tunnel_id, account)

    async def _bind_tcp(self, session: AgentSession, bind: m.Bind) -> m.BindResp:
        if self.tcp is None:
            return _bind_error("TCP endpoints are not enabled on this edge.", NOT_SERVED)
        try:
            opts = bind.tcp_opts()
        except RemoteProtocolError as exc:
            return _bind_error(f"malformed TCP endpoint options: {exc}", "ERR_NGROK_100")
        account = self._accounts.get(id(session), "default")
        tunnel_id = self._tunnel_id(bind)
        # Like random names: the tunnel id picks where the port search starts, so a re-bind (even after
        # an edge restart, with the same key) gets its port back when it is free.
        seed = int.from_bytes(hmac.new(self._key, b"port:" + tunnel_id.encode(), "sha256").digest()[:8])
        try:
            url = await self.tcp.listen(session, tunnel_id, opts, seed)
        except TcpRefused as exc:
            return _bind_error(exc.message, exc.code)
        self.tcp_endpoints[tunnel_id] = TcpEntry(url, tunnel_id, session, account)
        return self._online(bind, url, tunnel_id, account)

    def _online(self, bind: m.Bind, url: str, tunnel_id: str, account: str) -> m.BindResp:
        logger.info(
            "endpoint online %s (tunnel %s, account %s, metadata %r)",
            url,
            tunnel_id,
            account,
            bind.extra.metadata,
        )
        return m.BindResp(
            id=tunnel_id,
            url=url,
            proto=bind.proto,
            opts=bind.opts,  # echo: Rust re-parses Opts and needs its required fields (protocol.md §5.2)
            extra=m.BindRespExtra(token=self._token(tunnel_id)),
        )

    async def _check_domain(self, host: str, account: str) -> m.BindResp | None:
        try:
            domains.validate_domain(host)
        except DomainError as exc:
            return _bind_error(exc.message, exc.ngrok_code)
        owner = self._owner(host) if self._owner is not None else None
        if owner is not None and owner != account:
            return _bind_error(f"The domain '{host}' is reserved by another account.", "ERR_NGROK_320")
        if self._owner is not None and owner is None and not host.endswith("." + self.base_domain):
            return _bind_error(
                f"The domain '{host}' is not reserved. Reserve it first with "
                f"`hatchway edge domain add {host}`.",
                "ERR_NGROK_319",
            )
        if host.startswith("*.") and self._owner is not None and owner is None:
            return _bind_error(f"The wildcard '{host}' must be reserved first.", "ERR_NGROK_319")
        check = self._domain_check
        if check is not None and check.needs_check(host):
            problem = await check.check(host)  # a DNS lookup unless recently verified (edge/verify.py)
            if problem is not None:
                return _bind_error(problem.message, problem.code)
        return None

    def _token(self, tunnel_id: str) -> str:
        return hmac.new(self._key, b"token:" + tunnel_id.encode(), "sha256").hexdigest()[:32]

    def _fresh_name(self, scheme: str, tunnel_id: str) -> str:
        def taken(host: str) -> bool:
            reserved = self._owner is not None and self._owner(host) is not None
            eps = self.endpoints.get((scheme, host), [])
            return reserved or any(e.online and e.tunnel_id != tunnel_id for e in eps)

        seed = hmac.new(self._key, b"name:" + tunnel_id.encode(), "sha256").digest()
        host = domains.seeded_name(self.base_domain, seed)
        return host if not taken(host) else domains.random_name(self.base_domain, taken=taken)

    async def unbind(self, session: AgentSession, tunnel_id: str) -> None:
        self._drop(lambda e: e.session is session and e.tunnel_id == tunnel_id)
        self._drop_tcp(lambda e: e.session is session and e.tunnel_id == tunnel_id)

    async def start_labeled(
        self, session: AgentSession, req: m.StartTunnelWithLabel
    ) -> m.StartTunnelWithLabelResp:
        return m.StartTunnelWithLabelResp(id=f"tn_{secrets.token_hex(12)}")

    def session_closed(self, session: AgentSession) -> None:
        self._drop(lambda e: e.session is session)
        self._drop_tcp(lambda e: e.session is session)
        self._accounts.pop(id(session), None)

    def _drop(self, match: Callable[[Endpoint], bool]) -> None:
        for key, eps in list(self.endpoints.items()):
            keep = [e for e in eps if not match(e)]
            if len(keep) != len(eps):
                for e in eps:
                    if match(e):
                        logger.info("endpoint offline %s (tunnel %s)", e.url, e.tunnel_id)
            if len(keep) == len(eps):
                continue
            self.generation += 1
            if keep:
                self.endpoints[key] = keep
            else:
                del self.endpoints[key]

    def _drop_tcp(self, match: Callable[[TcpEntry], bool]) -> None:
        for tunnel_id, ep in list(self.tcp_endpoints.items()):
            if match(ep):
                del self.tcp_endpoints[tunnel_id]
                if self.tcp is not None:
                    self.tcp.close(tunnel_id)
                logger.info("endpoint offline %s (tunnel %s)", ep.url, tunnel_id)

    # ---- routing ------------------------------------------------------------------------------------------
    def _candidates(self, scheme: str, host: str) -> list[Endpoint] | None:
        """The endpoints bound for the most specific name matching ``host``."""
        eps = self.endpoints.get((scheme, host))
        if eps is None:
            for key in domains.route_keys(host)[1:]:
                eps = self.endpoints.get((scheme, key))
                if eps is not None:
                    break
        return eps

    def route(self, scheme: str, host: str) -> Endpoint | None:
        """The most specific online endpoint for ``host``: exact, then ``*.parent`` walking up."""
        eps = self._candidates(scheme, host.lower())
        if not eps:
            return None
        live = [e for e in eps if e.online]
        if not live:
            return None
        return live[0] if len(live) == 1 else random.choice(live)

    def single(self, scheme: str, host: str) -> bool:
        """``route`` gives the same endpoint for ``host`` until ``generation`` changes (one is bound,
        not a pool chosen from at random)."""
        eps = self._candidates(scheme, host.lower())
        return eps is not None and len(eps) == 1

    def tls_terms(self, host: str) -> TlsTerms | None:
        """The TLS terms of the https endpoint serving ``host`` (the SNI name), if it set any."""
        ep = self.route("https", host)
        return ep.tls if ep is not None else None

    def lookup(self, host: str) -> tuple[AgentSession, str] | None:
        """(session, tunnel id) of the endpoint for ``host`` on any scheme (tests and the demo use it)."""
        for scheme in ("https", "http"):
            ep = self.route(scheme, host)
            if ep is not None:
                return ep.session, ep.tunnel_id
        return None
