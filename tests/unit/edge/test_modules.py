"""Bind module options become policy rules in the documented order; bad ones are refused with a code.

Also the edge's glue (``edge/policy_run.py``): what actions change reaches the request and response
heads the proxy writes, and replies made by the edge come out as whole HTTP/1.1 responses.
"""

from __future__ import annotations

import base64
import gzip

import pytest

from hatchway.edge import modules
from hatchway.edge.policy_run import PolicyRun, reply_bytes
from hatchway.edge.proxy import Request
from hatchway.http.h1 import parse_response_head
from hatchway.policy.engine import compile_policy
from hatchway.policy.model import Reply
from hatchway.wire import messages as m

from helpers import EndpointDouble


def decode(raw: dict[str, object]) -> m.HttpEndpoint:
    return m.Bind(proto="http", opts=raw).http_opts()


def test_every_module_becomes_a_rule_in_the_documented_order() -> None:
    o = decode(
        {
            "BasicAuth": {"credentials": [{"username": "u", "cleartext_password": "password1"}]},
            "IPRestriction": {"allow_cidrs": ["10.0.0.0/8"], "deny_cidrs": ["10.1.0.0/16"]},
            "CircuitBreaker": {"error_threshold": 0.3},
            "Compression": {},
            "UserAgentFilter": {"deny": ["bot"]},
            "WebhookVerification": {"provider": "github", "secret": "s3cret"},
        }
    )
    doc = modules.module_rules(o)
    assert [r["actions"][0]["type"] for r in doc["on_http_request"]] == [
        "restrict-ips",
        "user-agent-filter",
        "verify-webhook",
        "basic-auth",
        "circuit-breaker",
    ]
    assert [r["actions"][0]["type"] for r in doc["on_http_response"]] == ["compress-response"]
    assert doc["on_http_request"][3]["actions"][0]["config"] == {"credentials": ["u:password1"]}
    policy = modules.endpoint_policy(o)
    assert policy is not None and policy.needs_request_body  # verify-webhook reads the body


def test_nothing_asked_means_no_policy() -> None:
    o = decode({"Hostname": "a.example.com"})
    assert not modules.wants_policy(o)
    assert modules.endpoint_policy(o) is None


@pytest.mark.parametrize("module", ["OAuth", "OIDC"])
def test_modules_the_edge_cannot_enforce_are_refused_not_ignored(module: str) -> None:
    o = decode({module: {}})
    assert modules.wants_policy(o)
    with pytest.raises(modules.ModuleError) as info:
        modules.endpoint_policy(o)
    assert info.value.code == modules.MODULE_UNSUPPORTED


def test_a_bad_policy_is_refused_with_its_path() -> None:
    bad = "on_http_request:\n  - actions:\n      - type: deny\n        config: {status_code: nope}\n"
    with pytest.raises(modules.ModuleError) as info:
        modules.endpoint_policy(decode({"TrafficPolicy": bad}))
    assert info.value.code == modules.POLICY_INVALID
    assert "on_http_request[0].actions[0].config.status_code" in str(info.value)
    with pytest.raises(modules.ModuleError) as info:
        modules.endpoint_policy(
            decode({"BasicAuth": {"credentials": [{"username": "u", "cleartext_password": "x"}]}})
        )
    assert "modules." in str(info.value)


def test_both_policy_fields_are_refused_and_the_legacy_one_alone_works() -> None:
    legacy = {
        "inbound": [
            {"name": "n", "expressions": [], "actions": [{"type": "deny", "config": '{"status_code": 418}'}]}
        ]
    }
    with pytest.raises(modules.ModuleError) as info:
        modules.endpoint_policy(decode({"TrafficPolicy": "{}", "Policy": legacy}))
    assert info.value.code == modules.BOTH_POLICIES
    policy = modules.endpoint_policy(decode({"Policy": legacy}))
    assert policy is not None and policy.has_request_phase


