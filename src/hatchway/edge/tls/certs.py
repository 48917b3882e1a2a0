"""Which certificate and TLS settings a client gets, chosen by SNI.

For a server name, in order: the endpoint's own certificate (``terminate-tls`` with
``server_certificate``), then a certificate from a ``CertSource`` (the store: certificates brought with
``hatchway edge cert add``, then those ACME issued), then the dev CA: a default certificate covers the base
domain, ``*.base`` one level down, ``localhost`` and 127.0.0.1 (the tunnel listener and clients without
SNI), and any other name gets its own leaf, issued on first use. The endpoint's ``TlsTerms`` (minimum and
maximum TLS version, client CAs for mutual TLS) are applied on top. One ``SSLContext`` is built per
(name, certificate, terms) and cached; the HTTPS accept loop asks ``choose`` with the ClientHello it read,
before the handshake (``listeners/tls_accept.py``). This module builds ``ssl`` contexts only; it never
opens sockets.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from hatchway.edge.tls.hello import Hello
from hatchway.edge.tls.terms import TlsTerms
from hatchway.net import tls

logger = logging.getLogger(__name__)

_MAX_CONTEXTS = 10_000


class CertSource(Protocol):
    """Certificates other than the dev CA's. Must answer fast (it runs inside every TLS handshake);
    contexts are cached by the pair's value, so a renewed certificate gets a new context by itself."""

    def certificate_for(self, host: str) -> tls.KeyPair | None: ...


class DevCertStore:
    def __init__(self, data_dir: Path, base_domain: str, alpn: list[str] | None = None) -> None:
        self.ca = tls.load_or_create_ca(data_dir)
        self.base_domain = base_domain
        # Client-facing contexts offer HTTP/2 first, as ngrok does; the tunnel context offers no ALPN.
        self.alpn = alpn or ["h2", "http/1.1"]
        names = [base_domain, f"*.{base_domain}", "localhost", "127.0.0.1", "::1"]
        self._default_pair = tls.issue_cert(self.ca, names)
        self._default = self._context(self._default_pair, None)
        self._leaves: dict[str, tls.KeyPair] = {}
        self._contexts: dict[tuple[str, tls.KeyPair, TlsTerms | None], ssl.SSLContext] = {}
        self.sources: list[CertSource] = []
        # The TLS terms of the endpoint serving a host (``Registry.tls_terms``); None: the defaults.
        self.terms_for: Callable[[str], TlsTerms | None] = lambda host: None

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem

    def tunnel_context(self) -> ssl.SSLContext:
        """The agent listener's context: no ALPN (the SDKs offer none), same default certificate."""
        ctx = tls.server_context(tls.issue_cert(self.ca, ["localhost", "127.0.0.1", "::1", self.base_domain]))
        return ctx

    def invalidate(self) -> None:
        """Forget built contexts (a source's certificates changed)."""
        self._contexts.clear()

    def _context(self, pair: tls.KeyPair, terms: TlsTerms | None) -> ssl.SSLContext:
        ctx = tls.server_context(pair, alpn=self.alpn)
        if terms is not None:
            terms.apply(ctx)
        return ctx

    def _covered_by_default(self, name: str) -> bool:
        if name in (self.base_domain, "localhost"):
            return True
        head, _, rest = name.partition(".")
        return rest == self.base_domain and bool(head)

    def pair_for(self, name: str, terms: TlsTerms | None = None) -> tls.KeyPair:
        """The certificate served for ``name`` (see the module docstring for the order)."""
        if terms is not None and terms.cert is not None:
            return terms.cert
        for source in self.sources:
            pair = source.certificate_for(name)
            if pair is not None:
                return pair
        if self._covered_by_default(name):
            return self._default_pair
        leaf = self._leaves.get(name)
        if leaf is None:
            # Issuing is a key generation and a signature (~1 ms); done once per name.
            if len(self._leaves) > _MAX_CONTEXTS:
                self._leaves.clear()
            leaf = self._leaves[name] = tls.issue_cert(self.ca, [name])
        return leaf

    def context_for(self, name: str | None) -> ssl.SSLContext:
        """The whole context for a connection to ``name`` (its certificate and its endpoint's terms)."""
        if not name:
            return self._default
        name = name.lower().rstrip(".")
        terms = self.terms_for(name)
        pair = self.pair_for(name, terms)
        if pair is self._default_pair and terms is None:
            return self._default
        key = (name, pair, terms)
        ctx = self._contexts.get(key)
        if ctx is None:
            if len(self._contexts) > _MAX_CONTEXTS:
                self._contexts.clear()
            ctx = self._contexts[key] = self._context(pair, terms)
        return ctx

    def choose(self, hello: Hello | None) -> ssl.SSLContext:
        """For the HTTPS accept loop, which read the ClientHello before the handshake."""
        return self.context_for(hello.server_name if hello is not None else None)
