"""``hatchway edge token|domain`` commands, through typer's CliRunner and as real processes.

The contract scripts rely on: ``token create`` prints exactly one line, the secret; errors go to stderr
with exit status 1; a store opened elsewhere (the running edge) sees every change.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hatchway.cli.edge_admin import domain_app, open_store, token_app
from hatchway.store.sqlite import SqliteStore

runner = CliRunner()


def run_token(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(token_app, list(args))
    return result.exit_code, result.stdout, result.stderr


def run_domain(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(domain_app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_token_create_list_revoke(tmp_path: Path) -> None:
    dd = str(tmp_path / "edge")
    code, out, err = run_token("create", "--account", "alice", "--description", "ci", "--data-dir", dd)
    assert code == 0, err
    secret = out.strip()
    assert out == secret + "\n" and secret.startswith("hw_")
    assert "tok_" in err  # the id is told on stderr

    with open_store(Path(dd)) as store:
        info = store.check_token(secret)
    assert info is not None and (info.account, info.description) == ("alice", "ci")

    code, out, err = run_token("list", "--data-dir", dd)
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["ID", "ACCOUNT", "DESCRIPTION", "CREATED", "REVOKED"]
    assert row.split()[:3] == [info.id, "alice", "ci"] and row.split()[-1] == "no"
    assert secret not in out

    code, out, err = run_token("revoke", info.id[:10], "--data-dir", dd)
    assert code == 0, err
    assert out.strip() == f"revoked {info.id}"
    with open_store(Path(dd)) as store:
        assert store.check_token(secret) is None
    assert run_token("list", "--data-dir", dd)[1].splitlines()[1].split()[-1] == "yes"


def test_token_revoke_unknown_fails(tmp_path: Path) -> None:
    code, out, err = run_token("revoke", "tok_0000000000", "--data-dir", str(tmp_path))
    assert code == 1 and out == ""
    assert "no token with id 'tok_0000000000'" in err


def test_empty_lists_say_so_on_stderr(tmp_path: Path) -> None:
    assert run_token("list", "--data-dir", str(tmp_path)) == (0, "", "no tokens\n")
    assert run_domain("list", "--data-dir", str(tmp_path)) == (0, "", "no domains\n")


def test_data_dir_from_environment(tmp_path: Path) -> None:
    result = runner.invoke(token_app, ["create"], env={"HATCHWAY_DATA_DIR": str(tmp_path / "env")})
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "env" / "state.db").exists()


def test_domain_add_list_remove(tmp_path: Path) -> None:
    dd = str(tmp_path)
    code, out, err = run_domain("add", "*.Example.com", "--account", "alice", "--data-dir", dd)
    assert code == 0, err
    first, *rest = out.splitlines()
    assert first == "reserved *.example.com for account alice (every name below example.com)"
    # The CNAME record to create (custom-domain verification, tests/e2e/test_domain_verification.py).
    (wild_target,) = [ln.split()[2] for ln in rest if ln.startswith("*.example.com CNAME ")]
    assert wild_target.endswith(".cname.hatchway.localhost")
    code, out, err = run_domain("add", "api.shop.net", "--data-dir", dd)
    assert code == 0, err
    assert "reserved api.shop.net for account default" in out

    code, out, _ = run_domain("list", "--data-dir", dd)
    lines = [line.split()[:3] for line in out.splitlines()]
    assert lines[0] == ["DOMAIN", "ACCOUNT", "CNAME"]
    assert lines[1:] == [["*.example.com", "alice", wild_target], ["api.shop.net", "default", lines[2][2]]]
    code, out, _ = run_domain("list", "--account", "alice", "--data-dir", dd)
    assert len(out.splitlines()) == 2

    assert run_domain("remove", "api.shop.net", "--data-dir", dd)[:2] == (0, "removed api.shop.net\n")
    code, out, err = run_domain("remove", "api.shop.net", "--data-dir", dd)
    assert code == 1 and "api.shop.net is not reserved" in err


def test_domain_add_target_base_and_base_domain_names(tmp_path: Path) -> None:
    dd = str(tmp_path)
    code, out, err = run_domain(
        "add", "app.example.com", "--cname-target-base", "CN.Edge.Test", "--data-dir", dd
    )
    assert code == 0, err
    assert re.search(r"^app\.example\.com CNAME [0-9a-f]{20}\.cn\.edge\.test$", out, re.M), out
    code, _, err = run_domain("add", "x.example.com", "--cname-target-base", "bad_base", "--data-dir", dd)
    assert code == 1 and "--cname-target-base" in err
    # The edge's base domain comes from the edge.json a running edge writes into the data dir.
    (tmp_path / "edge.json").write_text(
        '{"base_domain": "tunnels.test", "cname_target_base": "c.tunnels.test"}'
    )
    code, out, err = run_domain("add", "mine.tunnels.test", "--data-dir", dd)
    assert code == 0 and "no DNS record needed" in out and "CNAME" not in out, err
    assert ".c.tunnels.test" in run_domain("add", "y.example.com", "--data-dir", dd)[1]
    rows = {ln.split()[0]: ln.split()[1:] for ln in run_domain("list", "--data-dir", dd)[1].splitlines()[1:]}
    assert rows["mine.tunnels.test"][1:3] == ["-", "not"]  # no target shown, "not needed"
    assert rows["app.example.com"][2:5] == ["not", "checked", "yet"]


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("my_app.example.com", "ERR_NGROK_355"),
        ("app.*.example.com", "ERR_NGROK_402"),
        ("a..b.com", "ERR_NGROK_327"),
    ],
)
def test_domain_add_syntax_error(tmp_path: Path, name: str, code: str) -> None:
    exit_code, out, err = run_domain("add", name, "--data-dir", str(tmp_path))
    assert exit_code == 1 and out == ""
    assert err.startswith("error: ") and code in err


def test_domain_add_conflict_names_the_problem(tmp_path: Path) -> None:
    dd = str(tmp_path)
    assert run_domain("add", "*.example.com", "-a", "alice", "--data-dir", dd)[0] == 0
    code, out, err = run_domain("add", "a.b.example.com", "-a", "bob", "--data-dir", dd)
    assert code == 1 and out == ""
    assert "a.b.example.com" in err and "*.example.com" in err and "another account" in err
    assert "ERR_NGROK_320" in err


def test_unusable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = run_token("create", "--data-dir", str(blocker / "edge"))
    assert code == 1 and out == ""
    assert err.startswith("error: cannot create the data directory")


def subprocess_cli(
    app: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    code = f"from hatchway.cli.edge_admin import {app}; {app}()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_real_process_prints_exactly_one_token_line(tmp_path: Path) -> None:
    dd = tmp_path / "edge"
    with SqliteStore(_ensure(dd) / "state.db") as edge:  # the running edge keeps the file open
        rev = edge.revision()
        proc = subprocess_cli("token_app", "create", "--account", "team", "--data-dir", str(dd))
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert len(lines) == 1 and proc.stdout == lines[0] + "\n"
        secret = lines[0]
        assert secret.startswith("hw_") and " " not in secret
        assert edge.revision() > rev
        info = edge.check_token(secret)
        assert info is not None and info.account == "team"

        proc = subprocess_cli("token_app", "revoke", info.id, env={"HATCHWAY_DATA_DIR": str(dd)})
        assert proc.returncode == 0, proc.stderr
        assert edge.check_token(secret) is None

        proc = subprocess_cli("domain_app", "add", "*.team.example", "-a", "team", "--data-dir", str(dd))
        assert proc.returncode == 0, proc.stderr
        assert edge.domain_owner("x.team.example") == "team"

        proc = subprocess_cli("domain_app", "add", "bad_name.example", "--data-dir", str(dd))
        assert proc.returncode == 1 and proc.stdout == ""
        assert "ERR_NGROK_355" in proc.stderr and "Traceback" not in proc.stderr


def _ensure(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return d
