"""Hatchway's one exception tree.

Every error a user can see carries a stable code. Internals raise the *Local* kind; the sans-IO
``receive_data`` entry points re-label peer faults as *Remote* (h11's trick), so a caller can tell
"we misbehaved" from "the peer misbehaved". This module holds types only: it must not import the
rest of Hatchway, do I/O or format user pages.
"""

from __future__ import annotations


class HatchwayError(Exception):
    """Root of every error Hatchway raises on purpose."""

    code: str = "ERR_HATCHWAY_0000"


class ConfigError(HatchwayError):
    """A configuration value is wrong; ``field_path`` names it (``endpoints[2].url``)."""

    code = "ERR_HATCHWAY_1000"

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}" if field_path else message)
        self.field_path = field_path
        self.message = message


class ProtocolError(HatchwayError):
    """The muxado / RPC protocol was broken. ``mux_code`` is the muxado error code to report."""

    code = "ERR_HATCHWAY_2000"

    def __init__(self, message: str, mux_code: int = 1) -> None:
        super().__init__(message)
        self.mux_code = mux_code


class LocalProtocolError(ProtocolError):
    """We tried something the protocol forbids (a bug or a misuse of the API)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids."""


class TunnelError(HatchwayError):
    """A tunnel session or one of its RPCs failed."""

    code = "ERR_HATCHWAY_3000"


class SessionClosedError(TunnelError):
    """The muxado session is closed (GOAWAY, EOF or a fatal protocol error)."""


class StreamResetError(TunnelError):
    """A stream was reset by the peer or locally; ``mux_code`` says why."""

    def __init__(self, message: str, mux_code: int) -> None:
        super().__init__(message)
        self.mux_code = mux_code


class RpcError(TunnelError):
    """An RPC answer carried ``Error``; ``ngrok_code`` holds its ``ERR_NGROK_*`` line, if any."""

    def __init__(self, message: str, ngrok_code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.ngrok_code = ngrok_code
