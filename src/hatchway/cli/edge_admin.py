"""``hatchway edge token|domain|ssh-key ...``: manage the edge's authtokens, domains and SSH keys.

Three typer sub-apps, ``token_app``, ``domain_app`` and ``ssh_key_app``, that ``cli/main.py`` mounts.
They open the edge's state file (``DATA_DIR/state.db``) and call the store; a running edge notices
the change through the store's revision. Thin by rule: no domain or token logic here, no network, no
edge process needed.
``token create`` prints only the secret on stdout so scripts can capture it; everything else a command
says about what happened goes to stdout as plain lines, and every error to stderr with exit status 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from hatchway.edge.domains import is_wildcard, wildcard_base
from hatchway.store.base import DomainError, StoreError
from hatchway.store.sqlite import SqliteStore

DEFAULT_DATA_DIR = "~/.hatchway/edge"
STATE_FILE = "state.db"
_DEFAULT_DIR = Path(DEFAULT_DATA_DIR)  # expanded when opened, so --help shows "~"

DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="HATCHWAY_DATA_DIR",
        help="Directory of the edge's state (it holds state.db).",
        show_default=True,
    ),
]
AccountOpt = Annotated[str, typer.Option("--account", "-a", help="Account that owns it.")]

token_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Create, list and revoke the edge's authtokens."
)
domain_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Reserve domains (wildcards too) for accounts."
)
ssh_key_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Register SSH public keys for the SSH entry."
)


def open_store(data_dir: Path) -> SqliteStore:
    """Open ``data_dir/state.db``, creating the directory (owner-only) and the database if needed."""
    data_dir = Path(os.path.expanduser(data_dir))
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StoreError(f"cannot create the data directory {data_dir}: {exc}") from exc
    return SqliteStore(data_dir / STATE_FILE)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@contextmanager
def _store(data_dir: Path) -> Iterator[SqliteStore]:
    """The store for one command; store errors become a message on stderr and exit status 1."""
    try:
        store = open_store(data_dir)
    except StoreError as exc:
        _fail(exc.message)
    try:
        yield store
    except DomainError as exc:
        _fail(f"{exc.message} ({exc.ngrok_code})")
    except StoreError as exc:
        _fail(exc.message)
    finally:
        store.close()


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Plain aligned columns on stdout: greppable, never truncated or wrapped."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for line in [header, *rows]:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


# ---- tokens -----------------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    account: AccountOpt = "default",
    description: Annotated[str, typer.Option("--description", "-d", help="A note to recognise it.")] = "",
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Create an authtoken and print it (only it, on stdout). It cannot be shown again."""
    with _store(data_dir) as store:
        info, secret = store.create_token(account, description)
    typer.echo(f"created {info.id} for account {info.account}", err=True)
    typer.echo(secret)


@token_app.command("list")
def token_list(data_dir: DataDir = _DEFAULT_DIR) -> None:
    """List authtokens (ids only; secrets are not stored)."""
    with _store(data_dir) as store:
        tokens = store.list_tokens()
    if not tokens:
        typer.echo("no tokens", err=True)
        return
    _table(
        ("ID", "ACCOUNT", "DESCRIPTION", "CREATED", "REVOKED"),
        [(t.id, t.account, t.description, _when(t.created_at), "yes" if t.revoked else "no") for t in tokens],
    )


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(metavar="TOKEN_ID", help="Token id, or a unique prefix of it.")],
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Revoke an authtoken: agents using it can no longer connect."""
    with _store(data_dir) as store:
        info = store.get_token(token_id)
        if info is None or not store.revoke_token(info.id):
            _fail(f"no token with id {token_id!r} (see `hatchway edge token list`)")
    was = " (it was already revoked)" if info.revoked else ""
    typer.echo(f"revoked {info.id}{was}")


# ---- domains ----------------------------------------------------------------------------------------


@domain_app.command("add")
def domain_add(
    name: Annotated[str, typer.Argument(help="Domain to reserve, e.g. app.example.com or '*.example.com'.")],
    account: AccountOpt = "default",
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Reserve a domain: the account owns it and every name below it."""
    with _store(data_dir) as store:
        info = store.add_domain(name, account)
    if is_wildcard(info.name):
        scope = f"every name below {wildcard_base(info.name)}"
    else:
        scope = f"{info.name} and every name below it"
    typer.echo(f"reserved {info.name} for account {info.account} ({scope})")


@domain_app.command("list")
def domain_list(
    account: Annotated[str | None, typer.Option("--account", "-a", help="Only this account's.")] = None,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """List reserved domains."""
    with _store(data_dir) as store:
        found = store.list_domains(account)
    if not found:
        typer.echo("no domains", err=True)
        return
    _table(("DOMAIN", "ACCOUNT", "CREATED"), [(d.name, d.account, _when(d.created_at)) for d in found])


@domain_app.command("remove")
def domain_remove(
    name: Annotated[str, typer.Argument(help="A reserved domain, exactly as listed.")],
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Release a reservation."""
    with _store(data_dir) as store:
        if not store.remove_domain(name):
            _fail(f"{name} is not reserved (see `hatchway edge domain list`)")
    typer.echo(f"removed {name}")


# ---- SSH keys ---------------------------------------------------------------------------------------


@ssh_key_app.command("add")
def ssh_key_add(
    path: Annotated[
        Path, typer.Argument(metavar="FILE", help="An OpenSSH public key file (id_ed25519.pub).")
    ],
    account: AccountOpt = "default",
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Let this key open endpoints over SSH for the account (ssh -R ... v2@EDGE http)."""
    try:
        text = Path(os.path.expanduser(path)).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        _fail(f"{path} holds no public key")
    with _store(data_dir) as store:
        added = [store.add_ssh_key(line, account) for line in lines]
    for info in added:
        typer.echo(f"added {info.key_type} key {info.fingerprint} for account {info.account}")


@ssh_key_app.command("list")
def ssh_key_list(
    account: Annotated[str | None, typer.Option("--account", "-a", help="Only this account's.")] = None,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """List registered SSH keys."""
    with _store(data_dir) as store:
        keys = store.list_ssh_keys(account)
    if not keys:
        typer.echo("no ssh keys", err=True)
        return
    _table(
        ("FINGERPRINT", "TYPE", "ACCOUNT", "COMMENT", "ADDED"),
        [(k.fingerprint, k.key_type, k.account, k.comment, _when(k.created_at)) for k in keys],
    )


@ssh_key_app.command("remove")
def ssh_key_remove(
    fingerprint: Annotated[str, typer.Argument(help="The key's fingerprint, as listed (SHA256:...).")],
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Forget a key: it can no longer open endpoints."""
    with _store(data_dir) as store:
        if not store.remove_ssh_key(fingerprint):
            _fail(f"no key {fingerprint} (see `hatchway edge ssh-key list`)")
    typer.echo(f"removed {fingerprint}")
