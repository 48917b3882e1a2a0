"""Certificates and TLS terms by SNI (``edge/tls/certs.py``, ``terms.py``), through real TLS handshakes in
memory: the endpoint's own certificate, then the store's, then the dev CA; minimum versions and mutual
TLS applied per name; and every bad ``terminate-tls`` input refused with its path."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from hatchway.edge.tls.certs import DevCertStore
from hatchway.edge.tls.hello import NotTls, parse_client_hello
from hatchway.edge.tls.terms import TermsError, TlsTerms
from hatchway.net import tls
from hatchway.policy.actions.terminate_tls import TerminateTls


def handshake(
    store: DevCertStore, client: ssl.SSLContext, name: str
) -> tuple[x509.Certificate, ssl.SSLObject]:
    """A TLS handshake between two in-memory ends, the server's context chosen from the ClientHello as the
    HTTPS accept loop does; the certificate the client saw."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = client.wrap_bio(c_in, c_out, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        cli.do_handshake()
    first = c_out.read()
    hello = parse_client_hello(first)
    assert hello is not None and hello.server_name == name
    s_in.write(first)
    srv = store.choose(hello).wrap_bio(s_in, s_out, server_side=True)
    done_c = done_s = False
    for _ in range(20):
        for obj, is_client in ((cli, True), (srv, False)):
            try:
                obj.do_handshake()
                if is_client:
                    done_c = True
                else:
                    done_s = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done_c and done_s:
            break
    der = cli.getpeercert(binary_form=True)
    assert der is not None
    # TLS 1.3 reports a client-certificate refusal after the handshake: read once to surface it.
    try:
        cli.read(1)
    except ssl.SSLWantReadError:
        pass
    return x509.load_der_x509_certificate(der), srv


def client_for(*cas: trustme.CA | bytes, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    for ca in cas:
        ctx.load_verify_locations(
            cadata=ca.decode() if isinstance(ca, bytes) else ca.cert_pem.bytes().decode()
        )
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


@pytest.fixture
def store(tmp_path: Path) -> DevCertStore:
    return DevCertStore(tmp_path, "hatchway.localhost")


class _Source:
    def __init__(self, pairs: dict[str, tls.KeyPair]) -> None:
        self.pairs = pairs

    def certificate_for(self, host: str) -> tls.KeyPair | None:
        return self.pairs.get(host)


def _pair(leaf: trustme.LeafCert) -> tls.KeyPair:
    chain = b"".join(b.bytes() for b in leaf.cert_chain_pems)
    return tls.KeyPair(chain, leaf.private_key_pem.bytes())


def _action(**kw: object) -> TerminateTls:
    return TerminateTls("on_tcp_connect[0].actions[0]", **kw)  # type: ignore[arg-type]


def test_order_endpoint_certificate_then_store_then_dev_ca(store: DevCertStore) -> None:
    mine, theirs = trustme.CA(), trustme.CA()
    store.sources.append(_Source({"app.example.test": _pair(theirs.issue_cert("app.example.test"))}))
    cert, _ = handshake(store, client_for(theirs), "app.example.test")
    assert cert.issuer == x509.load_pem_x509_certificate(theirs.cert_pem.bytes()).subject
    own = _pair(mine.issue_cert("app.example.test"))
    store.terms_for = lambda host: TlsTerms(cert=own) if host == "app.example.test" else None
    cert, _ = handshake(store, client_for(mine), "app.example.test")
    assert cert.issuer == x509.load_pem_x509_certificate(mine.cert_pem.bytes()).subject
    # Any other name: the dev CA.
    cert, _ = handshake(store, client_for(store.ca_pem), "other.example.test")
    assert cert.issuer.rfc4514_string() == "CN=Hatchway Dev CA"


def test_min_version_per_name(store: DevCertStore) -> None:
    store.terms_for = lambda host: (
        TlsTerms(min_version=ssl.TLSVersion.TLSv1_3) if host == "new.test" else None
    )
    old_client = client_for(store.ca_pem)
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    handshake(store, old_client, "old.test")  # others keep TLS 1.2
    with pytest.raises(ssl.SSLError):
        handshake(store, old_client, "new.test")
    _, srv = handshake(store, client_for(store.ca_pem), "new.test")
    assert srv.version() == "TLSv1.3"


def test_mutual_tls_requires_a_client_certificate_from_the_cas(store: DevCertStore) -> None:
    client_ca, stranger = trustme.CA(), trustme.CA()
    terms = TlsTerms.from_action(_action(client_cas=(client_ca.cert_pem.bytes().decode(),)))
    store.terms_for = lambda host: terms if host == "mtls.test" else None
    good = client_ca.issue_cert("alice@example.test")
    _, srv = handshake(store, client_for(store.ca_pem, cert=good), "mtls.test")
    assert srv.getpeercert() is not None  # the edge saw and verified alice's certificate
    with pytest.raises(ssl.SSLError):
        handshake(store, client_for(store.ca_pem), "mtls.test")
    with pytest.raises(ssl.SSLError):
        handshake(store, client_for(store.ca_pem, cert=stranger.issue_cert("eve")), "mtls.test")


def test_from_action_refuses_what_a_handshake_cannot_use() -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("x.test")
    other = ca.issue_cert("y.test")
    with pytest.raises(
        TermsError, match=r"actions\[0\]\.mutual_tls_certificate_authorities\[0\]: .* not a CA"
    ):
        TlsTerms.from_action(_action(client_cas=(leaf.cert_chain_pems[0].bytes().decode(),)))
    with pytest.raises(TermsError, match="not a PEM certificate"):
        TlsTerms.from_action(_action(client_cas=("garbage",)))
    with pytest.raises(TermsError, match=r"server_certificate: the private key does not belong"):
        TlsTerms.from_action(
            _action(
                server_certificate=leaf.cert_chain_pems[0].bytes().decode(),
                server_private_key=other.private_key_pem.bytes().decode(),
            )
        )
    ok = TlsTerms.from_action(_action(min_version="1.3", max_version="1.3"))
    assert ok.min_version == ok.max_version == ssl.TLSVersion.TLSv1_3
    assert hash(ok) == hash(TlsTerms.from_action(_action(min_version="1.3", max_version="1.3")))


def test_client_hello_parsing() -> None:
    client = ssl.create_default_context()
    client.set_alpn_protocols(["h2", "http/1.1"])
    out = ssl.MemoryBIO()
    obj = client.wrap_bio(ssl.MemoryBIO(), out, server_hostname="App.Example.TEST")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    data = out.read()
    hello = parse_client_hello(data)
    assert hello is not None
    assert hello.server_name == "app.example.test" and hello.alpn == ("h2", "http/1.1")
    for cut in (1, 5, 40, len(data) - 1):
        assert parse_client_hello(data[:cut]) is None  # more bytes needed, not an error
    with pytest.raises(NotTls):
        parse_client_hello(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(NotTls):
        parse_client_hello(b"\x16\x03\x01\x00\x05" + b"\x02\x00\x00\x01\x00")  # a ServerHello
    # No SNI (an IP literal): None, and the default context.
    obj = client.wrap_bio(ssl.MemoryBIO(), out, server_hostname=None)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    bare = parse_client_hello(out.read())
    assert bare is not None and bare.server_name is None
