"""SSH public keys in the store: parsed from ``.pub`` lines, found by the fingerprint ssh-keygen prints,
owned by one account, seen by other instances on the same file (the running edge)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hatchway.store.base import StoreError
from hatchway.store.sqlite import SqliteStore
from hatchway.store.sshkeys import parse_public_key


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "state.db") as s:
        yield s


@pytest.fixture
def pub(tmp_path: Path) -> str:
    key = tmp_path / "id"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me@laptop", "-f", str(key)], check=True
    )
    return (tmp_path / "id.pub").read_text()


def test_fingerprint_is_the_one_ssh_keygen_prints(pub: str, tmp_path: Path) -> None:
    printed = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(tmp_path / "id.pub")], capture_output=True, check=True
    ).stdout.decode()
    key_type, fingerprint, comment = parse_public_key(pub)
    assert (key_type, comment) == ("ssh-ed25519", "me@laptop")
    assert printed.split()[1] == fingerprint


def test_add_find_list_remove(store: SqliteStore, pub: str, tmp_path: Path) -> None:
    before = store.revision()
    info = store.add_ssh_key(pub, "alice")
    assert store.revision() > before
    assert store.ssh_key_owner(info.fingerprint) == "alice"
    with SqliteStore(tmp_path / "state.db") as other:  # the edge process sees the CLI's change
        assert other.ssh_key_owner(info.fingerprint) == "alice"
    assert [k.fingerprint for k in store.list_ssh_keys("alice")] == [info.fingerprint]
    assert store.list_ssh_keys("bob") == []
    assert store.remove_ssh_key(info.fingerprint)
    assert store.ssh_key_owner(info.fingerprint) is None
    assert not store.remove_ssh_key(info.fingerprint)


def test_a_key_belongs_to_one_account(store: SqliteStore, pub: str) -> None:
    store.add_ssh_key(pub, "alice")
    with pytest.raises(StoreError, match="another account"):
        store.add_ssh_key(pub, "bob")
    with pytest.raises(StoreError, match="already registered to this account"):
        store.add_ssh_key(pub, "alice")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("", "not an OpenSSH public key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "not an OpenSSH public key"),
        ("ssh-ed25519 !!!notbase64 me", "not valid base64"),
        ("ssh-ed25519 AAAA me", "too short"),
        ("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIBwW2Nq5S8dV3m0zBpqF1XNRjZ3w7eUf9G6G0n8X5kqx me", "does not hold"),
    ],
)
def test_malformed_lines_say_what_is_wrong(store: SqliteStore, line: str, why: str) -> None:
    with pytest.raises(StoreError, match=why):
        store.add_ssh_key(line, "alice")
