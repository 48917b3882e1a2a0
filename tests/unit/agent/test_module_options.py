"""Module options on the agent side: CLI flags, config keys (v2/v3) and SDK options down to ``Bind.Opts``.

Also the local validation that runs before anything connects: module values (CIDRs, ratios, regexes,
webhook providers) and the Traffic Policy, compiled with the edge's compiler, each problem reported with
its path: a spec field (``traffic_policy.on_http_request[1]...``), a flag (``--traffic-policy-file: ...``),
a config key (``tunnels.web.traffic_policy...``) or an SDK option name. No test here opens a socket: the
CLI's ``_run`` is replaced, and every SDK call is expected to fail before it would connect.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, cast

import pytest
import typer
from typer.testing import CliRunner

from hatchway.agent import sdk
from hatchway.agent.config import check_config, load_config
from hatchway.agent.runner import AgentOptions
from hatchway.agent.spec import EndpointSpec, policy_problems
from hatchway.cli import agent_cmd

GOOD_POLICY = "on_http_request:\n  - actions:\n      - type: deny\n"
BROKEN_POLICY = (
    "on_http_request:\n"
    "  - actions:\n"
    "      - type: deny\n"
    "  - actions:\n"
    "      - type: custom-response\n"
    "        config: {status_code: 9999}\n"
)
BROKEN_PATH = "on_http_request[1].actions[0].config.status_code"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# The CLI: flags -> spec -> Bind options, without connecting


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Run ``hatchway ARGS``; returns (result, specs the agent would start or None)."""
    monkeypatch.setenv("HATCHWAY_CONFIG", str(tmp_path / "no-such-config.yml"))
    started: list[list[EndpointSpec]] = []

    def fake_run(res: agent_cmd.Resolved, *_: object) -> None:
        started.append(res.specs)
        raise typer.Exit(0)

    monkeypatch.setattr(agent_cmd, "_run", fake_run)
    app = typer.Typer()
    app.command()(agent_cmd.http)
    app.add_typer(agent_cmd.config_app, name="config")

    def invoke(*args: str) -> tuple[Any, list[EndpointSpec] | None]:
        started.clear()
        argv = list(args)
        if argv and argv[0] == "http":
            argv += ["--server-addr", "127.0.0.1:1"]  # never dialled: _run is replaced
        result = CliRunner().invoke(app, argv)
        return result, (started[0] if started else None)

    return invoke


