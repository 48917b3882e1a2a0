"""The Python SDK with ngrok-python's names: ``forward()``, ``SessionBuilder``, ``Session``, ``Listener``.

Sessions run on one background event loop (a daemon thread), as ngrok-python runs its Rust runtime, so
the SDK works the same from synchronous code (calls block and return results) and from async code
(calls return awaitables). This module translates options; the protocol and reconnects live in
``runner.py`` and below.

Options keep ngrok-python's names, for ``forward(**options)`` (``allow_cidr``/``ip_restriction_allow_cidrs``,
``verify_webhook_provider``, ``traffic_policy``, ...; dotted names such as ``"oauth.provider"`` too) and for
``HttpListenerBuilder`` methods (``.allow_cidr()``, ``.webhook_verification()``, ``.oauth()``, ...); TCP
endpoints with ``forward(port, proto="tcp", remote_addr=...)`` or ``session.tcp_endpoint()``. Every
spec is validated before connecting, so a bad value or a broken Traffic Policy raises ``ValueError`` naming
the option (and the policy path) without touching the network; what the edge refuses at Bind raises
``ValueError`` with its ``ERR_NGROK_*`` code, as ngrok-python does. Must not: print, or hide an edge's
refusal behind a generic message.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import re
import threading
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from hatchway.agent.discovery import find_dev_edge
from hatchway.agent.runner import Agent, AgentOptions, Endpoint
from hatchway.agent.spec import EndpointSpec
from hatchway.errors import ConfigError, RpcError
from hatchway.net import tls

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None:
            try:
                import uvloop

                loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            except ImportError:
                loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="hatchway-sdk", daemon=True).start()
            _loop = loop
        return _loop


def _dispatch(coro: Coroutine[Any, Any, T]) -> Any:
    """Run on the SDK loop; block in sync code, return an awaitable inside a running loop."""
    fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, _background_loop())
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fut.result()
    return asyncio.wrap_future(fut)


class Listener:
    """A bound endpoint. ``url()`` is what the edge chose; ``close()`` takes it offline."""

    def __init__(self, session: Session, endpoint: Endpoint) -> None:
        self._session = session
        self._endpoint = endpoint

    def url(self) -> str:
        urls = self._endpoint.urls
        https = [u for u in urls if u.startswith("https://")]
        return (https or urls or [""])[0]

    def urls(self) -> list[str]:
        return list(self._endpoint.urls)

    def id(self) -> str:
        tunnels = list(self._endpoint.tunnels.values())
        return tunnels[0].id if tunnels else ""

    def proto(self) -> str:
        if self._endpoint.spec.proto == "tcp":
            return "tcp"
        return "https" if "https" in self._endpoint.tunnels else "http"

    def forwards_to(self) -> str:
        return self._endpoint.upstream_url

    def metadata(self) -> str:
        return self._endpoint.spec.metadata

    def forward(self, addr: str | int) -> None:
        """Send this listener's traffic to ``addr`` (ngrok's address forms); takes effect at once."""
        self._endpoint.forward_to(str(addr))

    def close(self) -> Any:
        return _dispatch(self._session._agent.aclose())

    def __repr__(self) -> str:
        return f"<hatchway.Listener {self.url()} -> {self.forwards_to()}>"


class HttpListenerBuilder:
    """``session.http_endpoint().domain(...).basic_auth(u, p).listen_and_forward(url)``."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._spec = EndpointSpec()

    def domain(self, domain: str) -> HttpListenerBuilder:
        self._spec.domain = domain
        return self

    def url(self, url: str) -> HttpListenerBuilder:
        self._spec.url = url
        return self

    def scheme(self, scheme: str) -> HttpListenerBuilder:
        self._spec.schemes = [scheme.lower()]
        return self

    def metadata(self, metadata: str) -> HttpListenerBuilder:
        self._spec.metadata = metadata
        return self

    def basic_auth(self, username: str, password: str) -> HttpListenerBuilder:
        self._spec.basic_auth.append(f"{username}:{password}")
        return self

    def request_header(self, name: str, value: str) -> HttpListenerBuilder:
        self._spec.request_header_add.append(f"{name}:{value}")
        return self

    def response_header(self, name: str, value: str) -> HttpListenerBuilder:
        self._spec.response_header_add.append(f"{name}:{value}")
        return self

    def remove_request_header(self, name: str) -> HttpListenerBuilder:
        self._spec.request_header_remove.append(name)
        return self

    def remove_response_header(self, name: str) -> HttpListenerBuilder:
        self._spec.response_header_remove.append(name)
        return self

    def allow_cidr(self, cidr: str) -> HttpListenerBuilder:
        self._spec.cidr_allow.append(cidr)
        return self

    def deny_cidr(self, cidr: str) -> HttpListenerBuilder:
        self._spec.cidr_deny.append(cidr)
        return self

    def compression(self) -> HttpListenerBuilder:
        self._spec.compression = True
        return self

    def circuit_breaker(self, circuit_breaker: float) -> HttpListenerBuilder:
        self._spec.circuit_breaker = _ratio(circuit_breaker, "circuit_breaker")
        return self

    def allow_user_agent(self, regex: str) -> HttpListenerBuilder:
        self._spec.ua_filter_allow.append(regex)
        return self

    def deny_user_agent(self, regex: str) -> HttpListenerBuilder:
        self._spec.ua_filter_deny.append(regex)
        return self

    def webhook_verification(self, provider: str, secret: str) -> HttpListenerBuilder:
        self._spec.verify_webhook = provider
        self._spec.verify_webhook_secret = secret
        return self

    def websocket_tcp_conversion(self) -> HttpListenerBuilder:
        self._spec.websocket_tcp_converter = True
        return self

    def oauth(
        self,
        provider: str,
        allow_emails: list[str] | None = None,
        allow_domains: list[str] | None = None,
        scopes: list[str] | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
    ) -> HttpListenerBuilder:
        spec = self._spec
        spec.oauth_provider = provider
        spec.oauth_allow_emails = _as_list(allow_emails)
        spec.oauth_allow_domains = _as_list(allow_domains)
        spec.oauth_scopes = _as_list(scopes)
        spec.oauth_client_id = client_id or ""
        spec.oauth_client_secret = client_secret or ""
        return self

    def oidc(
        self,
        issuer_url: str,
        client_id: str,
        client_secret: str,
        allow_emails: list[str] | None = None,
        allow_domains: list[str] | None = None,
        scopes: list[str] | None = None,
    ) -> HttpListenerBuilder:
        spec = self._spec
        spec.oidc_issuer_url = issuer_url
        spec.oidc_client_id = client_id
        spec.oidc_client_secret = client_secret
        spec.oidc_allow_emails = _as_list(allow_emails)
        spec.oidc_allow_domains = _as_list(allow_domains)
        spec.oidc_scopes = _as_list(scopes)
        return self

    def mutual_tlsca(self, mutual_tlsca: bytes | bytearray | str) -> HttpListenerBuilder:
        """Require client certificates signed by the CAs in this PEM bundle (the bytes, not a path)."""
        self._spec.mutual_tls_ca_pem += _pem_bytes(mutual_tlsca)
        return self

    def proxy_proto(self, proxy_proto: str) -> HttpListenerBuilder:
        self._spec.proxy_proto = str(proxy_proto)
        return self

    def pooling_enabled(self, pooling_enabled: bool = True) -> HttpListenerBuilder:
        self._spec.pooling_enabled = pooling_enabled
        return self

    def traffic_policy(self, policy: str) -> HttpListenerBuilder:
        self._spec.traffic_policy = policy
        return self

    def policy(self, policy: str) -> HttpListenerBuilder:
        """ngrok-python's name before ``traffic_policy``."""
        return self.traffic_policy(policy)

    def app_protocol(self, protocol: str) -> HttpListenerBuilder:
        self._spec.upstream_protocol = protocol
        return self

    def listen_and_forward(self, url: str) -> Any:
        self._spec.addr = url
        return self._session._listen(self._spec)

    def listen(self) -> Any:
        """Bind with no upstream yet; call ``listener.forward(addr)`` to start serving."""
        return self._session._listen(self._spec)


