"""verify-webhook, provider by provider: each request is signed here the way the provider documents it.

The signers below are written from the providers' documentation with hmac/hashlib/cryptography directly,
independently of ``hatchway.policy.webhooks``; Svix / Standard Webhooks are also signed with the
``standardwebhooks`` package. Every provider is then put through the same table of properties: a good
signature passes, a changed body / wrong secret / missing header fails with 403 ERR_NGROK_3204, a
timestamp outside the window (past or future) fails, and ``enforce: false`` lets everything through.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from standardwebhooks.webhooks import Webhook

from hatchway.policy.actions import verify_webhook
from hatchway.policy.model import Conn, EndpointInfo, Exchange, HttpRequest, LiteralEnv, Reply
from hatchway.policy.webhooks import PROVIDERS, verify

PATH = "on_http_request[0].actions[0]"
NOW = 1_750_000_000
HOST = "hooks.example.test"
URL = f"https://{HOST}/hook"
BODY = b'{"event":"thing.happened","id":"evt_123","amount":4200}'

SVIX_SECRET = "whsec_" + base64.b64encode(b"svix signing key, 24 byte").decode()
SVIX_WRONG = "whsec_" + base64.b64encode(b"another svix key ........").decode()

_SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
_SENDGRID_OTHER = ec.generate_private_key(ec.SECP256R1())


def spki_b64(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def hexmac(key: str | bytes, msg: bytes, digest: Any = hashlib.sha256) -> str:
    return hmac.new(key.encode() if isinstance(key, str) else key, msg, digest).hexdigest()


def b64mac(key: str | bytes, msg: bytes, digest: Any = hashlib.sha256) -> str:
    raw = hmac.new(key.encode() if isinstance(key, str) else key, msg, digest).digest()
    return base64.b64encode(raw).decode()


@dataclass
class Signed:
    """What a provider sends: its headers and body (the URL is always ``URL`` unless a query is added)."""

    headers: list[tuple[str, str]]
    body: bytes = BODY
    content_type: str = "application/json"
    method: str = "POST"
    query: str = ""


# A signer gets (secret, body, timestamp) and returns the request as the provider would send it.
Signer = Callable[[str, bytes, int], Signed]


@dataclass
class Case:
    provider: str
    sign: Signer
    required: tuple[str, ...]  # headers whose absence must fail the check
    secret: str = "It's a Secret to Everybody"
    wrong_secret: str = "not the secret"
    window: float | None = None  # replay window in seconds; None when the scheme has no timestamp
    signs_body: bool = True
    body: bytes = BODY
    extra: dict[str, Any] = field(default_factory=dict)


# ---- the providers' schemes, as their documentation describes them ------------------------------------


def github(secret: str, body: bytes, ts: int) -> Signed:
    return Signed([("X-Hub-Signature-256", "sha256=" + hexmac(secret, body))])


def github_sha1_only(secret: str, body: bytes, ts: int) -> Signed:
    return Signed([("X-Hub-Signature", "sha1=" + hexmac(secret, body, hashlib.sha1))])


def hub_sha256(secret: str, body: bytes, ts: int) -> Signed:  # Bitbucket
    return Signed([("X-Hub-Signature", "sha256=" + hexmac(secret, body))])


def intercom(secret: str, body: bytes, ts: int) -> Signed:
    return Signed([("X-Hub-Signature", "sha1=" + hexmac(secret, body, hashlib.sha1))])


def meta(secret: str, body: bytes, ts: int) -> Signed:
    return Signed([("X-Hub-Signature-256", "sha256=" + hexmac(secret, body))])


def shopify(secret: str, body: bytes, ts: int) -> Signed:
    return Signed([("X-Shopify-Hmac-Sha256", b64mac(secret, body))])


def heroku(secret: str, body: bytes, ts: int) -> Signed:
    return Signed([("Heroku-Webhook-Hmac-SHA256", b64mac(secret, body))])


def typeform(secret: str, body: bytes, ts: int) -> Signed:
    return Signed([("Typeform-Signature", "sha256=" + b64mac(secret, body))])


def dropbox(secret: str, body: bytes, ts: int) -> Signed:
    return Signed([("X-Dropbox-Signature", hexmac(secret, body))])


def launch_darkly(secret: str, body: bytes, ts: int) -> Signed:
    return Signed([("X-LD-Signature", hexmac(secret, body))])


def sentry(secret: str, body: bytes, ts: int) -> Signed:
    return Signed([("Sentry-Hook-Resource", "issue"), ("Sentry-Hook-Signature", hexmac(secret, body))])


def terraform(secret: str, body: bytes, ts: int) -> Signed:
    return Signed([("X-TFE-Notification-Signature", hexmac(secret, body, hashlib.sha512))])


def pagerduty(secret: str, body: bytes, ts: int) -> Signed:
    # Two signatures during a rotation: the old secret's first, then ours.
    old = hexmac("the previous secret", body)
    return Signed([("X-PagerDuty-Signature", f"v1={old},v1={hexmac(secret, body)}")])


def twitter(secret: str, body: bytes, ts: int) -> Signed:
    return Signed([("x-twitter-webhooks-signature", "sha256=" + b64mac(secret, body))])


def worldline(secret: str, body: bytes, ts: int) -> Signed:
    return Signed([("X-GCS-Signature", b64mac(secret, body)), ("X-GCS-KeyId", "key-1")])


def xero(secret: str, body: bytes, ts: int) -> Signed:
    return Signed([("x-xero-signature", b64mac(secret, body))])


def slack(secret: str, body: bytes, ts: int) -> Signed:
    sig = "v0=" + hexmac(secret, f"v0:{ts}:".encode() + body)
    return Signed([("X-Slack-Request-Timestamp", str(ts)), ("X-Slack-Signature", sig)])


def zoom(secret: str, body: bytes, ts: int) -> Signed:
    sig = "v0=" + hexmac(secret, f"v0:{ts}:".encode() + body)
    return Signed([("x-zm-request-timestamp", str(ts)), ("x-zm-signature", sig)])


def stripe(secret: str, body: bytes, ts: int) -> Signed:
    # Stripe sends one v1 per active secret (rolling a secret) and may add a v0 test-mode signature.
    ours = hexmac(secret, f"{ts}.".encode() + body)
    other = hexmac("whsec_rolled_away", f"{ts}.".encode() + body)
    return Signed([("Stripe-Signature", f"t={ts},v1={other},v1={ours},v0={'00' * 32}")])


def mux(secret: str, body: bytes, ts: int) -> Signed:
    return Signed([("Mux-Signature", f"t={ts},v1={hexmac(secret, f'{ts}.'.encode() + body)}")])


def svix_sign(prefix: str) -> Signer:
    def sign(secret: str, body: bytes, ts: int) -> Signed:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        msg_id = "msg_2Lh9KRb0pzN4LePd3XiA4AoqL7f"
        sig = b64mac(key, f"{msg_id}.{ts}.".encode() + body)
        # Several signatures, space separated: an unknown scheme and a stale one come first.
        value = f"v1a,{base64.b64encode(b'x' * 64).decode()} v1,{b64mac(b'stale', body)} v1,{sig}"
        return Signed(
            [(f"{prefix}-id", msg_id), (f"{prefix}-timestamp", str(ts)), (f"{prefix}-signature", value)]
        )

    return sign


def gitlab(secret: str, body: bytes, ts: int) -> Signed:
    return Signed([("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", secret)])


TWILIO_FORM = b"To=%2B15558675309&From=%2B15551234567&Body=Hello+there%21&AccountSid=AC123&Body=another"


def twilio(secret: str, body: bytes, ts: int) -> Signed:
    # The full URL, then the POST parameters sorted by name, each name followed by its (decoded) value.
    params = sorted(parse_qsl(body.decode(), keep_blank_values=True))
    data = URL + "".join(name + value for name, value in params)
    return Signed(
        [("X-Twilio-Signature", b64mac(secret, data.encode(), hashlib.sha1))],
        content_type="application/x-www-form-urlencoded",
    )


def square(secret: str, body: bytes, ts: int) -> Signed:
    return Signed([("x-square-hmacsha256-signature", b64mac(secret, URL.encode() + body))])


def sendgrid(secret: str, body: bytes, ts: int) -> Signed:
    key = _SENDGRID_KEY if secret == spki_b64(_SENDGRID_KEY) else _SENDGRID_OTHER
    sig = key.sign(str(ts).encode() + body, ec.ECDSA(hashes.SHA256()))
    return Signed(
        [
            ("X-Twilio-Email-Event-Webhook-Signature", base64.b64encode(sig).decode()),
            ("X-Twilio-Email-Event-Webhook-Timestamp", str(ts)),
        ]
    )


CASES = [
    Case("github", github, ("X-Hub-Signature-256",)),
    Case("bitbucket", hub_sha256, ("X-Hub-Signature",)),
    Case("intercom", intercom, ("X-Hub-Signature",)),
    Case("facebook_graph_api", meta, ("X-Hub-Signature-256",)),
    Case("facebook_messenger", meta, ("X-Hub-Signature-256",)),
    Case("instagram", meta, ("X-Hub-Signature-256",)),
    Case("whatsapp", meta, ("X-Hub-Signature-256",)),
    Case("shopify", shopify, ("X-Shopify-Hmac-Sha256",)),
    Case("heroku", heroku, ("Heroku-Webhook-Hmac-SHA256",)),
    Case("typeform", typeform, ("Typeform-Signature",)),
    Case("dropbox", dropbox, ("X-Dropbox-Signature",)),
    Case("launch_darkly", launch_darkly, ("X-LD-Signature",)),
    Case("sentry", sentry, ("Sentry-Hook-Signature",)),
    Case("terraform", terraform, ("X-TFE-Notification-Signature",)),
    Case("pagerduty", pagerduty, ("X-PagerDuty-Signature",)),
    Case("twitter", twitter, ("x-twitter-webhooks-signature",)),
    Case("worldline", worldline, ("X-GCS-Signature",)),
    Case("xero", xero, ("x-xero-signature",), body=b'{"events":[{"eventType":"UPDATE"}]}'),
    Case("slack", slack, ("X-Slack-Signature", "X-Slack-Request-Timestamp"), window=300),
    Case("zoom", zoom, ("x-zm-signature", "x-zm-request-timestamp"), window=180),
    Case("stripe", stripe, ("Stripe-Signature",), secret="whsec_stripe_test_secret", window=300),
    Case("mux", mux, ("Mux-Signature",), window=300),
    Case(
        "svix",
        svix_sign("svix"),
        ("svix-id", "svix-timestamp", "svix-signature"),
        SVIX_SECRET,
        SVIX_WRONG,
        window=300,
    ),
    Case(
        "clerk",
        svix_sign("svix"),
        ("svix-id", "svix-timestamp", "svix-signature"),
        SVIX_SECRET,
        SVIX_WRONG,
        window=300,
    ),
    Case(
        "standard_webhooks",
        svix_sign("webhook"),
        ("webhook-id", "webhook-timestamp", "webhook-signature"),
        SVIX_SECRET,
        SVIX_WRONG,
        window=300,
    ),
    Case("gitlab", gitlab, ("X-Gitlab-Token",), signs_body=False),
    Case("twilio", twilio, ("X-Twilio-Signature",), body=TWILIO_FORM),
    Case("square", square, ("x-square-hmacsha256-signature",)),
    Case(
        "sendgrid",
        sendgrid,
        ("X-Twilio-Email-Event-Webhook-Signature", "X-Twilio-Email-Event-Webhook-Timestamp"),
        secret=spki_b64(_SENDGRID_KEY),
        wrong_secret=spki_b64(_SENDGRID_OTHER),
        window=180,
    ),
]
IDS = [c.provider for c in CASES]
TIMED = [c for c in CASES if c.window is not None]


def signed_for(case: Case, ts: int = NOW) -> Signed:
    """The case's body, signed by the provider at ``ts``."""
    signed = case.sign(case.secret, case.body, ts)
    signed.body = case.body
    return signed


