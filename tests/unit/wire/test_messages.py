"""The JSON messages (protocol.md §5, §6, §9): exact key spellings out, forgiving decoding in.

Every struct in ``messages.py`` gets a hypothesis round-trip (encode -> decode gives an equal struct), and
the same generated messages are decoded again with keys in other cases (all lower-case, all upper-case,
Go's ``Authtoken``), with unknown extra keys and with ``null`` values. Fixed cases pin what the Rust SDKs
need to see (``ClientId``, ``URL``, ``Extra.Token``, the five ProxyHeader keys) and the wire samples the
official SDKs sent.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hatchway.errors import RemoteProtocolError
from hatchway.wire import messages as m

# Every message struct the module defines (the private bases aside).
STRUCTS: list[type[msgspec.Struct]] = sorted(
    (
        obj
        for name, obj in vars(m).items()
        if isinstance(obj, type)
        and issubclass(obj, msgspec.Struct)
        and obj.__module__ == m.__name__
        and not name.startswith("_")
    ),
    key=lambda cls: cls.__name__,
)


def test_every_protocol_message_is_covered() -> None:
    names = {cls.__name__ for cls in STRUCTS}
    for expected in [
        "Auth", "AuthExtra", "AuthResp", "AuthRespExtra", "Bind", "BindExtra", "BindResp", "BindRespExtra",
        "Unbind", "UnbindResp", "StartTunnelWithLabel", "StartTunnelWithLabelResp", "SrvInfo", "SrvInfoResp",
        "ProxyHeader", "Restart", "Stop", "Update", "CommandResp", "StopTunnel", "HttpEndpoint",
        "TcpEndpoint", "TlsEndpoint",
    ]:  # fmt: skip
        assert expected in names


# ---- strategies built from the structs' own type information ------------------------------------------
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def strategy_for(tinfo: Any) -> st.SearchStrategy[Any]:
    """A hypothesis strategy for one field type as ``msgspec.inspect`` describes it."""
    mi = msgspec.inspect
    if isinstance(tinfo, mi.StrType):
        return st.text(max_size=12)
    if isinstance(tinfo, mi.BoolType):
        return st.booleans()
    if isinstance(tinfo, mi.IntType):
        return st.integers(-(2**63), 2**63 - 1)
    if isinstance(tinfo, mi.FloatType):
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(tinfo, mi.NoneType):
        return st.none()
    if isinstance(tinfo, mi.UnionType):
        return st.one_of([strategy_for(t) for t in tinfo.types])
    if isinstance(tinfo, mi.ListType):
        return st.lists(strategy_for(tinfo.item_type), max_size=3)
    if isinstance(tinfo, mi.DictType):
        return st.dictionaries(st.text(max_size=8), strategy_for(tinfo.value_type), max_size=3)
    if isinstance(tinfo, mi.AnyType | mi.CustomType):
        return json_values
    if isinstance(tinfo, mi.StructType):
        return struct_strategy(tinfo.cls)
    raise AssertionError(f"no strategy for {tinfo!r}")


@functools.cache
def struct_strategy(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    info = type_info(cls)
    return st.fixed_dictionaries({f.name: strategy_for(f.type) for f in info.fields}).map(
        lambda kw: cls(**kw)
    )


def recase(obj: Any, tinfo: Any, key_fn: Callable[[str], str], extra: dict[str, Any] | None = None) -> Any:
    """Rename the keys of every *struct* object inside ``obj`` with ``key_fn``; add ``extra`` keys to each.

    Free-form dicts (``Opts``, ``Labels``, ``addParsed``) keep their keys: they are data, not field names.
    """
    mi = msgspec.inspect
    if isinstance(tinfo, mi.UnionType):
        for t in tinfo.types:
            if isinstance(t, mi.StructType) and isinstance(obj, dict):
                return recase(obj, t, key_fn, extra)
            if isinstance(t, mi.ListType) and isinstance(obj, list):
                return recase(obj, t, key_fn, extra)
        return obj
    if isinstance(tinfo, mi.ListType) and isinstance(obj, list):
        return [recase(v, tinfo.item_type, key_fn, extra) for v in obj]
    if isinstance(tinfo, mi.StructType) and isinstance(obj, dict):
        types = {f.encode_name: f.type for f in tinfo.fields}
        out = {key_fn(k): recase(v, types[k], key_fn, extra) for k, v in obj.items()}
        out.update(extra or {})
        return out
    return obj


def encoded_obj(msg: msgspec.Struct) -> Any:
    return json.loads(m.encode(msg))


@functools.cache
def type_info(cls: type[msgspec.Struct]) -> msgspec.inspect.StructType:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return info


def alternate_case(key: str) -> str:
    return "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(key))


KEY_STYLES: dict[str, Callable[[str], str]] = {
    "lower": str.lower,
    "upper": str.upper,
    "alternating": alternate_case,
    "swapcase": str.swapcase,
}


# ---- round-trips --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", STRUCTS, ids=lambda c: c.__name__)
@settings(max_examples=30)
@given(data=st.data())
def test_round_trip(cls: type[msgspec.Struct], data: st.DataObject) -> None:
    msg = data.draw(struct_strategy(cls))
    assert m.decode(m.encode(msg), cls) == msg


@pytest.mark.parametrize("cls", STRUCTS, ids=lambda c: c.__name__)
@settings(max_examples=25)
@given(data=st.data())
def test_forgiving_decoding(cls: type[msgspec.Struct], data: st.DataObject) -> None:
    """Other key cases, unknown extra keys and nulls, each alone and all at once."""
    msg = data.draw(struct_strategy(cls), label="msg")
    info = type_info(cls)
    style = data.draw(st.sampled_from(sorted(KEY_STYLES)), label="style")
    extra = data.draw(
        st.dictionaries(
            st.text(max_size=6).map(lambda s: "ZzUnknown" + s), json_values, min_size=1, max_size=3
        ),
        label="extra",
    )
    names = [f.encode_name for f in info.fields]
    nulled = data.draw(st.sets(st.sampled_from(names)), label="nulled") if names else set()
    with_defaults = msgspec.structs.replace(
        msg, **{f.name: getattr(cls(), f.name) for f in info.fields if f.encode_name in nulled}
    )

    def decode(obj: Any) -> msgspec.Struct:
        return m.decode(json.dumps(obj).encode(), cls)

    obj = encoded_obj(msg)
    assert decode(recase(obj, info, KEY_STYLES[style])) == msg
    assert decode(recase(obj, info, lambda k: k, extra)) == msg
    nulls = {k: (None if k in nulled else v) for k, v in obj.items()}
    assert decode(nulls) == with_defaults
    assert decode(recase(nulls, info, KEY_STYLES[style], extra)) == with_defaults


@pytest.mark.parametrize("cls", STRUCTS, ids=lambda c: c.__name__)
def test_empty_object_and_all_nulls_decode_to_defaults(cls: type[msgspec.Struct]) -> None:
    assert m.decode(b"{}", cls) == cls()
    all_null = {f.encode_name: None for f in type_info(cls).fields}
    assert m.decode(json.dumps(all_null).encode(), cls) == cls()


# ---- Auth ---------------------------------------------------------------------------------------------
# The Auth request the Python SDK 1.4.0 sent (protocol.md §5.1).
RUST_AUTH = (
    b'{"Version":["3","2"],"ClientId":"","Extra":{"OS":"linux","Arch":"x86_64","AuthToken":"probe-authtoken-123",'
    b'"Version":"1.4.0","Hostname":"","UserAgent":"ngrok-python/1.4.0 ngrok-rust/0.14.0-pre.14",'
    b'"Metadata":"probe-session-metadata","Cookie":"","HeartbeatInterval":10000000000,'
    b'"HeartbeatTolerance":15000000000,'
    b'"UpdateUnsupportedError":"the agent has not defined a callback for this operation",'
    b'"StopUnsupportedError":"the agent has not defined a callback for this operation",'
    b'"RestartUnsupportedError":"the agent has not defined a callback for this operation",'
    b'"ProxyType":"","MutualTLS":false,"ServiceRun":false,"ConfigVersion":"","CustomInterface":false,'
    b'"CustomCAs":false,"ClientType":"ngrok-python"}}'
)


def test_decode_rust_auth_request() -> None:
    auth = m.decode(RUST_AUTH, m.Auth)
    assert auth.version == ["3", "2"]
    assert auth.client_id == ""
    extra = auth.extra
    assert extra.auth_token == "probe-authtoken-123"
    assert (extra.os, extra.arch, extra.version) == ("linux", "x86_64", "1.4.0")
    assert extra.metadata == "probe-session-metadata"
    assert (extra.heartbeat_interval, extra.heartbeat_tolerance) == (10_000_000_000, 15_000_000_000)
    assert extra.restart_unsupported_error == "the agent has not defined a callback for this operation"
    assert extra.client_type == "ngrok-python"


@pytest.mark.parametrize("key", ["AuthToken", "Authtoken", "authtoken", "AUTHTOKEN", "authToken"])
def test_auth_token_key_in_any_case(key: str) -> None:
    raw = json.dumps({"Extra": {key: "tok-1"}}).encode()
    assert m.decode(raw, m.Auth).extra.auth_token == "tok-1"


def test_decode_go_auth_request() -> None:
    raw = json.dumps(
        {
            "Version": ["3"],
            "ClientId": "sess-1",
            "Extra": {
                "Authtoken": "go-token",
                "Fingerprint": None,
                "LegNumber": 1,
                "Cookie": "c-1",
                "OS": "darwin",
            },
        }
    ).encode()
    auth = m.decode(raw + b"\n", m.Auth)
    assert auth.client_id == "sess-1"
    assert auth.extra.auth_token == "go-token"
    assert auth.extra.leg_number == 1
    assert auth.extra.cookie == "c-1"
    assert auth.extra.os == "darwin"


def test_null_unsupported_error_means_agent_too_old() -> None:
    raw = b'{"Extra":{"UpdateUnsupportedError":null,"StopUnsupportedError":""}}'
    extra = m.decode(raw, m.Auth).extra
    assert extra.update_unsupported_error is None
    assert extra.stop_unsupported_error == ""


def test_auth_resp_keys_rust_requires() -> None:
    resp = m.AuthResp(
        client_id="probe-sess-5fc41c30bede",
        extra=m.AuthRespExtra(version="probe-edge/0.1", region="local", cookie="probe-cookie-1"),
    )
    obj = encoded_obj(resp)
    assert obj["Version"] == "3"
    assert obj["ClientId"] == "probe-sess-5fc41c30bede"
    assert obj["Error"] == ""
    assert list(obj["Extra"]) == [
        "Version", "Region", "Cookie", "AccountName", "SessionDuration", "PlanName", "Banner",
    ]  # fmt: skip
    assert obj["Extra"]["Cookie"] == "probe-cookie-1"


# ---- Bind ---------------------------------------------------------------------------------------------
# The Bind request the Python SDK 1.4.0 sent with many options (protocol.md §5.2).
RUST_OPTS: dict[str, Any] = {
    "Hostname": "myapp.probe.localhost",
    "Auth": "",
    "Subdomain": "",
    "HostHeaderRewrite": False,
    "LocalUrlScheme": None,
    "ProxyProto": 0,
    "Compression": {},
    "CircuitBreaker": {"error_threshold": 0.5},
    "IPRestriction": {"allow_cidrs": ["0.0.0.0/0"], "deny_cidrs": ["10.1.1.1/32"]},
    "BasicAuth": {"credentials": [{"username": "alice", "cleartext_password": "s3cr3tpassw0rd"}]},
    "OAuth": {"provider": "google", "allow_emails": ["a@example.com"]},
    "OIDC": None,
    "WebhookVerification": {"provider": "github", "secret": "whsecret"},
    "MutualTLSCA": None,
    "RequestHeaders": {"add": ["x-probe:yes"]},
    "ResponseHeaders": {"remove": ["server"]},
    "WebsocketTCPConverter": {},
    "UserAgentFilter": {"allow": ["^curl"]},
    "TrafficPolicy": '{"on_http_request":[{"actions":[{"type":"deny"}]}]}',
}
RUST_BIND = {
    "Id": "",
    "Proto": "https",
    "ForwardsTo": "app://host//usr/bin/python3?pid=18263",
    "ForwardsProto": "",
    "Opts": RUST_OPTS,
    "Extra": {"Token": "", "IPPolicyRef": "", "Metadata": "probe-listener-metadata", "Bindings": []},
}


def test_decode_rust_bind_and_its_http_opts() -> None:
    bind = m.decode(json.dumps(RUST_BIND).encode(), m.Bind)
    assert bind.proto == "https"
    assert bind.extra.metadata == "probe-listener-metadata"
    assert bind.opts == RUST_OPTS  # kept raw, to be echoed byte for byte
    opts = bind.http_opts()
    assert opts.requested_domain == "myapp.probe.localhost"
    assert opts.compression == m.Compression()
    assert opts.circuit_breaker == m.CircuitBreaker(error_threshold=0.5)
    assert opts.ip_restriction == m.IPRestriction(allow_cidrs=["0.0.0.0/0"], deny_cidrs=["10.1.1.1/32"])
    assert opts.basic_auth is not None
    assert opts.basic_auth.credentials == [
        m.BasicAuthCredential(username="alice", cleartext_password="s3cr3tpassw0rd")
    ]
    assert opts.oauth == m.OAuth(provider="google", allow_emails=["a@example.com"])
    assert opts.oidc is None and opts.mutual_tls_ca is None
    assert opts.request_headers == m.Headers(add=["x-probe:yes"])
    assert opts.response_headers == m.Headers(remove=["server"])
    assert opts.user_agent_filter == m.UserAgentFilter(allow=["^curl"])
    assert opts.websocket_tcp_converter == m.WebsocketTCPConverter()
    assert opts.traffic_policy == '{"on_http_request":[{"actions":[{"type":"deny"}]}]}'


@pytest.mark.parametrize(
    ("opts", "domain"),
    [
        pytest.param({"Hostname": "a.example.test"}, "a.example.test", id="0.14-hostname"),
        pytest.param({"Hostname": "", "Domain": "b.example.test"}, "b.example.test", id="0.18-domain"),
        pytest.param({"domain": "c.example.test", "hostname": ""}, "c.example.test", id="lower-case-keys"),
        pytest.param({"Hostname": None, "Domain": "d.example.test"}, "d.example.test", id="null-hostname"),
        pytest.param({}, "", id="none"),
    ],
)
def test_requested_domain_reads_hostname_or_domain(opts: dict[str, Any], domain: str) -> None:
    bind = m.decode(json.dumps({"Proto": "https", "Opts": opts}).encode(), m.Bind)
    assert bind.http_opts().requested_domain == domain
    assert bind.tls_opts().requested_domain == domain


def test_tcp_and_tls_opts() -> None:
    tcp = m.Bind(
        opts={"Addr": "1.tcp.probe.localhost:12345", "ProxyProto": 1, "IPRestriction": None}
    ).tcp_opts()
    assert tcp == m.TcpEndpoint(addr="1.tcp.probe.localhost:12345", proxy_proto=1)
    tls = m.Bind(
        opts={"Domain": "t.example.test", "MutualTLSAtAgent": True, "TLSTermination": {"cert": "Y2VydA=="}}
    ).tls_opts()
    assert tls.requested_domain == "t.example.test"
    assert tls.mutual_tls_at_agent is True
    assert tls.tls_termination == m.TLSTermination(cert="Y2VydA==")


def test_bind_resp_keys_rust_requires() -> None:
    resp = m.BindResp(
        id="tn_probe_a65aff68aa",
        url="https://myapp.probe.localhost",
        proto="https",
        opts=RUST_OPTS,
        extra=m.BindRespExtra(token="probe-bind-token"),
    )
    obj = encoded_obj(resp)
    assert set(obj) == {"Id", "URL", "Proto", "Opts", "Error", "Extra"}
    assert obj["Id"] == "tn_probe_a65aff68aa"
    assert obj["URL"] == "https://myapp.probe.localhost"
    assert obj["Proto"] == "https"
    assert obj["Opts"] == RUST_OPTS
    assert obj["Extra"] == {"Token": "probe-bind-token"}
    assert obj["Error"] == ""


def test_bind_extra_key_spellings() -> None:
    obj = encoded_obj(
        m.BindExtra(token="t", ip_policy_ref="ipp_1", bindings=["public"], pooling_enabled=True)
    )
    assert obj["Token"] == "t"
    assert obj["IPPolicyRef"] == "ipp_1"
    assert obj["Bindings"] == ["public"]
    assert obj["PoolingEnabled"] is True


def test_middleware_keys_are_snake_case_and_empty_values_left_out() -> None:
    opts = m.HttpEndpoint(
        basic_auth=m.BasicAuth(credentials=[m.BasicAuthCredential(username="bob", cleartext_password="pw")]),
        request_headers=m.Headers(add=["x-a:1"]),
    )
    obj = encoded_obj(opts)
    assert obj["BasicAuth"] == {"credentials": [{"username": "bob", "cleartext_password": "pw"}]}
    assert obj["RequestHeaders"] == {"add": ["x-a:1"]}
    assert obj["IPRestriction"] is None and obj["MutualTLSCA"] is None


# ---- other RPCs and server-opened streams -------------------------------------------------------------
def test_proxy_header_has_exactly_the_five_keys_rust_requires() -> None:
    obj = encoded_obj(m.ProxyHeader(id="tn_1", client_addr="203.0.113.7:54321", proto="https"))
    assert obj == {
        "Id": "tn_1",
        "ClientAddr": "203.0.113.7:54321",
        "Proto": "https",
        "EdgeType": "",
        "PassthroughTLS": False,
    }
    assert isinstance(obj["EdgeType"], str)


def test_start_tunnel_with_label_sample() -> None:
    raw = b'{"Labels":{"edge":"edghts_probe"},"ForwardsTo":"app://x","ForwardsProto":"","Metadata":""}'
    req = m.decode(raw, m.StartTunnelWithLabel)
    assert req.labels == {"edge": "edghts_probe"}
    assert encoded_obj(m.StartTunnelWithLabelResp(id="tn_2")) == {"Id": "tn_2", "Error": ""}


def test_label_keys_are_data_and_keep_their_case() -> None:
    req = m.decode(b'{"labels":{"Edge":"x","EDGE":"y"}}', m.StartTunnelWithLabel)
    assert req.labels == {"Edge": "x", "EDGE": "y"}


def test_stop_tunnel_and_update_samples() -> None:
    raw = b'{"Id":"tn_1","Message":"shut down by admin","ErrorCode":"ERR_NGROK_3204"}'
    assert m.decode(raw, m.StopTunnel) == m.StopTunnel("tn_1", "shut down by admin", "ERR_NGROK_3204")
    assert encoded_obj(m.Update(version="3.1.0", permit_major_version=True)) == {
        "Version": "3.1.0",
        "PermitMajorVersion": True,
    }
    assert encoded_obj(m.Restart()) == {}
    assert encoded_obj(m.CommandResp(error="nope")) == {"Error": "nope"}


# ---- refusals -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b'{"Id":', id="truncated"),
        pytest.param(b"[1, 2]", id="array"),
        pytest.param(b'"Auth"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b'{"Version": {"x": 1}}', id="wrong-field-type"),
        pytest.param(b'{"Extra": "not an object"}', id="wrong-nested-type"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
    ],
)
def test_bad_input_raises_remote_protocol_error(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        m.decode(raw, m.Auth)


def test_decode_obj_refuses_non_mapping() -> None:
    with pytest.raises(RemoteProtocolError):
        m.decode_obj(["x"], m.Unbind)
