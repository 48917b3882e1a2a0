"""ACME at the edge against a real pebble: HTTP-01 issuance answered by the edge's plain HTTP listener,
wildcards through DNS-01 (the exec hook with pebble-challtestsrv, and RFC 2136 with a real knot server),
renewal, certificates and the account kept across an edge restart.

pebble validates HTTP-01 on port 5002 (its config's ``httpPort``), so every edge here listens for plain
HTTP on 127.0.0.1:5002; the tests of this module run one edge at a time. pebble-challtestsrv answers
every A query with 127.0.0.1; knot serves the zone of the RFC 2136 test (``* A 127.0.0.1`` included).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import dns.message
import dns.query
import pytest
import trustme
from cryptography import x509

from e2e_support import HATCHWAY, Agents, EdgeProc, ensure_tool, start_edge, wait_for

HTTP01_PORT = 5002  # fixed by pebble's httpPort


@pytest.fixture(autouse=True, scope="module")
def _tools() -> None:
    ensure_tool("pebble", "pebble")
    ensure_tool("pebble-challtestsrv", "pebble")


def free_port(udp_too: bool = False) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not udp_too:
            return port
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise AssertionError("no free port")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass
class Pebble:
    directory: str
    https_ca: Path  # trusts pebble's own HTTPS (the trustme CA)
    root: Path  # pebble's issuing root, for clients of the edge
    log: Path

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log.read_text(errors="replace")))

    @property
    def orders(self) -> int:
        return self.count(r"POST /order-plz")

    @property
    def accounts(self) -> int:
        return self.count(r"POST /sign-me-up")


def _start_pebble(d: Path, dns_port: int, procs: list[subprocess.Popen[bytes]]) -> Pebble:
    """pebble on free ports with real validation, resolving names through the DNS server at dns_port."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    port, mgmt = free_port(), free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{port}",
            "managementListenAddress": f"127.0.0.1:{mgmt}",
            "certificate": str(d / "cert.pem"),
            "privateKey": str(d / "key.pem"),
            "httpPort": HTTP01_PORT,
            "tlsPort": 5001,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (d / "pebble.json").write_text(json.dumps(config))
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    log = d / "pebble.log"
    with open(log, "ab") as out:
        procs.append(
            subprocess.Popen(
                ["pebble", "-config", str(d / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns_port}"],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        )
    ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))

    def root() -> bytes | None:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{mgmt}/roots/0", context=ctx, timeout=2) as r:
                return bytes(r.read())
        except OSError:
            return None

    pem = wait_for(root, within=15, what="pebble's management API")
    assert isinstance(pem, bytes)
    (d / "root.pem").write_bytes(pem)
    return Pebble(f"https://127.0.0.1:{port}/dir", d / "ca.pem", d / "root.pem", log)


@dataclass
class ChallSrv:
    dns_port: int
    mgmt_port: int


@pytest.fixture(scope="module")
def challtestsrv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChallSrv]:
    d = tmp_path_factory.mktemp("challtestsrv")
    dns_port, mgmt = free_port(udp_too=True), free_port()
    with open(d / "challtestsrv.log", "ab") as out:
        args = f"-defaultIPv4 127.0.0.1 -dns01 127.0.0.1:{dns_port} -management 127.0.0.1:{mgmt}".split()
        off = ["-defaultIPv6", "", "-http01", "", "-https01", "", "-tlsalpn01", ""]
        proc = subprocess.Popen(
            ["pebble-challtestsrv", *args, *off],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for(lambda: _listening(mgmt), within=10, what="challtestsrv")
        yield ChallSrv(dns_port, mgmt)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory, challtestsrv: ChallSrv) -> Iterator[Pebble]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield _start_pebble(tmp_path_factory.mktemp("pebble"), challtestsrv.dns_port, procs)
    finally:
        for p in procs:
            stop(p)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def served_cert(edge: EdgeProc, sni: str) -> x509.Certificate:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", edge.https_port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def from_pebble(cert: x509.Certificate) -> bool:
    return "Pebble" in cert.issuer.rfc4514_string()


def san(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName)


