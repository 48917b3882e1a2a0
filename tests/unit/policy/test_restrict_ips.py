"""restrict-ips: who gets through, what a refused client sees, and which configs are refused at load."""

from __future__ import annotations

from typing import Any

import pytest

from hatchway.policy.actions import restrict_ips
from hatchway.policy.model import Conn, EndpointInfo, Exchange, HttpRequest, LiteralEnv, PolicyError

PATH = "on_http_request[0].actions[1]"


def exchange(client_ip: str) -> Exchange:
    return Exchange(
        conn=Conn(client_ip, 50123),
        endpoint=EndpointInfo("ep_1", "https://a.test", "a.test", 443, "https"),
        req=HttpRequest("GET", "https", "a.test", 443, "/", "", "1.1", [("X-Forwarded-For", "10.0.0.1")]),
    )


def action(**config: Any) -> restrict_ips.RestrictIps:
    return restrict_ips.compile(config, PATH, LiteralEnv(), "on_http_request")


LISTS = {
    "allow": ["192.0.2.0/24", "2001:db8::/32", "10.1.2.3"],
    "deny": ["192.0.2.128/25", "2001:db8:bad::/48"],
}


@pytest.mark.parametrize(
    ("config", "ip", "verdict", "cidr"),
    [
        (LISTS, "192.0.2.7", "allow", "192.0.2.0/24"),
        (LISTS, "192.0.2.200", "deny", "192.0.2.128/25"),  # deny wins over a matching allow
        (LISTS, "198.51.100.1", "deny", ""),  # in no allow list
        (LISTS, "10.1.2.3", "allow", "10.1.2.3"),  # a bare address is one host
        (LISTS, "10.1.2.4", "deny", ""),
        (LISTS, "2001:db8:1::5", "allow", "2001:db8::/32"),
        (LISTS, "2001:db8:bad::1", "deny", "2001:db8:bad::/48"),
        (LISTS, "::ffff:192.0.2.9", "allow", "192.0.2.0/24"),  # dual-stack sockets report mapped IPv4
        (LISTS, "not-an-ip", "deny", ""),
        ({"deny": ["203.0.113.0/24"]}, "203.0.113.9", "deny", "203.0.113.0/24"),
        ({"deny": ["203.0.113.0/24"]}, "198.51.100.1", "allow", ""),  # deny-only: the rest pass
        ({"deny": ["203.0.113.0/24"]}, "garbage", "allow", ""),
        ({"allow": ["0.0.0.0/0"]}, "2001:db8::1", "deny", ""),  # an IPv4 rule says nothing about IPv6
        ({"allow": ["0.0.0.0/0", "::/0"]}, "2001:db8::1", "allow", "::/0"),
        ({"allow": ["10.9.9.9/8"]}, "10.200.0.1", "allow", "10.9.9.9/8"),  # host bits are masked
        ({"allow": ["::ffff:192.0.2.0/120"]}, "192.0.2.50", "allow", "::ffff:192.0.2.0/120"),
    ],
)
def test_decision_and_results(config: dict[str, Any], ip: str, verdict: str, cidr: str) -> None:
    ex = exchange(ip)
    reply = action(**config).run(ex)
    assert ex.results["restrict_ips"] == {"action": verdict, "matched_cidr": cidr}
    if verdict == "allow":
        assert reply is None
    else:
        assert reply is not None
        assert (reply.status, reply.error_code, reply.body) == (403, "ERR_NGROK_3205", b"")
        assert ip in reply.message


def test_x_forwarded_for_is_never_used() -> None:
    ex = exchange("198.51.100.1")  # the request claims 10.0.0.1 in X-Forwarded-For
    assert action(allow=["10.0.0.0/8"]).run(ex) is not None


def test_enforce_false_records_but_lets_traffic_through() -> None:
    ex = exchange("198.51.100.1")
    assert action(allow=["192.0.2.0/24"], enforce=False).run(ex) is None
    assert ex.results["restrict_ips"]["action"] == "deny"


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"allow": ["10.0.0.0/8", "::/0", "10.0.0.0/33"]}, f"{PATH}.config.allow[2]: not a CIDR"),
        ({"deny": ["fe80::/129"]}, f"{PATH}.config.deny[0]: not a CIDR"),
        ({"allow": ["example.com"]}, f"{PATH}.config.allow[0]: not a CIDR"),
        ({"allow": "10.0.0.0/8"}, f"{PATH}.config.allow: must be a list of strings"),
        ({}, f"{PATH}.config: give at least one CIDR"),
        ({"allow": ["::/0"], "ip_policies": ["ipp_1"]}, f"{PATH}.config.ip_policies: IP policies"),
        ({"allow": ["::/0"], "enforce": "yes"}, f"{PATH}.config.enforce: must be true or false"),
        ({"allow": ["::/0"], "alow": []}, f"{PATH}.config.alow: unknown field"),
    ],
)
def test_bad_configs_are_refused_with_the_path(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(PolicyError) as err:
        action(**config)
    assert any(str(p).startswith(problem) for p in err.value.problems), err.value.problems


def test_every_bad_entry_is_reported_at_once() -> None:
    with pytest.raises(PolicyError) as err:
        action(allow=["x", "10.0.0.0/8", "y"], deny=["z"])
    assert [p.path.rsplit(".", 1)[1] for p in err.value.problems] == ["allow[0]", "allow[2]", "deny[0]"]
