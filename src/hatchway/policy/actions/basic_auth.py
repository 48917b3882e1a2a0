"""The ``basic-auth`` action (on_http_request): HTTP Basic authentication at the edge (RFC 7617).

Config: ``credentials`` (1..10 ``user:pass``; the first ``:`` splits, the username must not be empty, the
password is 8..128 characters), ``realm`` (default "ngrok", at most 128 printable ASCII characters; ``"``
and ``\\`` are escaped in the challenge), ``enforce`` (true).

A request without valid credentials gets ``401`` with ``WWW-Authenticate: Basic realm="…"`` and a short
text body; ngrok gives this no error code, so neither do we. Credentials are compared through SHA-256
digests with ``hmac.compare_digest`` against every configured pair, so the time taken says nothing about
which user or how much of a password matched. The presented credentials are decoded as UTF-8 (RFC 7617's
``charset``), falling back to Latin-1 for the username shown in the results.

On success the ``Authorization`` header is passed upstream unchanged, as ngrok does: apps behind the tunnel
may read the user from it. Add ``remove-headers: [authorization]`` to keep it from the upstream.
Results: ``basic_auth.credentials.{presented, username, authorized}``. Never reads the body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from hatchway.policy.config import ConfigReader
from hatchway.policy.model import CompileEnv, Exchange, Reply

MAX_CREDENTIALS = 10
PASSWORD_MIN, PASSWORD_MAX = 8, 128
REALM_MAX = 128
_BODY = b"401 Unauthorized: this endpoint requires a username and password.\n"


def _digest(user_pass: bytes) -> bytes:
    return hashlib.sha256(user_pass).digest()


def _presented(header: str | None) -> bytes | None:
    """The decoded ``user:pass`` bytes of a Basic ``Authorization`` header, or None."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


class BasicAuth:
    needs_body = False

    def __init__(self, digests: tuple[bytes, ...], realm: str, enforce: bool) -> None:
        self.digests = digests
        self.enforce = enforce
        escaped = realm.replace("\\", "\\\\").replace('"', '\\"')
        self.challenge = f'Basic realm="{escaped}"'

    def run(self, ex: Exchange) -> Reply | None:
        raw = _presented(ex.req.header("authorization"))
        username = ""
        authorized = False
        if raw is not None:
            user, _, _ = raw.partition(b":")
            try:
                username = user.decode("utf-8")
            except UnicodeDecodeError:
                username = user.decode("latin-1")
            presented = _digest(raw)
            # Compare with every pair (no early exit) so timing does not reveal which one matched.
            for digest in self.digests:
                authorized |= hmac.compare_digest(presented, digest)
        ex.results["basic_auth"] = {
            "credentials": {"presented": raw is not None, "username": username, "authorized": authorized}
        }
        if authorized or not self.enforce:
            return None
        return Reply(
            401,
            headers=[("WWW-Authenticate", self.challenge), ("Content-Type", "text/plain; charset=utf-8")],
            body=_BODY,
        )


def compile(config: Mapping[str, Any] | None, path: str, env: CompileEnv, phase: str) -> BasicAuth:
    r = ConfigReader(config, path)
    credentials = r.str_list("credentials", required=True, max_items=MAX_CREDENTIALS)
    digests: list[bytes] = []
    for i, pair in enumerate(credentials):
        user, sep, password = pair.partition(":")
        key = f"credentials[{i}]"
        if not sep:
            r.problem(key, "must be 'username:password'")
        elif not user:
            r.problem(key, "the username must not be empty")
        elif not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
            r.problem(key, f"the password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters long")
        else:
            digests.append(_digest(pair.encode("utf-8")))
    realm = r.text("realm", "ngrok")
    if len(realm) > REALM_MAX:
        r.problem("realm", f"must be at most {REALM_MAX} characters")
    elif not all(" " <= c <= "~" for c in realm):
        r.problem("realm", "must be printable ASCII")
    enforce = r.flag("enforce", True)
    r.done()
    return BasicAuth(tuple(digests), realm, enforce)
