"""Compile the data path's hot modules with mypyc (``hatchway._native.MODULES``), in place under src/.

Run by ``scripts/setup`` when mypyc is installed (the test extras bring it): ``python scripts/native.py
build`` compiles them (about 30 s), writes ``src/hatchway/_native.json`` with each source's SHA-256, and
leaves the extension modules next to their sources, where Python imports them; ``clean`` removes them.
A build that fails only prints why: the package then runs from its sources, as it does when any source
changes after a build (``hatchway._native.guard``). It needs a C compiler and Python's headers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))

from hatchway import _native  # noqa: E402  (after the path above)


def clean() -> None:
    (SRC / "hatchway" / _native.MANIFEST).unlink(missing_ok=True)
    for rel in _native.MODULES:
        for built in (SRC / rel).parent.glob(Path(rel).stem + ".*.so"):
            built.unlink()
    for shared in SRC.glob("*__mypyc.*.so"):
        shared.unlink()


def build() -> int:
    if _native.fresh(SRC) and all(
        any((SRC / rel).parent.glob(Path(rel).stem + ".*.so")) for rel in _native.MODULES
    ):
        print("native build: up to date")
        return 0
    clean()
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        print("native build skipped: no C compiler (apt-get install gcc); running from the sources")
        return 0
    cmd = [sys.executable, "-m", "mypyc", *(f"src/{rel}" for rel in _native.MODULES)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    built = all(any((SRC / rel).parent.glob(Path(rel).stem + ".*.so")) for rel in _native.MODULES)
    if res.returncode != 0 or not built:
        clean()
        tail = (res.stdout + res.stderr).strip().splitlines()[-5:]
        print("native build failed; running from the sources:\n  " + "\n  ".join(tail))
        return 0
    sources = {rel: hashlib.sha256((SRC / rel).read_bytes()).hexdigest() for rel in _native.MODULES}
    (SRC / "hatchway" / _native.MANIFEST).write_text(json.dumps({"sources": sources}, indent=1) + "\n")
    print(f"native build: {len(sources)} modules compiled with mypyc")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["build"]:
        sys.exit(build())
    if sys.argv[1:] == ["clean"]:
        clean()
        sys.exit(0)
    print("usage: python scripts/native.py build|clean", file=sys.stderr)
    sys.exit(2)
