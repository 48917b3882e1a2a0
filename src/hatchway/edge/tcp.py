"""TCP endpoints: a listening socket per bound ``tcp`` tunnel, each connection spliced to a Proxy stream.

``TcpEndpoints`` is the registry's TCP hook (``registry.TcpListeners``). It picks a port from the
configured range (the requested one, the one the tunnel had before, or a free one starting at a place
derived from the tunnel id, so a re-bind after a reconnect lands on the same port), opens the socket,
and closes it, with its connections, when the registry says the tunnel is gone. Each accepted
connection is a ``tcp_splice.Splice``; this module gives it the tunnel's options (``IPRestriction``
checked at accept, the ``ProxyProto`` header) and the session to open its Proxy stream on.
Also here: parsing ``--tcp-addr-range`` and a Bind's ``Addr``, and the refusals with their ngrok codes.
Must not: decide who may bind or check tokens (the registry does), touch the bytes of a connection
(``tcp_splice`` moves them), or import ``agent/``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn, cast

from hatchway.edge.tcp_splice import Splice, proxy_protocol_header
from hatchway.edge.tunnels import AgentSession
from hatchway.net.transport import MuxStream
from hatchway.policy.actions import restrict_ips
from hatchway.policy.model import PolicyError, Problem
from hatchway.wire import messages as m

logger = logging.getLogger(__name__)

DEFAULT_RANGE = "127.0.0.1:10000-10999"

# Bind refusals, with ngrok's codes where ngrok has one for the same situation.
NOT_SERVED = "ERR_NGROK_9017"  # TCP endpoints are not enabled on this edge (or it is shutting down)
OUT_OF_RANGE = "ERR_NGROK_4502"  # "The TCP port PORT for HOST is not within the range of possible ports"
UNKNOWN_HOST = "ERR_NGROK_4504"  # "The host HOST is not a known TCP hostname"
IN_USE = "ERR_NGROK_334"  # the address is online already (another endpoint or another program)
RANGE_FULL = "ERR_NGROK_324"  # too many endpoints: no free port left in the range
BAD_CIDR = "ERR_NGROK_362"
UNSUPPORTED = "ERR_NGROK_9027"  # as edge/modules.py: an option this edge cannot enforce is refused
MALFORMED = "ERR_NGROK_100"

_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})  # "any address" spellings
_REMEMBERED = 4096  # tunnel id -> last port, so a reconnecting agent finds its port even after a shift


class TcpRefused(Exception):
    """A TCP Bind the edge refuses; ``code`` is the ngrok-style code the agent shows."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class PortRange:
    """Where TCP endpoints listen: ``host`` and the ports ``first``..``last`` (both included)."""

    host: str
    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __str__(self) -> str:
        return f"{_bracket(self.host)}:{self.first}-{self.last}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_range(text: str) -> PortRange:
    """``HOST:FIRST-LAST`` (``[v6]:A-B`` too; one port alone is a range of one; no host: 127.0.0.1)."""
    host, sep, ports = text.strip().rpartition(":")
    if not sep:
        host, ports = "127.0.0.1", text.strip()
    host = host.strip("[]") or "127.0.0.1"
    first_s, dash, last_s = ports.partition("-")
    try:
        first = int(first_s)
        last = int(last_s) if dash else first
    except ValueError:
        raise ValueError(f"tcp_addr_range {text!r}: expected HOST:FIRST-LAST, e.g. {DEFAULT_RANGE}") from None
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"tcp_addr_range {text!r}: need 1 <= FIRST <= LAST <= 65535")
    return PortRange(host, first, last)


def default_url_host(addr_range: PortRange, base_domain: str) -> str:
    """The host put in TCP URLs: the listen address when it is one, else the edge's base domain."""
    return base_domain if addr_range.host in _WILDCARD_HOSTS else addr_range.host


