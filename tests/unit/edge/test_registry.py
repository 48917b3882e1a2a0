"""Registry decisions without sockets: random names follow the tunnel id (so re-binds keep their URL),
bind tokens prove a re-bind, domains online elsewhere are refused, the most specific endpoint routes."""

from __future__ import annotations

from typing import Any, cast

from hatchway.edge import domains
from hatchway.edge.registry import Registry
from hatchway.edge.tunnels import AgentSession
from hatchway.wire import messages as m


class _Conn:
    is_closed = False


class _Session:
    def __init__(self) -> None:
        self.conn = _Conn()


def _session() -> AgentSession:
    return cast(AgentSession, _Session())


def _bind(opts: dict[str, Any] | None = None, tid: str = "", token: str = "", proto: str = "https") -> m.Bind:
    return m.Bind(id=tid, proto=proto, opts=opts or {}, extra=m.BindExtra(token=token))


async def test_rebind_with_id_and_token_keeps_a_random_url() -> None:
    key = b"k" * 32
    reg = Registry({"t"}, base_domain="edge.test", key=key)
    first = await reg.bind(_session(), _bind())
    assert first.url.endswith(".edge.test") and first.extra.token
    # The session is gone (reconnect); the agent re-binds with its old id and token and no hostname.
    reg.endpoints.clear()
    again = await reg.bind(_session(), _bind(tid=first.id, token=first.extra.token))
    assert (again.id, again.url) == (first.id, first.url)
    # After an edge restart with the same key, too.
    restarted = Registry({"t"}, base_domain="edge.test", key=key)
    third = await restarted.bind(_session(), _bind(tid=first.id, token=first.extra.token))
    assert third.url == first.url


async def test_an_id_without_its_token_is_a_new_tunnel() -> None:
    reg = Registry({"t"}, base_domain="edge.test")
    first = await reg.bind(_session(), _bind())
    stolen = await reg.bind(_session(), _bind(tid=first.id, token="guess"))
    assert stolen.id != first.id and stolen.url != first.url


async def test_online_domain_is_refused_and_most_specific_routes() -> None:
    reg = Registry({"t"}, base_domain="edge.test")
    a = await reg.bind(_session(), _bind({"Hostname": "*.example.com"}))
    b = await reg.bind(_session(), _bind({"Hostname": "app.example.com"}))
    dup = await reg.bind(_session(), _bind({"Hostname": "app.example.com"}))
    assert "ERR_NGROK_334" in dup.error
    assert reg.route("https", "app.example.com").tunnel_id == b.id  # type: ignore[union-attr]
    assert reg.route("https", "x.y.example.com").tunnel_id == a.id  # type: ignore[union-attr]
    assert reg.route("http", "app.example.com") is None  # https only


def test_seeded_names_are_stable_and_valid() -> None:
    one = domains.seeded_name("edge.test", b"\x01" * 32)
    assert one == domains.seeded_name("edge.test", b"\x01" * 32)
    assert one != domains.seeded_name("edge.test", b"\x02" * 32)
    assert len(one.split(".")[0].split("-")) == 3
