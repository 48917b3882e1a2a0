"""basic-auth: who gets in, the 401 a browser sees, the result variables, and refused configs."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from hatchway.policy.actions import basic_auth
from hatchway.policy.model import Conn, EndpointInfo, Exchange, HttpRequest, LiteralEnv, PolicyError

PATH = "on_http_request[0].actions[0]"
CREDS = ["alice:correct-horse", "bob:pa:ss:word"]


def exchange(*headers: tuple[str, str]) -> Exchange:
    return Exchange(
        conn=Conn("203.0.113.7", 50123),
        endpoint=EndpointInfo("ep_1", "https://a.test", "a.test", 443, "https"),
        req=HttpRequest("GET", "https", "a.test", 443, "/", "", "1.1", list(headers)),
    )


def basic(user_pass: bytes | str) -> tuple[str, str]:
    raw = user_pass.encode() if isinstance(user_pass, str) else user_pass
    return ("Authorization", "Basic " + base64.b64encode(raw).decode())


def action(**config: Any) -> basic_auth.BasicAuth:
    config.setdefault("credentials", CREDS)
    return basic_auth.compile(config, PATH, LiteralEnv(), "on_http_request")


@pytest.mark.parametrize(
    ("headers", "presented", "username", "authorized"),
    [
        ([basic("alice:correct-horse")], True, "alice", True),
        ([basic("bob:pa:ss:word")], True, "bob", True),  # the first ':' splits user from password
        ([("authorization", "basic " + basic("alice:correct-horse")[1][6:])], True, "alice", True),
        ([basic("alice:wrong-horse")], True, "alice", False),
        ([basic("bob:correct-horse")], True, "bob", False),  # another user's password
        ([basic("alice")], True, "alice", False),
        ([basic("émile:correct-horse")], True, "émile", False),
        ([], False, "", False),
        ([("Authorization", "Bearer abc")], False, "", False),
        ([("Authorization", "Basic !!!not-base64")], False, "", False),
    ],
)
def test_decision_and_results(
    headers: list[tuple[str, str]], presented: bool, username: str, authorized: bool
) -> None:
    ex = exchange(*headers)
    reply = action().run(ex)
    assert ex.results["basic_auth"] == {
        "credentials": {"presented": presented, "username": username, "authorized": authorized}
    }
    if authorized:
        assert reply is None
        assert ex.req.header("authorization") is not None  # passed upstream, as ngrok does
    else:
        assert reply is not None
        assert reply.status == 401
        assert ("WWW-Authenticate", 'Basic realm="ngrok"') in reply.headers
        assert reply.error_code == "" and reply.body  # ngrok has no error code for this


def test_realm_is_sent_and_quoted() -> None:
    reply = action(realm='my "staging" site').run(exchange())
    assert reply is not None
    assert ("WWW-Authenticate", 'Basic realm="my \\"staging\\" site"') in reply.headers


def test_utf8_credentials() -> None:
    ex = exchange(basic("zoë:mot-de-passe-é"))
    assert action(credentials=["zoë:mot-de-passe-é"]).run(ex) is None
    assert ex.results["basic_auth"]["credentials"]["username"] == "zoë"


def test_enforce_false_records_but_lets_traffic_through() -> None:
    ex = exchange(basic("alice:nope-nope"))
    assert action(enforce=False).run(ex) is None
    assert ex.results["basic_auth"]["credentials"]["authorized"] is False


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"credentials": None}, "credentials: is required"),
        ({"credentials": []}, "credentials: must not be empty"),
        ({"credentials": ["a:12345678", "b:1234567"]}, "credentials[1]: the password must be 8 to 128"),
        ({"credentials": ["a:" + "x" * 129]}, "credentials[0]: the password must be 8 to 128"),
        ({"credentials": ["no-colon-here"]}, "credentials[0]: must be 'username:password'"),
        ({"credentials": [":12345678"]}, "credentials[0]: the username must not be empty"),
        ({"credentials": [f"u{i}:12345678" for i in range(11)]}, "credentials: may hold at most 10"),
        ({"realm": "x" * 129}, "realm: must be at most 128"),
        ({"realm": "café"}, "realm: must be printable ASCII"),
        ({"realm": "a\nb"}, "realm: must be printable ASCII"),
        ({"realms": "x"}, "realms: unknown field"),
    ],
)
def test_bad_configs_are_refused_with_the_path(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(PolicyError) as err:
        action(**config)  # credentials=None reads as a missing field
    assert any(str(p).startswith(f"{PATH}.config.{problem}") for p in err.value.problems), err.value.problems


def test_ten_credentials_with_long_passwords_are_fine() -> None:
    creds = [f"user{i}:" + "p" * 128 for i in range(10)]
    a = action(credentials=creds)
    assert a.run(exchange(basic(creds[9]))) is None
