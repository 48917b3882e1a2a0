"""An endpoint's TLS terms: what its ``terminate-tls`` action asks of the TLS handshake.

``terminate-tls`` (ngrok's TLS Termination and Mutual TLS modules) runs at the handshake, before any
request, so the edge reads it once at Bind: the minimum and maximum TLS version, the endpoint's own
certificate, and the client CAs of mutual TLS. ``TlsTerms.from_action`` checks everything a handshake
would trip on (unreadable PEM, a key that does not match, a CA that is not a CA) and names the field;
``apply`` sets them on the ``SSLContext`` built for the endpoint's name (``certs.py``). Must not: open
sockets or keep per-connection state.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from cryptography import x509

from hatchway.net import tls
from hatchway.policy.actions.terminate_tls import TerminateTls
from hatchway.store.base import StoreError
from hatchway.store.certificates import inspect_pair

_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


class TermsError(ValueError):
    """A ``terminate-tls`` setting the handshake could not use; ``path`` names it."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class TlsTerms:
    """Hashable: contexts are cached per (name, certificate, terms)."""

    min_version: ssl.TLSVersion | None = None
    max_version: ssl.TLSVersion | None = None
    cert: tls.KeyPair | None = None
    client_cas: bytes = b""  # PEM; set: clients must present a certificate (verified against these)
    optional_client_cert: bool = False  # "request": ask for one, verify it if given

    @classmethod
    def from_action(cls, action: TerminateTls) -> TlsTerms:
        p = action.path
        cert = None
        if action.server_certificate:
            try:
                inspect_pair(action.server_certificate.encode(), action.server_private_key.encode())
            except StoreError as exc:
                raise TermsError(f"{p}.server_certificate", exc.message) from exc
            cert = tls.KeyPair(action.server_certificate.encode(), action.server_private_key.encode())
        cas = b""
        for i, pem in enumerate(action.client_cas):
            where = f"{p}.mutual_tls_certificate_authorities[{i}]"
            try:
                certs = x509.load_pem_x509_certificates(pem.encode())
            except ValueError as exc:
                raise TermsError(where, f"not a PEM certificate: {exc}") from exc
            for c in certs:
                try:
                    is_ca = c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
                except x509.ExtensionNotFound:
                    is_ca = False
                if not is_ca:
                    raise TermsError(
                        where, f"{c.subject.rfc4514_string()} is not a CA certificate (cA=false)"
                    )
            cas += pem.encode().rstrip(b"\n") + b"\n"
        return cls(
            min_version=_VERSIONS[action.min_version],
            max_version=_VERSIONS[action.max_version],
            cert=cert,
            client_cas=cas,
            optional_client_cert=action.strategy == "request",
        )

    def apply(self, ctx: ssl.SSLContext) -> None:
        if self.min_version is not None:
            if self.min_version < ssl.TLSVersion.TLSv1_2:
                # OpenSSL's default security level refuses TLS 1.0/1.1 outright; the user asked for them.
                ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            ctx.minimum_version = self.min_version
        if self.max_version is not None:
            ctx.maximum_version = self.max_version
        if self.client_cas:
            ctx.load_verify_locations(cadata=self.client_cas.decode())
            ctx.verify_mode = ssl.CERT_OPTIONAL if self.optional_client_cert else ssl.CERT_REQUIRED