@pytest.mark.parametrize(
    ("flags", "key", "value"),
    [
        (
            ["--basic-auth", "u1:password1", "--basic-auth", "u2:password2"],
            "BasicAuth",
            {
                "credentials": [
                    {"username": "u1", "cleartext_password": "password1"},
                    {"username": "u2", "cleartext_password": "password2"},
                ]
            },
        ),
        (
            [
                "--cidr-allow",
                "10.0.0.0/8,192.168.0.0/16",
                "--cidr-deny",
                "10.1.0.0/16",
                "--cidr-deny",
                "::1/128",
            ],
            "IPRestriction",
            {"allow_cidrs": ["10.0.0.0/8", "192.168.0.0/16"], "deny_cidrs": ["10.1.0.0/16", "::1/128"]},
        ),
        (["--compression"], "Compression", {}),
        (["--circuit-breaker", "0.25"], "CircuitBreaker", {"error_threshold": 0.25}),
        (
            ["--ua-filter-allow", "^Mozilla", "--ua-filter-deny", "curl/.*,bot{1,3}"],
            "UserAgentFilter",
            {"allow": ["^Mozilla"], "deny": ["curl/.*", "bot{1,3}"]},
        ),
        (
            ["--verify-webhook", "github", "--verify-webhook-secret", "s3cret"],
            "WebhookVerification",
            {"provider": "github", "secret": "s3cret"},
        ),
        (["--websocket-tcp-converter"], "WebsocketTCPConverter", {}),
        (
            ["--oauth", "google", "--oauth-allow-email", "a@x.io,b@x.io", "--oauth-allow-domain", "x.io"],
            "OAuth",
            {"provider": "google", "allow_emails": ["a@x.io", "b@x.io"], "allow_domains": ["x.io"]},
        ),
        (
            ["--oidc", "https://issuer.example", "--oidc-client-id", "id", "--oidc-client-secret", "sec"],
            "OIDC",
            {"issuer_url": "https://issuer.example", "client_id": "id", "client_secret": "sec"},
        ),
        (
            ["--request-header-add", "X-A: 1", "--request-header-remove", "X-B,X-C"],
            "RequestHeaders",
            {"add": ["x-a:1"], "remove": ["x-b", "x-c"]},
        ),
        (
            ["--response-header-add", "X-D:2", "--response-header-remove", "Server"],
            "ResponseHeaders",
            {"add": ["x-d:2"], "remove": ["server"]},
        ),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_each_module_flag_reaches_bind(cli: Any, flags: list[str], key: str, value: object) -> None:
    result, specs = cli("http", "8080", *flags)
    assert result.exit_code == 0, result.output
    [spec] = specs
    assert spec.to_bind_opts()[key] == value


def test_mutual_tls_cas_and_traffic_policy_file_flags(cli: Any, tmp_path: Path) -> None:
    cas = write(tmp_path, "cas.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    policy = write(tmp_path, "policy.yml", GOOD_POLICY)
    result, specs = cli("http", "8080", "--mutual-tls-cas", str(cas), "--traffic-policy-file", str(policy))
    assert result.exit_code == 0, result.output
    opts = specs[0].to_bind_opts()
    assert base64.b64decode(opts["MutualTLSCA"]["mutual_tls_ca"]) == cas.read_bytes()
    assert opts["TrafficPolicy"] == GOOD_POLICY
    # ngrok's name before 3.13.0 still works.
    result, specs = cli("http", "8080", "--policy-file", str(policy))
    assert result.exit_code == 0 and specs[0].traffic_policy == GOOD_POLICY


def test_no_module_flags_send_no_modules(cli: Any) -> None:
    result, specs = cli("http", "8080")
    assert result.exit_code == 0, result.output
    opts = specs[0].to_bind_opts()
    assert set(opts) == {"Hostname", "Auth", "Subdomain", "HostHeaderRewrite", "LocalUrlScheme", "ProxyProto"}


def test_broken_policy_file_is_refused_with_its_path(cli: Any, tmp_path: Path) -> None:
    policy = write(tmp_path, "policy.yml", BROKEN_POLICY)
    result, specs = cli("http", "8080", "--traffic-policy-file", str(policy))
    assert result.exit_code == 1 and specs is None  # never reached the agent
    assert result.output.splitlines() == [
        f"ERROR: --traffic-policy-file: {BROKEN_PATH}: must be between 100 and 999, got 9999"
    ]


def test_policy_file_that_does_not_parse(cli: Any, tmp_path: Path) -> None:
    policy = write(tmp_path, "policy.yml", "on_http_request: [\n")
    result, specs = cli("http", "8080", "--traffic-policy-file", str(policy))
    assert result.exit_code == 1 and specs is None
    assert result.output.startswith("ERROR: --traffic-policy-file: is not valid YAML or JSON")


def test_bad_module_flags_name_the_flag(cli: Any, tmp_path: Path) -> None:
    result, specs = cli(
        "http",
        "8080",
        "--basic-auth",
        "nocolon",
        "--cidr-deny",
        "10.0.0.0/8,300.1.1.1/32",
        "--circuit-breaker",
        "-0.1",
        "--ua-filter-allow",
        "(unclosed",
        "--verify-webhook",
        "stripe",
        "--oauth",
        "myspace",
        "--mutual-tls-cas",
        str(tmp_path / "missing.pem"),
    )
    assert result.exit_code == 1 and specs is None
    lines = result.output.splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "--basic-auth[0]",
        "--cidr-deny[1]",
        "--circuit-breaker",
        "--ua-filter-allow[0]",
        "--verify-webhook-secret",
        "--oauth",
        "--mutual-tls-cas",
    ]
    assert "must be username:password" in lines[0]
    assert "not an IPv4 or IPv6 CIDR: '300.1.1.1/32'" in lines[1]
    assert "needs the signing secret" in lines[4]
    assert "unknown OAuth provider 'myspace'" in lines[5]


def test_flag_error_names() -> None:
    from hatchway.errors import ConfigError

    cases = {
        "schemes": "--scheme: m",
        "oauth_allow_emails": "--oauth-allow-email: m",
        "basic_auth[2]": "--basic-auth[2]: m",
        "ua_filter_deny[0]": "--ua-filter-deny[0]: m",
        "traffic_policy": "--traffic-policy-file: m",
        "traffic_policy.on_http_request[0].type": "--traffic-policy-file: on_http_request[0].type: m",
    }
    for field_path, expected in cases.items():
        assert agent_cmd.flag_error(ConfigError(field_path, "m")) == expected


def test_regex_flags_split_only_on_top_level_commas() -> None:
    split = agent_cmd._split_patterns
    assert split(["a,b", "c{1,3}d,[x,y],(p|q,r)", r"e\,f"]) == [
        "a",
        "b",
        "c{1,3}d",
        "[x,y]",
        "(p|q,r)",
        r"e\,f",
    ]
    assert split(None) == []


# --------------------------------------------------------------------------------------------------
# EndpointSpec.validate: module values and the policy, with paths


def test_policy_problems_keep_the_engine_paths() -> None:
    spec = EndpointSpec(addr="80", traffic_policy=BROKEN_POLICY)
    [error] = spec.validate()
    assert error.field_path == f"traffic_policy.{BROKEN_PATH}"
    assert error.message == "must be between 100 and 999, got 9999"
    assert [e.field_path for e in spec.validate("endpoints[3].")] == [
        f"endpoints[3].traffic_policy.{BROKEN_PATH}"
    ]


@pytest.mark.parametrize(
    ("document", "paths"),
    [
        ("on_http_request: [\n", [""]),
        ("[1, 2]", [""]),
        ("on_http_requests: []", ["on_http_requests"]),
        (
            '{"on_http_request": [{"expressions": ["req.method =="], "actions": [{"type": "bogus"}]}]}',
            ["on_http_request[0].expressions[0]", "on_http_request[0].actions[0].type"],
        ),
        ("on_http_response: [{actions: [{type: deny}]}]", ["on_http_response[0].actions[0].type"]),
        (GOOD_POLICY, []),
        ("", []),
    ],
)
def test_policy_problems(document: str, paths: list[str]) -> None:
    assert [p for p, _ in policy_problems(document)] == paths


def test_ngrok_actions_this_build_lacks_are_left_to_the_edge() -> None:
    # The edge may be newer than the agent; if it lacks the action too, it refuses with its own code.
    oauth = "on_http_request: [{actions: [{type: oauth, config: {provider: google}}]}]"
    assert policy_problems(oauth) == []
    mixed = (
        "on_http_request:\n"
        "  - actions: [{type: jwt-validation, config: {}}, {type: deny, config: {status_code: 7}}]\n"
        "  - actions: [{type: not-an-ngrok-action}]\n"
    )
    assert [p for p, _ in policy_problems(mixed)] == [
        "on_http_request[0].actions[1].config.status_code",
        "on_http_request[1].actions[0].type",
    ]


@pytest.mark.parametrize(
    ("fields", "path", "fragment"),
    [
        ({"cidr_allow": ["10.0.0.0/33"]}, "cidr_allow[0]", "not an IPv4 or IPv6 CIDR"),
        ({"cidr_deny": ["::1", "fe80::/10", "x"]}, "cidr_deny[2]", "'x'"),
        ({"circuit_breaker": 1.01}, "circuit_breaker", "between 0 and 1"),
        ({"circuit_breaker": float("nan")}, "circuit_breaker", "between 0 and 1"),
        ({"ua_filter_deny": ["ok", "[z-a]"]}, "ua_filter_deny[1]", "not a valid regular expression"),
        ({"verify_webhook": "nope", "verify_webhook_secret": "s"}, "verify_webhook", "known providers: "),
        ({"verify_webhook": "slack"}, "verify_webhook_secret", "needs the signing secret"),
        ({"verify_webhook_secret": "s"}, "verify_webhook_secret", "needs a webhook provider"),
        ({"verify_webhook": "sendgrid", "verify_webhook_secret": "not-a-key"}, "verify_webhook_secret", ""),
        ({"oauth_provider": "myspace"}, "oauth_provider", "unknown OAuth provider"),
        ({"oauth_allow_domains": ["x.io"]}, "oauth_allow_domains", "needs an OAuth provider"),
        ({"oauth_provider": "google", "oauth_client_id": "id"}, "oauth_client_id", "both"),
        ({"oidc_issuer_url": "https://i.example"}, "oidc_client_id", "required"),
        ({"oidc_scopes": ["email"]}, "oidc_scopes", "issuer URL"),
        ({"basic_auth": [f"u{i}:password{i}" for i in range(11)]}, "basic_auth", "at most 10"),
        ({"mutual_tls_cas": "/no/such/cas.pem"}, "mutual_tls_cas", "cannot read /no/such/cas.pem"),
    ],
)
def test_module_values_are_checked(fields: dict[str, Any], path: str, fragment: str) -> None:
    errors = {e.field_path: e.message for e in EndpointSpec(addr="80", **fields).validate()}
    assert path in errors, errors
    assert fragment in errors[path]


def test_valid_modules_pass() -> None:
    spec = EndpointSpec(
        addr="80",
        basic_auth=["user:password1"],
        cidr_allow=["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"],
        cidr_deny=["10.1.2.3/16"],  # host bits are masked, as the edge does
        circuit_breaker=0.5,
        ua_filter_allow=["^Mozilla/5\\.0"],
        ua_filter_deny=["(?i)bot"],
        verify_webhook="github",
        verify_webhook_secret="pa$$word",  # not format-checked: '$' may start ${...} on the edge
        oauth_provider="github",
        traffic_policy=GOOD_POLICY,
    )
    assert spec.validate() == []


def test_the_policy_engine_loads_only_for_a_policy() -> None:
    probe = textwrap.dedent(
        """
        import sys
        from hatchway.agent.spec import EndpointSpec
        EndpointSpec(addr="80", cidr_allow=["10.0.0.0/8"], ua_filter_deny=["x"], basic_auth=["a:bbbbbbbb"],
                     verify_webhook="github", verify_webhook_secret="s").validate()
        before = "hatchway.policy.engine" in sys.modules or "hatchway.policy.cel" in sys.modules
        EndpointSpec(addr="80", traffic_policy="on_http_request: []").validate()
        print(before, "hatchway.policy.engine" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["False", "True"]


# --------------------------------------------------------------------------------------------------
# Config files: v2 keys, v3 policies, and `config check`


def test_v2_module_keys_and_aliases(tmp_path: Path) -> None:
    write(tmp_path, "policy.yml", GOOD_POLICY)
    path = write(
        tmp_path,
        "c.yml",
        """
        version: 2
        tunnels:
          web:
            proto: http
            addr: 8080
            basic_auth: ["user:password1"]
            cidr_allow: [10.0.0.0/8]
            cidr_deny: [10.1.0.0/16]
            compression: true
            circuit_breaker: 0.3
            request_header: {add: ["x-a: 1"], remove: [x-b]}
            response_header: {add: ["x-c: 2"], remove: [x-d]}
            user_agent_filter: {allow: ["^ok"], deny: [bot]}
            webhook_verification: {provider: github, secret: s3cret}
            websocket_tcp_converter: true
            traffic_policy_file: policy.yml
          sso:
            proto: http
            addr: 8081
            oauth: {provider: google, scopes: [email], client_id: id, client_secret: sec}
            oidc: {issuer_url: "https://i.example", client_id: id, client_secret: sec, scopes: [openid]}
        """,
    )
    config = load_config([path])
    opts = config.endpoints["web"].to_bind_opts()
    assert opts["BasicAuth"] == {"credentials": [{"username": "user", "cleartext_password": "password1"}]}
    assert opts["IPRestriction"] == {"allow_cidrs": ["10.0.0.0/8"], "deny_cidrs": ["10.1.0.0/16"]}
    assert opts["Compression"] == {} and opts["WebsocketTCPConverter"] == {}
    assert opts["CircuitBreaker"] == {"error_threshold": 0.3}
    assert opts["RequestHeaders"] == {"add": ["x-a:1"], "remove": ["x-b"]}
    assert opts["ResponseHeaders"] == {"add": ["x-c:2"], "remove": ["x-d"]}
    assert opts["UserAgentFilter"] == {"allow": ["^ok"], "deny": ["bot"]}
    assert opts["WebhookVerification"] == {"provider": "github", "secret": "s3cret"}
    assert json.loads(opts["TrafficPolicy"]) == {"on_http_request": [{"actions": [{"type": "deny"}]}]}
    sso = config.endpoints["sso"].to_bind_opts()
    assert sso["OAuth"] == {
        "provider": "google",
        "scopes": ["email"],
        "client_id": "id",
        "client_secret": "sec",
    }
    assert sso["OIDC"] == {
        "issuer_url": "https://i.example",
        "client_id": "id",
        "client_secret": "sec",
        "scopes": ["openid"],
    }
    assert config.warnings == []


def test_v2_two_spellings_of_one_list_conflict(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yml",
        """
        version: 2
        tunnels:
          web: {proto: http, addr: 80, cidr_allow: [10.0.0.0/8], ip_restriction: {allow_cidrs: ["::/0"]}}
        """,
    )
    [line] = check_config([path])
    assert "tunnels.web.ip_restriction.allow_cidrs: tunnels.web.cidr_allow already sets this" in line


def test_config_check_lists_module_and_policy_errors_with_paths(tmp_path: Path) -> None:
    write(tmp_path, "broken.yml", BROKEN_POLICY)
    v2 = write(
        tmp_path,
        "v2.yml",
        """
        version: 2
        tunnels:
          web:
            proto: http
            addr: 8080
            user_agent_filter: {deny: ["(unclosed"]}
            verify_webhook: {provider: nope, secret: x}
            circuit_breaker: 3
            traffic_policy:
              on_http_request:
                - actions: [{type: deny, config: {status_code: 42}}]
          from-file:
            proto: http
            addr: 8081
            traffic_policy_file: broken.yml
        """,
    )
    lines = check_config([v2])
    found = {line.split(": ")[1]: line.split(": ", 2)[2] for line in lines}
    assert all(line.startswith(f"{v2}: ") for line in lines)
    assert list(found) == [
        "tunnels.web.circuit_breaker",
        "tunnels.web.user_agent_filter.deny[0]",
        "tunnels.web.verify_webhook.provider",
        "tunnels.web.traffic_policy.on_http_request[0].actions[0].config.status_code",
        "tunnels.from-file.traffic_policy_file",
    ]
    assert found["tunnels.from-file.traffic_policy_file"] == (
        f"{BROKEN_PATH}: must be between 100 and 999, got 9999"
    )
    v3 = write(
        tmp_path,
        "v3.yml",
        """
        version: 3
        endpoints:
          - name: a
            upstream: {url: 8080}
            traffic_policy:
              on_http_response: [{actions: [{type: deny}]}]
          - name: b
            upstream: {url: 8080}
            traffic_policy_file: broken.yml
          - name: fine
            upstream: {url: 8080}
            traffic_policy: {on_http_request: [{actions: [{type: oauth, config: {provider: google}}]}]}
        """,
    )
    assert [line.split(": ")[1] for line in check_config([v3])] == [
        "endpoints[0].traffic_policy.on_http_response[0].actions[0].type",
        "endpoints[1].traffic_policy_file",
    ]


def test_config_check_command_prints_the_errors(cli: Any, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yml",
        """
        version: 3
        endpoints:
          - name: a
            upstream: {url: 8080}
            traffic_policy:
              on_http_request: [{actions: [{type: custom-response, config: {status_code: 1}}]}]
        """,
    )
    result, _ = cli("config", "check", "--config", str(path))
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{path}: endpoints[0].traffic_policy.on_http_request[0].actions[0].config.status_code: "
        "must be between 100 and 999, got 1"
    ]


# --------------------------------------------------------------------------------------------------
# The SDK: ngrok-python's option and method names


def test_forward_options_map_to_the_spec() -> None:
    spec = sdk._spec_from_options(
        8080,
        {
            "basic_auth": "u:password1",
            "allow_cidr": "10.0.0.0/8",
            "ip_restriction_allow_cidrs": ["192.168.0.0/16"],
            "ip_restriction.deny_cidrs": "10.1.0.0/16",  # ngrok-python turns dots into underscores
            "compression": True,
            "circuit_breaker": 0.5,
            "request_header_add": "x-a:1",
            "request_header_remove": ["x-b"],
            "response_header_add": ["x-c:2"],
            "response_header_remove": "x-d",
            "allow_user_agent": "^ok",
            "deny_user_agent": ["bot"],
            "verify_webhook_provider": "github",
            "verify_webhook_secret": "s3cret",
            "websocket_tcp_conversion": True,
            "oauth_provider": "google",
            "oauth_allow_emails": "a@x.io",
            "mutual_tls_cas": [b"-----BEGIN CERTIFICATE-----\n"],
            "traffic_policy": GOOD_POLICY,
            "session_metadata": "ignored here",
            "metadata": None,  # None options are dropped, as ngrok-python does
        },
    )
    assert spec.basic_auth == ["u:password1"]
    assert spec.cidr_allow == ["10.0.0.0/8", "192.168.0.0/16"]
    assert spec.cidr_deny == ["10.1.0.0/16"]
    assert (spec.compression, spec.circuit_breaker, spec.websocket_tcp_converter) == (True, 0.5, True)
    assert spec.request_header_add == ["x-a:1"] and spec.response_header_remove == ["x-d"]
    assert (spec.ua_filter_allow, spec.ua_filter_deny) == (["^ok"], ["bot"])
    assert (spec.verify_webhook, spec.verify_webhook_secret) == ("github", "s3cret")
    assert (spec.oauth_provider, spec.oauth_allow_emails) == ("google", ["a@x.io"])
    assert spec.traffic_policy == GOOD_POLICY and spec.metadata == ""
    opts = spec.to_bind_opts()
    assert base64.b64decode(opts["MutualTLSCA"]["mutual_tls_ca"]) == b"-----BEGIN CERTIFICATE-----\n"
    assert spec.validate() == []


def test_forward_option_types_and_unknown_names() -> None:
    with pytest.raises(TypeError, match="compression"):
        sdk._spec_from_options(80, {"compression": "yes"})
    with pytest.raises(TypeError, match="circuit_breaker"):
        sdk._spec_from_options(80, {"circuit_breaker": "0.5"})
    with pytest.raises(TypeError, match="allow_cidrs"):
        sdk._spec_from_options(80, {"allow_cidrs": ["10.0.0.0/8"]})


def test_forward_refuses_bad_options_before_connecting() -> None:
    # server_addr points nowhere: the errors must come from local validation, not from a dial.
    with pytest.raises(ValueError) as caught:
        sdk.forward(
            8080,
            server_addr="127.0.0.1:1",
            deny_cidr=["banana"],
            allow_user_agent="(",
            verify_webhook_provider="github",
            traffic_policy=BROKEN_POLICY,
        )
    parts = [p.split(": ")[0] for p in str(caught.value).split("; ")]
    assert parts == [
        "deny_cidr[0]",
        "allow_user_agent[0]",
        "verify_webhook_secret",
        f"traffic_policy.{BROKEN_PATH}",
    ]


def _builder() -> sdk.HttpListenerBuilder:
    return sdk.Session(AgentOptions(server_addr="127.0.0.1:1")).http_endpoint()


def test_builder_methods_have_ngrok_python_names() -> None:
    b = (
        _builder()
        .basic_auth("u1", "password1")
        .basic_auth("u2", "password2")
        .allow_cidr("10.0.0.0/8")
        .deny_cidr("10.1.0.0/16")
        .compression()
        .circuit_breaker(0.2)
        .request_header("X-A", "1")
        .remove_request_header("X-B")
        .response_header("X-C", "2")
        .remove_response_header("X-D")
        .allow_user_agent("^ok")
        .deny_user_agent("bot")
        .webhook_verification("github", "s3cret")
        .websocket_tcp_conversion()
        .oauth("google", allow_emails=["a@x.io"])
        .mutual_tlsca(bytearray(b"pem"))
        .traffic_policy(GOOD_POLICY)
    )
    opts = b._spec.to_bind_opts()
    assert [c["username"] for c in opts["BasicAuth"]["credentials"]] == ["u1", "u2"]
    assert opts["IPRestriction"] == {"allow_cidrs": ["10.0.0.0/8"], "deny_cidrs": ["10.1.0.0/16"]}
    assert opts["Compression"] == {} and opts["CircuitBreaker"] == {"error_threshold": 0.2}
    assert opts["RequestHeaders"] == {"add": ["x-a:1"], "remove": ["x-b"]}
    assert opts["ResponseHeaders"] == {"add": ["x-c:2"], "remove": ["x-d"]}
    assert opts["UserAgentFilter"] == {"allow": ["^ok"], "deny": ["bot"]}
    assert opts["WebhookVerification"] == {"provider": "github", "secret": "s3cret"}
    assert opts["WebsocketTCPConverter"] == {}
    assert opts["OAuth"] == {"provider": "google", "allow_emails": ["a@x.io"]}
    assert base64.b64decode(opts["MutualTLSCA"]["mutual_tls_ca"]) == b"pem"
    assert opts["TrafficPolicy"] == GOOD_POLICY
    assert b.policy("x")._spec.traffic_policy == "x"  # the older name


def test_builder_refuses_a_broken_policy_before_connecting() -> None:
    builder = _builder().allow_cidr("nope").traffic_policy(BROKEN_POLICY)
    with pytest.raises(ValueError) as caught:
        builder.listen()
    assert str(caught.value) == (
        "allow_cidr()[0]: not an IPv4 or IPv6 CIDR: 'nope' (e.g. 192.0.2.0/24 or 2001:db8::/32); "
        f"traffic_policy().{BROKEN_PATH}: must be between 100 and 999, got 9999"
    )


def test_edge_refusal_becomes_value_error_with_the_code() -> None:
    import asyncio

    from hatchway.errors import RpcError

    class Refusing:
        async def start(self, specs: list[EndpointSpec]) -> list[object]:
            raise RpcError("the OAuth module is not supported by this edge", "ERR_NGROK_9027")

    with pytest.raises(ValueError) as caught:
        asyncio.run(sdk._start(cast(Any, Refusing()), EndpointSpec(addr="80", oauth_provider="google")))
    assert caught.value.args == (
        "failed to start endpoint",
        "the OAuth module is not supported by this edge",
        "ERR_NGROK_9027",
    )