class TcpListenerBuilder:
    """``session.tcp_endpoint().remote_addr(":10005").allow_cidr(c).listen_and_forward("localhost:22")``."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._spec = EndpointSpec(proto="tcp")

    def remote_addr(self, remote_addr: str) -> TcpListenerBuilder:
        self._spec.remote_addr = remote_addr
        return self

    def url(self, url: str) -> TcpListenerBuilder:
        self._spec.url = url
        return self

    def metadata(self, metadata: str) -> TcpListenerBuilder:
        self._spec.metadata = metadata
        return self

    def allow_cidr(self, cidr: str) -> TcpListenerBuilder:
        self._spec.cidr_allow.append(cidr)
        return self

    def deny_cidr(self, cidr: str) -> TcpListenerBuilder:
        self._spec.cidr_deny.append(cidr)
        return self

    def proxy_proto(self, proxy_proto: str | int) -> TcpListenerBuilder:
        self._spec.proxy_proto = str(proxy_proto or "")
        return self

    def pooling_enabled(self, pooling_enabled: bool = True) -> TcpListenerBuilder:
        self._spec.pooling_enabled = pooling_enabled
        return self

    def traffic_policy(self, policy: str) -> TcpListenerBuilder:
        self._spec.traffic_policy = policy
        return self

    def policy(self, policy: str) -> TcpListenerBuilder:
        """ngrok-python's name before ``traffic_policy``."""
        return self.traffic_policy(policy)

    def listen_and_forward(self, addr: str | int) -> Any:
        self._spec.addr = str(addr)
        return self._session._listen(self._spec)

    def listen(self) -> Any:
        """Bind with no upstream yet; call ``listener.forward(addr)`` to start serving."""
        return self._session._listen(self._spec)


