"""SqliteStore: tokens (hashed, revocable, by id prefix), reservations (exclusive for an account, wildcard
conflicts, most specific owner), the revision counter, and several instances or processes on one file."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hatchway.store import sqlite as sqlite_store
from hatchway.store.base import DomainError, Store, StoreError
from hatchway.store.sqlite import SCHEMA_VERSION, SqliteStore


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(db_path) as s:
        yield s


@pytest.fixture
def other(db_path: Path, store: SqliteStore) -> Iterator[SqliteStore]:
    """A second instance on the same file, as another process (the CLI) would have."""
    with SqliteStore(db_path) as s:
        yield s


def test_it_is_a_store(store: SqliteStore) -> None:
    assert isinstance(store, Store)


def test_file_is_wal_owner_only_and_versioned(store: SqliteStore, db_path: Path) -> None:
    assert db_path.stat().st_mode & 0o777 == 0o600
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        row = raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert row[0] == SCHEMA_VERSION
    finally:
        raw.close()


def test_a_newer_schema_is_refused(db_path: Path) -> None:
    SqliteStore(db_path).close()
    raw = sqlite3.connect(db_path)
    raw.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SqliteStore(db_path)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"junk\.db"):
        SqliteStore(path)


def test_a_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        SqliteStore(tmp_path / "nope" / "state.db")


def test_reopening_keeps_everything(db_path: Path) -> None:
    with SqliteStore(db_path) as s:
        info, secret = s.create_token("alice", "laptop")
        s.add_domain("app.example.com", "alice")
        rev = s.revision()
    with SqliteStore(db_path) as s:
        assert s.check_token(secret) == info
        assert s.domain_owner("app.example.com") == "alice"
        assert s.revision() == rev


# ---- tokens -------------------------------------------------------------------------------------------


def test_create_and_check_token(store: SqliteStore, db_path: Path) -> None:
    info, secret = store.create_token("alice", "ci runner")
    assert secret.startswith("hw_") and 35 <= len(secret) <= 45
    assert all(c.isalnum() or c in "-_" for c in secret)
    assert info.id.startswith("tok_") and info.account == "alice" and info.description == "ci runner"
    assert not info.revoked and info.created_at > 0
    assert store.check_token(secret) == info
    assert store.check_token(secret + "x") is None
    assert store.check_token("") is None
    # only a hash is stored
    dump = "\n".join(sqlite3.connect(db_path).iterdump())
    assert secret not in dump
    assert hashlib.sha256(secret.encode()).hexdigest() in dump


def test_tokens_are_distinct_and_default_account(store: SqliteStore) -> None:
    made = [store.create_token() for _ in range(20)]
    assert len({s for _, s in made}) == 20 and len({i.id for i, _ in made}) == 20
    assert {i.account for i, _ in made} == {"default"}
    assert [t.id for t in store.list_tokens()] == [i.id for i, _ in made]  # oldest first


def test_empty_account_is_refused(store: SqliteStore) -> None:
    with pytest.raises(StoreError):
        store.create_token("  ")


def test_revoke_by_id_and_prefix(store: SqliteStore) -> None:
    a, sa = store.create_token()
    b, sb = store.create_token()
    assert store.revoke_token(a.id)
    assert store.check_token(sa) is None
    assert store.check_token(sb) == b
    assert store.revoke_token(b.id[:12])  # a unique prefix
    assert store.check_token(sb) is None
    assert [t.revoked for t in store.list_tokens()] == [True, True]
    assert not store.revoke_token("tok_does_not_exist")
    assert not store.revoke_token("tok_")  # too short to be a prefix
    assert store.revoke_token(a.id)  # already revoked: still found


def test_ambiguous_prefix_is_an_error(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = iter(["abcd00000000000000000001", "abcd00000000000000000002"])
    monkeypatch.setattr(sqlite_store.secrets, "token_hex", lambda n: next(ids))
    a, _ = store.create_token()
    b, _ = store.create_token()
    assert (a.id, b.id) == ("tok_abcd00000000000000000001", "tok_abcd00000000000000000002")
    with pytest.raises(StoreError, match="more than one"):
        store.revoke_token("tok_abcd0000")
    assert store.revoke_token("tok_abcd00000000000000000002")
    assert [t.revoked for t in store.list_tokens()] == [False, True]


def test_prefix_with_underscores_matches_nothing(store: SqliteStore) -> None:
    store.create_token()
    assert store.get_token("tok_____") is None
    assert not store.revoke_token("tok_%%%%")


def test_get_token(store: SqliteStore) -> None:
    info, _ = store.create_token("bob")
    assert store.get_token(info.id) == info
    assert store.get_token(info.id[:10]) == info
    assert store.get_token("tok_ffffffffffffffffffffffffff") is None


# ---- domains ------------------------------------------------------------------------------------------


def test_add_list_remove_domains(store: SqliteStore) -> None:
    d = store.add_domain("App.Example.com", "alice")
    assert (d.name, d.account) == ("app.example.com", "alice")
    store.add_domain("*.example.org", "bob")
    store.add_domain("zzz.example.net")
    assert [x.name for x in store.list_domains()] == ["*.example.org", "app.example.com", "zzz.example.net"]
    assert [x.name for x in store.list_domains("alice")] == ["app.example.com"]
    assert store.list_domains("nobody") == []
    assert store.remove_domain("APP.example.com")
    assert not store.remove_domain("app.example.com")
    assert store.domain_owner("app.example.com") is None


def test_syntax_errors_carry_codes(store: SqliteStore) -> None:
    for name, code in [("a_b.example.com", "ERR_NGROK_355"), ("a.*.example.com", "ERR_NGROK_402")]:
        with pytest.raises(DomainError) as info:
            store.add_domain(name)
        assert info.value.ngrok_code == code
    assert store.list_domains() == []


def test_same_name_twice_for_one_account(store: SqliteStore) -> None:
    store.add_domain("app.example.com", "alice")
    rev = store.revision()
    with pytest.raises(DomainError) as info:
        store.add_domain("app.example.com", "alice")
    assert info.value.ngrok_code == "ERR_NGROK_413"
    assert store.revision() == rev


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("app.example.com", "app.example.com"),  # the very name
        ("foo.example.com", "bar.foo.example.com"),  # nested below a reservation
        ("foo.example.com", "a.b.foo.example.com"),
        ("foo.example.com", "*.foo.example.com"),
        ("*.example.com", "a.example.com"),  # covered by a wildcard
        ("*.example.com", "a.b.example.com"),
        ("*.example.com", "*.a.example.com"),
        ("bar.foo.example.com", "foo.example.com"),  # would cover someone else's name
        ("a.example.com", "*.example.com"),
        ("*.a.example.com", "*.example.com"),
        ("*.example.com", "example.com"),  # example.com owns its subdomains, the wildcard's names
        ("example.com", "*.example.com"),
    ],
)
def test_reservations_are_exclusive_across_accounts(store: SqliteStore, first: str, second: str) -> None:
    store.add_domain(first, "alice")
    rev = store.revision()
    with pytest.raises(DomainError) as info:
        store.add_domain(second, "bob")
    assert info.value.ngrok_code == "ERR_NGROK_320"
    assert "another account" in info.value.message
    assert store.revision() == rev
    assert [d.account for d in store.list_domains()] == ["alice"]
    if second != first:
        store.add_domain(second, "alice")  # the owner may add overlapping names (they count separately)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("*.example.com", "example.org"),
        ("foo.example.com", "bar.example.com"),
        ("foo.example.com", "xfoo.example.com"),  # a shared suffix is not nesting
        ("*.a.example.com", "b.example.com"),
        ("*.a.example.com", "*.b.example.com"),
    ],
)
def test_unrelated_names_do_not_conflict(store: SqliteStore, first: str, second: str) -> None:
    store.add_domain(first, "alice")
    store.add_domain(second, "bob")


def test_domain_owner_most_specific(store: SqliteStore) -> None:
    store.add_domain("*.example.com", "alice")
    store.add_domain("app.example.com", "alice")
    store.add_domain("*.other.org", "bob")
    store.add_domain("api.shop.net", "carol")
    assert store.domain_owner("app.example.com") == "alice"
    assert store.domain_owner("x.y.example.com") == "alice"
    assert store.domain_owner("example.com") is None  # a wildcard does not cover its base
    assert store.domain_owner("Z.Other.Org.") == "bob"
    assert store.domain_owner("api.shop.net") == "carol"
    assert store.domain_owner("v1.api.shop.net") == "carol"  # nested below a plain reservation
    assert store.domain_owner("shop.net") is None
    assert store.domain_owner("unrelated.io") is None
    assert store.domain_owner("") is None


# ---- change detection and sharing ---------------------------------------------------------------------


def test_revision_grows_on_every_change_only(store: SqliteStore) -> None:
    seen = [store.revision()]

    def changed() -> None:
        seen.append(store.revision())
        assert seen[-1] > seen[-2]

    info, _ = store.create_token()
    changed()
    store.revoke_token(info.id)
    changed()
    store.add_domain("a.example.com")
    changed()
    store.remove_domain("a.example.com")
    changed()
    # reads, failures and no-ops leave it alone
    store.list_tokens()
    store.check_token("hw_nope")
    store.revoke_token(info.id)
    store.remove_domain("a.example.com")
    store.revoke_token("tok_missing_0000")
    assert store.revision() == seen[-1]


def test_two_instances_see_each_others_changes(store: SqliteStore, other: SqliteStore) -> None:
    start = store.revision()
    info, secret = other.create_token("alice")
    assert store.revision() > start
    assert store.check_token(secret) == info

    before = store.revision()
    other.revoke_token(info.id)
    assert store.revision() > before
    assert store.check_token(secret) is None

    other.add_domain("*.example.com", "alice")
    assert store.domain_owner("a.example.com") == "alice"
    with pytest.raises(DomainError, match="ERR_NGROK_320"):
        store.add_domain("a.example.com", "bob")
    assert store.remove_domain("*.example.com")
    assert other.domain_owner("a.example.com") is None
    assert store.revision() == other.revision()


def test_threads_share_one_instance(store: SqliteStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(25):
                _, secret = store.create_token(f"acct{n}")
                assert store.check_token(secret) is not None
                store.add_domain(f"h{i}.t{n}.example.com", f"acct{n}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list_tokens()) == 100 and len(store.list_domains()) == 100
    assert store.revision() == 200


WORKER = """
import sys
from pathlib import Path
from hatchway.store.base import DomainError
from hatchway.store.sqlite import SqliteStore

path, n = Path(sys.argv[1]), int(sys.argv[2])
won = 0
with SqliteStore(path) as s:
    for i in range(30):
        s.create_token(f"acct{n}")
        try:
            s.add_domain(f"race{i}.example.com", f"acct{n}")
            won += 1
        except DomainError as exc:
            assert exc.ngrok_code == "ERR_NGROK_320", exc
print(won)
"""


def test_processes_share_one_file_safely(db_path: Path) -> None:
    """Several processes write at once: nothing is lost, and each contested name has exactly one owner."""
    SqliteStore(db_path).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(db_path), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    wins = 0
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        wins += int(out)
    with SqliteStore(db_path) as s:
        assert len(s.list_tokens()) == 120
        assert wins == 30 and len(s.list_domains()) == 30
        assert s.revision() == 150
