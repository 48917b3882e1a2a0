"""Providers that sign the raw request body alone with an HMAC and put it in one header.

They differ only in the header, the hash, hex or base64, a prefix such as ``sha256=``, and whether one header
may carry several signatures (secret rotation). None of them sends a timestamp, so none has a replay
window. Some also send a one-time endpoint-verification request that the edge answers itself (Twitter CRC,
Worldline GET, Xero intent-to-receive). Sans-IO: this module only computes over the request it is given.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs

from hatchway.policy.model import HttpRequest, Reply
from hatchway.policy.webhooks.base import (
    PASSED,
    Verdict,
    any_match,
    any_secret,
    decode,
    fail,
    json_body,
    json_reply,
    mac,
    missing,
    strip_prefix,
    text_reply,
)

# Runs before the signature check; a verdict it returns (a challenge answer) ends the check.
Before = Callable[[str, HttpRequest], Verdict | None]
# Runs after a good signature; a reply it returns is sent instead of forwarding the request.
After = Callable[[str, HttpRequest], Reply | None]


@dataclass(frozen=True, slots=True)
class BodyHmac:
    id: str
    name: str
    header: str
    algorithm: str = "sha256"
    encoding: str = "hex"
    prefix: str = ""
    separator: str | None = None  # several signatures in one header value (PagerDuty: "v1=..,v1=..")
    legacy: BodyHmac | None = None  # checked only when ``header`` is absent (GitHub's X-Hub-Signature)
    before: Before | None = None
    after: After | None = None
    reject_status: int = 403
    window: float | None = None

    def secret_problem(self, secret: str) -> str | None:
        return any_secret(secret)

    def _signatures(self, value: str) -> list[bytes | None]:
        parts = value.split(self.separator) if self.separator else [value]
        stripped = (strip_prefix(part, self.prefix) for part in parts)
        return [decode(part, self.encoding) for part in stripped if part is not None]

    def verify(self, secret: str, req: HttpRequest, wall: float) -> Verdict:
        if self.before is not None and (early := self.before(secret, req)) is not None:
            return early
        value = req.header(self.header)
        if value is None:
            if self.legacy is not None and req.header(self.legacy.header) is not None:
                return self.legacy.verify(secret, req, wall)
            return missing(self.header)
        signatures = self._signatures(value)
        if not signatures:
            return fail(f"{self.header} carries no {self.prefix or self.encoding} signature")
        if not any_match(mac(self.algorithm, secret, req.body or b""), signatures):
            return fail(f"{self.header} does not match the body")
        if self.after is not None and (answer := self.after(secret, req)) is not None:
            return Verdict(True, challenge=answer)
        return PASSED


# ---- endpoint-verification handshakes the edge answers itself ------------------------------------------

# A CRC token is a short random string. Refusing anything else closes a signing oracle: the CRC answer is
# exactly the signature of a POST whose body is the token, so a token that looks like a JSON event (it would
# need "{") must never be signed for whoever asks.
_CRC_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{1,256}")


def _twitter_crc(secret: str, req: HttpRequest) -> Verdict | None:
    if req.method != "GET":
        return None
    tokens = parse_qs(req.query, keep_blank_values=True).get("crc_token")
    if not tokens:
        return None
    if not _CRC_TOKEN.fullmatch(tokens[0]):
        return fail("crc_token is not a plain token; refusing to sign it")
    answer = "sha256=" + base64.b64encode(mac("sha256", secret, tokens[0].encode())).decode()
    return Verdict(False, "answered a CRC challenge", json_reply({"response_token": answer}))


_WORLDLINE_VERIFY = "X-GCS-Webhooks-Endpoint-Verification"


def _worldline_echo(secret: str, req: HttpRequest) -> Verdict | None:
    # Worldline proves the endpoint by a GET whose header value must come back as the body; no secret.
    value = req.header(_WORLDLINE_VERIFY)
    if req.method != "GET" or value is None:
        return None
    return Verdict(False, "answered an endpoint-verification request", text_reply(value))


def _xero_intent(secret: str, req: HttpRequest) -> Reply | None:
    # Xero's intent-to-receive sends signed payloads with no events; a good one wants a bare 200 (and a bad
    # one a 401, see reject_status), which the edge gives without bothering the upstream.
    document = json_body(req.body or b"")
    if isinstance(document, dict) and document.get("events") == [] and "entropy" in document:
        return Reply(200)
    return None


def _meta(provider_id: str, name: str) -> BodyHmac:
    # Meta signs every Graph API product the same way with the app secret.
    return BodyHmac(provider_id, name, "X-Hub-Signature-256", prefix="sha256=")


PROVIDERS: tuple[BodyHmac, ...] = (
    BodyHmac(
        "github",
        "GitHub",
        "X-Hub-Signature-256",
        prefix="sha256=",
        legacy=BodyHmac("github", "GitHub", "X-Hub-Signature", algorithm="sha1", prefix="sha1="),
    ),
    BodyHmac("bitbucket", "Bitbucket", "X-Hub-Signature", prefix="sha256="),
    BodyHmac("intercom", "Intercom", "X-Hub-Signature", algorithm="sha1", prefix="sha1="),
    _meta("facebook_graph_api", "Facebook Graph API"),
    _meta("facebook_messenger", "Facebook Messenger"),
    _meta("instagram", "Instagram"),
    _meta("whatsapp", "WhatsApp"),
    BodyHmac("shopify", "Shopify", "X-Shopify-Hmac-Sha256", encoding="base64"),
    BodyHmac("heroku", "Heroku", "Heroku-Webhook-Hmac-SHA256", encoding="base64"),
    BodyHmac("typeform", "Typeform", "Typeform-Signature", encoding="base64", prefix="sha256="),
    BodyHmac("dropbox", "Dropbox", "X-Dropbox-Signature"),
    BodyHmac("launch_darkly", "LaunchDarkly", "X-LD-Signature"),
    BodyHmac("sentry", "Sentry", "Sentry-Hook-Signature"),
    BodyHmac("terraform", "Terraform", "X-TFE-Notification-Signature", algorithm="sha512"),
    BodyHmac("pagerduty", "PagerDuty", "X-PagerDuty-Signature", prefix="v1=", separator=","),
    BodyHmac(
        "twitter",
        "Twitter",
        "X-Twitter-Webhooks-Signature",
        encoding="base64",
        prefix="sha256=",
        before=_twitter_crc,
    ),
    BodyHmac("worldline", "Worldline", "X-GCS-Signature", encoding="base64", before=_worldline_echo),
    BodyHmac("xero", "Xero", "X-Xero-Signature", encoding="base64", after=_xero_intent, reject_status=401),
)