def request(signed: Signed) -> HttpRequest:
    headers = [("Content-Type", signed.content_type), ("User-Agent", "provider/1.0"), *signed.headers]
    return HttpRequest(
        signed.method, "https", HOST, 443, "/hook", signed.query, "1.1", headers, body=signed.body
    )


def exchange(req: HttpRequest, wall: float = NOW) -> Exchange:
    return Exchange(
        conn=Conn("203.0.113.9", 40000),
        endpoint=EndpointInfo("ep_1", f"https://{HOST}", HOST, 443, "https"),
        req=req,
        wall=wall,
    )


def action(provider: str, secret: str, **config: Any) -> verify_webhook.VerifyWebhook:
    return verify_webhook.compile(
        {"provider": provider, "secret": secret, **config}, PATH, LiteralEnv(), "on_http_request"
    )


def run(case: Case, signed: Signed, *, secret: str | None = None, wall: float = NOW, **config: Any) -> Any:
    ex = exchange(request(signed), wall)
    reply = action(case.provider, case.secret if secret is None else secret, **config).run(ex)
    return ex, reply


def assert_refused(ex: Exchange, reply: Reply | None, status: int = 403) -> None:
    assert ex.results["verify_webhook"] == {"verified": False}
    assert reply is not None
    assert (reply.status, reply.error_code, reply.body) == (status, "ERR_NGROK_3204", b"")
    assert reply.message


