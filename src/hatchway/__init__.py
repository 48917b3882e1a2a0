"""Hatchway: a self-hosted tunnel edge and agent that speak ngrok's agent protocol.

The package root is the SDK face, with ngrok-python's names: ``forward()``, ``SessionBuilder``,
``Session``, ``Listener``. They load lazily, so importing ``hatchway.wire`` or running the edge never
pulls in the agent, and importing the package starts nothing.
"""

from __future__ import annotations

from typing import Any

from hatchway import _native

# Before any other module of the package loads: compiled hot modules only when built from these sources.
_native.guard()

__version__ = "0.1.0"

_SDK_NAMES = (
    "HttpListenerBuilder",
    "Listener",
    "Session",
    "SessionBuilder",
    "TcpListenerBuilder",
    "disconnect_all",
    "forward",
)
__all__ = [*_SDK_NAMES, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _SDK_NAMES:
        from hatchway.agent import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'hatchway' has no attribute {name!r}")
