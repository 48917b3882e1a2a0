"""``hatchway edge`` + ``hatchway http`` as a user runs them, driven with curl over HTTPS and HTTP.

Covers discovery of a dev edge with no flags, the proxy's header rules, error pages with
``ngrok-error-code``, schemes, Host/Location rewriting, refused domains and a revoked token.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from e2e_support import HATCHWAY, Agents, EdgeProc, curl, wait_for


def _headers(answer: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in json.loads(answer)["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def test_http_with_no_flags_finds_the_dev_edge(edge_proc: EdgeProc, agents: Agents, echo_app: int) -> None:
    agent = agents.start("http", str(echo_app))
    assert agent.url.startswith("https://") and agent.url.endswith(
        f".hatchway.localhost:{edge_proc.https_port}"
    )
    started = next(line for line in agent.lines if "url" in line)
    assert started["msg"] == "started tunnel" and started["addr"] == f"http://localhost:{echo_app}"
    res = curl(edge_proc, agent.url + "/hello?x=1", "-i")
    assert res.returncode == 0, res.stderr
    head, _, body = res.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["path"] == "/hello?x=1"


def test_forwarded_headers_and_hop_by_hop(edge_proc: EdgeProc, agents: Agents, echo_app: int) -> None:
    agent = agents.start("http", str(echo_app))
    res = curl(
        edge_proc,
        agent.url + "/h",
        "-i",
        "-H",
        "X-Forwarded-For: 198.51.100.1",
        "-H",
        "Connection: keep-alive, X-Secret-Hop",
        "-H",
        "X-Secret-Hop: must-not-pass",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "TE: trailers",
    )
    head, _, body = res.stdout.partition(b"\r\n\r\n")
    seen = _headers(body)
    assert seen["x-forwarded-for"] == ["198.51.100.1, 127.0.0.1"]  # appended, the client last
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-host"] == [agent.host + f":{edge_proc.https_port}"]
    assert seen["host"] == [agent.host + f":{edge_proc.https_port}"]
    for hop in ("x-secret-hop", "keep-alive", "te", "connection"):
        assert hop not in seen, hop
    # The upstream tried to set ngrok-error-code: only the edge may.
    assert b"ngrok-error-code" not in head.lower()
    assert b"x-upstream: yes" in head.lower()


def test_offline_endpoint_is_404_err_ngrok_3200(edge_proc: EdgeProc) -> None:
    url = f"https://nobody-here.hatchway.localhost:{edge_proc.https_port}/"
    res = curl(edge_proc, url, "-i")
    head, _, body = res.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404")
    assert b"ngrok-error-code: ERR_NGROK_3200" in head
    assert b"is offline" in body and b"<html" in body
    res = curl(edge_proc, url, "-i", "-H", "Accept: application/json")
    head, _, body = res.stdout.partition(b"\r\n\r\n")
    assert json.loads(body)["error_code"] == "ERR_NGROK_3200"


def test_upstream_refused_is_502_err_ngrok_8012(edge_proc: EdgeProc, agents: Agents) -> None:
    agent = agents.start("http", "1")  # nothing listens on port 1
    res = curl(edge_proc, agent.url, "-i")
    head = res.stdout.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 502"), head
    assert b"ngrok-error-code: ERR_NGROK_8012" in head


def test_invalid_upstream_response_is_502_err_ngrok_3004(edge_proc: EdgeProc, agents: Agents) -> None:
    import socket
    import threading

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def garbage() -> None:
        for _ in range(2):
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"this is not http at all\r\n\r\n")
            conn.close()

    threading.Thread(target=garbage, daemon=True).start()
    try:
        agent = agents.start("http", str(port))
        res = curl(edge_proc, agent.url, "-i")
        head = res.stdout.partition(b"\r\n\r\n")[0]
        assert head.startswith(b"HTTP/1.1 502"), head
        assert b"ngrok-error-code: ERR_NGROK_3004" in head
    finally:
        srv.close()


def test_schemes_http_only_both_and_default(edge_proc: EdgeProc, agents: Agents, echo_app: int) -> None:
    only_https = agents.start("http", str(echo_app))
    host = only_https.host
    plain = f"http://{host}:{edge_proc.http_port}/"
    assert curl(edge_proc, plain, "-i").stdout.startswith(b"HTTP/1.1 404")
    both = agents.start("http", str(echo_app), "--scheme", "http,https", urls=2)
    urls = [str(line["url"]) for line in both.lines if "url" in line]
    assert {u.split("://")[0] for u in urls} == {"http", "https"}
    assert len({u.split("://")[1].split(":")[0] for u in urls}) == 1  # one host for both schemes
    for u in urls:
        assert curl(edge_proc, u, "-i").stdout.startswith(b"HTTP/1.1 200"), u
    http_only = agents.start("http", str(echo_app), "--scheme", "http")
    assert http_only.url.startswith("http://")
    https_url = http_only.url.replace("http://", "https://").replace(
        f":{edge_proc.http_port}", f":{edge_proc.https_port}"
    )
    assert curl(edge_proc, https_url, "-i").stdout.startswith(b"HTTP/1.1 404")


def test_host_header_add_replaces_host_and_location_is_rewritten(
    edge_proc: EdgeProc, agents: Agents, echo_app: int
) -> None:
    agent = agents.start("http", str(echo_app), "--request-header-add", "host: localhost")
    res = curl(edge_proc, agent.url + "/echo")
    assert _headers(res.stdout)["host"] == ["localhost"]  # replaced, not a second Host
    res = curl(edge_proc, agent.url + "/redirect", "-i")
    head = res.stdout.partition(b"\r\n\r\n")[0].decode()
    location = next(line for line in head.split("\r\n") if line.lower().startswith("location:"))
    assert location.split(":", 1)[1].strip() == f"{agent.url}/landed"


def test_host_header_rewrite_uses_the_upstream_host(
    edge_proc: EdgeProc, agents: Agents, echo_app: int
) -> None:
    agent = agents.start("http", f"127.0.0.1:{echo_app}", "--host-header", "rewrite")
    res = curl(edge_proc, agent.url + "/echo")
    assert _headers(res.stdout)["host"] == [f"127.0.0.1:{echo_app}"]


def test_static_domain_and_refusal_when_online(edge_proc: EdgeProc, agents: Agents, echo_app: int) -> None:
    agent = agents.start("http", str(echo_app), "--domain", "static.hatchway.localhost")
    assert agent.url == f"https://static.hatchway.localhost:{edge_proc.https_port}"
    second = subprocess.run(
        [HATCHWAY, "http", str(echo_app), "--domain", "static.hatchway.localhost", "--log", "stdout"],
        capture_output=True,
        timeout=30,
        env=edge_proc.env(),
    )
    assert second.returncode == 1
    assert b"ERR_NGROK_334" in second.stderr and b"already online" in second.stderr


def test_unreserved_custom_domain_is_refused(edge_proc: EdgeProc, echo_app: int) -> None:
    res = subprocess.run(
        [HATCHWAY, "http", str(echo_app), "--domain", "app.example.com"],
        capture_output=True,
        timeout=30,
        env=edge_proc.env(),
    )
    assert res.returncode == 1
    assert b"not reserved" in res.stderr and b"ERR_NGROK_319" in res.stderr


def test_reserved_domain_of_another_account_is_refused(edge_proc: EdgeProc, echo_app: int) -> None:
    subprocess.run(
        [
            HATCHWAY,
            "edge",
            "domain",
            "add",
            "taken.example.com",
            "--account",
            "other",
            "--data-dir",
            str(edge_proc.data_dir),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    res = subprocess.run(
        [HATCHWAY, "http", str(echo_app), "--domain", "taken.example.com"],
        capture_output=True,
        timeout=30,
        env=edge_proc.env(),
    )
    assert res.returncode == 1 and b"ERR_NGROK_320" in res.stderr


def test_wildcard_and_most_specific_routing(
    edge_proc: EdgeProc, agents: Agents, echo_app: int, tmp_path: Path
) -> None:
    d = str(edge_proc.data_dir)
    subprocess.run(
        [HATCHWAY, "edge", "domain", "add", "*.example.com", "--data-dir", d],
        check=True,
        timeout=30,
        capture_output=True,
    )
    wild = agents.start(
        "http", str(echo_app), "--domain", "*.example.com", "--request-header-add", "x-who: wildcard"
    )
    assert wild.url == f"https://*.example.com:{edge_proc.https_port}"
    specific = agents.start(
        "http", str(echo_app), "--domain", "app.example.com", "--request-header-add", "x-who: specific"
    )
    port = edge_proc.https_port
    for host, who in (
        ("app.example.com", "specific"),
        ("other.example.com", "wildcard"),
        ("deep.a.b.example.com", "wildcard"),
    ):
        res = curl(edge_proc, f"https://{host}:{port}/")
        assert _headers(res.stdout)["x-who"] == [who], host
    specific.stop()
    wait_for(
        lambda: _headers(curl(edge_proc, f"https://app.example.com:{port}/").stdout)["x-who"] == ["wildcard"],
        what="fallback to the wildcard",
    )


def test_revoked_token_closes_its_session(edge_proc: EdgeProc, echo_app: int) -> None:
    d = str(edge_proc.data_dir)
    token = (
        subprocess.run(
            [HATCHWAY, "edge", "token", "create", "--data-dir", d],
            capture_output=True,
            check=True,
            timeout=30,
        )
        .stdout.decode()
        .strip()
    )
    agents = Agents(edge_proc)
    try:
        agent = agents.start("http", str(echo_app), "--authtoken", token)
        assert curl(edge_proc, agent.url, "-i").stdout.startswith(b"HTTP/1.1 200")
        listing = subprocess.run(
            [HATCHWAY, "edge", "token", "list", "--data-dir", d], capture_output=True, check=True, timeout=30
        ).stdout.decode()
        token_id = [line.split()[0] for line in listing.splitlines() if line.startswith("tok_")][-1]
        subprocess.run(
            [HATCHWAY, "edge", "token", "revoke", token_id, "--data-dir", d],
            check=True,
            timeout=30,
            capture_output=True,
        )
        wait_for(
            lambda: curl(edge_proc, agent.url, "-i").stdout.startswith(b"HTTP/1.1 404"),
            what="endpoint offline",
        )
    finally:
        agents.stop_all()


def test_http10_client_gets_a_dechunked_body(edge_proc: EdgeProc, agents: Agents) -> None:
    """An HTTP/1.0 client knows no chunked encoding: a chunked upstream response reaches it decoded,
    ended by the edge closing the connection; an HTTP/1.1 client gets the chunks as they were."""
    import socket
    import threading

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def chunked_app() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                )

    threading.Thread(target=chunked_app, daemon=True).start()
    try:
        agent = agents.start("http", str(port), "--scheme", "http")
        with socket.create_connection(("127.0.0.1", edge_proc.http_port), timeout=10) as c:
            c.sendall(f"GET / HTTP/1.0\r\nHost: {agent.host}\r\n\r\n".encode())
            data = b""
            while chunk := c.recv(65536):  # the edge closes at the end of the body
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"transfer-encoding" not in head.lower()
        assert body == b"hello world"
        res = curl(edge_proc, agent.url + "/", "-i", "--raw")
        head, _, body = res.stdout.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        assert body == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    finally:
        srv.close()
