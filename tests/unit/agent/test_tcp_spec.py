"""TCP endpoint specs: the upstream forms, validation by field, Bind opts, config files (v2 tunnels and v3
endpoints, errors with their paths), the ``hatchway tcp`` flags and the SDK's names for them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hatchway.agent.config import ConfigErrors, load_config
from hatchway.agent.sdk import _check, _spec_from_options
from hatchway.agent.spec import EndpointSpec, Upstream
from hatchway.cli.agent_cmd import FlagProblems, tcp_endpoint_spec


def write(folder: Path, text: str) -> Path:
    path = folder / "c.yml"
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def problems(spec: EndpointSpec) -> dict[str, str]:
    return {e.field_path: e.message for e in spec.validate()}


@pytest.mark.parametrize(
    ("addr", "upstream"),
    [
        ("22", Upstream("tcp", "localhost", 22)),
        ("db.internal:5432", Upstream("tcp", "db.internal", 5432)),
        ("[::1]:2222", Upstream("tcp", "::1", 2222)),
        ("tcp://127.0.0.1:7", Upstream("tcp", "127.0.0.1", 7)),
    ],
)
def test_tcp_upstream_forms(addr: str, upstream: Upstream) -> None:
    spec = EndpointSpec(addr=addr, proto="tcp")
    assert spec.upstream() == upstream
    assert problems(spec) == {}


@pytest.mark.parametrize(
    ("addr", "message"),
    [
        ("", "a local address is required"),
        ("http://localhost:80", "'http://localhost:80' is not a TCP address"),
        ("file:///srv", "is not a TCP address"),
        ("unix:/run/app.sock", "is not a TCP address"),
        ("localhost", "has no port"),
        ("localhost:0", "bad port"),
        ("localhost:70000", "bad port"),
    ],
)
def test_bad_tcp_upstreams_name_addr(addr: str, message: str) -> None:
    found = problems(EndpointSpec(addr=addr, proto="tcp"))
    assert list(found) == ["addr"] and message in found["addr"]


def test_tcp_bind_opts() -> None:
    assert EndpointSpec(addr="22", proto="tcp").to_bind_opts() == {"Addr": ""}
    spec = EndpointSpec(
        addr="22", proto="tcp", remote_addr=":10005", cidr_allow=["10.0.0.0/8"], proxy_proto="2", metadata="m"
    )
    assert spec.to_bind_opts() == {
        "Addr": ":10005",
        "IPRestriction": {"allow_cidrs": ["10.0.0.0/8"], "deny_cidrs": []},
        "ProxyProto": 2,
    }
    assert EndpointSpec(addr="22", proto="tcp", url="tcp://t.example:10007").to_bind_opts() == {
        "Addr": "t.example:10007"
    }
    assert EndpointSpec(addr="22", proto="tcp", url="tcp://").to_bind_opts() == {"Addr": ""}
    assert EndpointSpec(addr="22", proto="tcp").url_schemes() == ["tcp"]


def test_tcp_validation_names_each_field() -> None:
    spec = EndpointSpec(
        addr="22",
        proto="tcp",
        remote_addr="host:x",
        cidr_deny=["nope"],
        proxy_proto="3",
        basic_auth=["a:password1"],
        upstream_protocol="http2",
    )
    assert problems(spec) == {
        "remote_addr": "bad port in 'host:x' (use HOST:PORT or :PORT)",
        "basic_auth": "is an HTTP option; TCP endpoints do not have it",
        "upstream_protocol": "is an HTTP option; TCP endpoints forward raw bytes",
        "cidr_deny[0]": "not an IPv4 or IPv6 CIDR: 'nope' (e.g. 192.0.2.0/24 or 2001:db8::/32)",
        "proxy_proto": "must be 1 or 2",
    }
    both = EndpointSpec(addr="22", proto="tcp", url="tcp://h:1", remote_addr=":2")
    assert problems(both) == {"remote_addr": "give either it or a tcp:// URL, not both"}
    assert "url" in problems(EndpointSpec(addr="22", proto="tcp", url="https://x.example"))
    assert problems(EndpointSpec(addr="22", remote_addr=":1")) == {
        "remote_addr": "is a TCP option (proto tcp); HTTP endpoints use url or domain"
    }
    assert list(problems(EndpointSpec(addr="22", proto="udp"))) == ["proto"]


def test_v2_tcp_tunnel_and_v3_tcp_endpoints(tmp_path: Path) -> None:
    v2 = write(
        tmp_path,
        """
        version: 2
        tunnels:
          ssh:
            proto: tcp
            addr: 22
            remote_addr: ":10005"
            proxy_proto: 1
            ip_restriction: {allow_cidrs: [10.0.0.0/8], deny_cidrs: [10.1.0.0/16]}
            metadata: hello
        """,
    )
    ssh = load_config([v2]).select(["ssh"])["ssh"]
    assert (ssh.proto, ssh.addr, ssh.remote_addr, ssh.proxy_proto, ssh.metadata) == (
        "tcp",
        "22",
        ":10005",
        "1",
        "hello",
    )
    assert ssh.to_bind_opts()["IPRestriction"] == {
        "allow_cidrs": ["10.0.0.0/8"],
        "deny_cidrs": ["10.1.0.0/16"],
    }
    (tmp_path / "v3").mkdir()
    v3 = write(
        tmp_path / "v3",
        """
        version: 3
        endpoints:
          - name: db
            url: tcp://1.tcp.example:10006
            upstream: {url: "db:5432", proxy_protocol: 2}
          - name: any
            url: "tcp://"
            upstream: {url: 22}
        """,
    )
    config = load_config([v3])
    db, any_ = config.endpoints["db"], config.endpoints["any"]
    assert db.proto == any_.proto == "tcp"
    assert db.to_bind_opts() == {"Addr": "1.tcp.example:10006", "ProxyProto": 2}
    assert any_.to_bind_opts() == {"Addr": ""} and any_.upstream() == Upstream("tcp", "localhost", 22)


def test_tcp_config_errors_have_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        version: 3
        endpoints:
          - name: bad
            url: "tcp://x:abc"
            upstream: {url: "http://x", protocol: http2, proxy_protocol: 5}
        """,
    )
    with pytest.raises(ConfigErrors) as info:
        load_config([path])
    found = {e.field_path: e.message for e in info.value.errors}
    assert found == {
        "endpoints[0].upstream.protocol": "unknown key 'protocol' (did you mean 'proxy_protocol'?)",
        "endpoints[0].upstream.url": "'http://x' is not a TCP address: give a port or host:port "
        "(http: addresses are for http endpoints)",
        "endpoints[0].url": "bad port in 'x:abc' (use HOST:PORT or :PORT)",
        "endpoints[0].upstream.proxy_protocol": "must be 1 or 2",
    }
    v2 = write(
        tmp_path, "version: 2\ntunnels:\n  ssh: {proto: tcp, addr: 22, remote_addr: nope, domain: x}\n"
    )
    with pytest.raises(ConfigErrors) as info:
        load_config([v2])
    assert {e.field_path: e.message for e in info.value.errors} == {
        "tunnels.ssh.domain": "unknown key 'domain'",
        "tunnels.ssh.remote_addr": "'nope' has no port: use HOST:PORT or :PORT",
    }


