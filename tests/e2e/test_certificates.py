"""Certificates a client sees, with real processes: brought with ``hatchway edge cert add`` and served by
SNI (checked with ``openssl s_client``), an endpoint's own certificate, the TLS Termination module's
minimum version, and the Mutual TLS module from the CLI and from the official Python SDK.

Test CAs and certificates come from trustme; everything else is the real edge, agent, curl and openssl.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from e2e_support import HATCHWAY, Agents, EdgeProc, curl, sdk_process, wait_for

pytestmark = pytest.mark.timeout(120)


def served_issuer(edge: EdgeProc, name: str) -> str:
    """The issuer of the certificate the edge's HTTPS port presents for SNI ``name`` (openssl s_client)."""
    r = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{edge.https_port}", "-servername", name],
        input=b"",
        capture_output=True,
        timeout=20,
    )
    cert = subprocess.run(
        ["openssl", "x509", "-noout", "-issuer", "-subject"], input=r.stdout, capture_output=True, timeout=20
    )
    return cert.stdout.decode()


def write_pair(tmp: Path, leaf: trustme.LeafCert, name: str) -> tuple[Path, Path]:
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


def edge_cmd(edge: EdgeProc, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [HATCHWAY, "edge", *args, "--data-dir", str(edge.data_dir)], capture_output=True, timeout=30
    )


def reserve(edge: EdgeProc, name: str) -> None:
    r = edge_cmd(edge, "domain", "add", name)
    assert r.returncode == 0, r.stderr


def test_bring_your_own_certificate_is_served_by_sni(
    edge_proc: EdgeProc, agents: Agents, echo_app: int, tmp_path: Path
) -> None:
    ca = trustme.CA(organization_name="Byo Test CA")
    cert, key = write_pair(tmp_path, ca.issue_cert("byo.example.test"), "byo")
    wild_cert, wild_key = write_pair(tmp_path, ca.issue_cert("*.wild.example.test"), "wild")
    assert "Hatchway Dev CA" in served_issuer(edge_proc, "byo.example.test")

    r = edge_cmd(
        edge_proc, "cert", "add", "--domain", "byo.example.test", "--cert", str(cert), "--key", str(key)
    )
    assert r.returncode == 0, r.stderr
    assert b"added a certificate for byo.example.test" in r.stdout
    r = edge_cmd(
        edge_proc,
        "cert",
        "add",
        "--domain",
        "*.wild.example.test",
        "--cert",
        str(wild_cert),
        "--key",
        str(wild_key),
    )
    assert r.returncode == 0, r.stderr
    # The running edge notices the store change and serves them by SNI.
    for name in ("byo.example.test", "a.wild.example.test"):
        wait_for(
            lambda n=name: "Byo Test CA" in served_issuer(edge_proc, n), what=f"the certificate for {name}"
        )
    assert "Hatchway Dev CA" in served_issuer(
        edge_proc, "deeper.a.wild.example.test"
    )  # a wildcard is one label
    assert "Hatchway Dev CA" in served_issuer(edge_proc, "other.example.test")

    # An endpoint on that name works for clients that trust the user's CA.
    reserve(edge_proc, "byo.example.test")
    agents.start("http", str(echo_app), "--domain", "byo.example.test")
    ca_file = tmp_path / "byo-ca.pem"
    ca_file.write_bytes(ca.cert_pem.bytes())
    url = f"https://byo.example.test:{edge_proc.https_port}/hello"
    ok = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--cacert", str(ca_file), "--resolve",
         f"byo.example.test:{edge_proc.https_port}:127.0.0.1", url],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["path"] == "/hello"

    listing = edge_cmd(edge_proc, "cert", "list")
    assert b"byo.example.test" in listing.stdout and b"manual" in listing.stdout
    assert edge_cmd(edge_proc, "cert", "remove", "--domain", "byo.example.test").returncode == 0
    wait_for(
        lambda: "Hatchway Dev CA" in served_issuer(edge_proc, "byo.example.test"), what="the dev CA again"
    )


