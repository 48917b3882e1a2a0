"""Tests of ``hatchway.net.tls``: the on-disk dev CA and leaf certificates verified by real handshakes.

``load_or_create_ca`` must create ``ca.pem`` and a private ``ca.key`` (mode 0600) once and load the
same CA afterwards. A leaf from ``issue_cert`` must verify, through ``client_context(ca)``, both for a
DNS name (SNI) and for 127.0.0.1 (an IP SAN: SDKs dialing an IP send no SNI), and must not verify for
a name it was not issued for or against another CA. Handshakes run over loopback TCP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from hatchway.net import tls

WAIT = 10.0
DNS_NAME = "tunnel.hatchway.test"


def test_load_or_create_ca_creates_once_then_reloads(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "tls"  # does not exist yet
    first = tls.load_or_create_ca(directory)

    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    assert cert_path.read_bytes() == first.cert_pem
    assert key_path.read_bytes() == first.key_pem
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(first.cert_pem)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    second = tls.load_or_create_ca(directory)
    assert second == first
    assert sorted(p.name for p in directory.iterdir()) == ["ca.key", "ca.pem"]


@pytest.fixture(scope="module")
def ca() -> tls.KeyPair:
    return tls.create_ca()


@pytest.fixture
async def tls_port(ca: tls.KeyPair) -> AsyncIterator[int]:
    """A TLS server on 127.0.0.1 with a leaf for ``DNS_NAME`` and 127.0.0.1 that answers b"ok"."""
    leaf = tls.issue_cert(ca, [DNS_NAME, "127.0.0.1"])

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=tls.server_context(leaf))
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        async with asyncio.timeout(WAIT):
            await server.wait_closed()


async def fetch(port: int, ctx: ssl.SSLContext, server_hostname: str) -> bytes:
    async with asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname=server_hostname
        )
        try:
            return await reader.read()
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass  # the server closed first; the close_notify exchange may be cut short


@pytest.mark.parametrize("server_hostname", [DNS_NAME, "127.0.0.1"], ids=["dns-san", "ip-san"])
async def test_leaf_verifies_with_the_ca(tls_port: int, ca: tls.KeyPair, server_hostname: str) -> None:
    assert await fetch(tls_port, tls.client_context(ca.cert_pem), server_hostname) == b"ok"


async def test_leaf_does_not_verify_for_another_name(tls_port: int, ca: tls.KeyPair) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await fetch(tls_port, tls.client_context(ca.cert_pem), "other.hatchway.test")


async def test_leaf_does_not_verify_against_another_ca(tls_port: int) -> None:
    stranger = tls.create_ca()
    with pytest.raises(ssl.SSLCertVerificationError):
        await fetch(tls_port, tls.client_context(stranger.cert_pem), DNS_NAME)


def test_ip_and_dns_names_become_the_right_san_kinds(ca: tls.KeyPair) -> None:
    leaf = x509.load_pem_x509_certificate(tls.issue_cert(ca, [DNS_NAME, "127.0.0.1", "::1"]).cert_pem)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [DNS_NAME]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
