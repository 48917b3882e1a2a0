"""Checking a certificate chain and its key before the store keeps them (bring-your-own and ACME).

``inspect_pair`` reads a PEM chain and a PEM private key, checks that the key belongs to the first
(leaf) certificate, and returns the names the leaf covers and when it expires. ``covers`` says whether a
certificate name (``*.example.com`` included) is valid for a host under TLS rules: a wildcard covers one
label only. Pure: no I/O beyond parsing the bytes it is given.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from hatchway.store.base import StoreError


def inspect_pair(cert_pem: bytes, key_pem: bytes) -> tuple[list[str], float]:
    """``(names, not_after)`` of the leaf; ``StoreError`` when either is unreadable or they don't match."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise StoreError(f"the certificate is not PEM (-----BEGIN CERTIFICATE-----): {exc}") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise StoreError(f"the private key is not an unencrypted PEM key: {exc}") from exc
    leaf = chain[0]
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, pub) != leaf.public_key().public_bytes(enc, pub):
        raise StoreError("the private key does not belong to the certificate (the first one in the file)")
    names: list[str] = []
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        names = [str(cn[0].value).lower()] if cn else []
    return names, leaf.not_valid_after_utc.timestamp()


def covers(cert_name: str, host: str) -> bool:
    """Whether a certificate issued for ``cert_name`` is valid for ``host`` (RFC 6125: one label)."""
    cert_name, host = cert_name.lower().rstrip("."), host.lower().rstrip(".")
    if cert_name == host:
        return True
    if cert_name.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == cert_name[2:]
    return False
