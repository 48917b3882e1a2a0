"""HTTP/2 to HTTPS clients, as a user sees it: ``hatchway edge`` + ``hatchway http`` driven with curl.

The same endpoint answers ``curl --http2`` over HTTP/2 and ``curl --http1.1`` over HTTP/1.1 (ALPN picks);
the agent side is HTTP/1.1 either way. Checks the header rules and the error pages over h2, a request
body, and several requests multiplexed on one connection (``curl --parallel``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2e_support import Agents, EdgeProc, curl


def _split(out: bytes) -> tuple[bytes, bytes, str]:
    """``curl -i -w '\\n%{http_version}'`` output as (head, body, protocol version)."""
    rest, _, version = out.rpartition(b"\n")
    head, _, body = rest.partition(b"\r\n\r\n")
    return head, body, version.decode()


def _upstream_headers(body: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in json.loads(body)["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def test_curl_http2_and_http11_on_the_same_endpoint(
    edge_proc: EdgeProc, agents: Agents, echo_app: int
) -> None:
    agent = agents.start("http", str(echo_app))
    wanted_host = f"{agent.host}:{edge_proc.https_port}"

    res = curl(
        edge_proc,
        agent.url + "/over-h2?x=1",
        "-i",
        "-w",
        "\n%{http_version}",
        "-H",
        "Cookie: a=1",
        "-H",
        "X-Forwarded-For: 198.51.100.1",
        http="2",
    )
    assert res.returncode == 0, res.stderr
    head, body, version = _split(res.stdout)
    assert version == "2"
    assert head.startswith(b"HTTP/2 200")
    lines = head.split(b"\r\n")[1:]
    assert all(line.split(b":", 1)[0] == line.split(b":", 1)[0].lower() for line in lines)
    assert b"x-upstream: yes" in lines
    assert not any(line.startswith(b"ngrok-error-code") for line in lines)  # the upstream may not set it
    assert not any(line.startswith((b"connection", b"keep-alive", b"transfer-encoding")) for line in lines)
    seen = _upstream_headers(body)
    assert json.loads(body)["path"] == "/over-h2?x=1"
    assert seen["host"] == [wanted_host]  # :authority became Host for the HTTP/1.1 upstream
    assert seen["x-forwarded-for"] == ["198.51.100.1, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["cookie"] == ["a=1"]

    res = curl(edge_proc, agent.url + "/over-h1", "-i", "-w", "\n%{http_version}", http="1.1")
    assert res.returncode == 0, res.stderr
    head, body, version = _split(res.stdout)
    assert version == "1.1"
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["path"] == "/over-h1"
    assert _upstream_headers(body)["host"] == [wanted_host]


def test_http2_error_pages(edge_proc: EdgeProc, agents: Agents) -> None:
    url = f"https://nobody-here.hatchway.localhost:{edge_proc.https_port}/"
    head, body, version = _split(curl(edge_proc, url, "-i", "-w", "\n%{http_version}", http="2").stdout)
    assert version == "2" and head.startswith(b"HTTP/2 404")
    assert b"ngrok-error-code: ERR_NGROK_3200" in head
    assert b"is offline" in body and b"<html" in body

    agent = agents.start("http", "1")  # nothing listens on port 1
    head, _, version = _split(curl(edge_proc, agent.url, "-i", "-w", "\n%{http_version}", http="2").stdout)
    assert version == "2" and head.startswith(b"HTTP/2 502")
    assert b"ngrok-error-code: ERR_NGROK_8012" in head


def test_http2_request_body_and_parallel_streams(
    edge_proc: EdgeProc, agents: Agents, echo_app: int, tmp_path: Path
) -> None:
    agent = agents.start("http", str(echo_app))
    payload = tmp_path / "payload.bin"
    payload.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    res = curl(edge_proc, agent.url + "/upload", "--data-binary", f"@{payload}", http="2")
    assert res.returncode == 0, res.stderr
    answer = json.loads(res.stdout)
    assert answer["method"] == "POST" and answer["body_len"] == 1 << 20

    extra = [a for i in range(1, 6) for a in (agent.url + f"/p{i}", "-o", "/dev/null")]
    res = curl(
        edge_proc,
        agent.url + "/p0",
        "--parallel",  # several streams on one connection: curl waits to multiplex over h2
        "-w",
        "%{http_version} %{response_code} %{num_connects}\n",
        "-o",
        "/dev/null",
        *extra,
        http="2",
    )
    assert res.returncode == 0, res.stderr
    rows = [line.split() for line in res.stdout.decode().splitlines()]
    assert [row[:2] for row in rows] == [["2", "200"]] * 6
    assert sum(int(row[2]) for row in rows) == 1  # all six multiplexed on one connection


@pytest.mark.parametrize("http", ["1.1", "2"])
def test_sequential_requests_reuse_one_upstream_connection(
    edge_proc: EdgeProc, agents: Agents, echo_app: int, http: str
) -> None:
    """Requests on one client connection reuse one Proxy stream, so the agent keeps one upstream
    connection (for HTTP/2 too, where each request is its own h2 stream)."""
    agent = agents.start("http", str(echo_app))
    res = curl(edge_proc, agent.url + "/one", agent.url + "/two", agent.url + "/three", http=http)
    assert res.returncode == 0, res.stderr
    answers = [json.loads(part) for part in res.stdout.replace(b"}{", b"}\n{").splitlines()]
    assert sorted(a["path"] for a in answers) == ["/one", "/three", "/two"]
    assert len({tuple(a["peer"]) for a in answers}) == 1, answers
