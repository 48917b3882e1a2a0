"""The Python SDK with ngrok-python's names: ``forward()``, ``SessionBuilder``, ``Session``, ``Listener``.

Sessions run on one background event loop (a daemon thread), as ngrok-python runs its Rust runtime, so
the SDK works the same from synchronous code (calls block and return results) and from async code
(calls return awaitables). This module translates options; the protocol and reconnects live in
``runner.py`` and below.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
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

    def traffic_policy(self, policy: str) -> HttpListenerBuilder:
        self._spec.traffic_policy = policy
        return self

    def app_protocol(self, protocol: str) -> HttpListenerBuilder:
        self._spec.upstream_protocol = protocol
        return self

    def listen_and_forward(self, url: str) -> Any:
        self._spec.addr = url
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

    def _listen(self, spec: EndpointSpec) -> Any:
        problems = [p for p in spec.validate() if p.field_path != "addr" or spec.addr]
        if problems:
            raise ValueError("; ".join(str(p) for p in problems))

        async def go() -> Listener:
            agent = Agent(self._options)
            (ep,) = await agent.start([spec])
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
    "allow_user_agent",
    "deny_user_agent",
    "oauth_allow_emails",
    "oauth_allow_domains",
    "schemes",
}


def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]  # type: ignore[attr-defined]


def _spec_from_options(addr: object, options: dict[str, Any]) -> EndpointSpec:
    o: dict[str, Any] = {k: (_as_list(v) if k in _LIST_OPTIONS else v) for k, v in options.items()}
    spec = EndpointSpec(addr=str(addr if addr is not None else 80))
    spec.domain = str(o.pop("domain", "") or o.pop("hostname", "") or "")
    spec.url = str(o.pop("url", "") or "")
    spec.schemes = [s.lower() for s in o.pop("schemes", [])] or ["https"]
    spec.metadata = str(o.pop("metadata", "") or "")
    spec.basic_auth = o.pop("basic_auth", [])
    spec.request_header_add = o.pop("request_header_add", [])
    spec.request_header_remove = o.pop("request_header_remove", [])
    spec.response_header_add = o.pop("response_header_add", [])
    spec.response_header_remove = o.pop("response_header_remove", [])
    spec.cidr_allow = o.pop("allow_cidr", [])
    spec.cidr_deny = o.pop("deny_cidr", [])
    spec.ua_filter_allow = o.pop("allow_user_agent", [])
    spec.ua_filter_deny = o.pop("deny_user_agent", [])
    spec.compression = bool(o.pop("compression", False))
    spec.circuit_breaker = float(o.pop("circuit_breaker", 0.0) or 0.0)
    spec.oauth_provider = str(o.pop("oauth_provider", "") or "")
    spec.oauth_allow_emails = o.pop("oauth_allow_emails", [])
    spec.oauth_allow_domains = o.pop("oauth_allow_domains", [])
    spec.verify_webhook = str(o.pop("verify_webhook_provider", "") or "")
    spec.verify_webhook_secret = str(o.pop("verify_webhook_secret", "") or "")
    spec.websocket_tcp_converter = bool(o.pop("websocket_tcp_converter", False))
    spec.traffic_policy = str(o.pop("traffic_policy", "") or o.pop("policy", "") or "")
    spec.upstream_protocol = str(o.pop("app_protocol", "") or "http1")
    spec.proxy_proto = str(o.pop("proxy_proto", "") or "")
    spec.pooling_enabled = bool(o.pop("pooling_enabled", False))
    o.pop("proto", None)
    # Session-level options are read by forward(); anything else left is unknown.
    for key in (
        "authtoken",
        "authtoken_from_env",
        "server_addr",
        "root_cas",
        "session_ca_cert",
        "session_metadata",
    ):
        o.pop(key, None)
    if o:
        raise TypeError(f"unknown option(s) for forward(): {', '.join(sorted(o))}")
    return spec


def forward(addr: object = None, proto: str = "http", **options: Any) -> Any:
    """Expose ``addr`` on a public URL; ngrok-python's ``forward()`` with the same option names.

    Blocks and returns a ``Listener`` from sync code; returns an awaitable inside a running event loop.
    """
    if proto not in ("http", "https"):
        raise ValueError(f"proto {proto!r} is not supported yet (http only)")
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
    problems = spec.validate()
    if problems:
        raise ValueError("; ".join(str(p) for p in problems))
    agent_options = builder._options()

    async def go() -> Listener:
        agent = Agent(agent_options)
        try:
            (ep,) = await agent.start([spec])
        except RpcError as exc:
            raise ValueError("failed to start endpoint", exc.message, exc.ngrok_code) from exc
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
