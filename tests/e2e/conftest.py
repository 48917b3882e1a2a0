"""Registers the end-to-end fixtures that live in ``tests/e2e_support.py`` (an importable module)."""

from __future__ import annotations

from e2e_support import _data_dir_exists, agents, echo_app, edge_proc

__all__ = ["_data_dir_exists", "agents", "echo_app", "edge_proc"]
