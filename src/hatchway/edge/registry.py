"""Live endpoints: which agent session and tunnel serve a host. An in-memory ``TunnelHooks``.

It accepts agents whose authtoken is known, gives each HTTP endpoint a URL (the requested domain, or a
random name under the base domain) and refuses a domain that is already online. It holds no sockets and
writes nothing to disk: durable accounts and reservations belong to the store.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable

from hatchway.edge.tunnels import AgentSession
from hatchway.wire import messages as m

_WORDS = [
    "amber",
    "brisk",
    "cedar",
    "dune",
    "ember",
    "fern",
    "glade",
    "harbor",
    "iris",
    "juniper",
    "kite",
    "lumen",
    "maple",
    "north",
    "opal",
    "pine",
    "quartz",
    "river",
    "sage",
    "tidal",
    "umber",
    "vale",
    "willow",
    "yarrow",
    "zephyr",
]


def random_name() -> str:
    """Three readable words plus a short suffix, e.g. ``cedar-kite-opal-3f9a``."""
    return "-".join(secrets.choice(_WORDS) for _ in range(3)) + "-" + secrets.token_hex(2)


class Registry:
    def __init__(
        self,
        tokens: Callable[[str], bool] | set[str],
        base_domain: str = "hatchway.localhost",
        public_port: int | None = None,
    ) -> None:
        self._check = tokens if callable(tokens) else self._in_set(tokens)
        self.base_domain = base_domain
        self.public_port = public_port
        self.endpoints: dict[str, tuple[AgentSession, str]] = {}  # host -> (session, tunnel id)
        self._sessions_by_client: dict[str, AgentSession] = {}

    @staticmethod
    def _in_set(tokens: set[str]) -> Callable[[str], bool]:
        def check(token: str) -> bool:
            return any(hmac.compare_digest(token.encode(), t.encode()) for t in tokens)

        return check

    def _url(self, scheme: str, host: str) -> str:
        default = 443 if scheme == "https" else 80
        if self.public_port and self.public_port != default:
            return f"{scheme}://{host}:{self.public_port}"
        return f"{scheme}://{host}"

    async def authenticate(self, session: AgentSession, auth: m.Auth) -> m.AuthResp:
        if not self._check(auth.extra.auth_token):
            return m.AuthResp(
                error=m.join_error("The authtoken you specified is not valid.", "ERR_NGROK_107")
            )
        client_id = auth.client_id or f"sess_{secrets.token_hex(8)}"
        self._sessions_by_client[client_id] = session
        return m.AuthResp(
            version="3",
            client_id=client_id,
            extra=m.AuthRespExtra(version="hatchway", region="local", cookie=secrets.token_hex(8)),
        )

    async def bind(self, session: AgentSession, bind: m.Bind) -> m.BindResp:
        if bind.proto not in ("http", "https"):
            return m.BindResp(
                error=m.join_error(f"protocol {bind.proto!r} is not served here", "ERR_NGROK_9017")
            )
        opts = bind.http_opts()
        host = (opts.requested_domain or f"{random_name()}.{self.base_domain}").lower()
        # A re-bind after reconnect keeps its tunnel id; the old session's entry is replaced.
        tunnel_id = bind.id or f"tn_{secrets.token_hex(12)}"
        current = self.endpoints.get(host)
        if current is not None and current[1] != tunnel_id and not current[0].conn.is_closed:
            return m.BindResp(
                error=m.join_error(f"The endpoint '{host}' is already online.", "ERR_NGROK_334")
            )
        self.endpoints[host] = (session, tunnel_id)
        return m.BindResp(
            id=tunnel_id,
            url=self._url(bind.proto, host),
            proto=bind.proto,
            opts=bind.opts,  # echo: Rust re-parses Opts and needs its required fields (§5.2)
            extra=m.BindRespExtra(token=bind.extra.token or secrets.token_hex(8)),
        )

    async def unbind(self, session: AgentSession, tunnel_id: str) -> None:
        for host, (s, tid) in list(self.endpoints.items()):
            if s is session and tid == tunnel_id:
                del self.endpoints[host]

    async def start_labeled(
        self, session: AgentSession, req: m.StartTunnelWithLabel
    ) -> m.StartTunnelWithLabelResp:
        return m.StartTunnelWithLabelResp(id=f"tn_{secrets.token_hex(12)}")

    def session_closed(self, session: AgentSession) -> None:
        for host, (s, _tid) in list(self.endpoints.items()):
            if s is session:
                del self.endpoints[host]
        if self._sessions_by_client.get(session.client_id) is session:
            del self._sessions_by_client[session.client_id]

    def lookup(self, host: str) -> tuple[AgentSession, str] | None:
        return self.endpoints.get(host.lower())