def status_for(case: Case) -> int:
    return 401 if case.provider == "xero" else 403  # Xero's intent-to-receive wants 401


def test_every_registered_provider_has_a_case() -> None:
    assert sorted(IDS) == sorted(PROVIDERS)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_valid_signature_passes(case: Case) -> None:
    ex, reply = run(case, signed_for(case))
    assert reply is None
    assert ex.results["verify_webhook"] == {"verified": True}


SIGNS_BODY = [c for c in CASES if c.signs_body]


@pytest.mark.parametrize("case", SIGNS_BODY, ids=[c.provider for c in SIGNS_BODY])
def test_tampered_body_is_refused(case: Case) -> None:
    signed = signed_for(case)
    signed.body = signed.body.replace(b"4200", b"9900").replace(b"there", b"THERE") + b" "
    ex, reply = run(case, signed)
    assert_refused(ex, reply, status_for(case))
    assert reply is not None and case.secret not in reply.message


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_wrong_secret_fails(case: Case) -> None:
    signed = signed_for(case)
    ex, reply = run(case, signed, secret=case.wrong_secret)
    assert_refused(ex, reply, status_for(case))
    assert reply is not None
    assert case.secret not in reply.message and case.wrong_secret not in reply.message


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_missing_header_fails(case: Case) -> None:
    for header in case.required:
        signed = signed_for(case)
        signed.headers = [(k, v) for k, v in signed.headers if k.lower() != header.lower()]
        ex, reply = run(case, signed)
        assert_refused(ex, reply, status_for(case))
        assert reply is not None and header.lower() in reply.message.lower()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_header_names_are_case_insensitive(case: Case) -> None:
    signed = signed_for(case)
    signed.headers = [(k.upper(), v) for k, v in signed.headers]
    assert run(case, signed)[1] is None


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_enforce_false_passes_through_unverified(case: Case) -> None:
    signed = signed_for(case)
    ex, reply = run(case, signed, secret=case.wrong_secret, enforce=False)
    assert reply is None
    assert ex.results["verify_webhook"] == {"verified": False}