def test_a_certificate_and_key_that_do_not_match_are_refused(edge_proc: EdgeProc, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, _ = write_pair(tmp_path, ca.issue_cert("x.example.test"), "x")
    _, other_key = write_pair(tmp_path, ca.issue_cert("y.example.test"), "y")
    r = edge_cmd(
        edge_proc, "cert", "add", "--domain", "x.example.test", "--cert", str(cert), "--key", str(other_key)
    )
    assert r.returncode == 1
    assert b"the private key does not belong to the certificate" in r.stderr
    r = edge_cmd(
        edge_proc,
        "cert",
        "add",
        "--domain",
        "x.example.test",
        "--cert",
        str(other_key),
        "--key",
        str(other_key),
    )
    assert r.returncode == 1 and b"not PEM" in r.stderr


def _policy(tmp: Path, text: str) -> Path:
    path = tmp / "policy.yml"
    path.write_text(text)
    return path


def test_minimum_tls_version_and_an_endpoints_own_certificate(
    edge_proc: EdgeProc, agents: Agents, echo_app: int, tmp_path: Path
) -> None:
    policy = _policy(
        tmp_path,
        "on_tcp_connect:\n  - actions:\n      - type: terminate-tls\n        config: {min_version: '1.3'}\n",
    )
    a = agents.start("http", str(echo_app), "--traffic-policy-file", str(policy))
    old = curl(edge_proc, a.url + "/", "--tls-max", "1.2")
    assert old.returncode != 0  # refused in the handshake
    new = curl(edge_proc, a.url + "/", "-o", "/dev/null", "-w", "%{http_code}")
    assert new.stdout == b"200"
    other = agents.start("http", str(echo_app))  # other endpoints keep TLS 1.2
    assert (
        curl(edge_proc, other.url + "/", "--tls-max", "1.2", "-o", "/dev/null", "-w", "%{http_code}").stdout
        == b"200"
    )

    ca = trustme.CA(organization_name="Own Cert CA")
    reserve(edge_proc, "own.example.test")
    leaf = ca.issue_cert("own.example.test")
    chain = b"".join(p.bytes() for p in leaf.cert_chain_pems).decode()
    doc = {
        "on_tcp_connect": [
            {
                "actions": [
                    {
                        "type": "terminate-tls",
                        "config": {
                            "server_certificate": chain,
                            "server_private_key": leaf.private_key_pem.bytes().decode(),
                        },
                    }
                ]
            }
        ]
    }
    own = _policy(tmp_path, json.dumps(doc))
    agents.start("http", str(echo_app), "--domain", "own.example.test", "--traffic-policy-file", str(own))
    assert "Own Cert CA" in served_issuer(edge_proc, "own.example.test")


def test_terminate_tls_problems_are_refused_with_their_path(
    edge_proc: EdgeProc, agents: Agents, echo_app: int, tmp_path: Path
) -> None:
    leaf_only = trustme.CA().issue_cert("not-a-ca.example.test").cert_chain_pems[0].bytes().decode()
    doc = {
        "on_tcp_connect": [
            {
                "actions": [
                    {"type": "terminate-tls", "config": {"mutual_tls_certificate_authorities": [leaf_only]}}
                ]
            }
        ]
    }
    with pytest.raises(AssertionError) as info:
        agents.start("http", str(echo_app), "--traffic-policy-file", str(_policy(tmp_path, json.dumps(doc))))
    text = str(info.value)
    assert "mutual_tls_certificate_authorities[0]" in text and "not a CA certificate" in text
    assert "ERR_NGROK_9026" in text


def _client_pair(tmp: Path, ca: trustme.CA, name: str) -> tuple[Path, Path]:
    leaf = ca.issue_cert(name)
    cert, key = tmp / f"client-{name}.crt", tmp / f"client-{name}.key"
    cert.write_bytes(leaf.cert_chain_pems[0].bytes())
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


def test_mutual_tls_from_the_cli(edge_proc: EdgeProc, agents: Agents, echo_app: int, tmp_path: Path) -> None:
    client_ca, stranger_ca = trustme.CA(), trustme.CA()
    cas = tmp_path / "client-cas.pem"
    cas.write_bytes(client_ca.cert_pem.bytes())
    a = agents.start("http", str(echo_app), "--mutual-tls-cas", str(cas))
    anonymous = curl(edge_proc, a.url + "/")
    assert anonymous.returncode != 0  # no client certificate: refused
    cert, key = _client_pair(tmp_path, client_ca, "alice")
    ok = curl(edge_proc, a.url + "/m", "--cert", str(cert), "--key", str(key))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["path"] == "/m"
    cert, key = _client_pair(tmp_path, stranger_ca, "eve")
    assert curl(edge_proc, a.url + "/", "--cert", str(cert), "--key", str(key)).returncode != 0


SDK_SCRIPT = """
import json, os, sys
import ngrok
env = os.environ
listener = ngrok.forward(int(env["PORT"]), authtoken=env["TOKEN"], server_addr=env["ADDR"],
                         session_ca_cert=bytearray(open(env["CA"], "rb").read()),
                         mutual_tls_cas=bytearray(open(env["CLIENT_CAS"], "rb").read()))
print(json.dumps({"url": listener.url(), "id": listener.id()}), flush=True)
sys.stdin.read()
os._exit(0)
"""


def test_mutual_tls_from_the_official_python_sdk(edge_proc: EdgeProc, echo_app: int, tmp_path: Path) -> None:
    client_ca = trustme.CA()
    cas = tmp_path / "client-cas.pem"
    cas.write_bytes(client_ca.cert_pem.bytes())
    env = {
        **edge_proc.env(),
        "TOKEN": edge_proc.token,
        "ADDR": edge_proc.tunnel_addr,
        "CA": str(edge_proc.ca),
        "CLIENT_CAS": str(cas),
        "PORT": str(echo_app),
    }
    with sdk_process([sys.executable, "-c", SDK_SCRIPT], env=env) as info:
        url = info["url"]
        assert curl(edge_proc, url + "/").returncode != 0
        cert, key = _client_pair(tmp_path, client_ca, "bob")
        ok = curl(edge_proc, url + "/sdk", "--cert", str(cert), "--key", str(key))
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["path"] == "/sdk"
