"""Tests of ``hatchway.agent.config``: ngrok v2/v3 agent files, merging, durations and error reporting.

Every test writes its YAML under ``tmp_path``; nothing here reads the user's real configuration.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from hatchway.agent.config import (
    AgentConfig,
    ConfigErrors,
    FileConfigError,
    check_config,
    default_config_path,
    load_config,
    parse_duration,
)
from hatchway.agent.spec import Upstream
from hatchway.errors import ConfigError, HatchwayError


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def errors_of(paths: list[Path]) -> list[FileConfigError]:
    with pytest.raises(ConfigErrors) as info:
        load_config(paths)
    found = info.value.errors
    assert all(isinstance(e, FileConfigError) for e in found)
    return [e for e in found if isinstance(e, FileConfigError)]


def by_path(errors: list[FileConfigError]) -> dict[str, str]:
    return {e.field_path: e.message for e in errors}


# --------------------------------------------------------------------------------------------------
# The seed examples (shared/docs/seed-examples.md), as a v2 file and as a v3 file

SEED_V2 = """
version: "2"
authtoken: tok-v2
tunnels:
  random:
    proto: http
    addr: 8080
  static:
    proto: http
    addr: 80
    domain: example.hatchway.localhost
  own-domain:
    proto: http
    addr: 80
    domain: app.example.com
  two-users:
    proto: http
    addr: 80
    basic_auth: ["username1:password1", "username2:password2"]
  google:
    proto: http
    addr: 80
    oauth: {provider: google}
  https-upstream:
    proto: http
    addr: https://localhost:8443
  host-rewrite:
    proto: http
    addr: foo.local:80
    host_header: rewrite
  host-header-add:
    proto: http
    addr: 80
    request_headers: {add: ["host: localhost"]}
  non-local:
    proto: http
    addr: 192.168.1.2:80
  wildcard:
    proto: http
    addr: 80
    domain: '*.example.com'
  files:
    proto: http
    addr: "file:///var/log"
  both-schemes:
    proto: http
    addr: 80
    schemes: [http, https]
"""

SEED_V3 = """
version: 3
agent:
  authtoken: tok-v3
endpoints:
  - name: random
    url: https://
    upstream: {url: 8080}
  - name: static
    url: https://example.hatchway.localhost
    upstream: {url: 80}
  - name: own-domain
    url: app.example.com
    upstream: {url: 80}
  - name: two-users
    upstream: {url: 80}
    traffic_policy:
      on_http_request:
        - actions:
            - type: basic-auth
              config: {credentials: ["username1:password1", "username2:password2"]}
  - name: google
    upstream: {url: 80}
    traffic_policy:
      on_http_request: [{actions: [{type: oauth, config: {provider: google}}]}]
  - name: https-upstream
    upstream: {url: "https://localhost:8443"}
  - name: host-rewrite
    upstream: {url: "foo.local:80"}
    traffic_policy:
      on_http_request: [{actions: [{type: add-headers, config: {headers: {host: foo.local}}}]}]
  - name: host-header-add
    upstream: {url: 80}
    traffic_policy:
      on_http_request: [{actions: [{type: add-headers, config: {headers: {host: localhost}}}]}]
  - name: non-local
    upstream: {url: "192.168.1.2:80"}
  - name: wildcard
    url: 'https://*.example.com'
    upstream: {url: 80}
  - name: files
    upstream: {url: "file:///var/log"}
  - name: both-schemes
    url: http://both.example.com
    upstream: {url: 80}
