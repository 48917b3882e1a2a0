"""The store's side of custom-domain verification: CNAME targets kept with reservations, check outcomes,
and the migration of a version-1 file (a ``domains`` table without those columns)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hatchway.store.base import DomainError, StoreError
from hatchway.store.sqlite import SCHEMA_VERSION, SqliteStore, hash_secret

# The schema as version 1 of Hatchway wrote it (before custom-domain verification).
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE accounts (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY, account TEXT NOT NULL REFERENCES accounts(name),
    secret_hash TEXT NOT NULL UNIQUE, description TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL, revoked_at REAL
);
CREATE TABLE domains (
    name TEXT PRIMARY KEY, account TEXT NOT NULL REFERENCES accounts(name), created_at REAL NOT NULL
);
CREATE INDEX domains_by_account ON domains(account);
CREATE TABLE ssh_keys (
    fingerprint TEXT PRIMARY KEY, account TEXT NOT NULL REFERENCES accounts(name),
    key_type TEXT NOT NULL, comment TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL
);
INSERT INTO meta VALUES ('schema_version', 1), ('revision', 7);
INSERT INTO accounts VALUES ('alice', 1.0);
INSERT INTO domains VALUES ('app.example.com', 'alice', 2.0), ('*.example.org', 'alice', 3.0);
"""


def _v1_file(path: Path, secret: str = "hw_old-secret") -> Path:
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.execute(
        "INSERT INTO tokens(id, account, secret_hash, created_at) VALUES ('tok_old', 'alice', ?, 4.0)",
        (hash_secret(secret),),
    )
    db.commit()
    db.close()
    return path


def _columns(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[1] for r in db.execute("PRAGMA table_info(domains)")}
    finally:
        db.close()


def test_version_1_file_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    path = _v1_file(tmp_path / "state.db")
    assert "cname_target" not in _columns(path)
    with SqliteStore(path) as store:
        assert {"cname_target", "verified", "checked_at", "check_detail"} <= _columns(path)
        old = store.list_domains()
        assert [(d.name, d.account, d.created_at) for d in old] == [
            ("*.example.org", "alice", 3.0),
            ("app.example.com", "alice", 2.0),
        ]
        assert all(d.cname_target == "" and not d.verified and d.checked_at is None for d in old)
        assert store.domain_owner("x.example.org") == "alice"
        token = store.check_token("hw_old-secret")
        assert token is not None and token.id == "tok_old"
        # The migrated table takes the new columns.
        assert store.set_cname_target("app.example.com", "a1.cname.edge.test") == "a1.cname.edge.test"
        new = store.add_domain("new.example.com", "alice", "b2.cname.edge.test")
        assert new.cname_target == "b2.cname.edge.test"
    db = sqlite3.connect(path)
    try:
        assert (
            db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == SCHEMA_VERSION
        )
    finally:
        db.close()
    # Opening it again (another process, a restart) changes nothing.
    with SqliteStore(path) as again:
        info = again.domain_reservation("app.example.com")
        assert info is not None and info.cname_target == "a1.cname.edge.test"


def test_a_newer_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = _v1_file(tmp_path / "state.db")
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        SqliteStore(path)
    assert "cname_target" not in _columns(path)  # the failed open rolled back


def test_targets_reservations_and_check_outcomes(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "state.db") as store:
        store.add_domain("*.example.com", "alice", "w1.cname.edge.test")
        store.add_domain("app.example.com", "alice", "A1.Cname.Edge.Test")
        assert store.domain_reservation("app.example.com").cname_target == "a1.cname.edge.test"  # type: ignore[union-attr]
        deep = store.domain_reservation("x.y.example.com")
        assert deep is not None and (deep.name, deep.cname_target) == ("*.example.com", "w1.cname.edge.test")
        assert store.domain_reservation("example.net") is None
        # A reservation keeps the target it has.
        assert store.set_cname_target("app.example.com", "zz.cname.edge.test") == "a1.cname.edge.test"
        with pytest.raises(DomainError):
            store.set_cname_target("nobody.example.net", "zz.cname.edge.test")
        with pytest.raises(DomainError):
            store.add_domain("bad.example.com", "alice", "not a name")
        # Check outcomes are notes, not changes the edge reacts to.
        rev = store.revision()
        store.record_domain_check("app.example.com", False, "ERR_NGROK_425: nothing")
        (info,) = [d for d in store.list_domains() if d.name == "app.example.com"]
        assert (
            not info.verified
            and info.checked_at is not None
            and info.check_detail.startswith("ERR_NGROK_425")
        )
        store.record_domain_check("app.example.com", True)
        (info,) = [d for d in store.list_domains() if d.name == "app.example.com"]
        assert info.verified and info.check_detail == ""
        assert store.revision() == rev
        # Removing and reserving again gives whatever new target the caller brings.
        store.remove_domain("app.example.com")
        assert store.add_domain("app.example.com", "alice", "a2.cname.edge.test").cname_target == (
            "a2.cname.edge.test"
        )
