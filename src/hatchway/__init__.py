"""Hatchway: a self-hosted tunnel edge and agent that speak ngrok's agent protocol.

This package root will become the SDK face (``forward()``, ``SessionBuilder``); for now it only names
the version. It must not import the edge or start anything on import.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