def test_tcp_flags_name_their_flag() -> None:
    spec = tcp_endpoint_spec("2222", remote_addr="127.0.0.1:10005", cidr_allow=["10.0.0.0/8,192.0.2.0/24"])
    assert spec.proto == "tcp" and spec.cidr_allow == ["10.0.0.0/8", "192.0.2.0/24"]
    with pytest.raises(FlagProblems) as info:
        tcp_endpoint_spec("https://x", remote_addr="x", cidr_deny=["bad"], proxy_proto="9", url="tcp://h:1")
    assert [line.partition(":")[0] for line in info.value.lines] == [
        "ADDR",
        "--remote-addr",
        "--remote-addr",
        "--cidr-deny[0]",
        "--proxy-proto",
    ]


def test_sdk_names_for_tcp() -> None:
    spec = _spec_from_options(22, {"remote_addr": ":10005", "allow_cidr": "10.0.0.0/8", "proxy_proto": 1})
    spec.proto = "tcp"
    _check(spec)
    assert spec.to_bind_opts() == {
        "Addr": ":10005",
        "IPRestriction": {"allow_cidrs": ["10.0.0.0/8"], "deny_cidrs": []},
        "ProxyProto": 1,
    }
    spec.cidr_deny = ["x"]
    with pytest.raises(ValueError, match=r"deny_cidr\[0\]: not an IPv4"):
        _check(spec)
