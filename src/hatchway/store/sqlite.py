"""``SqliteStore``: the default ``Store``, one SQLite file shared by every process of one machine.

The running edge (possibly one process per core) and the ``hatchway edge token|domain`` commands open
the same file at once. What makes that safe:
- WAL journal mode: readers never block the writer and the writer never blocks readers;
- ``busy_timeout``: a process that finds the file locked waits instead of failing at once;
- every write runs in ``BEGIN IMMEDIATE``, which takes the write lock *before* reading, so a
  check-then-insert (a domain conflict check, say) cannot interleave with another process's write and
  a transaction never has to upgrade a stale read snapshot (which SQLite refuses with SQLITE_BUSY);
- a ``revision`` counter in the same transaction as each change, so other processes notice it cheaply.
Inside one process, one connection is shared by all threads behind a ``threading.Lock``.

This module must not hold live connection state (sessions, endpoints), must not be called on an event
loop's hot path in a tight loop (cache ``check_token`` answers and poll ``revision``), and must never store
or log a token secret: only its SHA-256 is kept.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from hatchway.edge import domains
from hatchway.store.base import CertificateInfo, DomainError, DomainInfo, SshKeyInfo, StoreError, TokenInfo
from hatchway.store.certificates import inspect_pair
from hatchway.store.sshkeys import parse_public_key

SCHEMA_VERSION = 2  # 2: domains gained the custom-domain verification columns
TOKEN_PREFIX = "hw_"
TOKEN_ID_PREFIX = "tok_"
MIN_ID_PREFIX = 8  # "tok_" and four hex digits: shorter prefixes are too easy to get wrong
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    name       TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id          TEXT PRIMARY KEY,
    account     TEXT NOT NULL REFERENCES accounts(name),
    secret_hash TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL,
    revoked_at  REAL
);
CREATE TABLE IF NOT EXISTS domains (
    name         TEXT PRIMARY KEY,
    account      TEXT NOT NULL REFERENCES accounts(name),
    created_at   REAL NOT NULL,
    cname_target TEXT NOT NULL DEFAULT '',
    verified     INTEGER NOT NULL DEFAULT 0,
    checked_at   REAL,
    check_detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS domains_by_account ON domains(account);
CREATE TABLE IF NOT EXISTS certificates (
    name       TEXT NOT NULL,
    source     TEXT NOT NULL,
    cert_pem   BLOB NOT NULL,
    key_pem    BLOB NOT NULL,
    names      TEXT NOT NULL,
    not_after  REAL NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (name, source)
);
CREATE TABLE IF NOT EXISTS acme_accounts (
    directory  TEXT PRIMARY KEY,
    key_pem    BLOB NOT NULL,
    account    TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ssh_keys (
    fingerprint TEXT PRIMARY KEY,
    account     TEXT NOT NULL REFERENCES accounts(name),
    key_type    TEXT NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL
);
"""

# Columns added to tables after version 1. ``CREATE TABLE IF NOT EXISTS`` leaves an existing table as it
# is, so opening an older file adds whichever of these its tables lack (``ALTER TABLE ... ADD COLUMN``).
# Every new column needs a default (SQLite requires one for NOT NULL) and must also be in ``_SCHEMA``.
_ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("domains", "cname_target", "TEXT NOT NULL DEFAULT ''"),
    ("domains", "verified", "INTEGER NOT NULL DEFAULT 0"),
    ("domains", "checked_at", "REAL"),
    ("domains", "check_detail", "TEXT NOT NULL DEFAULT ''"),
)


