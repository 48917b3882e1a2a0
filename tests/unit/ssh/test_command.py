"""The SSH session's command and ``-R`` forward as Bind requests (``ssh/command.py``): the CLI's HTTP flags,
the domain from the bind address, the scheme from the port, and clear refusals."""

from __future__ import annotations

import base64

import pytest

from hatchway.ssh.command import CommandError, Forward, plan

ANY = Forward("localhost", 443, 443)


def test_cli_flags_become_the_same_bind_options() -> None:
    p = plan("http --basic-auth 'user:pass word 1' --request-header-add 'x-a: 1' --compression", ANY)
    ((proto, opts),) = p.binds
    assert proto == "https"
    assert opts["BasicAuth"] == {"credentials": [{"username": "user", "cleartext_password": "pass word 1"}]}
    assert opts["RequestHeaders"] == {"add": ["x-a:1"]}  # normalised as the CLI sends it
    assert "Compression" in opts
    assert not p.verbose


@pytest.mark.parametrize(
    ("fwd", "args", "schemes"),
    [
        (Forward("localhost", 443, 443), "", ["https"]),
        (Forward("localhost", 0, 443), "", ["https"]),
        (Forward("localhost", 80, 80), "", ["http"]),
        (Forward("localhost", 80, 80), "--schemes http", ["http"]),
        (Forward("localhost", 443, 443), "--scheme http,https", ["https", "http"]),
    ],
)
def test_scheme_from_port_unless_flagged(fwd: Forward, args: str, schemes: list[str]) -> None:
    assert [proto for proto, _ in plan(f"http {args}", fwd).binds] == schemes


def test_domain_from_the_bind_address() -> None:
    ((_, opts),) = plan("http", Forward("app.example.com", 443, 443)).binds
    assert opts["Hostname"] == "app.example.com"
    ((_, opts),) = plan("http", Forward("*.example.com", 443, 443)).binds
    assert opts["Hostname"] == "*.example.com"
    for local in ("localhost", "", "127.0.0.1", "0.0.0.0"):
        ((_, opts),) = plan("http", Forward(local, 443, 443)).binds
        assert opts["Hostname"] == ""
    with pytest.raises(CommandError, match="give one"):
        plan("http --domain b.example.com", Forward("a.example.com", 443, 443))


def test_verbose_is_taken_out_before_parsing() -> None:
    p = plan("http --verbose --basic-auth user:password1", ANY)
    assert p.verbose and "BasicAuth" in p.binds[0][1]


def test_inline_policy_plain_and_url_safe() -> None:
    doc = "on_http_request:\n  - actions:\n      - type: deny\n"
    encoded = base64.urlsafe_b64encode(doc.encode()).decode().rstrip("=")
    for arg in (
        f"--traffic-policy={encoded}",
        "--traffic-policy 'on_http_request: [{actions: [{type: deny}]}]'",
    ):
        ((_, opts),) = plan(f"http {arg}", ANY).binds
        assert "deny" in opts["TrafficPolicy"]


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("", "no command"),
        ("ftp", "unknown command 'ftp'"),
        ("tls", "tls endpoints are not served"),
        ("http --nope", "No such option: --nope"),
        ("http 8080", "unexpected extra argument"),
        ("http --basic-auth short", "--basic-auth[0]"),
        ("http --config /etc/passwd", "--config is not available over ssh"),
        ("http --traffic-policy-file /etc/passwd", "--traffic-policy-file"),
        ("http --mutual-tls-cas /etc/ssl/ca.pem", "--mutual-tls-cas is not available"),
        ("http --host-header=rewrite", "only your ssh client knows"),
        ("http --traffic-policy 'on_http_request: [{actions: [{type: nope}]}]'", "nope"),
        ("http 'unterminated", "cannot split"),
        ("tcp --cidr-allow 300.1.1.1/8", "--cidr-allow[0]: not an IPv4 or IPv6 CIDR"),
        ("tcp --config x.yml", "--config is not available over ssh"),
    ],
)
def test_problems_are_named(command: str, message: str) -> None:
    with pytest.raises(CommandError) as info:
        plan(command, ANY)
    assert message in "\n".join(info.value.lines)


def test_other_remote_ports_are_refused_for_http() -> None:
    with pytest.raises(CommandError, match="remote port 8080"):
        plan("http", Forward("localhost", 8080, 8080))


def test_tcp_takes_the_port_or_any() -> None:
    assert plan("tcp", Forward("localhost", 0, 443)).binds == [("tcp", {"Addr": ""})]
    assert plan("tcp", Forward("localhost", 10005, 10005)).binds == [("tcp", {"Addr": ":10005"})]
    ((_, opts),) = plan("tcp --remote-addr :10007 --cidr-deny 10.0.0.0/8", ANY).binds
    assert opts == {"Addr": ":10007", "IPRestriction": {"allow_cidrs": [], "deny_cidrs": ["10.0.0.0/8"]}}


def test_help_lists_flags_without_agent_only_ones() -> None:
    text = plan("http --help", ANY).help_text
    assert "--basic-auth" in text and "--traffic-policy " in text
    assert "--config" not in text and "--server-addr" not in text