def request(target: bytes = b"/a?x=1", headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    hdrs = headers or [(b"Host", b"app.hatchway.localhost:8443"), (b"Accept-Encoding", b"gzip")]
    return Request(
        method=b"GET",
        target=target,
        headers=hdrs,
        version="1.1",
        host="app.hatchway.localhost",
        client_ip="127.0.0.1",
        client_port=5000,
        scheme="https",
        lower=[k.lower() for k, _ in hdrs],
    )


def test_request_changes_reach_the_head_the_proxy_writes() -> None:
    policy = compile_policy(
        {
            "on_http_request": [
                {"actions": [{"type": "url-rewrite", "config": {"from": "/a", "to": "/b"}}]},
                {"actions": [{"type": "add-headers", "config": {"headers": {"x-path": "${req.url.path}"}}}]},
                {"actions": [{"type": "remove-headers", "config": {"headers": ["accept-encoding"]}}]},
            ]
        }
    )
    req = request()
    run = PolicyRun(EndpointDouble(), policy, req)  # type: ignore[arg-type]
    assert run.ex.endpoint.port == 8443
    assert run.request(req) is None
    assert req.target == b"/b?x=1"
    assert (b"x-path", b"/b") in req.headers
    assert b"accept-encoding" not in req.lower


def test_response_phase_changes_headers_and_picks_an_encoder() -> None:
    policy = compile_policy(
        {
            "on_http_response": [
                {"actions": [{"type": "compress-response"}]},
                {
                    "expressions": ["res.status_code == 200"],
                    "actions": [{"type": "add-headers", "config": {"headers": {"x-ok": "yes"}}}],
                },
            ]
        }
    )
    req = request()
    run = PolicyRun(EndpointDouble(), policy, req)  # type: ignore[arg-type]
    head = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n")
    assert head is not None
    assert run.response(head, b"GET") is None
    names = [k.lower() for k, _ in head.headers]
    assert b"content-length" not in names and b"x-ok" in names and b"content-encoding" in names
    assert run.encoder is not None
    data = run.encoder.feed(b"hello") + run.encoder.finish()
    assert gzip.decompress(data) == b"hello"


def test_replies_render_as_whole_responses_and_finish_reports_once() -> None:
    raw = reply_bytes(
        Reply(403, error_code="ERR_NGROK_3205", message="denied"), None, close=True, head_only=False
    )
    head = parse_response_head(raw)
    assert head is not None and head.status == 403
    assert (b"ngrok-error-code", b"ERR_NGROK_3205") in [(k.lower(), v) for k, v in head.headers]
    raw = reply_bytes(Reply(201, [("x-a", "1")], b"made"), None, close=False, head_only=False)
    assert raw.startswith(b"HTTP/1.1 201 Created\r\n") and raw.endswith(b"\r\n\r\nmade")
    assert b"content-length: 4" in raw
    seen: list[int] = []
    run = PolicyRun(
        EndpointDouble(), compile_policy({"on_http_request": [{"actions": [{"type": "deny"}]}]}), request()
    )  # type: ignore[arg-type]
    run.ex.on_complete.append(seen.append)
    run.finish(502)
    run.finish(0)
    assert seen == [502]


@pytest.mark.parametrize("secret", ["ab${cd", 'x${1+1}"y\\', "plain-secret"])
def test_a_module_secret_is_taken_literally(secret: str) -> None:
    import hashlib
    import hmac

    from hatchway.policy.model import Conn, EndpointInfo, Exchange, HttpRequest

    policy = modules.endpoint_policy(
        decode({"WebhookVerification": {"provider": "github", "secret": secret}})
    )
    assert policy is not None
    body = b'{"zen": "hi"}'
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()

    def exchange(signature: str) -> Exchange:
        req = HttpRequest(
            "POST", "https", "a", 443, "/hook", "", "1.1", [("X-Hub-Signature-256", signature)], body
        )
        return Exchange(Conn("127.0.0.1", 1), EndpointInfo("t", "https://a", "a", 443, "https"), req)

    assert policy.on_http_request(exchange(sig)) is None
    refused = policy.on_http_request(exchange(sig[:-1] + ("0" if sig[-1] != "0" else "1")))
    assert refused is not None and refused.error_code == "ERR_NGROK_3204"


def test_a_policy_that_does_not_parse_has_its_own_code() -> None:
    with pytest.raises(modules.ModuleError) as info:
        modules.endpoint_policy(decode({"TrafficPolicy": "on_http_request: [unclosed"}))
    assert info.value.code == modules.POLICY_UNPARSABLE


def test_mutual_tls_becomes_a_terminate_tls_rule_applied_at_the_handshake() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    o = decode({"MutualTLSCA": {"mutual_tls_ca": base64.b64encode(pem.encode()).decode()}})
    doc = modules.module_rules(o)
    assert doc["on_tcp_connect"] == [
        {
            "name": "module: mutual TLS",
            "actions": [{"type": "terminate-tls", "config": {"mutual_tls_certificate_authorities": [pem]}}],
        }
    ]
    policy = modules.endpoint_policy(o)
    assert policy is not None and policy.tls is not None and policy.empty  # nothing runs per request
    with pytest.raises(modules.ModuleError, match="not base64"):
        modules.endpoint_policy(decode({"MutualTLSCA": {"mutual_tls_ca": "%%%"}}))
