"""Compiled builds (mypyc) of the data path's hot modules, used only while they match their sources.

``scripts/native.py`` compiles the modules listed in ``MODULES`` next to their ``.py`` files and writes
``_native.json`` (each source's SHA-256). Python would import such an extension module in preference to the
source even after the source changed, so ``guard()`` (run by the package's ``__init__``, before anything
else of the package loads) compares the hashes and, when any differs or ``HATCHWAY_PURE=1`` is set, puts a
finder first on ``sys.meta_path`` that loads these modules from their sources. A build compiles them
together (they call each other directly), so it is used whole or not at all.

Must not: import anything of the package (it runs first), or fail the import: any problem reading the
manifest means the sources are used.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# The hot modules (profiled with bench/edge_micro.py), as paths under src/.
MODULES = (
    "hatchway/wire/frames.py",
    "hatchway/wire/mux.py",
    "hatchway/http/h1.py",
    "hatchway/http/headers.py",
    "hatchway/net/transport.py",
    "hatchway/edge/listeners/http1.py",
)
MANIFEST = "_native.json"
SRC = Path(__file__).resolve().parent.parent  # the directory holding the ``hatchway`` package


def module_name(path: str) -> str:
    return path[: -len(".py")].replace("/", ".")


class SourcesFirst(importlib.abc.MetaPathFinder):
    """Loads ``names`` from their ``.py`` files under ``root``, never from a compiled build."""

    def __init__(self, root: Path, names: frozenset[str]) -> None:
        self.root = root
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        source = self.root / (fullname.replace(".", "/") + ".py")
        return importlib.util.spec_from_file_location(fullname, source)


def fresh(root: Path = SRC) -> bool:
    """Whether a build exists and every compiled module's source is the one it was built from."""
    try:
        manifest = json.loads((root / "hatchway" / MANIFEST).read_text())
        sources: dict[str, str] = manifest["sources"]
        return set(sources) == set(MODULES) and all(
            hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest for rel, digest in sources.items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def active() -> bool:
    """Whether the compiled modules are the ones imported (for tests and ``hatchway edge`` logs)."""
    mod = sys.modules.get(module_name(MODULES[0]))
    return mod is not None and not (getattr(mod, "__file__", "") or "").endswith(".py")


def guard(root: Path = SRC) -> None:
    """Make the hot modules load from source unless a fresh build of them exists (see the docstring)."""
    if os.environ.get("HATCHWAY_PURE") != "1" and fresh(root):
        return
    if any(isinstance(f, SourcesFirst) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, SourcesFirst(root, frozenset(module_name(m) for m in MODULES)))
