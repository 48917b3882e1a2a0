"""``hatchway edge`` with a listener address it cannot use: one line naming the flag, exit status 1, no
traceback (the first thing a user meets when port 8443 or 2222 is already taken)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from e2e_support import HATCHWAY


@pytest.mark.parametrize("flag", ["--tunnel-addr", "--http-addr", "--https-addr", "--ssh-addr"])
def test_a_taken_port_names_its_flag(flag: str, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        addrs = {f: "127.0.0.1:0" for f in ("--tunnel-addr", "--http-addr", "--https-addr", "--ssh-addr")}
        addrs[flag] = f"127.0.0.1:{port}"
        cmd = [
            HATCHWAY,
            "edge",
            "--data-dir",
            str(tmp_path / "edge"),
            *[x for kv in addrs.items() for x in kv],
        ]
        r = subprocess.run(cmd, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    err = r.stderr.decode()
    assert r.returncode == 1
    assert f"ERROR: {flag}: " in err and "in use" in err.lower()
    assert "Traceback" not in err and "│" not in err