def parse_requested(addr: str) -> tuple[str, int]:
    """(host, port) of a Bind's ``Addr`` (``host:port``, ``:port``, ``port``, ``tcp://host:port``);
    port 0 means any. Raises ``TcpRefused`` for a port that is not one."""
    text = addr.strip().removeprefix("tcp://").rstrip("/")
    if text.startswith("["):  # [v6] or [v6]:port
        host, _, rest = text[1:].partition("]")
        port_s = rest.removeprefix(":")
    elif text.isdigit():
        host, port_s = "", text
    elif text.count(":") == 1:
        host, _, port_s = text.partition(":")
    else:
        host, port_s = text, ""  # a name alone, or an IPv6 literal without brackets (so without a port)
    if not port_s:
        return host.lower(), 0
    if not port_s.isdigit() or int(port_s) > 65535:
        raise TcpRefused(OUT_OF_RANGE, f"The TCP port {port_s!r} for {host or '*'} is not a port number.")
    return host.lower(), int(port_s)


def candidates(addr_range: PortRange, seed: int, remembered: int | None = None) -> Iterator[int]:
    """Every port of the range once: ``remembered`` first, then onward from a place set by ``seed``."""
    if remembered is not None and remembered in addr_range:
        yield remembered
    start = seed % addr_range.size
    for i in range(addr_range.size):
        port = addr_range.first + (start + i) % addr_range.size
        if port != remembered:
            yield port


class _NoTemplates:
    """The compile environment for ``restrict-ips``, which has no templates or expressions to compile."""

    def template(self, text: str, path: str) -> NoReturn:
        raise PolicyError([Problem(path, "templates are not allowed here")])

    def expression(self, text: str, path: str) -> NoReturn:
        raise PolicyError([Problem(path, "expressions are not allowed here")])


def _restriction(ip: m.IPRestriction | None) -> restrict_ips.RestrictIps | None:
    if ip is None or not (ip.allow_cidrs or ip.deny_cidrs):
        return None
    config: dict[str, list[str]] = {}
    if ip.allow_cidrs:
        config["allow"] = list(ip.allow_cidrs)
    if ip.deny_cidrs:
        config["deny"] = list(ip.deny_cidrs)
    try:
        return restrict_ips.compile(config, "IPRestriction", _NoTemplates(), "on_tcp_connect")
    except PolicyError as exc:
        raise TcpRefused(BAD_CIDR, f"Invalid IP restriction: {exc}") from None


class _Listener:
    """One TCP endpoint: its socket, the session its connections go to, and the live connections."""

    def __init__(self, tunnel_id: str, port: int, url: str, session: AgentSession) -> None:
        self.tunnel_id = tunnel_id
        self.port = port
        self.url = url
        self.session = session
        self.restrict: restrict_ips.RestrictIps | None = None
        self.proxy_proto = 0
        self.server: asyncio.AbstractServer | None = None
        self.conns: set[Splice] = set()

    def configure(self, session: AgentSession, opts: m.TcpEndpoint) -> None:
        restrict = _restriction(opts.ip_restriction)  # may refuse: change nothing before it has passed
        self.session, self.restrict, self.proxy_proto = session, restrict, opts.proxy_proto

    def connection(self) -> Splice:
        return Splice(self)

    # ---- what a Splice asks of its endpoint ----------------------------------------------------------
    def allows(self, ip: str) -> bool:
        return self.restrict is None or self.restrict.decide(ip)[0]

    async def open_stream(self, client_addr: str) -> MuxStream:
        return await self.session.open_proxy(self.tunnel_id, client_addr, "tcp")

    def header(self, client: tuple[str, int], local: tuple[str, int]) -> bytes:
        return proxy_protocol_header(self.proxy_proto, client, local) if self.proxy_proto else b""

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.conns):
            conn.abort()