class Session:
    def __init__(self, options: AgentOptions) -> None:
        self._options = options
        self._agent = Agent(options)  # the first listener's agent; each listener gets its own agent

    def http_endpoint(self) -> HttpListenerBuilder:
        return HttpListenerBuilder(self)

    def tcp_endpoint(self) -> TcpListenerBuilder:
        return TcpListenerBuilder(self)

    def _listen(self, spec: EndpointSpec) -> Any:
        _check(spec, builder=True)

        async def go() -> Listener:
            agent = Agent(self._options)
            (ep,) = await _start(agent, spec)
            listener_session = Session.__new__(Session)
            listener_session._options = self._options
            listener_session._agent = agent
            _live.add(agent)
            return Listener(listener_session, ep)

        return _dispatch(go())

    def close(self) -> Any:
        return _dispatch(self._agent.aclose())


class SessionBuilder:
    """ngrok-python's builder: ``SessionBuilder().authtoken_from_env().server_addr(a).connect()``."""

    def __init__(self) -> None:
        self._authtoken = ""
        self._server_addr = ""
        self._ca_pem: bytes | None = None
        self._metadata = ""

    def authtoken(self, token: str) -> SessionBuilder:
        self._authtoken = token
        return self

    def authtoken_from_env(self) -> SessionBuilder:
        self._authtoken = os.environ.get("HATCHWAY_AUTHTOKEN") or os.environ.get("NGROK_AUTHTOKEN") or ""
        return self

    def server_addr(self, addr: str) -> SessionBuilder:
        self._server_addr = addr
        return self

    def ca_cert(self, pem: bytes | bytearray | str) -> SessionBuilder:
        self._ca_pem = pem.encode() if isinstance(pem, str) else bytes(pem)
        return self

    def root_cas(self, path: str) -> SessionBuilder:
        with open(path, "rb") as fh:
            self._ca_pem = fh.read()
        return self

    def metadata(self, metadata: str) -> SessionBuilder:
        self._metadata = metadata
        return self

    def _options(self) -> AgentOptions:
        server_addr, ca_pem, token = self._server_addr, self._ca_pem, self._authtoken
        if not server_addr:
            server_addr = os.environ.get("HATCHWAY_SERVER_ADDR", "")
        if not server_addr:
            dev = find_dev_edge()
            if dev is None:
                raise ConfigError(
                    "server_addr", "no edge configured: pass server_addr or run `hatchway edge` here"
                )
            server_addr = dev.server_addr
            if ca_pem is None and dev.ca_file is not None:
                ca_pem = dev.ca_file.read_bytes()
            token = token or dev.token
        ctx = tls.client_context(ca_pem)
        return AgentOptions(
            server_addr=server_addr, authtoken=token, ssl_context=ctx, metadata=self._metadata
        )

    def connect(self) -> Any:
        options = self._options()

        async def go() -> Session:
            return Session(options)

        return _dispatch(go())


_live: set[Agent] = set()

_LIST_OPTIONS = {
    "basic_auth",
    "request_header_add",
    "request_header_remove",
    "response_header_add",
    "response_header_remove",
    "allow_cidr",
    "deny_cidr",
    "ip_restriction_allow_cidrs",
    "ip_restriction_deny_cidrs",
    "allow_user_agent",
    "deny_user_agent",
    "oauth_allow_emails",
    "oauth_allow_domains",
    "oauth_scopes",
    "oidc_allow_emails",
    "oidc_allow_domains",
    "oidc_scopes",
    "schemes",
}

