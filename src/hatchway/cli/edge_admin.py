"""``hatchway edge token|domain|ssh-key ...``: manage the edge's authtokens, domains and SSH keys.

Three typer sub-apps, ``token_app``, ``domain_app`` and ``ssh_key_app``, that ``cli/main.py`` mounts.
They open the edge's state file (``DATA_DIR/state.db``) and call the store; a running edge notices
the change through the store's revision. Thin by rule: no domain or token logic here, no network, no
edge process needed.
``token create`` prints only the secret on stdout so scripts can capture it; everything else a command
says about what happened goes to stdout as plain lines, and every error to stderr with exit status 1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from hatchway.edge.domains import is_wildcard, under_base, validate_domain, wildcard_base
from hatchway.edge.verify import default_cname_base, dns_record, new_cname_target
from hatchway.store.base import DomainError, DomainInfo, StoreError
from hatchway.store.certificates import covers
from hatchway.store.sqlite import SqliteStore

DEFAULT_DATA_DIR = "~/.hatchway/edge"
DEFAULT_BASE_DOMAIN = "hatchway.localhost"  # the edge's default (``EdgeConfig.base_domain``)
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
cert_app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Bring your own certificates (served by SNI)."
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


def _edge_names(data_dir: Path) -> tuple[str, str]:
    """(base domain, CNAME target base) of the edge that uses ``data_dir``, from the ``edge.json`` it
    writes when it starts; the edge's defaults when it has not run yet."""
    doc: dict[str, object] = {}
    with suppress(OSError, ValueError):
        loaded = json.loads((Path(os.path.expanduser(data_dir)) / "edge.json").read_text())
        doc = loaded if isinstance(loaded, dict) else {}
    base = str(doc.get("base_domain") or DEFAULT_BASE_DOMAIN)
    return base, str(doc.get("cname_target_base") or default_cname_base(base))


@domain_app.command("add")
def domain_add(
    name: Annotated[str, typer.Argument(help="Domain to reserve, e.g. app.example.com or '*.example.com'.")],
    account: AccountOpt = "default",
    cname_target_base: Annotated[
        str | None,
        typer.Option(
            envvar="HATCHWAY_CNAME_TARGET_BASE",
            help="Where CNAME targets live (default: the edge's, from DATA_DIR/edge.json).",
        ),
    ] = None,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Reserve a domain: the account owns it and every name below it. Prints the DNS record (a CNAME)
    the edge checks before it binds the domain or gets it a certificate."""
    base_domain, cname_base = _edge_names(data_dir)
    try:
        target = new_cname_target(validate_domain(cname_target_base or cname_base))
    except DomainError as exc:
        _fail(f"--cname-target-base: {exc.message}")
    with _store(data_dir) as store:
        info = store.add_domain(name, account, target)
    if is_wildcard(info.name):
        scope = f"every name below {wildcard_base(info.name)}"
    else:
        scope = f"{info.name} and every name below it"
    typer.echo(f"reserved {info.name} for account {info.account} ({scope})")
    if under_base(info.name, base_domain):
        typer.echo(f"no DNS record needed: it is under the edge's base domain {base_domain}")
        return
    typer.echo(
        "create this DNS record (the edge checks it before it binds the name or issues a certificate):"
    )
    typer.echo(dns_record(info.name, info.cname_target))
    if not is_wildcard(info.name):
        typer.echo(f"(a name below {info.name} needs its own CNAME record to the same target)")


def _verified(d: DomainInfo, base_domain: str) -> str:
    if under_base(d.name, base_domain):
        return "not needed"
    if d.checked_at is None:
        return "not checked yet"
    if d.verified:
        return f"yes {_when(d.checked_at)}"
    code = d.check_detail.split(":", 1)[0]
    return f"no {_when(d.checked_at)} {code}".rstrip()


@domain_app.command("list")
def domain_list(
    account: Annotated[str | None, typer.Option("--account", "-a", help="Only this account's.")] = None,
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """List reserved domains, the CNAME target of each, and the outcome of the edge's last DNS check."""
    base_domain, _ = _edge_names(data_dir)
    with _store(data_dir) as store:
        found = store.list_domains(account)
    if not found:
        typer.echo("no domains", err=True)
        return
    rows = []
    for d in found:
        needed = not under_base(d.name, base_domain)
        target = (d.cname_target or "(given at first check)") if needed else "-"
        rows.append((d.name, d.account, target, _verified(d, base_domain), _when(d.created_at)))
    _table(("DOMAIN", "ACCOUNT", "CNAME TARGET", "VERIFIED", "CREATED"), rows)


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


# ---- certificates -----------------------------------------------------------------------------------


@cert_app.command("add")
def cert_add(
    domain: Annotated[str, typer.Option("--domain", help="The name it serves: a host or '*.example.com'.")],
    cert: Annotated[Path, typer.Option("--cert", help="PEM certificate chain, leaf first.")],
    key: Annotated[Path, typer.Option("--key", help="PEM private key of the leaf (unencrypted).")],
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Serve this certificate for DOMAIN (by SNI) instead of an ACME or dev one."""
    pems = []
    for flag, path in (("--cert", cert), ("--key", key)):
        try:
            pems.append(Path(os.path.expanduser(path)).read_bytes())
        except OSError as exc:
            _fail(f"{flag}: cannot read {path}: {exc.strerror}")
    with _store(data_dir) as store:
        info = store.put_certificate(domain, pems[0], pems[1], source="manual")
    if not any(covers(n, info.name) for n in info.names):
        typer.echo(f"warning: the certificate names {', '.join(info.names)}, not {info.name}", err=True)
    typer.echo(f"added a certificate for {info.name} (valid until {_when(info.not_after)})")


@cert_app.command("list")
def cert_list(data_dir: DataDir = _DEFAULT_DIR) -> None:
    """List stored certificates (brought with `cert add`, or issued by ACME)."""
    with _store(data_dir) as store:
        found = store.list_certificates()
    if not found:
        typer.echo("no certificates", err=True)
        return
    _table(
        ("NAME", "SOURCE", "NAMES", "EXPIRES"),
        [(c.name, c.source, " ".join(c.names), _when(c.not_after)) for c in found],
    )


@cert_app.command("remove")
def cert_remove(
    domain: Annotated[str, typer.Option("--domain", help="The name it was added for.")],
    data_dir: DataDir = _DEFAULT_DIR,
) -> None:
    """Stop serving a certificate you brought (ACME or the dev CA takes over)."""
    with _store(data_dir) as store:
        if not store.remove_certificate(domain, source="manual"):
            _fail(f"no certificate was added for {domain} (see `hatchway edge cert list`)")
    typer.echo(f"removed the certificate for {domain}")