class TcpEndpoints:
    """The listening sockets of the edge's TCP endpoints, by tunnel id and by port."""

    def __init__(self, addr_range: PortRange, url_host: str, *, backlog: int = 1024) -> None:
        self.range = addr_range
        self.url_host = url_host
        self._backlog = backlog
        self._by_tunnel: dict[str, _Listener] = {}
        self._by_port: dict[int, _Listener] = {}
        self._pending: set[int] = set()  # ports being bound right now (create_server awaits)
        self._last: OrderedDict[str, int] = OrderedDict()
        self._closed = False

    def url(self, port: int) -> str:
        return f"tcp://{_bracket(self.url_host)}:{port}"

    def port_of(self, tunnel_id: str) -> int | None:
        lst = self._by_tunnel.get(tunnel_id)
        return lst.port if lst is not None else None

    @property
    def ports(self) -> set[int]:
        return set(self._by_port)

    async def listen(self, session: AgentSession, tunnel_id: str, opts: m.TcpEndpoint, seed: int) -> str:
        """Open (or hand to ``session``) the endpoint of ``tunnel_id``; its URL. Raises ``TcpRefused``."""
        if self._closed:
            raise TcpRefused(NOT_SERVED, "The edge is shutting down.")
        if opts.traffic_policy or opts.policy is not None:
            raise TcpRefused(UNSUPPORTED, "Traffic policies on TCP endpoints are not supported by this edge.")
        if opts.proxy_proto not in (0, 1, 2):
            raise TcpRefused(MALFORMED, f"ProxyProto must be 0, 1 or 2, not {opts.proxy_proto}.")
        host, port = parse_requested(opts.addr or opts.url)
        if host not in _WILDCARD_HOSTS and host not in (self.url_host.lower(), self.range.host, "localhost"):
            raise TcpRefused(
                UNKNOWN_HOST, f"The host {host!r} is not a TCP host of this edge ({self.url_host})."
            )
        current = self._by_tunnel.get(tunnel_id)
        if current is not None and port in (0, current.port):
            # The same tunnel again (an agent that reconnected before its old session was noticed gone).
            current.configure(session, opts)
            return current.url
        if current is not None:
            self.close(tunnel_id)
        lst = _Listener(tunnel_id, 0, "", session)
        lst.configure(session, opts)  # raises for a bad CIDR before any socket is opened
        if port:
            if port not in self.range:
                raise TcpRefused(
                    OUT_OF_RANGE, f"The TCP port {port} is not within this edge's TCP range {self.range}."
                )
            holder = self._by_port.get(port)
            if holder is not None and holder.session.conn.is_closed:
                self.close(holder.tunnel_id)  # its session is gone; the registry has not heard yet
            if port in self._by_port or port in self._pending:
                raise TcpRefused(IN_USE, f"The endpoint '{self.url(port)}' is already online.")
            order: Iterator[int] = iter((port,))
        else:
            order = candidates(self.range, seed, self._last.get(tunnel_id))
        for p in order:
            if p in self._by_port or p in self._pending:
                continue
            if await self._open(lst, p, strict=bool(port)):
                return lst.url
        raise TcpRefused(
            RANGE_FULL, f"No free port is left in this edge's TCP range {self.range}; ask for a wider range."
        )

    async def _open(self, lst: _Listener, port: int, strict: bool) -> bool:
        loop = asyncio.get_running_loop()
        self._pending.add(port)
        try:
            server = await loop.create_server(
                lst.connection, self.range.host, port, backlog=self._backlog, reuse_address=True
            )
        except OSError as exc:
            if not strict and exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False  # another program holds it: try the next port
            raise TcpRefused(
                IN_USE if exc.errno == errno.EADDRINUSE else NOT_SERVED,
                f"The address {_bracket(self.range.host)}:{port} cannot be opened on the edge: "
                f"{exc.strerror or exc}.",
            ) from None
        finally:
            self._pending.discard(port)
        if self._closed:
            server.close()
            raise TcpRefused(NOT_SERVED, "The edge is shutting down.")
        lst.port, lst.url, lst.server = port, self.url(port), server
        self._by_tunnel[lst.tunnel_id] = lst
        self._by_port[port] = lst
        self._last[lst.tunnel_id] = port
        self._last.move_to_end(lst.tunnel_id)
        while len(self._last) > _REMEMBERED:
            self._last.popitem(last=False)
        return True

    def close(self, tunnel_id: str) -> None:
        """Stop listening for ``tunnel_id`` and end its connections (unknown ids are fine)."""
        lst = self._by_tunnel.pop(tunnel_id, None)
        if lst is None:
            return
        if self._by_port.get(lst.port) is lst:
            del self._by_port[lst.port]
        lst.close()

    async def aclose(self) -> None:
        """Edge shutdown: no new binds, every listener and connection closed."""
        self._closed = True
        servers = [lst.server for lst in self._by_tunnel.values() if lst.server is not None]
        for tunnel_id in list(self._by_tunnel):
            self.close(tunnel_id)
        for server in servers:
            await cast(asyncio.Server, server).wait_closed()
