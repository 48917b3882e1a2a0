"""The types every part of Traffic Policy shares: the exchange an action sees, its outcome, and errors.

Actions (one module each under ``actions/``) compile their config into an object with ``run(ex)``; the
engine runs them in rule order. An action changes ``ex.req`` / ``ex.res`` in place, records results for
``actions.ngrok.*`` in ``ex.results``, and returns a ``Reply`` when the phase must stop with an answer from
the edge. This module holds data only: no I/O, no clocks (the edge puts ``now``/``wall`` in).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

PHASES = ("on_tcp_connect", "on_http_request", "on_http_response")

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a policy, at a path like ``on_http_request[1].actions[0].config.status_code``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class PolicyError(ValueError):
    """A policy was refused when it was loaded; ``problems`` lists every reason with its path."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


@dataclass(slots=True)
class TlsInfo:
    version: str = ""  # "TLSv1.3"
    cipher_suite: str = ""
    sni: str = ""
    negotiated_alpn: str = ""
    client_cert: dict[str, Any] | None = None  # conn.tls.client.* when the client sent one


@dataclass(slots=True)
class Conn:
    client_ip: str
    client_port: int
    server_ip: str = ""
    server_port: int = 0
    tls: TlsInfo | None = None
    ts_start: float = 0.0  # unix seconds


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """What an exchange knows of its endpoint; frozen, so the edge can share one between exchanges."""

    id: str
    url: str
    host: str
    port: int
    protocol: str  # "http" | "https"


Header = tuple[str, str]


def _find(headers: list[Header], name: str) -> list[str]:
    lname = name.lower()
    return [v for k, v in headers if k.lower() == lname]


def url_of(scheme: str, host: str, port: int, path: str, query: str) -> str:
    """``HttpRequest.url`` of these parts."""
    shown = "" if DEFAULT_PORTS.get(scheme) == port else f":{port}"
    return f"{scheme}://{host}{shown}{path or '/'}{f'?{query}' if query else ''}"


@dataclass(slots=True)
class HttpRequest:
    """The request head as actions see and change it. Header names keep the client's case."""

    method: str
    scheme: str  # "http" | "https"
    host: str  # lowercase, without the port
    port: int
    path: str  # raw (percent-encoded) path, without the query
    query: str  # raw query without "?"
    version: str  # "1.0" | "1.1" | "2"
    headers: list[Header] = field(default_factory=list)
    body: bytes | None = None  # set only when a compiled policy asked for the body (verify-webhook)

    def header(self, name: str) -> str | None:
        values = _find(self.headers, name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        return _find(self.headers, name)

    def has_header(self, lname: str) -> bool:
        """Whether a header whose lower-cased name is ``lname`` is present (a key of ``req.headers``).

        This and ``append_headers`` are what a subclass may do without the whole list (the edge's request
        decodes its headers only when they are read)."""
        return any(k.lower() == lname for k, _ in self.headers)

    def remove_header(self, name: str) -> None:
        lname = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != lname]

    def append_headers(self, headers: Iterable[Header]) -> None:
        """Add ``headers`` after the others (add-headers)."""
        self.headers.extend(headers)

    @property
    def url(self) -> str:
        """The whole URL: scheme, host, the port when not the default, path and query."""
        return url_of(self.scheme, self.host, self.port, self.path, self.query)

    def set_url(self, url: str) -> None:
        """Point the request at ``url`` (url-rewrite); a relative ``url`` changes path and query only."""
        parts = urlsplit(url)
        if parts.scheme:
            self.scheme = parts.scheme.lower()
        if parts.hostname:
            self.host = parts.hostname.lower()
            self.port = parts.port or DEFAULT_PORTS.get(self.scheme, self.port)
        self.path = parts.path or "/"
        self.query = parts.query


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: list[Header] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = _find(self.headers, name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        return _find(self.headers, name)

    def remove_header(self, name: str) -> None:
        lname = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != lname]


@dataclass(slots=True)
class Reply:
    """An answer from the edge instead of (or replacing) the upstream's.

    With ``error_code`` set and no ``body``, the edge renders its standard error page (HTML, or JSON when
    the client asks for JSON) from ``message`` and sends ``ngrok-error-code``.
    """

    status: int
    headers: list[Header] = field(default_factory=list)
    body: bytes = b""
    error_code: str = ""
    message: str = ""


@dataclass(slots=True)
class Exchange:
    """One request's trip through the policy phases. The engine builds CEL variables from it."""

    conn: Conn
    endpoint: EndpointInfo
    req: HttpRequest
    res: HttpResponse | None = None
    now: float = 0.0  # monotonic seconds: rate limits, circuit breakers
    wall: float = 0.0  # unix seconds: time.now, webhook timestamps
    vars: dict[str, Any] = field(default_factory=dict)  # vars.* (set-vars)
    results: dict[str, Any] = field(default_factory=dict)  # actions.ngrok.<snake_name>.*
    logs: list[dict[str, Any]] = field(default_factory=list)  # the log action's metadata, for events
    compress: str = ""  # the content-coding compress-response chose; the edge encodes the body
    on_complete: list[Callable[[int], None]] = field(default_factory=list)  # called with the final status
    reply: Reply | None = None  # the request phase's answer, when a terminating action gave one
    scratch: dict[str, Any] = field(default_factory=dict)  # the engine's per-exchange caches (variables)


class Expression(Protocol):
    """A compiled CEL expression."""

    source: str

    def evaluate(self, ex: Exchange) -> Any: ...


class Template(Protocol):
    """A config string with ``${cel}`` parts, rendered per exchange (``constant`` when it has none)."""

    source: str
    constant: bool

    def render(self, ex: Exchange) -> str: ...


class CompileEnv(Protocol):
    """What an action compiler may ask of the engine; both raise ``PolicyError`` naming ``path``."""

    def template(self, text: str, path: str) -> Template: ...

    def expression(self, text: str, path: str) -> Expression: ...


class Action(Protocol):
    """A compiled action. ``needs_body``: the request body must be read (bounded) before ``run``."""

    needs_body: bool

    def run(self, ex: Exchange) -> Reply | None: ...


# Each module under ``actions/`` defines ``compile(config, path, env, phase) -> Action``.
ActionCompiler = Callable[[Mapping[str, Any] | None, str, CompileEnv, str], Action]


@dataclass(slots=True)
class _Literal:
    source: str
    constant: bool = True

    def render(self, ex: Exchange) -> str:
        return self.source


class LiteralEnv:
    """A ``CompileEnv`` without CEL: templates render their text as is, expressions are refused.

    For unit tests of actions that do not need CEL, and for configs known to be literal."""

    def template(self, text: str, path: str) -> Template:
        return _Literal(text)

    def expression(self, text: str, path: str) -> Expression:
        raise PolicyError([Problem(path, "expressions are not available here")])