"""

LOCAL_80 = Upstream("http", "localhost", 80)
# name -> (upstream, requested domain, schemes), identical for both formats
SEED_EXPECTED: dict[str, tuple[Upstream, str, list[str]]] = {
    "random": (Upstream("http", "localhost", 8080), "", ["https"]),
    "static": (LOCAL_80, "example.hatchway.localhost", ["https"]),
    "own-domain": (LOCAL_80, "app.example.com", ["https"]),
    "two-users": (LOCAL_80, "", ["https"]),
    "google": (LOCAL_80, "", ["https"]),
    "https-upstream": (Upstream("https", "localhost", 8443), "", ["https"]),
    "host-rewrite": (Upstream("http", "foo.local", 80), "", ["https"]),
    "host-header-add": (LOCAL_80, "", ["https"]),
    "non-local": (Upstream("http", "192.168.1.2", 80), "", ["https"]),
    "wildcard": (LOCAL_80, "*.example.com", ["https"]),
    "files": (Upstream("file", path="/var/log"), "", ["https"]),
}


@pytest.mark.parametrize("text", [SEED_V2, SEED_V3], ids=["v2", "v3"])
@pytest.mark.parametrize("name", list(SEED_EXPECTED))
def test_seed_examples_give_the_same_endpoints_in_both_formats(tmp_path: Path, text: str, name: str) -> None:
    config = load_config([write(tmp_path, "hatchway.yml", text)])
    spec = config.endpoints[name]
    upstream, domain, schemes = SEED_EXPECTED[name]
    assert spec.name == name
    assert spec.upstream() == upstream
    assert spec.requested_domain() == domain
    assert spec.url_schemes() == schemes
    assert spec.validate() == []


def test_seed_v2_module_options(tmp_path: Path) -> None:
    config = load_config([write(tmp_path, "hatchway.yml", SEED_V2)])
    eps = config.endpoints
    assert list(eps) == [*SEED_EXPECTED, "both-schemes"]  # order of the file
    assert config.version == 2
    assert config.settings.authtoken == "tok-v2"
    assert eps["two-users"].basic_auth == ["username1:password1", "username2:password2"]
    assert eps["google"].oauth_provider == "google"
    assert eps["host-rewrite"].host_header == "rewrite"
    assert eps["host-rewrite"].to_bind_opts()["HostHeaderRewrite"] is True
    assert eps["host-header-add"].request_header_add == ["host: localhost"]
    assert eps["both-schemes"].url_schemes() == ["http", "https"]
    assert config.unsupported == {}
    assert config.warnings == []


def test_seed_v3_policies_and_settings(tmp_path: Path) -> None:
    config = load_config([write(tmp_path, "hatchway.yml", SEED_V3)])
    eps = config.endpoints
    assert config.version == 3
    assert config.settings.authtoken == "tok-v3"
    policy = json.loads(eps["two-users"].traffic_policy)
    action = policy["on_http_request"][0]["actions"][0]
    assert action == {
        "type": "basic-auth",
        "config": {"credentials": ["username1:password1", "username2:password2"]},
    }
    assert eps["random"].url == "https://"
    assert eps["both-schemes"].url_schemes() == ["http"]
    assert eps["both-schemes"].requested_domain() == "both.example.com"


@pytest.mark.parametrize(
    ("text", "field_path"),
    [
        ("version: 2\ntunnels: {rel: {proto: http, addr: 'file://relative/dir'}}\n", "tunnels.rel.addr"),
        (
            "version: 3\nendpoints:\n  - {name: rel, upstream: {url: 'file://relative/dir'}}\n",
            "endpoints[0].upstream.url",
        ),
    ],
    ids=["v2", "v3"],
)
def test_relative_file_url_is_an_error_naming_the_key(tmp_path: Path, text: str, field_path: str) -> None:
    [error] = errors_of([write(tmp_path, "c.yml", text)])
    assert error.field_path == field_path
    assert "file:// paths must be absolute" in error.message


@pytest.mark.parametrize(
    ("url", "upstream", "protocol"),
    [
        (8080, Upstream("http", "localhost", 8080), "http1"),
        ("example.com", Upstream("http", "example.com", 80), "http1"),
        ("https://", Upstream("https", "localhost", 443), "http1"),
        ("https://:8443", Upstream("https", "localhost", 8443), "http1"),
        ("http://", Upstream("http", "localhost", 80), "http1"),
        ("https://api.local", Upstream("https", "api.local", 443), "http1"),
        ("localhost:443", Upstream("https", "localhost", 443), "http1"),
        (3000, Upstream("h2c", "localhost", 3000), "http2"),
    ],
)
def test_v3_upstream_url_forms(tmp_path: Path, url: object, upstream: Upstream, protocol: str) -> None:
    upstream_yaml = f"{{url: {json.dumps(url)}, protocol: {protocol}}}"
    text = f"version: 3\nendpoints:\n  - name: e\n    upstream: {upstream_yaml}\n"
    spec = load_config([write(tmp_path, "c.yml", text)]).endpoints["e"]
    assert spec.upstream() == upstream
    assert spec.upstream_protocol == protocol


def test_v3_upstream_proxy_protocol_and_endpoint_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yml",
        """
        version: 3
        endpoints:
          - name: e
            url: https://e.example.com
            bindings: [public]
            description: the one
            metadata: '{"team": "a"}'
            pooling_enabled: true
            upstream: {url: 8080, proxy_protocol: 2}
        """,
    )
    spec = load_config([path]).endpoints["e"]
    assert (spec.proxy_proto, spec.pooling_enabled, spec.metadata) == ("2", True, '{"team": "a"}')
    assert spec.to_bind_opts()["ProxyProto"] == 2


def test_v2_every_module_key_maps_to_the_spec(tmp_path: Path) -> None:
    write(tmp_path, "cas.pem", "not really a PEM; only its existence is checked\n")
    path = write(
        tmp_path,
        "c.yml",
        """
        version: 2
        tunnels:
          all:
            proto: http
            addr: 3000
            metadata: meta
            hostname: old.example.com
            inspect: false
            oauth: {provider: github, allow_emails: [a@x.io], allow_domains: [x.io]}
            ip_restriction: {allow_cidrs: [10.0.0.0/8, "::/0"], deny_cidrs: [10.1.0.0/16]}
            circuit_breaker: 0.5
            compression: true
            mutual_tls_cas: cas.pem
            request_header: {add: ["x-a: 1"], remove: [x-b]}
            response_header: {add: ["x-c: 2"], remove: [x-d]}
            user_agent_filter: {allow: ["^curl"], deny: [bot]}
            verify_webhook: {provider: github, secret: s3cret}
            websocket_tcp_converter: true
            proxy_proto: 1
            policy: {inbound: [{actions: [{type: deny}]}]}
            app_protocol: http2
            pooling_enabled: true
        """,
    )
    config = load_config([path])
    spec = config.endpoints["all"]
    expected: dict[str, Any] = {
        "metadata": "meta",
        "domain": "old.example.com",
        "inspect": False,
        "oauth_provider": "github",
        "oauth_allow_emails": ["a@x.io"],
        "oauth_allow_domains": ["x.io"],
        "cidr_allow": ["10.0.0.0/8", "::/0"],
        "cidr_deny": ["10.1.0.0/16"],
        "circuit_breaker": 0.5,
        "compression": True,
        "mutual_tls_cas": str(tmp_path / "cas.pem"),
        "request_header_add": ["x-a: 1"],
        "request_header_remove": ["x-b"],
        "response_header_add": ["x-c: 2"],
        "response_header_remove": ["x-d"],
        "ua_filter_allow": ["^curl"],
        "ua_filter_deny": ["bot"],
        "verify_webhook": "github",
        "verify_webhook_secret": "s3cret",
        "websocket_tcp_converter": True,
        "proxy_proto": "1",
        "upstream_protocol": "http2",
        "pooling_enabled": True,
    }
    assert {k: getattr(spec, k) for k in expected} == expected
    assert json.loads(spec.traffic_policy) == {"inbound": [{"actions": [{"type": "deny"}]}]}
    # The deprecated spellings still work, with a warning naming the key.
    assert [w.split(": ")[1] for w in config.warnings] == [
        "tunnels.all.hostname",
        "tunnels.all.policy",
        "tunnels.all.app_protocol",
    ]


# --------------------------------------------------------------------------------------------------
# Merging


def test_merge_scalars_override_lists_replace_tunnels_merge_by_name(tmp_path: Path) -> None:
    base = write(
        tmp_path,
        "base.yml",
        """
        version: 2
        authtoken: from-base
        log_level: debug
        web_allow_hosts: [a.example, b.example]
        tunnels:
          web: {proto: http, addr: 80, basic_auth: ["user:password1"], schemes: [http]}
          api: {proto: http, addr: 81}
        """,
    )
    over = write(
        tmp_path,
        "sub/over.yml",
        """
        authtoken: from-over
        web_allow_hosts: [c.example]
        tunnels:
          web: {proto: http, addr: 8080}
          extra: {proto: http, addr: 82}
        """,
    )
    config = load_config([base, over])
    s = config.settings
    assert (s.authtoken, s.log_level, s.web_allow_hosts) == ("from-over", "debug", ["c.example"])
    assert s.source_files == [base, over]
    assert list(config.endpoints) == ["web", "api", "extra"]
    web = config.endpoints["web"]
    # A tunnel named in two files is taken whole from the later file.
    assert (web.addr, web.basic_auth, web.schemes) == ("8080", [], ["https"])
    assert config.endpoints["api"].addr == "81"


def test_merge_v3_agent_keys_and_endpoint_list(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        "a.yml",
        """
        version: 3
        agent: {authtoken: a, connect_url: "edge.example:4443", log_format: json}
        endpoints: [{name: one, upstream: {url: 1}}, {name: two, upstream: {url: 2}}]
        """,
    )
    b = write(tmp_path, "b.yml", "agent: {authtoken: b}\nendpoints: [{name: three, upstream: {url: 3}}]\n")
    config = load_config([a, b])
    s = config.settings
    assert (s.authtoken, s.server_addr, s.log_format) == ("b", "edge.example:4443", "json")
    assert list(config.endpoints) == ["three"]


def test_errors_name_the_file_the_value_came_from(tmp_path: Path) -> None:
    a = write(
        tmp_path, "a.yml", "version: 2\ntunnels: {one: {proto: http, addr: 80, basic_auth: [nopass]}}\n"
    )
    b = write(tmp_path, "b.yml", "tunnels: {two: {proto: http, addr: 'file://rel'}}\nlog_level: loud\n")
    lines = check_config([a, b])
    assert lines == [
        f"{b}: log_level: must be one of debug, info, warn, error, crit, got 'loud'",
        f"{a}: tunnels.one.basic_auth[0]: must be username:password",
        f"{b}: tunnels.two.addr: file:// paths must be absolute, got 'file://rel' (try \"file://$(pwd)/rel\")",
    ]


# --------------------------------------------------------------------------------------------------
# Error reporting: everything at once, each with its path


def test_v2_every_error_in_one_file_is_reported_with_its_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.yml",
        """
        version: 2
        authtoken: [not, a, string]
        heartbeat_interval: 10 parsecs
        conect_timeout: 5s
        inspect_db_size: -5
        tunnels:
          web:
            proto: http
            adr: 80
            basic_auth: ["user1:password1", "nopass", "user3:short"]
            ip_restriction: {allow_cidrs: [10.0.0.0/8, banana]}
            schemes: [http, gopher]
            upstream_protocol: http3
            subdomain: foo
            compression: "yes"
            request_header: {add: ["no-colon"]}
            oauth: google
          rel:
            proto: http
            addr: "file://relative/dir"
            circuit_breaker: 2
            proxy_proto: 3
            domain: a.example
            hostname: b.example
          weird:
            proto: udp
            addr: 53
          bare: 8080
        endpoints: []
        """,
    )
    found = by_path(errors_of([path]))
    assert found == {
        "authtoken": "must be a string, got a list",
        "heartbeat_interval": "expected a duration such as 10s, 1m30s or 500ms, got '10 parsecs'",
        "conect_timeout": "unknown key 'conect_timeout' (did you mean 'connect_timeout'?)",
        "inspect_db_size": "must be a whole number of bytes (0 = 50 MB, -1 = off)",
        "endpoints": "a version 3 key (set version: 3, or use tunnels:)",
        "tunnels.web.adr": "unknown key 'adr' (did you mean 'addr'?)",
        "tunnels.web.basic_auth[1]": "must be username:password",
        "tunnels.web.basic_auth[2]": "the password must be 8 to 128 characters long",
        "tunnels.web.ip_restriction.allow_cidrs[1]": "not an IPv4 or IPv6 CIDR: 'banana'",
        "tunnels.web.schemes": "unknown scheme 'gopher' (use http, https)",
        "tunnels.web.upstream_protocol": "must be one of http1, http2, got 'http3'",
        "tunnels.web.subdomain": "subdomain is not supported: use domain: NAME.<the edge's base domain>",
        "tunnels.web.compression": "must be true or false, got 'yes'",
        "tunnels.web.request_header.add[0]": "must be 'name: value', got 'no-colon'",
        "tunnels.web.oauth": (
            "must be a mapping with the keys provider, allow_emails, allow_domains, scopes, client_id, "
            "client_secret, got 'google'"
        ),
        "tunnels.web.addr": "required: the local address to forward to (a port, host:port or URL)",
        "tunnels.rel.addr": (
            "file:// paths must be absolute, got 'file://relative/dir' (try \"file://$(pwd)/relative/dir\")"
        ),
        "tunnels.rel.circuit_breaker": "must be between 0 and 1",
        "tunnels.rel.proxy_proto": "must be 1 or 2",
        "tunnels.rel.hostname": "tunnels.rel.domain already sets this; keep only one of them",
        "tunnels.weird.proto": "must be http, tcp or tls, got 'udp'",
        "tunnels.bare": "must be a mapping (proto, addr, ...), got 8080",
    }


def test_v3_every_error_in_one_file_is_reported_with_its_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.yml",
        """
        version: 3
        authtoken: misplaced
        agent:
          connect_url: edge.example:443
          server_addr: other.example:443
          connect_cas: missing-ca.pem
          log: true
          metadata: {not: text}
        endpoints:
          - name: web
            upstream: {url: 8080, protocol: http3}
          - name: web
            upstream: {url: 8081}
          - url: https://x.example
            upstream: {url: "file://rel"}
          - name: noup
            upstrem: {url: 80}
          - name: policies
            traffic_policy: {on_http_request: []}
            traffic_policy_file: policy.yml
            upstream: {url: 80}
            bindings: [internal]
            agent_tls_termination: {server_certificate: x}
          - just a string
        """,
    )
    write(tmp_path, "policy.yml", "on_http_request: []\n")
    errors = errors_of([path])
    assert all(e.file == path for e in errors)
    assert by_path(errors) == {
        "authtoken": "in version 3 agent settings go under agent: (agent.authtoken)",
        "agent.server_addr": "agent.connect_url already sets this; keep only one of them",
        "agent.connect_cas": f"no such file: {tmp_path / 'missing-ca.pem'}",
        "agent.log": "must be stdout, stderr, false or a file path, got true",
        "agent.metadata": "must be a string, got a mapping",
        "endpoints[0].upstream.protocol": "must be one of http1, http2, got 'http3'",
        "endpoints[1].name": "the name 'web' is already used by endpoints[0].name",
        "endpoints[2].name": "required: the name that `hatchway start NAME` uses",
        "endpoints[2].upstream.url": "file:// paths must be absolute, got 'file://rel' (try \"file://$(pwd)/rel\")",
        "endpoints[3].upstrem": "unknown key 'upstrem' (did you mean 'upstream'?)",
        "endpoints[3].upstream": "required: where to forward, e.g. upstream: {url: 8080}",
        "endpoints[4].traffic_policy_file": (
            "endpoints[4].traffic_policy already sets this; keep only one of them"
        ),
        "endpoints[4].bindings[0]": "internal bindings are not supported by this agent for now: only public",
        "endpoints[4].agent_tls_termination": "only tls:// endpoints terminate TLS at the agent",
        "endpoints[5]": "must be a mapping (name, url, upstream, ...), got 'just a string'",
    }


def test_version_is_required_and_checked(tmp_path: Path) -> None:
    missing = write(tmp_path, "missing.yml", "authtoken: x\n")
    assert by_path(errors_of([missing])) == {"version": 'required: "2" or "3"'}
    wrong = write(tmp_path, "wrong.yml", "version: 2.0\n")
    assert by_path(errors_of([wrong])) == {"version": 'must be "2" or "3", got 2.0'}
    # The merged value counts: a later file may set it.
    assert load_config([missing, write(tmp_path, "v.yml", "version: '2'\n")]).version == 2


def test_str_of_config_errors_lists_every_error_one_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yml", "version: 9\nlog_format: xml\n")
    with pytest.raises(ConfigErrors) as info:
        load_config([path])
    assert isinstance(info.value, HatchwayError)
    assert info.value.code == ConfigError.code
    assert str(info.value).splitlines() == [
        f'{path}: version: must be "2" or "3", got 9',
        f"{path}: log_format: must be one of term, logfmt, json, got 'xml'",
    ]


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("version: 2\ntunnels:\n  web:\n    addr: 80\n   proto: http\n", 5, "invalid YAML"),
        ("version: 2\ntunnels:\n  w:\n    domain: *.example.com\n", 4, "a wildcard domain must be quoted"),
        ("version: 2\nauthtoken: a\nauthtoken: b\n", 3, "the key 'authtoken' is given twice"),
        ("version: 2\ntunnels: [unclosed\n", 3, "invalid YAML"),
    ],
    ids=["indentation", "unquoted-wildcard", "duplicate-key", "unclosed"],
)
def test_yaml_syntax_errors_name_the_file_and_line(tmp_path: Path, text: str, line: int, needle: str) -> None:
    path = write(tmp_path, "c.yml", text)
    [error] = errors_of([path])
    assert error.file == path
    assert error.line == line
    assert str(error).startswith(f"{path}: line {line}, column ")
    assert needle in error.message


def test_unreadable_files_are_all_reported_and_stop_the_check(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yml", "version: 2\ntunnels: {w: {proto: http}}\n")  # no addr: not reported
    listed = write(tmp_path, "list.yml", "- a\n- b\n")
    lines = check_config([good, tmp_path / "nope.yml", tmp_path, listed])
    assert lines == [
        f"{tmp_path / 'nope.yml'}: cannot read the configuration: file not found",
        f"{tmp_path}: cannot read the configuration: is a directory, not a file",
        f"{listed}: the top level must be a mapping (key: value lines), got a list",
    ]


def test_no_files_or_empty_files_give_the_defaults(tmp_path: Path) -> None:
    for config in (load_config([]), load_config([write(tmp_path, "empty.yml", "# nothing yet\n")])):
        assert config.endpoints == {}
        assert config.version is None
        s = config.settings
        assert (s.heartbeat_interval, s.heartbeat_tolerance, s.connect_timeout) == (10.0, 15.0, 10.0)
        assert (s.root_cas, s.web_addr, s.log, s.log_level, s.console_ui) == (
            "trusted",
            "127.0.0.1:4040",
            "",
            "info",
            "iftty",
        )
    assert check_config([]) == []


# --------------------------------------------------------------------------------------------------
# Settings, durations, paths


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (2.5, 2.5),
        ("10s", 10.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("2h45m", 9900.0),
        ("250us", 0.00025),
        ("0", 0.0),
        ("3", 3.0),
        (" 7s ", 7.0),
        ("-1s", -1.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "abc", "10 s", "1x", "s", "1m30", "nan", "inf", True, None, [1]])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(value, "agent.heartbeat_interval")
    assert info.value.field_path == "agent.heartbeat_interval"
    assert "expected a duration" in info.value.message


def test_durations_in_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yml",
        "version: 3\nagent: {heartbeat_interval: 1m30s, heartbeat_tolerance: 20, connect_timeout: 500ms}\n",
    )
    s = load_config([path]).settings
    assert (s.heartbeat_interval, s.heartbeat_tolerance, s.connect_timeout) == (90.0, 20.0, 0.5)
    zero = write(tmp_path, "z.yml", "version: 2\nheartbeat_interval: 0s\n")
    assert by_path(errors_of([zero])) == {"heartbeat_interval": "must be longer than zero"}


def test_settings_values_and_relative_paths(tmp_path: Path) -> None:
    write(tmp_path, "conf/ca.pem", "PEM\n")
    path = write(
        tmp_path,
        "conf/c.yml",
        """
        version: 2
        server_addr: edge.example:443
        root_cas: ca.pem
        metadata: hi
        log: logs/agent.log
        log_level: warn
        log_format: logfmt
        web_addr: false
        console_ui: false
        inspect_db_size: -1
        api_key: k
        region: eu
        """,
    )
    config = load_config([path])
    s = config.settings
    assert s.server_addr == "edge.example:443"
    assert s.root_cas == str(tmp_path / "conf" / "ca.pem")
    assert s.log == str(tmp_path / "conf" / "logs" / "agent.log")
    assert (s.metadata, s.log_level, s.log_format, s.web_addr) == ("hi", "warn", "logfmt", "false")
    assert (s.console_ui, s.inspect_db_size, s.api_key) == ("false", -1, "k")
    assert config.warnings == [f"{path}: region: accepted for ngrok compatibility; Hatchway ignores it"]


@pytest.mark.parametrize(("value", "stored"), [("stdout", "stdout"), ("false", "false"), (False, "false")])
def test_log_targets(tmp_path: Path, value: object, stored: str) -> None:
    path = write(tmp_path, "c.yml", f"version: 2\nlog: {json.dumps(value)}\n")
    assert load_config([path]).settings.log == stored


def test_v3_traffic_policy_file_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path,
        "conf/policies/auth.yml",
        """
        on_http_request:
          - expressions: ["req.url.path.startsWith('/admin')"]
            actions: [{type: deny, config: {status_code: 403}}]
        """,
    )
    path = write(
        tmp_path,
        "conf/hatchway.yml",
        """
        version: 3
        endpoints:
          - name: web
            traffic_policy_file: policies/auth.yml
            upstream: {url: 8080}
          - name: missing
            traffic_policy_file: policies/nope.yml
            upstream: {url: 8080}
        """,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert check_config([path]) == [
        f"{path}: endpoints[1].traffic_policy_file: cannot read {tmp_path / 'conf/policies/nope.yml'}: "
        "file not found"
    ]
    write(tmp_path, "conf/policies/nope.yml", "on_http_request: []\n")
    web = load_config([path]).endpoints["web"]
    assert json.loads(web.traffic_policy) == {
        "on_http_request": [
            {
                "expressions": ["req.url.path.startsWith('/admin')"],
                "actions": [{"type": "deny", "config": {"status_code": 403}}],
            }
        ]
    }


def test_policy_file_with_bad_yaml_names_that_file_and_line(tmp_path: Path) -> None:
    policy = write(tmp_path, "p.yml", "on_http_request:\n  - actions: [\n")
    path = write(
        tmp_path,
        "c.yml",
        "version: 3\nendpoints: [{name: w, traffic_policy_file: p.yml, upstream: {url: 1}}]\n",
    )
    [error] = errors_of([path])
    assert error.field_path == "endpoints[0].traffic_policy_file"
    assert error.message.startswith(f"{policy}: line 3, column 1: invalid YAML")


# --------------------------------------------------------------------------------------------------
# Unsupported tunnels, selection, defaults


def unsupported_config(tmp_path: Path) -> AgentConfig:
    return load_config(
        [
            write(
                tmp_path,
                "c.yml",
                """
                version: 2
                tunnels:
                  web: {proto: http, addr: 80}
                  ssh: {proto: tcp, addr: 22, remote_addr: "1.tcp.example:12345"}
                  tls: {proto: tls, addr: 443, domain: t.example, terminate_at: edge}
                  labeled: {labels: [edge=edghts_1], addr: 81}
                """,
            )
        ]
    )


def test_tls_and_labeled_tunnels_load_but_cannot_start_tcp_ones_can(tmp_path: Path) -> None:
    config = unsupported_config(tmp_path)
    assert list(config.endpoints) == ["web", "ssh"]
    assert config.endpoints["ssh"].proto == "tcp"
    assert config.endpoints["ssh"].remote_addr == "1.tcp.example:12345"
    assert {n: u.kind for n, u in config.unsupported.items()} == {"tls": "tls", "labeled": "labeled"}
    assert list(config.select(["web", "ssh"])) == ["web", "ssh"]
    with pytest.raises(ConfigErrors) as info:
        config.select(["web", "tls"])
    [error] = info.value.errors
    assert str(error) == (
        f"{tmp_path / 'c.yml'}: tunnels.tls.proto: tls tunnels are not supported by this agent for now: "
        "only http and tcp tunnels are supported"
    )
    with pytest.raises(ConfigErrors) as info:
        config.select(all_endpoints=True)
    assert [e.field_path for e in info.value.errors] == ["tunnels.tls.proto", "tunnels.labeled.labels"]


def test_unsupported_tunnels_still_have_their_keys_checked(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yml",
        """
        version: 2
        tunnels:
          ssh: {proto: tcp, addr: 22, domain: x.example, ip_restriction: {allow_cidrs: [x]}}
        """,
    )
    assert by_path(errors_of([path])) == {
        "tunnels.ssh.domain": "unknown key 'domain'",
        "tunnels.ssh.ip_restriction.allow_cidrs[0]": "not an IPv4 or IPv6 CIDR: 'x'",
    }


def test_select_unknown_name_suggests_the_closest(tmp_path: Path) -> None:
    config = unsupported_config(tmp_path)
    with pytest.raises(ConfigErrors) as info:
        config.select(["wbe", "zzz"])
    assert str(info.value).splitlines() == [
        "no endpoint or tunnel named 'wbe'; did you mean 'web'?",
        "no endpoint or tunnel named 'zzz' (defined: web, ssh, tls, labeled)",
    ]


def test_old_ngrok_keys_get_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yml", "version: 2\ntunnels: {w: {proto: http, addr: 80, bind_tls: true}}\n")
    assert by_path(errors_of([path])) == {
        "tunnels.w.bind_tls": "bind_tls is ngrok 2's; use schemes: [https] or [http, https]"
    }


def test_v3_tunnels_are_accepted_with_a_warning_and_names_are_shared(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yml",
        """
        version: 3
        tunnels: {old: {proto: http, addr: 80}}
        endpoints: [{name: new, upstream: {url: 81}}]
        """,
    )
    config = load_config([path])
    assert list(config.endpoints) == ["old", "new"]
    assert config.warnings == [f"{path}: tunnels: tunnels is deprecated in version 3; use endpoints"]
    clash = write(
        tmp_path,
        "clash.yml",
        "version: 3\ntunnels: {a: {proto: http, addr: 80}}\nendpoints: [{name: a, upstream: {url: 1}}]\n",
    )
    assert by_path(errors_of([clash])) == {"endpoints[0].name": "the name 'a' is already used by tunnels.a"}


def test_odd_tunnel_names_are_quoted_in_paths(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yml", "version: 2\ntunnels:\n  'my app': {proto: http, addr: 80, inspect: 1}\n")
    assert by_path(errors_of([path])) == {'tunnels["my app"].inspect': "must be true or false, got 1"}


def test_default_config_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HATCHWAY_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_config_path() == tmp_path / ".config" / "hatchway" / "hatchway.yml"
    monkeypatch.setenv("HATCHWAY_CONFIG", str(tmp_path / "x.yml"))
    assert default_config_path() == tmp_path / "x.yml"