# Session-level options, read by forward() itself.
_SESSION_OPTIONS = (
    "authtoken",
    "authtoken_from_env",
    "server_addr",
    "root_cas",
    "session_ca_cert",
    "session_metadata",
)

# EndpointSpec field -> the option name a forward() caller used, for error messages.
_OPTION_FOR = {
    "cidr_allow": "allow_cidr",
    "cidr_deny": "deny_cidr",
    "ua_filter_allow": "allow_user_agent",
    "ua_filter_deny": "deny_user_agent",
    "verify_webhook": "verify_webhook_provider",
    "upstream_protocol": "app_protocol",
    "mutual_tls_ca_pem": "mutual_tls_cas",
}
# The same for HttpListenerBuilder methods.
_METHOD_FOR = {
    "basic_auth": "basic_auth()",
    "cidr_allow": "allow_cidr()",
    "cidr_deny": "deny_cidr()",
    "ua_filter_allow": "allow_user_agent()",
    "ua_filter_deny": "deny_user_agent()",
    "request_header_add": "request_header()",
    "response_header_add": "response_header()",
    "circuit_breaker": "circuit_breaker()",
    "verify_webhook": "webhook_verification()",
    "verify_webhook_secret": "webhook_verification()",
    "traffic_policy": "traffic_policy()",
    "upstream_protocol": "app_protocol()",
    "schemes": "scheme()",
    "remote_addr": "remote_addr()",
    "proxy_proto": "proxy_proto()",
}


def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | bytes | bytearray):
        return [value.decode() if isinstance(value, bytes | bytearray) else value]
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    raise TypeError(f"expected a string or a list of strings, got {type(value).__name__}")