@pytest.mark.parametrize("case", TIMED, ids=[c.provider for c in TIMED])
def test_timestamp_window_both_ways(case: Case) -> None:
    assert case.window is not None
    signed = signed_for(case)
    # Just inside the window, either side of the edge's clock.
    assert run(case, signed, wall=NOW + case.window - 1)[1] is None
    assert run(case, signed, wall=NOW - case.window + 1)[1] is None
    # The request is old: the edge's clock is past the window.
    ex, reply = run(case, signed, wall=NOW + case.window + 5)
    assert_refused(ex, reply)
    assert reply is not None and "old" in reply.message
    # The timestamp is in the future.
    ex, reply = run(case, signed, wall=NOW - case.window - 5)
    assert_refused(ex, reply)
    assert reply is not None and "future" in reply.message


@pytest.mark.parametrize("case", TIMED, ids=[c.provider for c in TIMED])
def test_windows_match_the_providers_recommendation(case: Case) -> None:
    assert PROVIDERS[case.provider].window == case.window


@pytest.mark.parametrize("case", TIMED, ids=[c.provider for c in TIMED])
def test_a_changed_timestamp_breaks_the_signature(case: Case) -> None:
    # Re-dating a captured request to get it inside the window must not work.
    signed = signed_for(case, NOW - 3600)
    signed.headers = [(k, v.replace(str(NOW - 3600), str(NOW))) for k, v in signed.headers]
    ex, reply = run(case, signed)
    assert_refused(ex, reply)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_unbuffered_body_fails_with_a_clear_reason(case: Case) -> None:
    signed = signed_for(case)
    req = request(signed)
    req.body = None
    ex = exchange(req)
    reply = action(case.provider, case.secret).run(ex)
    assert_refused(ex, reply, status_for(case))
    assert reply is not None and "not buffered" in reply.message
    assert verify(case.provider, case.secret, req, NOW).ok is False


