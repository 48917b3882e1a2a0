"""The ``terminate-tls`` action (``on_tcp_connect``): how the edge terminates TLS for the endpoint.

ngrok's TLS Termination and Mutual TLS modules become this action: ``min_version`` / ``max_version``
(``"1.0"`` to ``"1.3"``, default 1.2 and 1.3), the endpoint's own ``server_certificate`` and
``server_private_key`` (PEM, both or neither), and ``mutual_tls_certificate_authorities`` (PEM CAs;
clients must present a certificate one of them signed) with ``mutual_tls_verification_strategy``
(``require-and-verify``, the default, or ``request``: ask, verify what is given).

It takes effect at the TLS handshake, before any request: the engine takes it out of the phase that runs
per connection (``CompiledPolicy.tls``) and the edge applies it when it picks the certificate by SNI. So
its rule may not have expressions (there is nothing to match yet). Must not: touch requests, or do I/O
(the edge parses the PEM at Bind and reports problems with this action's path).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hatchway.policy.config import ConfigReader
from hatchway.policy.model import Action, CompileEnv, Exchange, Reply

VERSIONS = ("1.0", "1.1", "1.2", "1.3")
STRATEGIES = ("require-and-verify", "request")


@dataclass(slots=True)
class TerminateTls:
    path: str
    min_version: str = "1.2"
    max_version: str = "1.3"
    server_certificate: str = ""
    server_private_key: str = ""
    client_cas: tuple[str, ...] = ()
    strategy: str = "require-and-verify"
    needs_body: bool = False
    at_handshake: bool = True  # the engine's marker: not run per connection

    def run(self, ex: Exchange) -> Reply | None:
        return None  # applied at the handshake (see the module docstring)


def _version(r: ConfigReader, key: str, default: str) -> str:
    value = r.raw(key)
    if value is None:
        return default
    text = str(value)
    if text not in VERSIONS:
        r.problem(key, f"must be one of {', '.join(VERSIONS)}, got {value!r}")
        return default
    return text


def compile(config: Mapping[str, Any] | None, path: str, env: CompileEnv, phase: str) -> Action:
    r = ConfigReader(config, path)
    lo = _version(r, "min_version", "1.2")
    hi = _version(r, "max_version", "1.3")
    if VERSIONS.index(lo) > VERSIONS.index(hi):
        r.problem("min_version", f"{lo} is above max_version {hi}")
    cert = r.text("server_certificate")
    key = r.text("server_private_key")
    if bool(cert) != bool(key):
        r.problem(
            "server_private_key" if cert else "server_certificate", "give both the certificate and its key"
        )
    cas = r.str_list("mutual_tls_certificate_authorities")
    strategy = r.text("mutual_tls_verification_strategy", "require-and-verify")
    if strategy not in STRATEGIES:
        why = " (require-any is not supported by this edge)" if strategy == "require-any" else ""
        r.problem("mutual_tls_verification_strategy", f"must be one of {', '.join(STRATEGIES)}{why}")
    r.done()
    return TerminateTls(path, lo, hi, cert, key, tuple(cas), strategy)
