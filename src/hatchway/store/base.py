"""Record types, errors and the ``Store`` Protocol every state backend implements.

The edge asks a store three things on its hot paths: is this authtoken valid (``check_token``), who owns
this host (``domain_owner``) and has anything changed (``revision``). Administrative commands create and
revoke tokens and reserve domains. This module holds types only: it must not do I/O, import a database
driver or import ``hatchway.edge`` / ``hatchway.agent``.

Methods are synchronous on purpose: the SQLite backend answers in well under a millisecond, and an
asyncio caller that wants to stay strict may run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from hatchway.errors import HatchwayError


class StoreError(HatchwayError):
    """The store could not do what was asked (ambiguous id, unreadable or too new database)."""

    code = "ERR_HATCHWAY_4000"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DomainError(HatchwayError):
    """A domain name is malformed or not available; ``ngrok_code`` is ngrok's code for that case.

    ``str(err)`` is ``"<message> (ERR_NGROK_NNN)"``; ``message`` alone is what a Bind error carries before
    ``m.join_error`` adds the code line.
    """

    code = "ERR_HATCHWAY_4100"

    def __init__(self, ngrok_code: str, message: str) -> None:
        super().__init__(f"{message} ({ngrok_code})")
        self.ngrok_code = ngrok_code
        self.message = message


@dataclass(frozen=True, slots=True)
class Account:
    """An account: the owner of tokens and reservations. Created on first use of its name."""

    name: str


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """An authtoken as stored. The secret itself is never stored, only a hash of it."""

    id: str
    account: str
    description: str
    created_at: float
    revoked: bool


@dataclass(frozen=True, slots=True)
class DomainInfo:
    """A reservation: ``account`` owns ``name`` and every name nested below it.

    ``name`` may be a wildcard (``*.example.com``), which covers every name below ``example.com`` at any
    depth but not ``example.com`` itself.
    """

    name: str
    account: str
    created_at: float
    # Custom-domain verification (``edge/verify.py``): the CNAME target the name must point at ("" for a
    # reservation made before targets existed: the edge gives it one on first check), and the outcome of
    # the edge's last DNS check (``checked_at`` None: never checked; ``check_detail`` says why it failed).
    cname_target: str = ""
    verified: bool = False
    checked_at: float | None = None
    check_detail: str = ""


@dataclass(frozen=True, slots=True)
class SshKeyInfo:
    """A public key registered to an account for the SSH entry, found by its SHA-256 fingerprint."""

    fingerprint: str  # "SHA256:<base64 without padding>", as ``ssh-keygen -l`` prints it
    account: str
    key_type: str  # "ssh-ed25519", "ssh-rsa", ...
    comment: str
    created_at: float


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """A certificate the edge serves for ``name`` (a host or ``*.example.com``).

    ``source`` is ``manual`` (``hatchway edge cert add``: served in place of ACME) or ``acme`` (issued by the
    edge). ``cert_pem`` is the chain, leaf first; ``names`` are those the leaf covers.
    """

    name: str
    source: str
    cert_pem: bytes
    key_pem: bytes
    names: tuple[str, ...]
    not_after: float
    created_at: float


@runtime_checkable
class Store(Protocol):
    """Durable edge state. Implementations must be safe to share between threads and processes."""

    def create_token(self, account: str = "default", description: str = "") -> tuple[TokenInfo, str]:
        """Make a new authtoken for ``account``; return its record and the secret (shown once)."""
        ...

    def check_token(self, secret: str) -> TokenInfo | None:
        """The token whose secret this is, or None when it is unknown or revoked."""
        ...

    def list_tokens(self) -> list[TokenInfo]:
        """Every token, revoked ones included, oldest first."""
        ...

    def revoke_token(self, token_id: str) -> bool:
        """Revoke by id or unique id prefix. False when nothing matched; ``StoreError`` when ambiguous."""
        ...

    def add_domain(self, name: str, account: str = "default", cname_target: str = "") -> DomainInfo:
        """Reserve ``name`` (validated and normalised) for ``account``, with the CNAME target its DNS must
        point at; ``DomainError`` when not possible."""
        ...

    def remove_domain(self, name: str) -> bool:
        """Drop a reservation; False when there was none."""
        ...

    def list_domains(self, account: str | None = None) -> list[DomainInfo]:
        """Reservations sorted by name, optionally of one account."""
        ...

    def domain_owner(self, host: str) -> str | None:
        """The account whose reservation covers ``host`` (the most specific one), or None."""
        ...

    def domain_reservation(self, host: str) -> DomainInfo | None:
        """The most specific reservation covering ``host``, or None."""
        ...

    def set_cname_target(self, name: str, target: str) -> str:
        """Give the reservation ``name`` the target ``target`` unless it has one; the target it has now.
        ``DomainError`` when ``name`` is not reserved."""
        ...

    def record_domain_check(self, name: str, verified: bool, detail: str = "") -> None:
        """Note the outcome of a DNS check of (a name under) the reservation ``name``. Not a change the
        ``revision`` counts: nothing else depends on it."""
        ...

    def add_ssh_key(self, public_key: str, account: str = "default") -> SshKeyInfo:
        """Register an OpenSSH public key line for ``account``; ``StoreError`` when malformed or taken."""
        ...

    def ssh_key_owner(self, fingerprint: str) -> str | None:
        """The account a key (by SHA-256 fingerprint) belongs to, or None."""
        ...

    def list_ssh_keys(self, account: str | None = None) -> list[SshKeyInfo]:
        """Registered keys, oldest first, optionally of one account."""
        ...

    def remove_ssh_key(self, fingerprint: str) -> bool:
        """Forget a key; False when it was not registered."""
        ...

    def put_certificate(
        self, name: str, cert_pem: bytes, key_pem: bytes, source: str = "manual"
    ) -> CertificateInfo:
        """Keep (or replace) the ``source`` certificate for ``name``; ``StoreError`` for a bad pair."""
        ...

    def certificate(self, name: str, source: str | None = None) -> CertificateInfo | None:
        """The certificate stored for exactly ``name`` (manual before acme unless ``source`` says)."""
        ...

    def list_certificates(self) -> list[CertificateInfo]:
        """Every stored certificate, by name then source."""
        ...

    def remove_certificate(self, name: str, source: str | None = None) -> bool:
        """Forget the certificate(s) of ``name``; False when there was none."""
        ...

    def put_acme_account(self, directory: str, key_pem: bytes, account: str) -> None:
        """Keep the ACME account (its key and the server's JSON for it) for one directory URL."""
        ...

    def acme_account(self, directory: str) -> tuple[bytes, str] | None:
        """``(key_pem, account_json)`` kept for ``directory``, or None."""
        ...

    def revision(self) -> int:
        """A number that grows with every change, made by this process or any other."""
        ...

    def close(self) -> None:
        """Release the backend's resources. The store must not be used afterwards."""
        ...
