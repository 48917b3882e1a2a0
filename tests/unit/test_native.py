"""The mypyc build of the hot modules (``hatchway/_native.py``, ``scripts/native.py``): it is what runs after
``scripts/setup --test``, and a source changed after the build is never shadowed by it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hatchway import _native


def test_setup_built_the_hot_modules_and_they_are_the_ones_running() -> None:
    # scripts/setup --test installs gcc and Python's headers when missing, then builds: a red test here
    # means the build failed (run `.venv/bin/python scripts/native.py build` to see why) or a hot module
    # was edited after it (run the same to rebuild).
    assert _native.fresh(), "no build, or a stale one: run .venv/bin/python scripts/native.py build"
    assert _native.active()


def _fake_tree(root: Path, digest_of: dict[str, str] | None = None) -> None:
    """The hot modules' sources under ``root`` and a manifest (right hashes unless ``digest_of`` says)."""
    sources = {}
    for rel in _native.MODULES:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"NAME = {rel!r}\n")
        sources[rel] = (digest_of or {}).get(rel) or hashlib.sha256(path.read_bytes()).hexdigest()
    (root / "hatchway" / _native.MANIFEST).write_text(json.dumps({"sources": sources}))


def test_a_build_is_fresh_only_while_every_source_matches(tmp_path: Path) -> None:
    assert not _native.fresh(tmp_path)  # no manifest
    _fake_tree(tmp_path)
    assert _native.fresh(tmp_path)
    (tmp_path / _native.MODULES[2]).write_text("NAME = 'edited'\n")
    assert not _native.fresh(tmp_path)
    (tmp_path / "hatchway" / _native.MANIFEST).write_text("{not json")
    assert not _native.fresh(tmp_path)


def test_the_guard_loads_each_hot_module_from_its_source(tmp_path: Path) -> None:
    _fake_tree(tmp_path, {_native.MODULES[0]: "0" * 64})
    finder = _native.SourcesFirst(tmp_path, frozenset(_native.module_name(m) for m in _native.MODULES))
    spec = finder.find_spec("hatchway.wire.mux", None)
    assert spec is not None and spec.origin == str(tmp_path / "hatchway/wire/mux.py")
    assert finder.find_spec("hatchway.wire.messages", None) is None  # not compiled: the usual import


@pytest.mark.parametrize(("env", "compiled"), [({}, True), ({"HATCHWAY_PURE": "1"}, False)])
def test_a_fresh_process_runs_compiled_unless_told_not_to(env: dict[str, str], compiled: bool) -> None:
    code = "import hatchway.wire.mux as m; from hatchway import _native; print(_native.active(), m.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == str(compiled)
    assert out[1].endswith(".py") is not compiled
