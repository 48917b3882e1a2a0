"""Certificates from the state store as a ``CertSource``: those brought with ``hatchway edge cert add``
(``manual``) and those the ACME manager issued (``acme``).

Lookups happen inside TLS handshakes, so they read an in-memory index, rebuilt by ``reload()`` when the
store changes (the edge calls it when the store's revision moves). A host is served by the certificate
stored under its exact name, else by one under ``*.parent`` (a wildcard covers one label); a manual
certificate wins over an ACME one, and expired ones are skipped. Must not: query the store per handshake.
"""

from __future__ import annotations

import time

from hatchway.net import tls
from hatchway.store.base import CertificateInfo, Store


class StoredCerts:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._index: dict[str, tls.KeyPair] = {}
        self.reload()

    def reload(self) -> None:
        now = time.time()
        index: dict[str, tls.KeyPair] = {}
        best: dict[str, CertificateInfo] = {}
        for info in self.store.list_certificates():
            if info.not_after <= now:
                continue
            kept = best.get(info.name)
            if kept is None or (kept.source != "manual" and info.source == "manual"):
                best[info.name] = info
        for name, info in best.items():
            index[name] = tls.KeyPair(info.cert_pem, info.key_pem)
        self._index = index

    def certificate_for(self, host: str) -> tls.KeyPair | None:
        pair = self._index.get(host)
        if pair is None:
            _, dot, parent = host.partition(".")
            if dot:
                pair = self._index.get("*." + parent)
        return pair