def wait_pebble_cert(edge: EdgeProc, sni: str, within: float = 40) -> x509.Certificate:
    def issued() -> x509.Certificate | None:
        if edge.proc.poll() is not None:
            raise AssertionError(f"edge exited: {(edge.data_dir / 'edge.log').read_text()}")
        cert = served_cert(edge, sni)
        return cert if from_pebble(cert) else None

    try:
        cert = wait_for(issued, within=within, what=f"a pebble certificate for {sni}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{(edge.data_dir / 'edge.log').read_text()}") from None
    assert isinstance(cert, x509.Certificate)
    return cert


def reserve(data_dir: Path, name: str) -> None:
    out = subprocess.run(
        [HATCHWAY, "edge", "domain", "add", name, "--data-dir", str(data_dir)],
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr.decode()


def acme_edge(data_dir: Path, pebble: Pebble, *extra: str) -> EdgeProc:
    return start_edge(
        data_dir,
        "--acme-directory",
        pebble.directory,
        "--acme-root-cas",
        str(pebble.https_ca),
        "--acme-email",
        "ops@example.test",
        "--skip-domain-verification",
        *extra,
        ports=(HTTP01_PORT, 0, 0),
    )


def curl_pebble(edge: EdgeProc, pebble: Pebble, host: str) -> subprocess.CompletedProcess[bytes]:
    """curl trusting only pebble's root (not the edge's dev CA)."""
    port = edge.https_port
    return subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--cacert",
            str(pebble.root),
            "--resolve",
            f"{host}:{port}:127.0.0.1",
            f"https://{host}:{port}/hello",
        ],
        capture_output=True,
        timeout=30,
    )


def edge_log(edge: EdgeProc) -> str:
    return (edge.data_dir / "edge.log").read_text(errors="replace")


def order_times(edge: EdgeProc, name: str) -> list[float]:
    """When the edge started each order for ``name`` (from its log lines)."""
    times = []
    for line in edge_log(edge).splitlines():
        if f"acme: ordering a certificate for {name} " in line:
            stamp = line[:23]  # "2026-01-01 12:00:00,123"
            times.append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return times


# ---- HTTP-01 ---------------------------------------------------------------------------------------------
def test_http01_certificate_and_account_kept_across_restart(
    tmp_path: Path, pebble: Pebble, echo_app: int
) -> None:
    data = tmp_path / "edge"
    reserve(data, "app.example.test")
    reserve(data, "two.example.test")
    orders0, accounts0 = pebble.orders, pebble.accounts
    edge = acme_edge(data, pebble)
    agents = Agents(edge)
    try:
        # Before any endpoint binds it, the name gets the dev CA's certificate and nothing is ordered.
        assert not from_pebble(served_cert(edge, "app.example.test"))
        agents.start("http", str(echo_app), "--domain", "app.example.test", "--scheme", "https,http")
        cert = wait_pebble_cert(edge, "app.example.test")
        assert san(cert) == ["app.example.test"]
        out = curl_pebble(edge, pebble, "app.example.test")
        assert out.returncode == 0, out.stderr.decode()
        assert json.loads(out.stdout)["path"] == "/hello"
        # pebble validated through the edge's plain HTTP listener (3 perspectives each fetched the token).
        assert pebble.orders == orders0 + 1
        assert pebble.accounts == accounts0 + 1
        assert "acme: registered account" in edge_log(edge)
        # The token is gone once the order is done: the path is routed to the endpoint again.
        probe = subprocess.run(
            [
                "curl",
                "-sS",
                "--max-time",
                "10",
                "-H",
                "Host: app.example.test",
                f"http://127.0.0.1:{HTTP01_PORT}/.well-known/acme-challenge/unknown-token",
            ],
            capture_output=True,
            timeout=20,
        )
        assert json.loads(probe.stdout)["path"] == "/.well-known/acme-challenge/unknown-token"
    finally:
        agents.stop_all()
        edge.stop()

    # Restarted with the same data dir: the certificate is served at once, nothing is ordered again and
    # the account is reused, even when the endpoint binds again.
    first_run = len(edge_log(edge))
    edge = acme_edge(data, pebble)
    agents = Agents(edge)
    try:
        again = served_cert(edge, "app.example.test")
        assert again.serial_number == cert.serial_number
        agents.start("http", str(echo_app), "--domain", "app.example.test")
        out = curl_pebble(edge, pebble, "app.example.test")
        assert out.returncode == 0, out.stderr.decode()
        assert "acme: ordering" not in edge_log(edge)[first_run:]
        assert pebble.orders == orders0 + 1
        # A new name is ordered with the stored account: no second registration.
        agents.start("http", str(echo_app), "--domain", "two.example.test")
        wait_pebble_cert(edge, "two.example.test")
        assert pebble.orders == orders0 + 2
        assert pebble.accounts == accounts0 + 1
        assert "acme: using the stored account" in edge_log(edge)[first_run:]
    finally:
        agents.stop_all()
        edge.stop()


