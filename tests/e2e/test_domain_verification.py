"""Custom-domain verification end to end: a real ``hatchway edge`` asks a real DNS server on loopback for
CNAME records (``--dns-resolver``), ``hatchway edge domain add|list`` show the record to create and the
last check, ``hatchway http --domain`` is refused until the record exists, then traffic flows (curl).

The DNS server is Debian's ``pebble-challtestsrv`` (package ``pebble``): its management API publishes
CNAME records (``/set-cname``, ``/clear-cname``) and its DNS listener serves them over UDP and TCP. It
matches names exactly (no wildcard synthesis), so a name below a wildcard gets its own record here.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hatchway.edge.app import Edge, EdgeConfig

from e2e_support import HATCHWAY, Agents, EdgeProc, curl, ensure_tool, free_port_range, start_edge, wait_for


@pytest.fixture(scope="module")
def challtestsrv() -> str:
    return ensure_tool("pebble-challtestsrv", "pebble")


RECORD = re.compile(r"^(\S+) CNAME (\S+)$", re.M)


@dataclass
class Dns:
    """A pebble-challtestsrv process: a DNS server on 127.0.0.1:``port`` managed over HTTP."""

    port: int
    management: int

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _post(self, path: str, body: dict[str, object]) -> None:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.management}{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200, path

    def set_cname(self, host: str, target: str) -> None:
        self._post("/set-cname", {"host": host + ".", "target": target + "."})

    def clear_cname(self, host: str) -> None:
        self._post("/clear-cname", {"host": host + "."})


@pytest.fixture
def dns(tmp_path: Path, challtestsrv: str) -> Iterator[Dns]:
    port, management = free_port_range(2)
    log = open(tmp_path / "challtestsrv.log", "wb")  # noqa: SIM115 -- closed below
    proc = subprocess.Popen(
        [
            challtestsrv,
            "-dns01",
            f"127.0.0.1:{port}",
            "-management",
            f"127.0.0.1:{management}",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-defaultIPv4",
            "",
            "-defaultIPv6",
            "",
        ],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError((tmp_path / "challtestsrv.log").read_text())
        for p in (port, management):
            try:
                socket.create_connection(("127.0.0.1", p), timeout=1).close()
            except OSError:
                return False
        return True

    try:
        wait_for(up, what="pebble-challtestsrv")
        yield Dns(port, management)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


@pytest.fixture
def verifying_edge(tmp_path: Path, dns: Dns) -> Iterator[EdgeProc]:
    edge = start_edge(tmp_path / "edge", "--verify-domains", "--dns-resolver", dns.addr)
    try:
        yield edge
    finally:
        edge.stop()


def _admin(edge: EdgeProc, *args: str) -> str:
    res = subprocess.run(
        [HATCHWAY, "edge", "domain", *args, "--data-dir", str(edge.data_dir)],
        capture_output=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.decode()


def _add(edge: EdgeProc, name: str) -> str:
    """``domain add NAME``; the CNAME target it printed."""
    out = _admin(edge, "add", name)
    (record,) = RECORD.findall(out)
    assert record[0] == name, out
    return record[1]


def _listing(edge: EdgeProc) -> dict[str, list[str]]:
    rows = _admin(edge, "list").splitlines()
    assert rows[0].split()[:4] == ["DOMAIN", "ACCOUNT", "CNAME", "TARGET"], rows
    return {r.split()[0]: r.split()[1:] for r in rows[1:]}


def _refused(edge: EdgeProc, port: int, domain: str) -> str:
    res = subprocess.run(
        [HATCHWAY, "http", str(port), "--domain", domain],
        capture_output=True,
        timeout=30,
        env=edge.env(),
    )
    assert res.returncode == 1, res
    return res.stderr.decode()


def test_bind_waits_for_the_cname_then_traffic_flows(
    verifying_edge: EdgeProc, dns: Dns, echo_app: int
) -> None:
    edge = verifying_edge
    target = _add(edge, "app.example.com")
    assert re.fullmatch(r"[0-9a-f]{20}\.cname\.hatchway\.localhost", target), target
    assert _listing(edge)["app.example.com"][:4] == ["default", target, "not", "checked"]

    # No record yet: refused with ngrok's code and the record to create.
    err = _refused(edge, echo_app, "app.example.com")
    assert "ERR_NGROK_425" in err and f"app.example.com CNAME {target}" in err, err
    assert _listing(edge)["app.example.com"][2] == "no"

    # A CNAME to another target (another reservation's, say) is refused too.
    dns.set_cname("app.example.com", "0000.cname.hatchway.localhost")
    err = _refused(edge, echo_app, "app.example.com")
    assert "ERR_NGROK_427" in err and "0000.cname.hatchway.localhost" in err and target in err, err

    # The record the edge asked for: bound at once (failures are not cached), and traffic flows.
    dns.set_cname("app.example.com", target)
    agents = Agents(edge)
    try:
        agent = agents.start("http", str(echo_app), "--domain", "app.example.com")
        assert agent.url == f"https://app.example.com:{edge.https_port}"
        res = curl(edge, agent.url + "/hello", "-i")
        assert res.stdout.startswith(b"HTTP/1.1 200"), res
        assert b'"path": "/hello"' in res.stdout
        assert _listing(edge)["app.example.com"][2] == "yes"
    finally:
        agents.stop_all()


def test_wildcard_is_verified_on_the_wildcard_record(
    verifying_edge: EdgeProc, dns: Dns, echo_app: int
) -> None:
    edge = verifying_edge
    target = _add(edge, "*.wild.example.com")
    err = _refused(edge, echo_app, "*.wild.example.com")
    assert "ERR_NGROK_425" in err and f"*.wild.example.com CNAME {target}" in err, err
    dns.set_cname("*.wild.example.com", target)
    agents = Agents(edge)
    try:
        agents.start("http", str(echo_app), "--domain", "*.wild.example.com")
        res = curl(edge, f"https://a.wild.example.com:{edge.https_port}/", "-i")
        assert res.stdout.startswith(b"HTTP/1.1 200"), res
        # A name below the wildcard bound on its own needs its CNAME too (to the wildcard's target).
        err = _refused(edge, echo_app, "one.wild.example.com")
        assert f"one.wild.example.com CNAME {target}" in err, err
        dns.set_cname("one.wild.example.com", target)
        agents.start("http", str(echo_app), "--domain", "one.wild.example.com")
    finally:
        agents.stop_all()


def test_names_under_the_base_domain_need_no_record(verifying_edge: EdgeProc, echo_app: int) -> None:
    out = _admin(verifying_edge, "add", "static.hatchway.localhost")
    assert "no DNS record needed" in out and "CNAME" not in out
    assert _listing(verifying_edge)["static.hatchway.localhost"][1:3] == ["-", "not"]
    agents = Agents(verifying_edge)
    try:
        agent = agents.start("http", str(echo_app), "--domain", "static.hatchway.localhost")
        assert curl(verifying_edge, agent.url, "-i").stdout.startswith(b"HTTP/1.1 200")
        random_name = agents.start("http", str(echo_app))
        assert curl(verifying_edge, random_name.url, "-i").stdout.startswith(b"HTTP/1.1 200")
    finally:
        agents.stop_all()


def test_skip_domain_verification_binds_without_dns(tmp_path: Path, dns: Dns, echo_app: int) -> None:
    edge = start_edge(tmp_path / "edge", "--skip-domain-verification", "--dns-resolver", dns.addr)
    agents = Agents(edge)
    try:
        _add(edge, "app.example.com")  # no record published
        agent = agents.start("http", str(echo_app), "--domain", "app.example.com")
        assert curl(edge, agent.url, "-i").stdout.startswith(b"HTTP/1.1 200")
    finally:
        agents.stop_all()
        edge.stop()


def test_an_old_database_is_migrated_and_its_domains_get_targets(
    tmp_path: Path, dns: Dns, echo_app: int
) -> None:
    data = tmp_path / "edge"
    db = sqlite3.connect(data / "state.db")
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        CREATE TABLE accounts (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
        CREATE TABLE domains (
            name TEXT PRIMARY KEY, account TEXT NOT NULL REFERENCES accounts(name), created_at REAL NOT NULL
        );
        INSERT INTO meta VALUES ('schema_version', 1), ('revision', 0);
        INSERT INTO accounts VALUES ('default', 1.0);
        INSERT INTO domains VALUES ('old.example.com', 'default', 2.0);
        """
    )
    db.commit()
    db.close()
    edge = start_edge(
        data, "--verify-domains", "--dns-resolver", dns.addr, "--cname-target-base", "cn.edge.test"
    )
    agents = Agents(edge)
    try:
        err = _refused(edge, echo_app, "old.example.com")
        found = re.search(r"old\.example\.com CNAME ([0-9a-f]{20}\.cn\.edge\.test)", err)
        assert found is not None and "ERR_NGROK_425" in err, err
        target = found.group(1)
        assert _listing(edge)["old.example.com"][1] == target  # stored: the same next time
        dns.set_cname("old.example.com", target)
        agent = agents.start("http", str(echo_app), "--domain", "old.example.com")
        assert curl(edge, agent.url, "-i").stdout.startswith(b"HTTP/1.1 200")
        # New reservations take their target base from the running edge (edge.json).
        assert _add(edge, "new.example.com").endswith(".cn.edge.test")
    finally:
        agents.stop_all()
        edge.stop()


async def test_acme_hook_verified(tmp_path: Path, dns: Dns) -> None:
    """``edge.domain_check.verified(host)``: what the ACME manager asks before it orders a certificate."""
    edge = Edge(
        EdgeConfig(
            data_dir=tmp_path / "inproc",
            http_addr="127.0.0.1:0",
            https_addr="127.0.0.1:0",
            tunnel_addr="127.0.0.1:0",
            dns_resolver=dns.addr,
        )
    )
    assert edge.store is not None
    target = "f" * 20 + "." + edge.cname_target_base
    edge.store.add_domain("app.example.com", "default", target)
    check = edge.domain_check
    assert await check.verified("anything.hatchway.localhost")
    assert not await check.verified("app.example.com")
    assert not await check.verified("unreserved.example.com")
    await asyncio.to_thread(dns.set_cname, "app.example.com", target)
    assert await check.verified("app.example.com")
    await asyncio.to_thread(dns.clear_cname, "app.example.com")
    started = time.monotonic()
    assert await check.verified("app.example.com")  # a success is trusted for a while (VERIFIED_TTL)
    assert time.monotonic() - started < 1
    edge.store.close()