# ---- provider-specific details ---------------------------------------------------------------------------


def test_github_legacy_sha1_header_alone_is_accepted() -> None:
    case = CASES[0]
    assert run(case, github_sha1_only(case.secret, BODY, NOW))[1] is None
    bad = github_sha1_only("nope", BODY, NOW)
    assert_refused(*run(case, bad))


def test_github_sha256_wins_when_both_headers_are_sent() -> None:
    case = CASES[0]
    signed = Signed([*github_sha1_only(case.secret, BODY, NOW).headers, ("X-Hub-Signature-256", "sha256=00")])
    assert_refused(*run(case, signed))  # a valid legacy header does not rescue a bad sha256 one


@pytest.mark.parametrize(
    ("provider", "prefix"), [("svix", "svix"), ("clerk", "svix"), ("standard_webhooks", "webhook")]
)
def test_svix_signature_made_by_the_standardwebhooks_package(provider: str, prefix: str) -> None:
    msg_id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    signature = Webhook(SVIX_SECRET).sign(msg_id, datetime.fromtimestamp(NOW, UTC), BODY.decode())
    headers = [
        (f"{prefix}-id", msg_id),
        (f"{prefix}-timestamp", str(NOW)),
        (f"{prefix}-signature", signature),
    ]
    case = next(c for c in CASES if c.provider == provider)
    assert run(case, Signed(headers))[1] is None
    assert_refused(*run(case, Signed(headers, body=BODY + b"!")))


def test_the_standardwebhooks_package_accepts_the_test_signer() -> None:
    # Cross-check of the signer used in the table (the package reads the real clock, so sign "now").
    now = int(time.time())
    headers = dict(svix_sign("webhook")(SVIX_SECRET, BODY, now).headers)
    Webhook(SVIX_SECRET).verify(BODY, headers)


def test_svix_secret_without_the_whsec_prefix_works_too() -> None:
    case = next(c for c in CASES if c.provider == "svix")
    assert run(case, svix_sign("svix")(SVIX_SECRET, BODY, NOW), secret=SVIX_SECRET[6:])[1] is None