def test_renewal_replaces_the_served_certificate(tmp_path: Path, pebble: Pebble, echo_app: int) -> None:
    data = tmp_path / "edge"
    reserve(data, "renew.example.test")
    check = 2.0
    # pebble's certificates live 5 years: renewing 3000 days early makes every certificate due at once.
    edge = acme_edge(data, pebble, "--acme-renew-before", "3000d", "--acme-renew-check", f"{check:g}s")
    agents = Agents(edge)
    try:
        agents.start("http", str(echo_app), "--domain", "renew.example.test")
        serials = [wait_pebble_cert(edge, "renew.example.test").serial_number]

        def renewed() -> int | None:
            serial = served_cert(edge, "renew.example.test").serial_number
            return serial if serial not in serials else None

        for _ in range(2):
            serials.append(int(str(wait_for(renewed, within=30, what="a renewed certificate"))))
        out = curl_pebble(edge, pebble, "renew.example.test")
        assert out.returncode == 0, out.stderr.decode()
        # Renewed again and again, but at most once per check interval: never a tight loop.
        times = order_times(edge, "renew.example.test")
        assert len(times) >= 3
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= check * 0.9, gaps
        assert len(times) <= (times[-1] - times[0]) / check + 2
        assert "(renewal, http-01)" in edge_log(edge)
    finally:
        agents.stop_all()
        edge.stop()


# ---- DNS-01 (wildcards) ---------------------------------------------------------------------------------
def test_reserved_wildcard_through_exec_hook(tmp_path: Path, pebble: Pebble, challtestsrv: ChallSrv) -> None:
    calls = tmp_path / "hook-calls"
    hook = tmp_path / "dns-hook"
    hook.write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys, urllib.request
        action, fqdn, value = sys.argv[1:4]
        with open({str(calls)!r}, "a") as f:
            f.write(f"{{action}} {{fqdn}}\\n")
        path, body = ("/set-txt", {{"host": fqdn, "value": value}}) if action == "present" else (
            "/clear-txt", {{"host": fqdn}})
        req = urllib.request.Request("http://127.0.0.1:{challtestsrv.mgmt_port}" + path,
                                     data=json.dumps(body).encode(), method="POST")
        urllib.request.urlopen(req, timeout=10).read()
        """)
    )
    hook.chmod(0o755)
    data = tmp_path / "edge"
    edge = acme_edge(data, pebble, "--acme-dns-provider", "exec", "--acme-dns-exec", str(hook))
    try:
        assert not from_pebble(served_cert(edge, "a.wild.example.test"))
        # Reserved while the edge runs: it notices through the store and orders with no endpoint bound.
        reserve(data, "*.wild.example.test")
        cert = wait_pebble_cert(edge, "a.wild.example.test")
        assert san(cert) == ["*.wild.example.test"]
        assert served_cert(edge, "b.wild.example.test").serial_number == cert.serial_number
        lines = calls.read_text().splitlines()
        assert lines == [
            "present _acme-challenge.wild.example.test.",
            "cleanup _acme-challenge.wild.example.test.",
        ]
        query = dns.message.make_query("_acme-challenge.wild.example.test.", "TXT")
        answer = dns.query.udp(query, "127.0.0.1", port=challtestsrv.dns_port, timeout=5)
        assert not answer.answer  # the record was taken down again
    finally:
        edge.stop()


KNOT_CONF = """\
server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}
key:
  - id: acme-key
    algorithm: hmac-sha256
    secret: {secret}
