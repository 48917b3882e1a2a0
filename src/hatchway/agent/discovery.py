"""Finding an edge with no settings: a dev edge on this machine leaves ``edge.json``, ``ca.pem`` and
``dev-token`` in its data dir (``$HATCHWAY_DATA_DIR`` or ``~/.hatchway/edge``). Reads files only."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


def dev_edge_dir() -> Path:
    return Path(os.environ.get("HATCHWAY_DATA_DIR", "~/.hatchway/edge")).expanduser()


@dataclass
class DevEdge:
    server_addr: str
    ca_file: Path | None
    token: str


def find_dev_edge(directory: Path | None = None) -> DevEdge | None:
    d = directory or dev_edge_dir()
    info = d / "edge.json"
    if not info.exists():
        return None
    try:
        addr = str(json.loads(info.read_text()).get("tunnel_addr") or "localhost:4443")
    except (OSError, ValueError):
        return None
    ca = d / "ca.pem"
    token_file = d / "dev-token"
    token = token_file.read_text().strip() if token_file.exists() else ""
    return DevEdge(addr, ca if ca.exists() else None, token)
