"""The exact JSON the official SDKs put on the wire (recorded in protocol.md §5) decodes as expected,
and the answers the edge builds carry every key Rust requires."""

from __future__ import annotations

import json

from hatchway.wire import messages as m

AUTH_PY_140 = (
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

BIND_PY_140 = (
    b'{"Id":"","Proto":"https","ForwardsTo":"app://host//usr/bin/python3?pid=18263","ForwardsProto":"",'
    b'"Opts":{"Hostname":"myapp.probe.localhost","Auth":"","Subdomain":"","HostHeaderRewrite":false,'
    b'"LocalUrlScheme":null,"ProxyProto":0,"Compression":{},"CircuitBreaker":{"error_threshold":0.5},'
    b'"IPRestriction":{"allow_cidrs":["0.0.0.0/0"],"deny_cidrs":["10.1.1.1/32"]},'
    b'"BasicAuth":{"credentials":[{"username":"alice","cleartext_password":"s3cr3tpassw0rd"}]},'
    b'"OAuth":{"provider":"google","allow_emails":["a@example.com"]},"OIDC":null,'
    b'"WebhookVerification":{"provider":"github","secret":"whsecret"},"MutualTLSCA":null,'
    b'"RequestHeaders":{"add":["x-probe:yes"]},"ResponseHeaders":{"remove":["server"]},'
    b'"WebsocketTCPConverter":{},"UserAgentFilter":{"allow":["^curl"]},'
    b'"TrafficPolicy":"{\\"on_http_request\\":[{\\"actions\\":[{\\"type\\":\\"deny\\"}]}]}"},'
    b'"Extra":{"Token":"","IPPolicyRef":"","Metadata":"probe-listener-metadata","Bindings":[]}}'
)

TCP_OPTS = b'{"Addr":"1.tcp.probe.localhost:12345","ProxyProto":1,"IPRestriction":null,"TrafficPolicy":null}'


def test_python_sdk_auth_decodes() -> None:
    auth = m.decode(AUTH_PY_140, m.Auth)
    assert auth.version == ["3", "2"]
    assert auth.extra.auth_token == "probe-authtoken-123"
    assert auth.extra.os == "linux" and auth.extra.client_type == "ngrok-python"
    assert auth.extra.heartbeat_interval == 10_000_000_000
    assert auth.extra.heartbeat_tolerance == 15_000_000_000
    assert auth.extra.restart_unsupported_error == "the agent has not defined a callback for this operation"


def test_go_style_auth_token_key_is_understood() -> None:
    auth = m.decode(
        b'{"Version":["3"],"Extra":{"Authtoken":"go-token","Fingerprint":null,"LegNumber":1}}', m.Auth
    )
    assert auth.extra.auth_token == "go-token"
    assert auth.extra.leg_number == 1


def test_python_sdk_bind_with_every_module_decodes() -> None:
    bind = m.decode(BIND_PY_140, m.Bind)
    assert bind.proto == "https" and bind.extra.metadata == "probe-listener-metadata"
    opts = bind.http_opts()
    assert opts.requested_domain == "myapp.probe.localhost"
    assert opts.compression == m.Compression()
    assert opts.circuit_breaker == m.CircuitBreaker(error_threshold=0.5)
    assert opts.ip_restriction == m.IPRestriction(allow_cidrs=["0.0.0.0/0"], deny_cidrs=["10.1.1.1/32"])
    assert opts.basic_auth is not None
    assert opts.basic_auth.credentials == [m.BasicAuthCredential("alice", "s3cr3tpassw0rd")]
    assert opts.oauth is not None and opts.oauth.allow_emails == ["a@example.com"]
    assert opts.oidc is None and opts.mutual_tls_ca is None
    assert opts.webhook_verification == m.WebhookVerification(provider="github", secret="whsecret")
    assert opts.request_headers is not None and opts.request_headers.add == ["x-probe:yes"]
    assert opts.response_headers is not None and opts.response_headers.remove == ["server"]
    assert opts.websocket_tcp_converter == m.WebsocketTCPConverter()
    assert opts.user_agent_filter is not None and opts.user_agent_filter.allow == ["^curl"]
    assert json.loads(opts.traffic_policy or "") == {"on_http_request": [{"actions": [{"type": "deny"}]}]}


def test_npm_018_domain_key_wins_over_empty_hostname() -> None:
    bind = m.decode(
        b'{"Proto":"https","Opts":{"Hostname":"","Domain":"nodeapp.example.test"},'
        b'"Extra":{"PoolingEnabled":false}}',
        m.Bind,
    )
    assert bind.http_opts().requested_domain == "nodeapp.example.test"


def test_tcp_opts_decode() -> None:
    bind = m.Bind(proto="tcp", opts=json.loads(TCP_OPTS))
    tcp = bind.tcp_opts()
    assert tcp.addr == "1.tcp.probe.localhost:12345" and tcp.proxy_proto == 1 and tcp.ip_restriction is None


def test_legacy_policy_decodes() -> None:
    bind = m.Bind(
        proto="https",
        opts={
            "Policy": {
                "Inbound": [
                    {"Name": "r", "Expressions": ["true"], "Actions": [{"Type": "deny", "Config": "{}"}]}
                ]
            }
        },
    )
    policy = bind.http_opts().policy
    assert policy is not None and policy.inbound[0].actions[0].type == "deny"


def test_bind_response_echoes_opts_with_rusts_required_keys() -> None:
    bind = m.decode(BIND_PY_140, m.Bind)
    resp = json.loads(
        m.encode(
            m.BindResp(
                id="tn_1",
                url="https://myapp.probe.localhost",
                proto="https",
                opts=bind.opts,
                extra=m.BindRespExtra(token="tok"),
            )
        )
    )
    assert {"Id", "URL", "Proto", "Opts", "Extra", "Error"} <= resp.keys()
    assert resp["Extra"]["Token"] == "tok"
    assert {"Hostname", "Auth", "Subdomain", "HostHeaderRewrite", "ProxyProto"} <= resp["Opts"].keys()
    assert resp["Opts"] == json.loads(BIND_PY_140)["Opts"]


def test_auth_response_has_version_and_client_id_strings() -> None:
    resp = json.loads(m.encode(m.AuthResp(client_id="sess_1", extra=m.AuthRespExtra(cookie="c"))))
    assert resp["Version"] == "3" and resp["ClientId"] == "sess_1" and resp["Extra"]["Cookie"] == "c"
