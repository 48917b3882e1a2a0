"""``hatchway demo`` (the README's first command) carries a request through the tunnel and prints it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_prints_the_sample_apps_answer() -> None:
    exe = Path(sys.executable).parent / "hatchway"
    proc = subprocess.run([str(exe), "demo"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "endpoint bound        https://demo.hatchway.localhost" in proc.stdout
    assert "response              HTTP/1.1 200 OK" in proc.stdout
    assert '"hello": "from the sample app"' in proc.stdout
