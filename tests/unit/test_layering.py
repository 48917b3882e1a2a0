"""The layering rules of ``architecture.md``, checked by reading the source with ``ast``.

``wire/`` (and ``http/`` once it exists) are sans-IO: they import none of asyncio, socket, ssl, time,
selectors or threading, and nothing from Hatchway beyond ``hatchway.errors`` and the sans-IO packages
(``wire/`` may use ``hatchway.wire``; ``http/`` may use ``hatchway.wire`` and ``hatchway.http``). Every
module under ``src/hatchway`` opens with a docstring saying what it is for.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "hatchway"

FORBIDDEN_TOP_LEVEL = frozenset({"asyncio", "socket", "ssl", "time", "selectors", "threading"})
# The Hatchway modules each sans-IO package may import (a name or anything below it).
ALLOWED_HATCHWAY = {
    "wire": ("hatchway.errors", "hatchway.wire"),
    "http": ("hatchway.errors", "hatchway.wire", "hatchway.http"),
    "policy": ("hatchway.errors", "hatchway.http", "hatchway.policy"),
    "actions": ("hatchway.errors", "hatchway.http", "hatchway.policy"),
    "webhooks": ("hatchway.errors", "hatchway.http", "hatchway.policy"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """Every module ``source`` imports, as absolute dotted names with line numbers.

    Covers ``import x``, ``from x import y`` (yielding ``x.y`` too, since ``y`` may be a module), relative
    imports, and ``importlib.import_module("x")`` / ``__import__("x")`` with a literal name. Imports under
    ``if TYPE_CHECKING:`` count as well: the layering is about dependencies, not run time.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, node.module] if node.module else base_parts)
            else:
                base = node.module or ""
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            dynamic = name in ("import_module", "__import__")
            if dynamic and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield node.lineno, arg.value


def breaks_rule(name: str, allowed: tuple[str, ...]) -> str | None:
    """Why importing ``name`` breaks the sans-IO rules, or None when it is fine."""
    top = name.split(".")[0]
    if top in FORBIDDEN_TOP_LEVEL:
        return "I/O or a clock in a sans-IO package"
    if top == "hatchway" and not any(name == a or name.startswith(a + ".") for a in allowed):
        return f"outside {', '.join(allowed)}"
    return None


def violations(path: Path, allowed: tuple[str, ...]) -> list[str]:
    source = path.read_text(encoding="utf-8")
    found: list[str] = []
    for lineno, name in imports(source, module_name(path), path.name == "__init__.py"):
        if (why := breaks_rule(name, allowed)) is not None:
            found.append(f"{path.relative_to(SRC)}:{lineno} imports {name} ({why})")
    return found


def sans_io_files() -> list[Path]:
    return sorted(
        p
        for sub in ALLOWED_HATCHWAY
        for d in (PACKAGE / sub, PACKAGE / "policy" / sub)
        if d.is_dir()
        for p in d.glob("*.py")
    )


def all_source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_sans_io_packages_are_found() -> None:
    names = {p.name for p in sans_io_files() if p.parent.name == "wire"}
    assert {"__init__.py", "frames.py", "mux.py", "messages.py", "rpc.py", "heartbeat.py"} <= names


@pytest.mark.parametrize("path", sans_io_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_sans_io_module_imports_no_io_and_no_outer_layer(path: Path) -> None:
    assert violations(path, ALLOWED_HATCHWAY[path.parent.name]) == []


@pytest.mark.parametrize("path", all_source_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_starts_with_a_docstring(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstring = ast.get_docstring(tree, clean=True)
    assert docstring, f"{path.relative_to(SRC)} must open with a module docstring"


# ---- the checker itself must catch what it is meant to catch -------------------------------------------
BAD_SOURCE = '''
"""A module that breaks every rule."""
import asyncio
import socket as s
from time import monotonic
import ssl, selectors
from threading import Lock
from hatchway.net import transport
from hatchway import edge
from .. import agent
from ..net.tls import create_ca
import importlib
importlib.import_module("hatchway.cli")
__import__("socket")
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from hatchway.edge.registry import Registry
'''

GOOD_SOURCE = '''
"""A module that keeps the rules."""
from __future__ import annotations
import enum, struct, json
from hatchway.errors import RemoteProtocolError
from hatchway.wire.frames import ErrorCode
from hatchway.wire import messages as m
from . import frames
from .frames import FrameDecoder
'''


def flagged(source: str, module: str = "hatchway.wire.example") -> set[str]:
    return {name for _, name in imports(source, module) if breaks_rule(name, ALLOWED_HATCHWAY["wire"])}


def test_checker_flags_every_kind_of_bad_import() -> None:
    got = flagged(BAD_SOURCE)
    for name in [
        "asyncio", "socket", "time", "time.monotonic", "ssl", "selectors", "threading",
        "hatchway.net.transport", "hatchway.edge", "hatchway.agent", "hatchway.net.tls.create_ca",
        "hatchway.cli", "hatchway.edge.registry",
    ]:  # fmt: skip
        assert name in got, name


def test_checker_accepts_the_allowed_imports() -> None:
    assert flagged(GOOD_SOURCE) == set()


def test_relative_imports_resolve_from_the_package() -> None:
    names = {name for _, name in imports("from . import mux\nfrom ..errors import X\n", "hatchway.wire.rpc")}
    assert {"hatchway.wire", "hatchway.wire.mux", "hatchway.errors", "hatchway.errors.X"} <= names
    in_init = {name for _, name in imports("from . import frames\n", "hatchway.wire", is_package=True)}
    assert "hatchway.wire.frames" in in_init


def test_http_package_may_use_wire_but_wire_may_not_use_http() -> None:
    source = "from hatchway.http import headers\nfrom hatchway.wire import frames\n"
    assert not [n for _, n in imports(source, "hatchway.http.h1") if breaks_rule(n, ALLOWED_HATCHWAY["http"])]
    assert flagged(source) == {"hatchway.http", "hatchway.http.headers"}


def _hatchway_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n.startswith("hatchway")}


@pytest.mark.parametrize(
    ("side", "other"),
    [
        ("edge", "hatchway.agent"),
        ("agent", "hatchway.edge"),
        # The SSH entry composes both (like cli/); neither may depend on it.
        ("edge", "hatchway.ssh"),
        ("agent", "hatchway.ssh"),
    ],
)
def test_edge_and_agent_never_import_each_other(side: str, other: str) -> None:
    root = Path(__file__).resolve().parents[2] / "src" / "hatchway" / side
    banned = other.split(".")
    offenders = {
        str(p.relative_to(root)): sorted(i for i in _hatchway_imports(p) if i.split(".")[:2] == banned)
        for p in root.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
