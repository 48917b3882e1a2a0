"""Providers with a scheme of their own: GitLab's shared token, Twilio's and Square's URL-bound HMACs, and
SendGrid's ECDSA signature checked with a public key.

Twilio and Square sign the URL they called, which the edge rebuilds from the request (scheme, host, port,
path, query) — so a ``url-rewrite`` placed before ``verify-webhook`` changes what is checked. Sans-IO: the
public key is parsed from the configured secret, never fetched.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qs, parse_qsl

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hatchway.policy.model import DEFAULT_PORTS, HttpRequest
from hatchway.policy.webhooks.base import (
    DEFAULT_WINDOW,
    PASSED,
    Verdict,
    any_match,
    any_secret,
    decode,
    fail,
    mac,
    missing,
    timestamp_problem,
)


def _utf8(text: str) -> bytes:
    # surrogatepass: a header value decoded leniently must still compare, not raise.
    return text.encode("utf-8", "surrogatepass")


def url_variants(req: HttpRequest) -> list[str]:
    """The request URL as a sender may have signed it: without and with an explicit default port.

    Twilio documents that its signature may or may not include ``:443``/``:80``; both are tried.
    """
    tail = (req.path or "/") + (f"?{req.query}" if req.query else "")
    with_port = f"{req.scheme}://{req.host}:{req.port}{tail}"
    if DEFAULT_PORTS.get(req.scheme) == req.port:
        return [f"{req.scheme}://{req.host}{tail}", with_port]
    return [with_port]


@dataclass(frozen=True, slots=True)
class GitLab:
    """GitLab sends the configured secret token itself in ``X-Gitlab-Token``; compare it in constant time."""

    id: str = "gitlab"
    name: str = "GitLab"
    header: str = "X-Gitlab-Token"
    window: float | None = None
    reject_status: int = 403

    def secret_problem(self, secret: str) -> str | None:
        return any_secret(secret)

    def verify(self, secret: str, req: HttpRequest, wall: float) -> Verdict:
        token = req.header(self.header)
        if token is None:
            return missing(self.header)
        if not hmac.compare_digest(_utf8(token), _utf8(secret)):
            return fail(f"{self.header} does not match the secret")
        return PASSED


def _is_form(req: HttpRequest) -> bool:
    content_type = (req.header("content-type") or "").split(";")[0].strip().lower()
    return content_type == "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class Twilio:
    """HMAC-SHA1 (auth token), base64, over the full URL followed by the POST parameters sorted by name,
    each as name then value. A JSON body is signed through the URL instead: its SHA-256 (hex) travels in
    the ``bodySHA256`` query parameter, which must match the body."""

    id: str = "twilio"
    name: str = "Twilio"
    header: str = "X-Twilio-Signature"
    window: float | None = None
    reject_status: int = 403

    def secret_problem(self, secret: str) -> str | None:
        return any_secret(secret)

    def verify(self, secret: str, req: HttpRequest, wall: float) -> Verdict:
        signature = req.header(self.header)
        if signature is None:
            return missing(self.header)
        body = req.body or b""
        params = ""
        body_hashes = parse_qs(req.query, keep_blank_values=True).get("bodySHA256")
        if body_hashes:
            digest = hashlib.sha256(body).hexdigest()
            if not hmac.compare_digest(_utf8(digest), _utf8(body_hashes[0].lower())):
                return fail("the bodySHA256 query parameter does not match the body")
        elif _is_form(req) and body:
            pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
            # Sorted by name; a repeated name keeps its values in sorted order too, so the order in which
            # the sender wrote them does not matter.
            params = "".join(name + value for name, value in sorted(pairs))
        provided = [decode(signature, "base64")]
        for url in url_variants(req):
            if any_match(mac("sha1", secret, _utf8(url + params)), provided):
                return PASSED
        return fail(f"{self.header} does not match the URL and parameters")


@dataclass(frozen=True, slots=True)
class Square:
    """HMAC-SHA256 (subscription signature key), base64, over the notification URL followed by the body."""

    id: str = "square"
    name: str = "Square"
    header: str = "x-square-hmacsha256-signature"
    window: float | None = None
    reject_status: int = 403

    def secret_problem(self, secret: str) -> str | None:
        return any_secret(secret)

    def verify(self, secret: str, req: HttpRequest, wall: float) -> Verdict:
        signature = req.header(self.header)
        if signature is None:
            return missing(self.header)
        provided = [decode(signature, "base64")]
        body = req.body or b""
        for url in url_variants(req):
            if any_match(mac("sha256", secret, _utf8(url) + body), provided):
                return PASSED
        return fail(f"{self.header} does not match the URL and body")


@lru_cache(maxsize=64)
def sendgrid_key(secret: str) -> ec.EllipticCurvePublicKey | None:
    """The P-256 public key in ``secret`` (SendGrid's base64 DER verification key, or PEM), or None.

    Cached: parsing a key per request would cost more than verifying with it.
    """
    text = secret.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            der = decode(text, "base64")
            if der is None:
                return None
            key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm):
        return None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return None
    return key


@dataclass(frozen=True, slots=True)
class SendGrid:
    """ECDSA P-256 / SHA-256 over ``{timestamp}{body}``; the secret is SendGrid's public verification key.

    SendGrid states no tolerance, so ngrok's default window applies.
    """

    id: str = "sendgrid"
    name: str = "SendGrid"
    signature_header: str = "X-Twilio-Email-Event-Webhook-Signature"
    timestamp_header: str = "X-Twilio-Email-Event-Webhook-Timestamp"
    window: float = DEFAULT_WINDOW
    reject_status: int = 403

    def secret_problem(self, secret: str) -> str | None:
        if sendgrid_key(secret) is None:
            return "must be the base64 ECDSA P-256 public key SendGrid shows as the verification key"
        return None

    def verify(self, secret: str, req: HttpRequest, wall: float) -> Verdict:
        signature = req.header(self.signature_header)
        if signature is None:
            return missing(self.signature_header)
        timestamp = req.header(self.timestamp_header)
        if timestamp is None:
            return missing(self.timestamp_header)
        if (problem := timestamp_problem(timestamp, wall, self.window)) is not None:
            return fail(f"{self.timestamp_header}: {problem}")
        key = sendgrid_key(secret)
        if key is None:
            return fail("the secret is not an ECDSA P-256 public key")
        der = decode(signature, "base64")
        if der is None:
            return fail(f"{self.signature_header} is not base64")
        try:
            key.verify(der, _utf8(timestamp) + (req.body or b""), ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):  # ValueError: a signature that is not DER at all
            return fail(f"{self.signature_header} does not match the timestamp and body")
        return PASSED


PROVIDERS: tuple[GitLab | Twilio | Square | SendGrid, ...] = (GitLab(), Twilio(), Square(), SendGrid())
