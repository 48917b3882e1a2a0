"""Providers whose HMAC covers a timestamp as well as the body, so old or future requests can be refused.

Three layouts: ``v0:{ts}:{body}`` with the timestamp in its own header (Slack, Zoom); ``t=..,v1=..`` in one
header over ``{t}.{body}`` (Stripe, Mux); and Svix / Standard Webhooks, ``{id}.{ts}.{body}`` keyed with the
base64 part of a ``whsec_`` secret. Each check refuses timestamps outside the provider's window in either
direction. Sans-IO: ``wall`` comes from the edge; nothing here reads a clock.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from hatchway.policy.model import HttpRequest, Reply
from hatchway.policy.webhooks.base import (
    DEFAULT_WINDOW,
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
    timestamp_problem,
)


@dataclass(frozen=True, slots=True)
class SeparateTimestamp:
    """``{version}={hex}`` over ``{version}:{ts}:{body}``, the timestamp in a header of its own."""

    id: str
    name: str
    signature_header: str
    timestamp_header: str
    window: float
    version: str = "v0"
    answers_url_validation: bool = False  # Zoom's endpoint.url_validation, answered by the edge
    reject_status: int = 403

    def secret_problem(self, secret: str) -> str | None:
        return any_secret(secret)

    def verify(self, secret: str, req: HttpRequest, wall: float) -> Verdict:
        signature = req.header(self.signature_header)
        if signature is None:
            return missing(self.signature_header)
        timestamp = req.header(self.timestamp_header)
        if timestamp is None:
            return missing(self.timestamp_header)
        if (problem := timestamp_problem(timestamp, wall, self.window)) is not None:
            return fail(f"{self.timestamp_header}: {problem}")
        value = strip_prefix(signature, f"{self.version}=")
        if value is None:
            return fail(f"{self.signature_header} carries no {self.version}= signature")
        body = req.body or b""
        message = f"{self.version}:{timestamp}:".encode() + body
        if not any_match(mac("sha256", secret, message), [decode(value, "hex")]):
            return fail(f"{self.signature_header} does not match the timestamp and body")
        # Answer Zoom's validation only now: a signed request is Zoom's, so the edge is no signing oracle.
        if self.answers_url_validation and (answer := _zoom_validation(secret, body)) is not None:
            return Verdict(True, challenge=answer)
        return PASSED


def _zoom_validation(secret: str, body: bytes) -> Reply | None:
    document = json_body(body)
    if not isinstance(document, dict) or document.get("event") != "endpoint.url_validation":
        return None
    payload = document.get("payload")
    token = payload.get("plainToken") if isinstance(payload, dict) else None
    if not isinstance(token, str):
        return None
    encrypted = mac("sha256", secret, token.encode()).hex()
    return json_reply({"plainToken": token, "encryptedToken": encrypted})


@dataclass(frozen=True, slots=True)
class SignatureList:
    """One header ``t=<ts>,v1=<hex>[,v1=<hex>…]`` over ``{t}.{body}``; any ``v1`` may match (rotation)."""

    id: str
    name: str
    header: str
    window: float
    reject_status: int = 403

    def secret_problem(self, secret: str) -> str | None:
        return any_secret(secret)

    def verify(self, secret: str, req: HttpRequest, wall: float) -> Verdict:
        value = req.header(self.header)
        if value is None:
            return missing(self.header)
        timestamps: list[str] = []
        signatures: list[bytes | None] = []
        for item in value.split(","):
            key, _, field = item.strip().partition("=")
            if key == "t":
                timestamps.append(field)
            elif key == "v1":  # other schemes (Stripe's test-mode v0) are not signatures of ours
                signatures.append(decode(field, "hex"))
        if not timestamps:
            return fail(f"{self.header} carries no t= timestamp")
        if not signatures:
            return fail(f"{self.header} carries no v1= signature")
        if (problem := timestamp_problem(timestamps[0], wall, self.window)) is not None:
            return fail(f"{self.header}: {problem}")
        message = f"{timestamps[0]}.".encode() + (req.body or b"")
        if not any_match(mac("sha256", secret, message), signatures):
            return fail(f"no v1 signature in {self.header} matches the timestamp and body")
        return PASSED


_WHSEC = "whsec_"


def svix_key(secret: str) -> bytes | None:
    """The HMAC key in a Svix / Standard Webhooks secret (base64 after an optional ``whsec_``), or None."""
    text = secret.strip()
    if text.startswith(_WHSEC):
        text = text[len(_WHSEC) :]
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (ValueError, binascii.Error):
        return None
    return key or None


@dataclass(frozen=True, slots=True)
class Svix:
    """Svix and the Standard Webhooks spec: ``{id}.{ts}.{body}``, base64, space-separated ``v1,<sig>``.

    Svix names its headers ``svix-*`` and the spec ``webhook-*``; either set is accepted, never a mix.
    """

    id: str
    name: str
    window: float = 300.0
    reject_status: int = 403

    def secret_problem(self, secret: str) -> str | None:
        if svix_key(secret) is None:
            return "must be a base64 signing secret such as 'whsec_…'"
        return None

    def verify(self, secret: str, req: HttpRequest, wall: float) -> Verdict:
        svix_headers = any(req.header(f"svix-{n}") is not None for n in ("id", "timestamp", "signature"))
        family = "svix" if svix_headers else "webhook"
        id_name, timestamp_name, signature_name = f"{family}-id", f"{family}-timestamp", f"{family}-signature"
        if (msg_id := req.header(id_name)) is None:
            return missing(id_name)
        if (timestamp := req.header(timestamp_name)) is None:
            return missing(timestamp_name)
        if (signature := req.header(signature_name)) is None:
            return missing(signature_name)
        if (problem := timestamp_problem(timestamp, wall, self.window)) is not None:
            return fail(f"{timestamp_name}: {problem}")
        key = svix_key(secret)
        if key is None:
            return fail("the secret is not a base64 signing secret")
        candidates: list[bytes | None] = []
        for item in signature.split():
            version, _, value = item.partition(",")
            if version == "v1":  # v1a (asymmetric ed25519) is not supported
                candidates.append(decode(value, "base64"))
        if not candidates:
            return fail(f"{signature_name} carries no v1 signature")
        message = f"{msg_id}.{timestamp}.".encode() + (req.body or b"")
        if not any_match(mac("sha256", key, message), candidates):
            return fail(f"no signature in {signature_name} matches the id, timestamp and body")
        return PASSED


PROVIDERS: tuple[SeparateTimestamp | SignatureList | Svix, ...] = (
    SeparateTimestamp("slack", "Slack", "X-Slack-Signature", "X-Slack-Request-Timestamp", window=300.0),
    # Zoom documents no tolerance of its own, so ngrok's default applies.
    SeparateTimestamp(
        "zoom",
        "Zoom",
        "x-zm-signature",
        "x-zm-request-timestamp",
        window=DEFAULT_WINDOW,
        answers_url_validation=True,
    ),
    SignatureList("stripe", "Stripe", "Stripe-Signature", window=300.0),
    SignatureList("mux", "Mux", "Mux-Signature", window=300.0),
    Svix("svix", "Svix"),
    Svix("clerk", "Clerk"),  # Clerk delivers its webhooks through Svix
    Svix("standard_webhooks", "Standard Webhooks"),  # not an ngrok id: the spec Svix follows
)
