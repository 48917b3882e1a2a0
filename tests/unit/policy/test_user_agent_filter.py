"""user-agent-filter: the seed's User Agent Filter module semantics, its 403, and refused configs."""

from __future__ import annotations

from typing import Any

import pytest

from hatchway.policy.actions import user_agent_filter
from hatchway.policy.model import Conn, EndpointInfo, Exchange, HttpRequest, LiteralEnv, PolicyError

PATH = "on_http_request[0].actions[0]"

# The example from ngrok's module docs: Google bots are denied except Google Images.
GOOGLE = {"allow": ["(?i)google-images"], "deny": ["(?i)google", "[Bb]ing"]}
# The module docs' "try it out" lists.
TRY = {"allow": [r"(GoingMerry/(\d)+.(\d)+)", r"(GomuGomu/(\d)+.(\d)+)"], "deny": [r"(Xebec/(\d)+.(\d)+)"]}


def exchange(*user_agents: str) -> Exchange:
    return Exchange(
        conn=Conn("203.0.113.7", 50123),
        endpoint=EndpointInfo("ep_1", "https://a.test", "a.test", 443, "https"),
        req=HttpRequest(
            "GET", "https", "a.test", 443, "/", "", "1.1", [("User-Agent", u) for u in user_agents]
        ),
    )


def action(**config: Any) -> user_agent_filter.UserAgentFilter:
    return user_agent_filter.compile(config, PATH, LiteralEnv(), "on_http_request")


@pytest.mark.parametrize(
    ("config", "user_agents", "allowed", "matched"),
    [
        (GOOGLE, ["Mozilla/5.0 (compatible; Googlebot/2.1)"], False, "(?i)google"),
        (GOOGLE, ["Google-Images/1.0"], True, "(?i)google-images"),  # allow wins over deny
        (GOOGLE, ["bingbot/2.0"], False, "[Bb]ing"),
        (GOOGLE, ["curl/8.5.0"], True, ""),  # matches no deny rule
        (GOOGLE, [], False, ""),  # a missing User-Agent is denied...
        (GOOGLE, [""], False, ""),  # ...and so is an empty one
        ({**GOOGLE, "allow": ["^$"]}, [], True, "^$"),  # unless an allow rule matches ""
        (TRY, ["GoingMerry/1.1"], True, TRY["allow"][0]),
        (TRY, ["GomuGomu/1.1"], True, TRY["allow"][1]),
        (TRY, ["Xebec/1.1"], False, TRY["deny"][0]),
        (TRY, ["TwitterBot/1.1"], True, ""),
        (TRY, [], False, ""),
        ({"allow": ["^curl/"]}, ["curl/8.5.0"], True, "^curl/"),
        ({"allow": ["^curl/"]}, ["Wget/1.21"], False, ""),  # allow-only: everything else is denied
        ({"deny": ["bot"]}, ["friendly crawler"], True, ""),
        ({"deny": ["bot"]}, ["some-bot/1"], False, "bot"),
        ({"deny": ["bot"]}, ["Mozilla/5.0", "evil-bot/1"], True, ""),  # only the first header counts
        ({"deny": ["bot"]}, ["evil-bot/1", "Mozilla/5.0"], False, "bot"),
    ],
)
def test_decision(config: dict[str, Any], user_agents: list[str], allowed: bool, matched: str) -> None:
    ex = exchange(*user_agents)
    reply = action(**config).run(ex)
    assert ex.results["user_agent_filter"] == {"decision": "allow" if allowed else "deny", "matched": matched}
    if allowed:
        assert reply is None
    else:
        assert reply is not None
        assert (reply.status, reply.error_code, reply.body) == (403, "ERR_NGROK_3211", b"")
        assert "user-agent" in reply.message


def test_enforce_false_records_but_lets_traffic_through() -> None:
    ex = exchange("bingbot/2.0")
    assert action(**GOOGLE, enforce=False).run(ex) is None
    assert ex.results["user_agent_filter"]["decision"] == "deny"


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"allow": ["ok", "(unclosed"]}, "allow[1]: not a valid regular expression"),
        ({"deny": ["*bad"]}, "deny[0]: not a valid regular expression"),
        ({"allow": "curl"}, "allow: must be a list of strings"),
        ({}, ": give at least one regular expression"),
        ({"deny": ["x"], "block": ["y"]}, ".block: unknown field"),
    ],
)
def test_bad_configs_are_refused_with_the_path(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(PolicyError) as err:
        action(**config)
    sep = "" if problem.startswith((":", ".")) else "."
    assert any(str(p).startswith(f"{PATH}.config{sep}{problem}") for p in err.value.problems), (
        err.value.problems
    )
