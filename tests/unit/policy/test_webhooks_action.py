"""verify-webhook: the endpoint-verification handshakes the edge answers itself, and the config it refuses.

Challenges are computed here from the providers' documentation (Zoom ``endpoint.url_validation``, Twitter
CRC, Worldline's GET echo, Xero intent-to-receive), independently of the implementation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hatchway.policy.actions import CATALOGUE, compiler, verify_webhook
from hatchway.policy.model import (
    Conn,
    EndpointInfo,
    Exchange,
    Expression,
    HttpRequest,
    LiteralEnv,
    PolicyError,
    Problem,
    Template,
)
from hatchway.policy.webhooks import PROVIDERS

PATH = "on_http_request[0].actions[0]"
NOW = 1_750_000_000
SECRET = "zoom-secret-token"


def exchange(
    method: str, headers: list[tuple[str, str]], body: bytes | None = b"", query: str = "", wall: float = NOW
) -> Exchange:
    req = HttpRequest(method, "https", "hooks.example.test", 443, "/hook", query, "1.1", headers, body=body)
    return Exchange(
        conn=Conn("203.0.113.9", 40000),
        endpoint=EndpointInfo("ep_1", "https://hooks.example.test", "hooks.example.test", 443, "https"),
        req=req,
        wall=wall,
    )


def action(provider: str, secret: str = SECRET, **config: Any) -> verify_webhook.VerifyWebhook:
    return verify_webhook.compile(
        {"provider": provider, "secret": secret, **config}, PATH, LiteralEnv(), "on_http_request"
    )


def problems(config: Any, env: Any = None) -> list[Problem]:
    with pytest.raises(PolicyError) as info:
        verify_webhook.compile(config, PATH, env or LiteralEnv(), "on_http_request")
    return info.value.problems


# ---- Zoom endpoint.url_validation --------------------------------------------------------------------------


def zoom_headers(body: bytes, ts: int = NOW, secret: str = SECRET) -> list[tuple[str, str]]:
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return [("x-zm-request-timestamp", str(ts)), ("x-zm-signature", f"v0={digest}")]


ZOOM_VALIDATION = json.dumps(
    {
        "payload": {"plainToken": "qgg8vlvZRS6UYooatFL8Aw"},
        "event_ts": NOW * 1000,
        "event": "endpoint.url_validation",
    }
).encode()


@pytest.mark.parametrize("enforce", [True, False])
def test_zoom_url_validation_is_answered_by_the_edge(enforce: bool) -> None:
    ex = exchange(
        "POST", [("Content-Type", "application/json"), *zoom_headers(ZOOM_VALIDATION)], ZOOM_VALIDATION
    )
    reply = action("zoom", enforce=enforce).run(ex)
    assert reply is not None and reply.status == 200 and not reply.error_code
    assert ("content-type", "application/json") in reply.headers
    expected = hmac.new(SECRET.encode(), b"qgg8vlvZRS6UYooatFL8Aw", hashlib.sha256).hexdigest()
    assert json.loads(reply.body) == {"plainToken": "qgg8vlvZRS6UYooatFL8Aw", "encryptedToken": expected}
    assert ex.results["verify_webhook"] == {"verified": True}


def test_zoom_url_validation_without_a_valid_signature_is_not_answered() -> None:
    # Otherwise anyone could have the edge HMAC a token of their choice with the secret: a signing oracle.
    headers = zoom_headers(ZOOM_VALIDATION, secret="guess")
    ex = exchange("POST", headers, ZOOM_VALIDATION)
    reply = action("zoom").run(ex)
    assert reply is not None and (reply.status, reply.error_code) == (403, "ERR_NGROK_3204")
    assert SECRET.encode() not in reply.body and reply.body == b""


def test_zoom_ordinary_event_is_forwarded() -> None:
    body = b'{"event":"meeting.started","payload":{"object":{"id":"123"}}}'
    ex = exchange("POST", zoom_headers(body), body)
    assert action("zoom").run(ex) is None
    assert ex.results["verify_webhook"] == {"verified": True}


# ---- Twitter CRC -------------------------------------------------------------------------------------------


def test_twitter_crc_is_answered_by_the_edge() -> None:
    token = "9b4507b3-9040-4669-9ca3-6b94edb50553"
    ex = exchange("GET", [], b"", query=f"crc_token={token}&nonce=1")
    reply = action("twitter", "consumer-secret").run(ex)
    assert reply is not None and reply.status == 200
    assert ("content-type", "application/json") in reply.headers
    raw = hmac.new(b"consumer-secret", token.encode(), hashlib.sha256).digest()
    assert json.loads(reply.body) == {"response_token": "sha256=" + base64.b64encode(raw).decode()}
    assert ex.results["verify_webhook"] == {"verified": False}  # a CRC request carries no signature


def test_twitter_crc_token_that_could_be_an_event_body_is_not_signed() -> None:
    forged = '{"tweet_create_events":[]}'
    ex = exchange("GET", [], b"", query="crc_token=" + quote(forged))
    reply = action("twitter", "consumer-secret").run(ex)
    assert reply is not None and (reply.status, reply.error_code) == (403, "ERR_NGROK_3204")
    assert b"sha256" not in reply.body


def test_twitter_post_without_crc_is_checked_normally() -> None:
    ex = exchange("POST", [], b"{}", query="crc_token=abc")
    reply = action("twitter", "consumer-secret").run(ex)
    assert reply is not None and reply.status == 403


# ---- Worldline endpoint verification --------------------------------------------------------------------


def test_worldline_get_echoes_the_verification_header() -> None:
    ex = exchange("GET", [("X-GCS-Webhooks-Endpoint-Verification", "r4nd0m-v3rification")], b"")
    reply = action("worldline", "worldline-secret").run(ex)
    assert reply is not None and reply.status == 200 and reply.body == b"r4nd0m-v3rification"
    assert ("x-content-type-options", "nosniff") in reply.headers
    assert any(k == "content-type" and v.startswith("text/plain") for k, v in reply.headers)


# ---- Xero intent to receive -----------------------------------------------------------------------------

XERO_ITR = b'{"events":[],"lastEventSequence":0,"firstEventSequence":0,"entropy":"S0m3r4Nd0mt3xt"}'


def xero_signature(body: bytes, secret: str = "xero-key") -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def test_xero_intent_to_receive_correctly_signed_gets_a_bare_200() -> None:
    ex = exchange("POST", [("x-xero-signature", xero_signature(XERO_ITR))], XERO_ITR)
    reply = action("xero", "xero-key").run(ex)
    assert reply is not None and (reply.status, reply.body, reply.error_code) == (200, b"", "")
    assert ex.results["verify_webhook"] == {"verified": True}


def test_xero_intent_to_receive_incorrectly_signed_gets_401() -> None:
    ex = exchange("POST", [("x-xero-signature", xero_signature(XERO_ITR, "wrong"))], XERO_ITR)
    reply = action("xero", "xero-key").run(ex)
    assert reply is not None and (reply.status, reply.error_code) == (401, "ERR_NGROK_3204")


# ---- the action and its config --------------------------------------------------------------------------


def test_catalogue_entry_and_needs_body() -> None:
    assert CATALOGUE["verify-webhook"] == ("verify_webhook", frozenset({"on_http_request"}))
    compiled = compiler("verify-webhook")({"provider": "github", "secret": "x"}, PATH, LiteralEnv(), "x")
    assert compiled.needs_body is True


def test_unknown_provider_is_refused_with_its_path_and_the_known_ids() -> None:
    (problem,) = problems({"provider": "githib", "secret": "x"})
    assert problem.path == f"{PATH}.config.provider"
    assert "githib" in problem.message
    for known in ("github", "gitlab", "slack", "stripe", "twilio", "shopify", "svix", "clerk", "zoom"):
        assert known in problem.message


@pytest.mark.parametrize(
    ("config", "path", "fragment"),
    [
        ({"secret": "x"}, "provider", "required"),
        ({"provider": "github"}, "secret", "required"),
        ({"provider": "github", "secret": ""}, "secret", "empty"),
        ({"provider": "", "secret": "x"}, "provider", "unknown"),
        ({"provider": 7, "secret": "x"}, "provider", "string"),
        ({"provider": "github", "secret": ["x"]}, "secret", "string"),
        ({"provider": "github", "secret": "x", "enforce": "yes"}, "enforce", "true or false"),
        ({"provider": "github", "secret": "x", "verify": True}, "verify", "unknown field"),
        ({"provider": "sendgrid", "secret": "not a key"}, "secret", "public key"),
        ({"provider": "svix", "secret": "whsec_***"}, "secret", "base64"),
    ],
)
def test_config_problems_name_their_field(config: dict[str, Any], path: str, fragment: str) -> None:
    found = problems(config)
    assert [p.path for p in found] == [f"{PATH}.config.{path}"]
    assert fragment in found[0].message


def test_every_problem_is_reported_at_once() -> None:
    found = problems({"provider": "nope", "enforce": 1, "extra": 2})
    assert {p.path.rsplit(".", 1)[1] for p in found} == {"provider", "secret", "enforce", "extra"}


def test_sendgrid_key_for_another_curve_is_refused() -> None:
    der = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (problem,) = problems({"provider": "sendgrid", "secret": base64.b64encode(der).decode()})
    assert problem.path == f"{PATH}.config.secret"


def test_problem_messages_never_echo_the_secret() -> None:
    for problem in problems({"provider": "sendgrid", "secret": "super-secret-value"}):
        assert "super-secret-value" not in problem.message


@dataclass
class VarTemplate:
    """A ``${vars.secret}`` stand-in: rendered per exchange from ``ex.vars``."""

    source: str
    constant: bool = False

    def render(self, ex: Exchange) -> str:
        return str(ex.vars["secret"])


class VarEnv:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def template(self, text: str, path: str) -> Template:
        self.seen.append((text, path))
        return VarTemplate(text)

    def expression(self, text: str, path: str) -> Expression:
        raise AssertionError("verify-webhook has no expressions")


def test_secret_is_a_template_rendered_per_request() -> None:
    env = VarEnv()
    compiled = verify_webhook.compile(
        {"provider": "gitlab", "secret": "${vars.secret}"}, PATH, env, "on_http_request"
    )
    assert env.seen == [("${vars.secret}", f"{PATH}.config.secret")]
    for secret, verified in (("token-a", True), ("token-b", False)):
        ex = exchange("POST", [("X-Gitlab-Token", "token-a")], b"{}")
        ex.vars["secret"] = secret
        compiled.run(ex)
        assert ex.results["verify_webhook"] == {"verified": verified}


def test_templated_secret_is_not_checked_at_compile_time() -> None:
    # "${...}" may well render to a valid key; only the literal form can be judged at load.
    verify_webhook.compile({"provider": "sendgrid", "secret": "${vars.key}"}, PATH, VarEnv(), "x")


def test_secret_that_fails_to_render_fails_closed() -> None:
    compiled = verify_webhook.compile({"provider": "gitlab", "secret": "${vars.secret}"}, PATH, VarEnv(), "x")
    ex = exchange("POST", [("X-Gitlab-Token", "anything")], b"{}")  # ex.vars has no "secret"
    reply = compiled.run(ex)
    assert reply is not None and (reply.status, reply.error_code) == (403, "ERR_NGROK_3204")


def test_template_errors_are_reported_with_the_secret_path() -> None:
    class Refusing(VarEnv):
        def template(self, text: str, path: str) -> Template:
            raise PolicyError([Problem(path, "undeclared reference to 'varz'")])

    (problem,) = problems({"provider": "github", "secret": "${varz.x}"}, Refusing())
    assert problem.path == f"{PATH}.config.secret"


def test_providers_ids_and_windows() -> None:
    required = {"github", "gitlab", "slack", "stripe", "twilio", "shopify", "svix", "clerk", "zoom"}
    assert required <= set(PROVIDERS)
    assert all(p.id == key for key, p in PROVIDERS.items())
    assert {k: p.window for k, p in PROVIDERS.items() if p.window is not None} == {
        "slack": 300,
        "stripe": 300,
        "mux": 300,
        "svix": 300,
        "clerk": 300,
        "standard_webhooks": 300,
        "zoom": 180,
        "sendgrid": 180,
    }