def _pem_bytes(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise TypeError(f"mutual_tls_cas: expected PEM bytes or text, got {type(value).__name__}")


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return value


def _ratio(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: expected a number between 0 and 1, got {value!r}")
    return float(value)


def _check(spec: EndpointSpec, *, builder: bool = False) -> None:
    """Raise ``ValueError`` listing every problem, each under the name the caller used for it."""
    names = _METHOD_FOR if builder else _OPTION_FOR
    lines = []
    for problem in spec.validate():
        if builder and problem.field_path == "addr" and not spec.addr:
            continue  # listen() binds with no upstream yet
        head = re.match(r"[a-z_]*", problem.field_path)
        attr = head.group(0) if head else ""
        where = names.get(attr, attr) + problem.field_path[len(attr) :]
        lines.append(f"{where}: {problem.message}" if where else problem.message)
    if lines:
        raise ValueError("; ".join(lines))


async def _start(agent: Agent, spec: EndpointSpec) -> list[Endpoint]:
    """Bind ``spec``; an edge's refusal raises ``ValueError`` as ngrok-python's does, with the code."""
    try:
        return await agent.start([spec])
    except RpcError as exc:
        # ngrok-python's shape: ValueError(what failed, the edge's message, its code).
        raise ValueError("failed to start endpoint", exc.message, exc.ngrok_code) from exc


def _spec_from_options(addr: object, options: dict[str, Any]) -> EndpointSpec:
    # ngrok-python turns "oauth.provider" into "oauth_provider" (the config file's nesting as a name).
    o: dict[str, Any] = {}
    for raw_key, value in options.items():
        key = raw_key.replace(".", "_")
        if value is None:  # ngrok-python drops None options
            continue
        o[key] = _as_list(value) if key in _LIST_OPTIONS else value
    spec = EndpointSpec(addr=str(addr if addr is not None else 80))
    spec.domain = str(o.pop("domain", "") or o.pop("hostname", "") or "")
    o.pop("hostname", None)
    spec.url = str(o.pop("url", "") or "")
    spec.schemes = [s.lower() for s in o.pop("schemes", [])] or ["https"]
    spec.metadata = str(o.pop("metadata", "") or "")
    spec.basic_auth = o.pop("basic_auth", [])
    spec.request_header_add = o.pop("request_header_add", [])
    spec.request_header_remove = o.pop("request_header_remove", [])
    spec.response_header_add = o.pop("response_header_add", [])
    spec.response_header_remove = o.pop("response_header_remove", [])
    spec.cidr_allow = o.pop("allow_cidr", []) + o.pop("ip_restriction_allow_cidrs", [])
    spec.cidr_deny = o.pop("deny_cidr", []) + o.pop("ip_restriction_deny_cidrs", [])
    spec.ua_filter_allow = o.pop("allow_user_agent", [])
    spec.ua_filter_deny = o.pop("deny_user_agent", [])
    spec.compression = _flag(o.pop("compression", False), "compression")
    spec.circuit_breaker = _ratio(o.pop("circuit_breaker", 0.0), "circuit_breaker")
    spec.oauth_provider = str(o.pop("oauth_provider", "") or "")
    spec.oauth_allow_emails = o.pop("oauth_allow_emails", [])
    spec.oauth_allow_domains = o.pop("oauth_allow_domains", [])
    spec.oauth_scopes = o.pop("oauth_scopes", [])
    spec.oauth_client_id = str(o.pop("oauth_client_id", "") or "")
    spec.oauth_client_secret = str(o.pop("oauth_client_secret", "") or "")
    spec.oidc_issuer_url = str(o.pop("oidc_issuer_url", "") or "")
    spec.oidc_client_id = str(o.pop("oidc_client_id", "") or "")
    spec.oidc_client_secret = str(o.pop("oidc_client_secret", "") or "")
    spec.oidc_allow_emails = o.pop("oidc_allow_emails", [])
    spec.oidc_allow_domains = o.pop("oidc_allow_domains", [])
    spec.oidc_scopes = o.pop("oidc_scopes", [])
    cas = o.pop("mutual_tls_cas", [])
    spec.mutual_tls_ca_pem = b"".join(
        _pem_bytes(c) for c in (cas if isinstance(cas, list | tuple) else [cas])
    )
    spec.verify_webhook = str(o.pop("verify_webhook_provider", "") or "")
    spec.verify_webhook_secret = str(o.pop("verify_webhook_secret", "") or "")
    # ngrok-python's option is websocket_tcp_converter; its builder method says "conversion".
    converter = o.pop("websocket_tcp_converter", False) or o.pop("websocket_tcp_conversion", False)
    o.pop("websocket_tcp_conversion", None)
    spec.websocket_tcp_converter = _flag(converter, "websocket_tcp_converter")
    spec.traffic_policy = str(o.pop("traffic_policy", "") or o.pop("policy", "") or "")
    o.pop("policy", None)
    spec.upstream_protocol = str(o.pop("app_protocol", "") or "http1")
    spec.proxy_proto = str(o.pop("proxy_proto", "") or "")
    spec.pooling_enabled = _flag(o.pop("pooling_enabled", False), "pooling_enabled")
    spec.remote_addr = str(o.pop("remote_addr", "") or "")
    o.pop("proto", None)
    for key in _SESSION_OPTIONS:
        o.pop(key, None)
    if o:
        raise TypeError(f"unknown option(s) for forward(): {', '.join(sorted(o))}")
    return spec


def forward(addr: object = None, proto: str = "http", **options: Any) -> Any:
    """Expose ``addr`` on a public URL; ngrok-python's ``forward()`` with the same option names.

    Blocks and returns a ``Listener`` from sync code; returns an awaitable inside a running event loop.
    """
    if proto not in ("http", "https", "tcp"):
        raise ValueError(f"proto {proto!r} is not supported yet (http or tcp)")
    builder = SessionBuilder()
    if options.get("authtoken"):
        builder.authtoken(str(options["authtoken"]))
    elif options.get("authtoken_from_env"):
        builder.authtoken_from_env()
    if options.get("server_addr"):
        builder.server_addr(str(options["server_addr"]))
    if options.get("session_ca_cert") is not None:
        builder.ca_cert(options["session_ca_cert"])
    elif options.get("root_cas") and options["root_cas"] not in ("trusted", "host"):
        builder.root_cas(str(options["root_cas"]))
    if options.get("session_metadata"):
        builder.metadata(str(options["session_metadata"]))
    spec = _spec_from_options(addr, options)
    spec.proto = "tcp" if proto == "tcp" else "http"
    _check(spec)  # before connecting: nothing goes online with a bad option or a broken policy
    agent_options = builder._options()

    async def go() -> Listener:
        agent = Agent(agent_options)
        (ep,) = await _start(agent, spec)
        session = Session.__new__(Session)
        session._options = agent_options
        session._agent = agent
        _live.add(agent)
        return Listener(session, ep)

    return _dispatch(go())


def disconnect_all() -> None:
    """Close every endpoint this process opened (also runs at exit)."""
    if _loop is None or not _live:
        return

    async def close_all() -> None:
        await asyncio.gather(*(a.aclose() for a in list(_live)), return_exceptions=True)
        _live.clear()

    try:
        asyncio.run_coroutine_threadsafe(close_all(), _loop).result(timeout=5)
    except (concurrent.futures.TimeoutError, RuntimeError):
        pass


atexit.register(disconnect_all)
