"""Which certificate a TLS client gets, chosen by SNI, from the edge's dev CA.

A default certificate covers the base domain, ``*.base`` one level down, ``localhost`` and 127.0.0.1 (the
tunnel listener and clients without SNI). Any other name (a nested or custom domain) gets its own leaf,
issued on first use and cached. This module builds ``ssl`` contexts only; it never opens sockets.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from hatchway.net import tls

logger = logging.getLogger(__name__)


class DevCertStore:
    def __init__(self, data_dir: Path, base_domain: str, alpn: list[str] | None = None) -> None:
        self.ca = tls.load_or_create_ca(data_dir)
        self.base_domain = base_domain
        # Client-facing contexts offer HTTP/2 first, as ngrok does; the tunnel context offers no ALPN.
        self.alpn = alpn or ["h2", "http/1.1"]
        names = [base_domain, f"*.{base_domain}", "localhost", "127.0.0.1", "::1"]
        self._default = self._context(tls.issue_cert(self.ca, names))
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._default.sni_callback = self._on_sni

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem

    def server_context(self) -> ssl.SSLContext:
        return self._default

    def tunnel_context(self) -> ssl.SSLContext:
        """The agent listener's context: no ALPN (the SDKs offer none), same default certificate."""
        ctx = tls.server_context(tls.issue_cert(self.ca, ["localhost", "127.0.0.1", "::1", self.base_domain]))
        return ctx

    def _context(self, pair: tls.KeyPair) -> ssl.SSLContext:
        return tls.server_context(pair, alpn=self.alpn)

    def _covered_by_default(self, name: str) -> bool:
        if name in (self.base_domain, "localhost"):
            return True
        head, _, rest = name.partition(".")
        return rest == self.base_domain and bool(head)

    def _on_sni(self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext) -> None:
        if not name:
            return None
        name = name.lower().rstrip(".")
        if self._covered_by_default(name):
            return None
        ctx = self._contexts.get(name)
        if ctx is None:
            # Issuing is a key generation and a signature (~1 ms); done once per name.
            ctx = self._context(tls.issue_cert(self.ca, [name]))
            if len(self._contexts) > 10_000:
                self._contexts.clear()
            self._contexts[name] = ctx
        sock.context = ctx
        return None