def test_twilio_json_body_is_signed_through_body_sha256() -> None:
    case = next(c for c in CASES if c.provider == "twilio")
    body = b'{"CallSid":"CA123","Status":"completed"}'
    query = "bodySHA256=" + hashlib.sha256(body).hexdigest()
    signature = b64mac(case.secret, f"{URL}?{query}".encode(), hashlib.sha1)
    signed = Signed([("X-Twilio-Signature", signature)], body=body, query=query)
    ex = exchange(request(signed))
    assert action("twilio", case.secret).run(ex) is None
    # The URL signature still holds but the body changed: the hash no longer matches it.
    changed = Signed([("X-Twilio-Signature", signature)], body=body + b" ", query=query)
    ex = exchange(request(changed))
    reply = action("twilio", case.secret).run(ex)
    assert_refused(ex, reply)
    assert reply is not None and "bodySHA256" in reply.message


def test_twilio_signature_with_an_explicit_default_port() -> None:
    case = next(c for c in CASES if c.provider == "twilio")
    url = f"https://{HOST}:443/hook?foo=bar"
    signed = Signed([("X-Twilio-Signature", b64mac(case.secret, url.encode(), hashlib.sha1))], body=b"")
    signed.method, signed.query = "GET", "foo=bar"
    assert run(case, signed)[1] is None


def test_twilio_url_is_part_of_the_signature() -> None:
    case = next(c for c in CASES if c.provider == "twilio")
    signed = twilio(case.secret, TWILIO_FORM, NOW)
    signed.query = "moved=1"
    assert_refused(*run(case, signed))


def test_square_signs_the_notification_url() -> None:
    case = next(c for c in CASES if c.provider == "square")
    other_url = f"https://{HOST}/elsewhere"
    signed = Signed([("x-square-hmacsha256-signature", b64mac(case.secret, other_url.encode() + BODY))])
    assert_refused(*run(case, signed))


def test_sendgrid_accepts_a_pem_public_key() -> None:
    case = next(c for c in CASES if c.provider == "sendgrid")
    pem = (
        _SENDGRID_KEY.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert run(case, sendgrid(case.secret, BODY, NOW), secret=pem)[1] is None


def test_sendgrid_garbage_signature_fails_cleanly() -> None:
    case = next(c for c in CASES if c.provider == "sendgrid")
    signed = sendgrid(case.secret, BODY, NOW)
    signed.headers[0] = (signed.headers[0][0], base64.b64encode(b"not DER at all").decode())
    assert_refused(*run(case, signed))


@pytest.mark.parametrize(
    "value",
    ["sha256=zz", "sha256=" + "ab" * 31, "sha1=" + "00" * 20, "sha256=é", "", "sha256="],
)
def test_malformed_signatures_fail_without_raising(value: str) -> None:
    case = CASES[0]
    assert_refused(*run(case, Signed([("X-Hub-Signature-256", value)])))


@pytest.mark.parametrize("value", ["", "abc", "t=", "v1=00", "t=1,v1=zz", f"t={NOW}", f"t=é,v1={'0' * 64}"])
def test_malformed_stripe_headers_fail_without_raising(value: str) -> None:
    case = next(c for c in CASES if c.provider == "stripe")
    assert_refused(*run(case, Signed([("Stripe-Signature", value)])))


def test_verify_api_reports_reasons() -> None:
    req = request(github("s3cret", BODY, NOW))
    assert verify("github", "s3cret", req, NOW).ok
    verdict = verify("github", "other", req, NOW)
    assert (verdict.ok, verdict.challenge) == (False, None)
    assert "X-Hub-Signature-256" in verdict.reason and "s3cret" not in verdict.reason
    assert verify("nonesuch", "s3cret", req, NOW).reason == "unknown webhook provider 'nonesuch'"
    assert verify("github", "", req, NOW).ok is False
