"""``hatchway demo --check`` (the README's first command, stopping after its self-check): a dev edge,
a sample app and an agent come up, and a real HTTPS request through the edge reaches the app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_serves_the_sample_app_through_the_edge(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "hatchway"
    proc = subprocess.run(
        [str(exe), "demo", "--check", "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "checked       HTTP/1.1 200 OK" in out
    forwarding = next(line for line in out.splitlines() if line.startswith("Forwarding"))
    url = forwarding.split()[1]
    assert url.startswith("https://") and ".hatchway.localhost:" in url
    assert (tmp_path / "ca.pem").exists() and (tmp_path / "state.db").exists()
    curl_line = next(line for line in out.splitlines() if line.startswith("try it")).split(None, 2)[2]
    assert curl_line.startswith("curl --cacert ") and url in curl_line