def hash_secret(secret: str) -> str:
    """SHA-256 of a token secret, hex.

    A fast, unsalted hash is right here because the secrets are random with ~216 bits of entropy, not
    passwords a person chose: nobody can guess them or precompute a table, so salts and slow KDFs (bcrypt,
    argon2) would only cost time on every agent login. Being deterministic, the hash is also the lookup
    key, so no constant-time comparison is needed: the database finds the row by the hash of what the
    client sent, and what timing could reveal is at most something about that hash, which does not help
    anyone find a secret that produces a stored hash.
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    """A new token secret: ``hw_`` and 36 URL-safe characters (27 random bytes), 39 characters in all."""
    return TOKEN_PREFIX + secrets.token_urlsafe(27)


def _token(row: sqlite3.Row) -> TokenInfo:
    return TokenInfo(
        id=row["id"],
        account=row["account"],
        description=row["description"],
        created_at=row["created_at"],
        revoked=row["revoked_at"] is not None,
    )


def _certificate(row: sqlite3.Row) -> CertificateInfo:
    return CertificateInfo(
        name=row["name"],
        source=row["source"],
        cert_pem=bytes(row["cert_pem"]),
        key_pem=bytes(row["key_pem"]),
        names=tuple(row["names"].split()),
        not_after=row["not_after"],
        created_at=row["created_at"],
    )


def _domain(row: sqlite3.Row) -> DomainInfo:
    return DomainInfo(
        name=row["name"],
        account=row["account"],
        created_at=row["created_at"],
        cname_target=row["cname_target"],
        verified=bool(row["verified"]),
        checked_at=row["checked_at"],
        check_detail=row["check_detail"],
    )


class SqliteStore:
    """A ``Store`` in one SQLite file. Safe to share between threads and between processes."""

    def __init__(self, path: Path) -> None:
        """Open (creating if needed) the database file at ``path``; its directory must exist.

        Raises ``StoreError`` when the file cannot be opened, is not a Hatchway database, or was written by
        a newer schema.
        """
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            if not self.path.exists():
                # The file holds token hashes: create it readable by its owner only (SQLite gives the
                # -wal and -shm files the same mode).
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self._db = sqlite3.connect(
                str(self.path),
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # autocommit; transactions are explicit (BEGIN IMMEDIATE)
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the state database {self.path}: {exc}") from exc
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: SQLite could not switch to WAL mode (got {mode!r})")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"cannot use the state database {self.path}: {exc}") from exc
        except BaseException:
            self._db.close()
            raise

    # ---- plumbing -----------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the database's write lock from its first statement."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _bump(self, db: sqlite3.Connection) -> None:
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")

    def _ensure_account(self, db: sqlite3.Connection, account: str) -> str:
        account = account.strip()
        if not account:
            raise StoreError("an account name must not be empty")
        db.execute(
            "INSERT OR IGNORE INTO accounts(name, created_at) VALUES (?, ?)",
            (account, time.time()),
        )
        return account

    def _migrate(self) -> None:
        # executescript() would COMMIT any open transaction first, so the schema is created
        # statement by statement inside one BEGIN IMMEDIATE: two processes opening a new file at
        # once cannot both half-create it.
        with self._write() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
            )
            db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('revision', 0)")
            found = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
            if found > SCHEMA_VERSION:
                # Raised inside the transaction: it rolls back, so a newer file is left untouched.
                raise StoreError(
                    f"{self.path} has schema version {found}, newer than this Hatchway understands "
                    f"({SCHEMA_VERSION}); upgrade Hatchway"
                )
            self._add_columns(db)
            if found < SCHEMA_VERSION:
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))

    @staticmethod
    def _add_columns(db: sqlite3.Connection) -> None:
        """Bring an older file's tables up to ``_SCHEMA`` (in the caller's write transaction, so two
        processes opening the same old file cannot both add a column). Idempotent."""
        present: dict[str, set[str]] = {}
        for table, column, decl in _ADDED_COLUMNS:
            if table not in present:
                present[table] = {r["name"] for r in db.execute(f"PRAGMA table_info({table})").fetchall()}
            if column not in present[table]:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                present[table].add(column)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- tokens -------------------------------------------------------------------------------------

    def create_token(self, account: str = "default", description: str = "") -> tuple[TokenInfo, str]:
        secret = new_secret()
        token_id = TOKEN_ID_PREFIX + secrets.token_hex(12)
        now = time.time()
        with self._write() as db:
            account = self._ensure_account(db, account)
            db.execute(
                "INSERT INTO tokens(id, account, secret_hash, description, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (token_id, account, hash_secret(secret), description, now),
            )
            self._bump(db)
        return TokenInfo(token_id, account, description, now, revoked=False), secret

    def check_token(self, secret: str) -> TokenInfo | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM tokens WHERE secret_hash = ? AND revoked_at IS NULL", (hash_secret(secret),)
            ).fetchone()
        return None if row is None else _token(row)

    def list_tokens(self) -> list[TokenInfo]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM tokens ORDER BY created_at, id").fetchall()
        return [_token(r) for r in rows]

    def _match_token(self, db: sqlite3.Connection, token_id: str) -> sqlite3.Row | None:
        token_id = token_id.strip()
        row: sqlite3.Row | None = db.execute("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone()
        if row is not None or len(token_id) < MIN_ID_PREFIX:
            return row
        # substr() rather than LIKE: '_' in "tok_" is a LIKE wildcard.
        rows = db.execute(
            "SELECT * FROM tokens WHERE substr(id, 1, ?) = ? LIMIT 2", (len(token_id), token_id)
        ).fetchall()
        if len(rows) > 1:
            raise StoreError(f"the token id prefix {token_id!r} matches more than one token; give more of it")
        return rows[0] if rows else None

    def get_token(self, token_id: str) -> TokenInfo | None:
        """The token with this id or unique id prefix (at least 8 characters), revoked or not."""
        with self._lock:
            row = self._match_token(self._db, token_id)
        return None if row is None else _token(row)

    def revoke_token(self, token_id: str) -> bool:
        with self._write() as db:
            row = self._match_token(db, token_id)
            if row is None:
                return False
            if row["revoked_at"] is None:
                db.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (time.time(), row["id"]))
                self._bump(db)
        return True

    # ---- domains ------------------------------------------------------------------------------------

    def add_domain(self, name: str, account: str = "default", cname_target: str = "") -> DomainInfo:
        name = domains.validate_domain(name)
        if cname_target:
            cname_target = domains.validate_domain(cname_target)
        base = domains.wildcard_base(name)
        now = time.time()
        with self._write() as db:
            account = self._ensure_account(db, account)
            covering = domains.covering_names(name)
            marks = ",".join("?" * len(covering))
            above = db.execute(
                f"SELECT name, account FROM domains WHERE name IN ({marks})", covering
            ).fetchall()
            # Names nested below the new one: "x.<base>" at any depth ("*.<base>" included).
            below = db.execute(
                "SELECT name, account FROM domains WHERE length(name) > ? AND substr(name, -?) = ?",
                (len(base) + 1, len(base) + 1, "." + base),
            ).fetchall()
            for row in [*above, *below]:
                if row["account"] != account:
                    if row["name"] == name:
                        why = f"The domain {name} is reserved"
                    elif domains.covers(row["name"], name):
                        why = f"The domain {name} is covered by {row['name']}, which is reserved"
                    else:
                        why = f"The domain {name} would cover {row['name']}, which is reserved"
                    raise DomainError("ERR_NGROK_320", f"{why} for another account.")
                if row["name"] == name:
                    raise DomainError(
                        "ERR_NGROK_413", f"The domain {name} is already reserved for the account {account}."
                    )
            db.execute(
                "INSERT INTO domains(name, account, created_at, cname_target) VALUES (?, ?, ?, ?)",
                (name, account, now, cname_target),
            )
            self._bump(db)
        return DomainInfo(name, account, now, cname_target)

    def remove_domain(self, name: str) -> bool:
        with self._write() as db:
            gone = db.execute("DELETE FROM domains WHERE name = ?", (domains.normalize(name),)).rowcount > 0
            if gone:
                self._bump(db)
        return gone

    def list_domains(self, account: str | None = None) -> list[DomainInfo]:
        with self._lock:
            if account is None:
                rows = self._db.execute("SELECT * FROM domains ORDER BY name").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM domains WHERE account = ? ORDER BY name", (account,)
                ).fetchall()
        return [_domain(r) for r in rows]

    def domain_owner(self, host: str) -> str | None:
        candidates = domains.covering_names(host)
        marks = ",".join("?" * len(candidates))
        with self._lock:
            rows = self._db.execute(
                f"SELECT name, account FROM domains WHERE name IN ({marks})", candidates
            ).fetchall()
        if not rows:
            return None
        # Reservations covering one host never belong to two accounts (add_domain refuses that), but
        # answer with the most specific one anyway, in the order covering_names gives.
        owner: dict[str, str] = {r["name"]: r["account"] for r in rows}
        return next(owner[c] for c in candidates if c in owner)

    def domain_reservation(self, host: str) -> DomainInfo | None:
        candidates = domains.covering_names(host)
        marks = ",".join("?" * len(candidates))
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM domains WHERE name IN ({marks})", candidates).fetchall()
        found = {r["name"]: r for r in rows}
        return next((_domain(found[c]) for c in candidates if c in found), None)

    def set_cname_target(self, name: str, target: str) -> str:
        name, target = domains.normalize(name), domains.validate_domain(target)
        with self._write() as db:
            row = db.execute("SELECT cname_target FROM domains WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise DomainError("ERR_NGROK_319", f"The domain {name} is not reserved.")
            if row["cname_target"]:
                return str(row["cname_target"])
            db.execute("UPDATE domains SET cname_target = ? WHERE name = ?", (target, name))
            self._bump(db)
        return target

    def record_domain_check(self, name: str, verified: bool, detail: str = "") -> None:
        with self._write() as db:
            db.execute(
                "UPDATE domains SET verified = ?, checked_at = ?, check_detail = ? WHERE name = ?",
                (int(verified), time.time(), detail, domains.normalize(name)),
            )

    # ---- SSH keys -----------------------------------------------------------------------------------

    def add_ssh_key(self, public_key: str, account: str = "default") -> SshKeyInfo:
        key_type, fingerprint, comment = parse_public_key(public_key)
        now = time.time()
        with self._write() as db:
            account = self._ensure_account(db, account)
            row = db.execute("SELECT account FROM ssh_keys WHERE fingerprint = ?", (fingerprint,)).fetchone()
            if row is not None:
                whose = "this account" if row["account"] == account else "another account"
                raise StoreError(f"the key {fingerprint} is already registered to {whose}")
            db.execute(
                "INSERT INTO ssh_keys(fingerprint, account, key_type, comment, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (fingerprint, account, key_type, comment, now),
            )
            self._bump(db)
        return SshKeyInfo(fingerprint, account, key_type, comment, now)

    def ssh_key_owner(self, fingerprint: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT account FROM ssh_keys WHERE fingerprint = ?", (fingerprint,)
            ).fetchone()
        return None if row is None else str(row["account"])

    def list_ssh_keys(self, account: str | None = None) -> list[SshKeyInfo]:
        query = "SELECT * FROM ssh_keys" + (" WHERE account = ?" if account is not None else "")
        with self._lock:
            rows = self._db.execute(
                query + " ORDER BY created_at, fingerprint", (account,) if account else ()
            ).fetchall()
        return [
            SshKeyInfo(r["fingerprint"], r["account"], r["key_type"], r["comment"], r["created_at"])
            for r in rows
        ]

    def remove_ssh_key(self, fingerprint: str) -> bool:
        with self._write() as db:
            gone = (
                db.execute("DELETE FROM ssh_keys WHERE fingerprint = ?", (fingerprint.strip(),)).rowcount > 0
            )
            if gone:
                self._bump(db)
        return gone

    # ---- certificates ---------------------------------------------------------------------------------

    def put_certificate(
        self, name: str, cert_pem: bytes, key_pem: bytes, source: str = "manual"
    ) -> CertificateInfo:
        if source not in ("manual", "acme"):
            raise StoreError(f"unknown certificate source {source!r} (manual or acme)")
        name = domains.normalize(name)
        names, not_after = inspect_pair(cert_pem, key_pem)
        now = time.time()
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO certificates"
                "(name, source, cert_pem, key_pem, names, not_after, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, source, cert_pem, key_pem, " ".join(names), not_after, now),
            )
            self._bump(db)
        return CertificateInfo(name, source, cert_pem, key_pem, tuple(names), not_after, now)

    def certificate(self, name: str, source: str | None = None) -> CertificateInfo | None:
        name = domains.normalize(name)
        query = "SELECT * FROM certificates WHERE name = ?" + (" AND source = ?" if source else "")
        # 'manual' sorts before 'acme' with DESC: a certificate the user brought wins.
        with self._lock:
            row = self._db.execute(
                query + " ORDER BY source DESC LIMIT 1", (name, source) if source else (name,)
            ).fetchone()
        return None if row is None else _certificate(row)

    def list_certificates(self) -> list[CertificateInfo]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM certificates ORDER BY name, source DESC").fetchall()
        return [_certificate(r) for r in rows]

    def remove_certificate(self, name: str, source: str | None = None) -> bool:
        name = domains.normalize(name)
        query = "DELETE FROM certificates WHERE name = ?" + (" AND source = ?" if source else "")
        with self._write() as db:
            gone = db.execute(query, (name, source) if source else (name,)).rowcount > 0
            if gone:
                self._bump(db)
        return gone

    def put_acme_account(self, directory: str, key_pem: bytes, account: str) -> None:
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO acme_accounts(directory, key_pem, account, created_at)"
                " VALUES (?, ?, ?, ?)",
                (directory, key_pem, account, time.time()),
            )

    def acme_account(self, directory: str) -> tuple[bytes, str] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT key_pem, account FROM acme_accounts WHERE directory = ?", (directory,)
            ).fetchone()
        return None if row is None else (bytes(row["key_pem"]), str(row["account"]))

    # ---- change detection ---------------------------------------------------------------------------

    def revision(self) -> int:
        with self._lock:
            value: int = self._db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0]
        return value