acl:
  - id: acme-update
    key: acme-key
    action: update
database:
    storage: "{d}"
template:
  - id: default
    storage: "{d}"
    file: "%s.zone"
    zonefile-sync: -1
zone:
  - domain: rfc.example.test
    acl: acme-update
"""
ZONE = """\
$ORIGIN rfc.example.test.
$TTL 60
@ SOA ns admin 1 60 60 600 60
@ NS ns
ns A 127.0.0.1
* A 127.0.0.1
"""


def test_bound_wildcard_through_rfc2136(tmp_path: Path, echo_app: int) -> None:
    import base64

    knotd = ensure_tool("knotd", "knot", also="/usr/sbin/knotd")
    kd = tmp_path / "knot"
    kd.mkdir()
    port = free_port(udp_too=True)
    secret = base64.b64encode(os.urandom(32)).decode()
    (kd / "knot.conf").write_text(KNOT_CONF.format(d=kd, port=port, secret=secret))
    (kd / "rfc.example.test.zone").write_text(ZONE)
    procs: list[subprocess.Popen[bytes]] = []
    with open(kd / "knot.log", "ab") as out:
        procs.append(
            subprocess.Popen(
                [knotd, "-c", str(kd / "knot.conf")], stdout=out, stderr=out, stdin=subprocess.DEVNULL
            )
        )
    edge: EdgeProc | None = None
    agents: Agents | None = None
    try:
        wait_for(lambda: _listening(port), within=10, what="knotd")
        # A pebble of its own that asks knot: the TXT record must really come from the DNS UPDATE.
        pd = tmp_path / "pebble"
        pd.mkdir()
        peb = _start_pebble(pd, port, procs)
        data = tmp_path / "edge"
        reserve(data, "*.rfc.example.test")
        edge = acme_edge(
            data,
            peb,
            "--acme-dns-provider",
            "rfc2136",
            "--acme-dns-server",
            f"127.0.0.1:{port}",
            "--acme-dns-tsig-key",
            f"acme-key:hmac-sha256:{secret}",
            "--acme-dns-zone",
            "rfc.example.test",
        )
        agents = Agents(edge)
        agents.start("http", str(echo_app), "--domain", "*.rfc.example.test")
        cert = wait_pebble_cert(edge, "x.rfc.example.test")
        assert san(cert) == ["*.rfc.example.test"]
        out = curl_pebble(edge, peb, "x.rfc.example.test")
        assert out.returncode == 0, out.stderr.decode()
        assert json.loads(out.stdout)["path"] == "/hello"
        assert "DNS UPDATE" not in edge_log(edge)  # no failed update on the way
        query = dns.message.make_query("_acme-challenge.rfc.example.test.", "TXT")
        answer = dns.query.udp(query, "127.0.0.1", port=port, timeout=5)
        assert not answer.answer  # removed after validation
    finally:
        if agents is not None:
            agents.stop_all()
        if edge is not None:
            edge.stop()
        for p in procs:
            stop(p)


def test_acme_flags_are_checked(tmp_path: Path) -> None:
    """A DNS provider without what it needs, or a bad duration, stops the edge before it starts."""
    for extra, words in (
        (["--acme-dns-provider", "rfc2136"], "--acme-dns-server"),
        (["--acme-dns-provider", "exec"], "--acme-dns-exec"),
        (["--acme-dns-provider", "route53"], "unknown ACME DNS provider"),
        (["--acme-renew-before", "soon"], "not a duration"),
        (["--acme-dns-provider", "rfc2136", "--acme-dns-server", "127.0.0.1:53",
          "--acme-dns-tsig-key", "k:hmac-sha999:c2VjcmV0"], "unknown TSIG algorithm"),
    ):  # fmt: skip
        out = subprocess.run(
            [
                HATCHWAY,
                "edge",
                "--data-dir",
                str(tmp_path / "edge"),
                "--acme-directory",
                "https://127.0.0.1:1/dir",
                *extra,
            ],
            capture_output=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert out.returncode != 0
        assert words in re.sub(r"\s+", " ", out.stderr.decode().replace("│", " ")), out.stderr.decode()
