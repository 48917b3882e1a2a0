"""Reading OpenSSH public key lines (``ssh-ed25519 AAAA... comment``) into what the store keeps.

Keys are identified by their SHA-256 fingerprint in the form ``ssh-keygen -l`` prints
(``SHA256:`` and unpadded base64 of the hash of the key blob), which is also what the SSH server computes
for the key a client offers. Only the line's framing is checked here (type, base64, the type repeated
inside the blob); this module does no I/O and does not verify signatures.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct

from hatchway.store.base import StoreError

KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


def fingerprint(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_public_key(line: str) -> tuple[str, str, str]:
    """``(key type, fingerprint, comment)`` of one public key line; ``StoreError`` saying what is wrong."""
    parts = line.strip().split(None, 2)
    # authorized_keys lines may start with options; a .pub file never does, and that is what we take.
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise StoreError(
            "not an OpenSSH public key line (expected e.g. 'ssh-ed25519 AAAA... comment', "
            "as in ~/.ssh/id_ed25519.pub)"
        )
    key_type, data = parts[0], parts[1]
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise StoreError(f"the key data of this {key_type} key is not valid base64") from exc
    if len(blob) < 4:
        raise StoreError(f"the key data of this {key_type} key is too short")
    (n,) = struct.unpack(">I", blob[:4])
    if blob[4 : 4 + n] != key_type.encode():
        raise StoreError(f"the key data does not hold a {key_type} key")
    return key_type, fingerprint(blob), parts[2].strip() if len(parts) > 2 else ""
