"""What every webhook provider shares: the verdict, the provider interface and small checking helpers.

A provider's ``verify(secret, req, wall)`` looks only at the request it is given (method, URL, headers and
the buffered body) and at ``wall``, the edge's unix time; it returns a ``Verdict``. This package is sans-IO:
no sockets, no clocks, no threads, no network look-ups (so no scheme that needs to fetch a certificate).
Reasons in a verdict are shown to the sender, so they name headers and windows but never a secret or an
expected signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from hatchway.policy.model import HttpRequest, Reply

# ngrok's tolerance when a provider recommends none (docs: verify-webhook action).
DEFAULT_WINDOW = 180.0

_DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
_TIMESTAMP = re.compile(r"\d{1,15}(?:\.\d{1,9})?")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one check: ``ok`` when the request carried a valid signature.

    ``challenge`` is the edge's own answer to a provider's endpoint-verification request (Zoom URL
    validation, Twitter CRC, Worldline GET, Xero intent-to-receive); the action returns it instead of
    forwarding, whatever ``ok`` says.
    """

    ok: bool
    reason: str = ""
    challenge: Reply | None = None


PASSED = Verdict(True)


def fail(reason: str) -> Verdict:
    return Verdict(False, reason)


class Provider(Protocol):
    """One webhook sender's scheme. ``window`` is the replay tolerance in seconds (None: no timestamp)."""

    @property
    def id(self) -> str: ...  # ngrok's provider id, e.g. "github"

    @property
    def name(self) -> str: ...  # for messages, e.g. "GitHub"

    @property
    def window(self) -> float | None: ...

    @property
    def reject_status(self) -> int: ...  # 403, except where the provider's own handshake wants 401 (Xero)

    def secret_problem(self, secret: str) -> str | None:
        """Why ``secret`` can never verify anything (wrong format), or None; checked at load when literal."""
        ...

    def verify(self, secret: str, req: HttpRequest, wall: float) -> Verdict: ...


def any_secret(secret: str) -> str | None:
    return "must not be empty" if not secret else None


def mac(algorithm: str, key: bytes | str, message: bytes) -> bytes:
    if isinstance(key, str):
        key = key.encode()
    return hmac.new(key, message, _DIGESTS[algorithm]).digest()


def decode(text: str, encoding: str) -> bytes | None:
    """The bytes a hex or base64 signature stands for, or None when it is not well formed."""
    text = text.strip()
    try:
        if encoding == "hex":
            return bytes.fromhex(text)
        # Some senders drop the padding; restore it rather than refuse a signature over a detail.
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (ValueError, binascii.Error):  # non-ASCII text raises ValueError, bad alphabet binascii.Error
        return None


def any_match(expected: bytes, candidates: Iterable[bytes | None]) -> bool:
    """True when one candidate equals ``expected``; every candidate is compared in constant time."""
    found = False
    for candidate in candidates:
        if candidate is not None and hmac.compare_digest(expected, candidate):
            found = True
    return found


def strip_prefix(value: str, prefix: str) -> str | None:
    """``value`` without ``prefix`` (compared without case), or None when it does not start with it."""
    value = value.strip()
    if prefix and value[: len(prefix)].lower() != prefix.lower():
        return None
    return value[len(prefix) :]


def timestamp_problem(raw: str, wall: float, window: float, *, scale: float = 1.0) -> str | None:
    """Why the timestamp ``raw`` (unix seconds × ``scale``) is unacceptable at ``wall``, or None.

    Both directions count: an old timestamp is a replay, one far in the future is a forged or skewed one
    that would otherwise stay replayable for longer than the window.
    """
    raw = raw.strip()
    if not _TIMESTAMP.fullmatch(raw):
        return f"timestamp {raw[:32]!r} is not a unix time"
    seconds = float(raw) / scale
    if seconds < wall - window:
        return f"timestamp is {wall - seconds:.0f}s old, outside the {window:g}s window"
    if seconds > wall + window:
        return f"timestamp is {seconds - wall:.0f}s in the future, outside the {window:g}s window"
    return None


def json_body(body: bytes) -> object:
    """The body parsed as JSON, or None when it is not JSON."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def json_reply(document: object) -> Reply:
    body = json.dumps(document, separators=(",", ":")).encode()
    return Reply(200, [("content-type", "application/json")], body)


def text_reply(text: str) -> Reply:
    # nosniff: the text echoes what the sender put in, and must never be taken for HTML.
    headers = [("content-type", "text/plain; charset=utf-8"), ("x-content-type-options", "nosniff")]
    return Reply(200, headers, text.encode())


def missing(header: str) -> Verdict:
    return fail(f"missing {header} header")
