"""Traffic Policy end to end: ``hatchway http PORT --traffic-policy-file FILE``, a real edge, curl.

One edge process serves the whole module (each test starts its own agent, so every endpoint gets a fresh
random name and its own policy state: rate-limit buckets and circuit breakers never leak between tests).
The upstream is purpose-built: it echoes the request it saw as JSON (like ``e2e_support.EchoHandler``),
answers ``/status/NNN`` with that status, serves a large text body at ``/big`` (with Content-Length)
and ``/chunked`` (chunked), and counts the requests it got per path, so a test can tell whether the edge
answered without reaching it.

Covered, one test (or parametrized case) per action: deny, custom-response, redirect, url-rewrite,
add-headers / remove-headers (request and response), rate-limit, restrict-ips, basic-auth,
compress-response (decoded with the real gzip, brotli and zstandard decoders), circuit-breaker,
verify-webhook (GitHub and Stripe signatures made here as the providers make them), log and set-vars,
``on_http_response`` rules on ``res.status_code``, user-agent-filter, and policies the agent must refuse
with the path of the mistake; also keep-alive after replies the policy made. Documents are written as
YAML and as JSON. All requests are HTTP/1.1.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import brotli
import pytest
import zstandard

from e2e_support import (
    HATCHWAY,
    AgentProc,
    Agents,
    EchoHandler,
    EdgeProc,
    curl,
    serving,
    start_edge,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

BIG_BODY = b"".join(b"line %05d: the quick brown fox jumps over the lazy dog\n" % i for i in range(2000))


# ---- the upstream -------------------------------------------------------------------------------------
class Upstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), UpstreamHandler)
        self.hits: Counter[str] = Counter()  # path (without the query) -> requests that reached us
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def count(self, path: str) -> int:
        with self.lock:
            return self.hits[path]


class UpstreamHandler(EchoHandler):
    """The echo app, plus ``/status/NNN`` (that status, a short text body) and ``/big`` (BIG_BODY)."""

    server: Upstream

    def _answer(self) -> None:
        path = self.path.split("?", 1)[0]
        with self.server.lock:
            self.server.hits[path] += 1
        if path.startswith("/status/"):
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            body = f"upstream said {path[8:]}\n".encode()
            self.send_response(int(path[8:]))
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if path == "/chunked":  # BIG_BODY in uneven chunks, no Content-Length: a streamed answer
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(BIG_BODY), 7001):
                piece = BIG_BODY[start : start + 7001]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/big":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(BIG_BODY)))
            self.end_headers()
            self.wfile.write(BIG_BODY)
            return
        super()._answer()

    do_GET = do_POST = do_PUT = do_DELETE = _answer


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    with serving(server):
        yield server


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeProc]:
    # One edge for the module: starting one per test would double the file's run time.
    proc = start_edge(tmp_path_factory.mktemp("policy-edge"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def policy_agents(edge: EdgeProc) -> Iterator[Agents]:
    a = Agents(edge)
    try:
        yield a
    finally:
        a.stop_all()


# ---- helpers ------------------------------------------------------------------------------------------
@dataclass
class Response:
    status: int
    headers: dict[str, list[str]]  # lower-case name -> values
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> dict[str, Any]:
        doc = json.loads(self.body)
        assert isinstance(doc, dict)
        return doc

    def seen(self) -> dict[str, list[str]]:
        """The request headers the echoing upstream saw (lower-case name -> values)."""
        out: dict[str, list[str]] = {}
        for k, v in self.json()["headers"]:
            out.setdefault(k.lower(), []).append(v)
        return out


def request(edge: EdgeProc, url: str, *args: str) -> Response:
    """One HTTP/1.1 request with curl; the raw body (no decoding of Content-Encoding)."""
    res = curl(edge, url, "-i", "-H", "Expect:", *args)
    assert res.returncode == 0, res.stderr
    head, _, body = res.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), lines[0]
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return Response(int(lines[0].split()[1]), headers, body)


def serve(agents: Agents, tmp_path: Path, upstream: Upstream, policy: str, suffix: str = ".yml") -> AgentProc:
    """Start ``hatchway http`` for the upstream with ``policy`` (YAML or JSON text) in a file."""
    path = tmp_path / f"policy-{len(agents.procs)}{suffix}"
    path.write_text(policy)
    return agents.start("http", str(upstream.port), "--traffic-policy-file", str(path))


def as_json(doc: object) -> str:
    return json.dumps(doc, indent=2)


# ---- deny, custom-response, redirect, url-rewrite ------------------------------------------------------
def test_deny_on_a_path_expression_json_document(
    edge: EdgeProc, policy_agents: Agents, upstream: Upstream, tmp_path: Path
) -> None:
    doc = {
        "on_http_request": [
            {
                "name": "no admin",
                "expressions": ["req.url.path.startsWith('/admin')"],
                "actions": [{"type": "deny"}],
            },
            {
                "expressions": ["req.method == 'DELETE'"],
                "actions": [{"type": "deny", "config": {"status_code": 405}}],
            },
        ]
    }
    agent = serve(policy_agents, tmp_path, upstream, as_json(doc), ".json")
    denied = request(edge, agent.url + "/admin/users")
    assert denied.status == 403
    assert denied.body == b"" and denied.header("content-length") == "0"
    assert upstream.count("/admin/users") == 0
    assert request(edge, agent.url + "/public", "-X", "DELETE").status == 405
    ok = request(edge, agent.url + "/public/admin")  # the expression looks at the path's start only
    assert ok.status == 200 and ok.json()["path"] == "/public/admin"


def test_replies_made_by_the_policy_keep_the_connection_usable(
    edge: EdgeProc, policy_agents: Agents, upstream: Upstream, tmp_path: Path
) -> None:
    """A browser sends its next request on the same connection after a 401/403: the edge must have
    consumed (or refused) the denied request's body and stay in sync."""
    policy = """\
on_http_request:
  - expressions: ["req.url.path == '/denied'"]
    actions:
      - type: deny
  - expressions: ["req.url.path == '/local'"]
    actions:
      - type: custom-response
        config:
          body: local answer
"""
    agent = serve(policy_agents, tmp_path, upstream, policy)
    host = urlsplit(agent.url).hostname
    # --next resets the options, so each transfer repeats them; curl still shares one connection pool.
    common = ["--http1.1", "--max-time", "30", "--cacert", str(edge.ca), "-o", "/dev/null"]
    common += ["--resolve", f"{host}:{edge.https_port}:127.0.0.1", "-w", "%{http_code} %{num_connects}\\n"]
    cmd = ["curl", "-sS", *common, "--data-binary", "x" * 5000, agent.url + "/denied"]  # a refused body
    for path in ("/after-deny", "/local", "/after-local"):
        cmd += ["--next", *common, agent.url + path]
    res = subprocess.run(cmd, capture_output=True, timeout=40)
    assert res.returncode == 0, res.stderr
    # One connection for all four: num_connects is 1 for the first transfer, then 0 (reused).
    assert res.stdout.decode().split("\n")[:4] == ["403 1", "200 0", "200 0", "200 0"], res.stdout
    assert upstream.count("/after-deny") == upstream.count("/after-local") == 1
    assert upstream.count("/denied") == upstream.count("/local") == 0


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("you asked for ${req.url.path}", "text/plain; charset=utf-8"),
        ('{"path": "${req.url.path}", "ok": false}', "application/json"),
        ("<h1>gone: ${req.url.path}</h1>", "text/html; charset=utf-8"),
    ],
    ids=["text", "json", "html"],
)
def test_custom_response_status_body_and_inferred_content_type(
    edge: EdgeProc,
    policy_agents: Agents,
    upstream: Upstream,
    tmp_path: Path,
    body: str,
    content_type: str,
) -> None:
    doc = {
        "on_http_request": [
            {
                "expressions": ["req.url.path.startsWith('/maintenance')"],
                "actions": [
                    {
                        "type": "custom-response",
                        "config": {"status_code": 503, "body": body, "headers": {"x-reason": "upkeep"}},
                    }
                ],
            }
        ]
    }
    agent = serve(policy_agents, tmp_path, upstream, as_json(doc), ".json")
    res = request(edge, agent.url + "/maintenance/page")
    assert res.status == 503
    assert res.header("content-type") == content_type
    assert res.header("x-reason") == "upkeep"
    assert res.body.decode() == body.replace("${req.url.path}", "/maintenance/page")
    assert upstream.count("/maintenance/page") == 0
    assert request(edge, agent.url + "/other").status == 200


@pytest.mark.parametrize("status", [None, 301])
def test_redirect_with_regex_groups(
    edge: EdgeProc, policy_agents: Agents, upstream: Upstream, tmp_path: Path, status: int | None
) -> None:
    config = f"status_code: {status}" if status else ""
    policy = f"""\
on_http_request:
  - actions:
      - type: redirect
        config:
          from: "/old/([a-z]+)/([0-9]+)"
          to: "/new/$2/$1"
          {config}
"""
    agent = serve(policy_agents, tmp_path, upstream, policy)
    res = request(edge, agent.url + "/old/books/42?page=3")
    assert res.status == (status or 302)
    # The regex runs over the whole URL; only the matched part changes, the query stays.
    assert res.header("location") == agent.url + "/new/42/books?page=3"
    assert upstream.count("/old/books/42") == 0
    # No match: the URL is unchanged, so the request goes upstream.
    assert request(edge, agent.url + "/old/BOOKS/x").json()["path"] == "/old/BOOKS/x"


def test_url_rewrite_upstream_sees_the_new_path(
    edge: EdgeProc, policy_agents: Agents, upstream: Upstream, tmp_path: Path
) -> None:
    policy = """\
on_http_request:
  - expressions: ["req.url.path.startsWith('/api/v1/')"]
    actions:
      - type: url-rewrite
        config:
          from: "/api/v1/([^?]*)"
          to: "/v2/$1"
"""
    agent = serve(policy_agents, tmp_path, upstream, policy)
    res = request(edge, agent.url + "/api/v1/items/7?sort=asc")
    assert res.status == 200
    assert res.header("location") is None  # a rewrite is invisible to the client
    assert res.json()["path"] == "/v2/items/7?sort=asc"
    assert request(edge, agent.url + "/api/v3/items").json()["path"] == "/api/v3/items"


# ---- headers ----------------------------------------------------------------------------------------
def test_add_and_remove_headers_on_request_and_response(
    edge: EdgeProc, policy_agents: Agents, upstream: Upstream, tmp_path: Path
) -> None:
    policy = """\
on_http_request:
  - actions:
      - type: add-headers
        config:
          headers:
            X-Added: "by policy for ${req.method} ${req.url.path}"
            x-client-ip: "${conn.client_ip}"
            x-tls: "${conn.tls.version} ${conn.tls.sni}"
      - type: remove-headers
        config:
          headers: [x-secret, X-Other-Secret]
on_http_response:
  - actions:
      - type: add-headers
        config:
          headers:
            x-served-by: hatchway-policy
            x-status: "${res.status_code}"
      - type: remove-headers
        config:
          headers: [x-upstream]
"""
    agent = serve(policy_agents, tmp_path, upstream, policy)
    res = request(
        edge,
        agent.url + "/hdr",
        "-H",
        "X-Secret: do-not-forward",
        "-H",
        "x-other-secret: nor-this",
        "-H",
        "X-Kept: yes",
    )
    assert res.status == 200
    seen = res.seen()
    assert seen["x-added"] == ["by policy for GET /hdr"]
    assert seen["x-client-ip"] == ["127.0.0.1"]
    assert agent.url.startswith("https://")  # conn.tls.* of the client's connection to the edge
    assert seen["x-tls"] == [f"TLSv1.3 {agent.host}"]
    assert "x-secret" not in seen and "x-other-secret" not in seen
    assert seen["x-kept"] == ["yes"]
    # Response side: what the client sees.
    assert res.header("x-served-by") == "hatchway-policy"
    assert res.header("x-status") == "200"
    assert "x-upstream" not in res.headers


# ---- rate-limit, restrict-ips, basic-auth, user-agent-filter -------------------------------------------
def test_rate_limit_lets_capacity_through_then_429(
    edge: EdgeProc, policy_agents: Agents, upstream: Upstream, tmp_path: Path
) -> None:
    policy = """\
on_http_request:
  - actions:
      - type: rate-limit
        config:
          name: per-client
          algorithm: sliding_window
          capacity: 5
          rate: 60s
          bucket_key:
            - conn.client_ip
"""
    agent = serve(policy_agents, tmp_path, upstream, policy)
    results = [request(edge, agent.url + f"/limited/{i}") for i in range(8)]
    statuses = [r.status for r in results]
    assert statuses == [200] * 5 + [429] * 3, statuses
    for refused in results[5:]:
        retry = refused.header("retry-after")
        # Whole seconds. The sliding window is estimated from two fixed 60 s windows, weighting the
        # previous one by how much of it is still inside; five requests just before a window ends keep
        # weighing on the next one, so the wait may pass 60 s, up to 60 + 60 * (1 - 4/5) = 72 s.
        assert retry is not None and retry.isdigit() and 1 <= int(retry) <= 72, retry
    assert sum(upstream.count(f"/limited/{i}") for i in range(8)) == 5


@pytest.mark.parametrize(
    ("config", "allowed"),
    [
        ("deny: [127.0.0.1/32]", False),
        ("allow: [127.0.0.0/8]", True),
        ("allow: [10.0.0.0/8, '192.0.2.0/24']", False),
        ("allow: [0.0.0.0/0]\n          deny: [127.0.0.0/24]", False),
    ],
    ids=["deny-loopback", "allow-loopback", "allow-others", "allow-all-deny-loopback"],
)
def test_restrict_ips(
    edge: EdgeProc, policy_agents: Agents, upstream: Upstream, tmp_path: Path, config: str, allowed: bool
) -> None:
    policy = f"""\
on_http_request:
  - actions:
      - type: restrict-ips
        config:
          {config}
"""
    agent = serve(policy_agents, tmp_path, upstream, policy)
    path = f"/ip/{agent.host}"  # a path of this case's own, for the upstream's hit count
    res = request(edge, agent.url + path)
    if allowed:
        assert res.status == 200 and res.json()["path"] == path
    else:
        assert res.status == 403
        assert res.header("ngrok-error-code") == "ERR_NGROK_3205"
        assert b"127.0.0.1" in res.body  # the error page names the refused address
    assert upstream.count(path) == int(allowed)


def test_basic_auth(edge: EdgeProc, policy_agents: Agents, upstream: Upstream, tmp_path: Path) -> None:
    policy = """\
on_http_request:
  - actions:
      - type: basic-auth
        config:
          realm: staff only
          credentials:
            - "alice:correct-horse-battery"
            - "bob:another:password"
"""
    agent = serve(policy_agents, tmp_path, upstream, policy)
    anonymous = request(edge, agent.url + "/private")
    assert anonymous.status == 401
    assert anonymous.header("www-authenticate") == 'Basic realm="staff only"'
    assert request(edge, agent.url + "/private", "-u", "alice:wrong-password").status == 401
    assert request(edge, agent.url + "/private", "-u", "mallory:correct-horse-battery").status == 401
    assert upstream.count("/private") == 0
    ok = request(edge, agent.url + "/private", "-u", "alice:correct-horse-battery")
    assert ok.status == 200
    token = base64.b64encode(b"alice:correct-horse-battery").decode()
    assert ok.seen()["authorization"] == [f"Basic {token}"]  # passed upstream unchanged, as ngrok does
    # The first ':' splits: bob's password itself holds one.
    assert request(edge, agent.url + "/private", "-u", "bob:another:password").status == 200


def test_user_agent_filter(edge: EdgeProc, policy_agents: Agents, upstream: Upstream, tmp_path: Path) -> None:
    policy = """\
on_http_request:
  - actions:
      - type: user-agent-filter
        config:
          deny: ["(?i)bot", "^python-requests/"]
          allow: ["^GoodBot/"]
"""
    agent = serve(policy_agents, tmp_path, upstream, policy)
    for ua in ("EvilBot/2.0", "python-requests/2.31", ""):
        res = request(edge, agent.url + "/ua", "-A", ua)
        assert res.status == 403, ua
        assert res.header("ngrok-error-code") == "ERR_NGROK_3211"
    assert request(edge, agent.url + "/ua", "-A", "curl/8.0").status == 200
    assert request(edge, agent.url + "/ua", "-A", "GoodBot/1.0").status == 200  # allow wins over deny


def test_deny_by_user_agent_expression(
    edge: EdgeProc, policy_agents: Agents, upstream: Upstream, tmp_path: Path
) -> None:
    # ngrok's own spelling of a user agent filter: deny with an expression.
    policy = """\
on_http_request:
  - expressions:
      - "req.user_agent.matches('(?i)crawler')"
    actions:
      - type: custom-response
        config:
          status_code: 403
          body: no crawlers
"""
    agent = serve(policy_agents, tmp_path, upstream, policy)
    res = request(edge, agent.url + "/ua", "-A", "SomeCrawler/1.0")
    assert (res.status, res.body) == (403, b"no crawlers")
    assert request(edge, agent.url + "/ua", "-A", "curl/8.0").status == 200


# ---- compress-response ------------------------------------------------------------------------------
def _decode(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        return bytes(brotli.decompress(data))
    if coding == "zstd":
        # A streamed zstd frame need not state its size: decode it as a stream.
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    raise AssertionError(coding)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip;q=0.5, br;q=0.9", "br"),
        ("identity", None),
        (None, None),
    ],
    ids=["gzip", "br", "zstd", "q-values", "identity", "no-accept-encoding"],
)
def test_compress_response(
    edge: EdgeProc,
    policy_agents: Agents,
    upstream: Upstream,
    tmp_path: Path,
    accept: str | None,
    expected: str | None,
) -> None:
    policy = """\
on_http_response:
  - actions:
      - type: compress-response
        config:
          algorithms: [gzip, br, zstd]
"""
    agent = serve(policy_agents, tmp_path, upstream, policy)
    args = ["-H", f"Accept-Encoding: {accept}"] if accept else ["-H", "Accept-Encoding:"]
    res = request(edge, agent.url + "/big", *args)
    assert res.status == 200
    assert res.header("content-encoding") == expected
    if expected is None:
        assert res.body == BIG_BODY
        assert res.header("content-length") == str(len(BIG_BODY))
        return
    assert len(res.body) < len(BIG_BODY) // 4  # really compressed
    assert _decode(expected, res.body) == BIG_BODY
    assert "accept-encoding" in (res.header("vary") or "").lower()
    assert res.header("content-length") is None


def test_compress_response_of_a_chunked_upstream_answer(
    edge: EdgeProc, policy_agents: Agents, upstream: Upstream, tmp_path: Path
) -> None:
    policy = "on_http_response:\n  - actions:\n      - type: compress-response\n"
    agent = serve(policy_agents, tmp_path, upstream, policy)
    for coding in ("gzip", "zstd", "br"):
        res = request(edge, agent.url + "/chunked", "-H", f"Accept-Encoding: {coding}")
        assert res.status == 200 and res.header("content-encoding") == coding
        assert _decode(coding, res.body) == BIG_BODY
    plain = request(edge, agent.url + "/chunked", "-H", "Accept-Encoding:")
    assert plain.header("content-encoding") is None and plain.body == BIG_BODY


def test_compress_response_on_a_reply_made_by_the_edge(
    edge: EdgeProc, policy_agents: Agents, upstream: Upstream, tmp_path: Path
) -> None:
    """A request-phase custom-response still passes through on_http_response (ngrok's order), so
    compress-response sees it too: whatever it decides, the body must be what Content-Encoding says."""
    text = "maintenance window; please come back later. " * 40
    policy = f"""\
on_http_request:
  - expressions: ["req.url.path == '/local'"]
    actions:
      - type: custom-response
        config:
          body: "{text}"
on_http_response:
  - actions:
      - type: compress-response
"""
    agent = serve(policy_agents, tmp_path, upstream, policy)
    res = request(edge, agent.url + "/local", "-H", "Accept-Encoding: gzip")
    assert res.status == 200
    coding = res.header("content-encoding")
    assert coding in (None, "gzip"), coding
    body = res.body
    if coding:
        try:
            body = _decode(coding, res.body)
        except Exception as exc:  # the head says compressed, the bytes say otherwise
            raise AssertionError(f"Content-Encoding: {coding}, but the body is {res.body[:24]!r}...") from exc
    assert body == text.encode()
    if res.header("content-length") is not None:
        assert int(res.header("content-length") or -1) == len(res.body)
    assert upstream.count("/local") == 0


# ---- circuit-breaker -----------------------------------------------------------------------------------
def test_circuit_breaker_opens_then_closes(
    edge: EdgeProc, policy_agents: Agents, upstream: Upstream, tmp_path: Path
) -> None:
    policy = """\
on_http_request:
  - actions:
      - type: circuit-breaker
        config:
          error_threshold: 0.5
          volume_threshold: 4
          window_duration: 10s
          tripped_duration: 1s
"""
    agent = serve(policy_agents, tmp_path, upstream, policy)
    failing = "/status/500"
    before = upstream.count(failing)
    for _ in range(4):
        assert request(edge, agent.url + failing).status == 500
    assert upstream.count(failing) == before + 4
    # Open: the edge answers 503 itself and the upstream sees nothing.
    opened_at = time.monotonic()
    for _ in range(3):
        res = request(edge, agent.url + failing)
        assert res.status == 503
        assert res.header("ngrok-error-code") == "ERR_NGROK_3202"
    assert upstream.count(failing) == before + 4
    # After tripped_duration a probe goes through; a success closes the breaker again.
    wait_for(
        lambda: request(edge, agent.url + "/healthy").status == 200, within=10, what="the breaker to close"
    )
    assert time.monotonic() - opened_at >= 0.9  # not before tripped_duration (1s), allowing clock slack
    for _ in range(3):
        assert request(edge, agent.url + "/healthy").status == 200
    # Closed with a fresh window: a single failure reaches the upstream again.
    assert request(edge, agent.url + failing).status == 500
    assert upstream.count(failing) == before + 5


# ---- verify-webhook -----------------------------------------------------------------------------------
GITHUB_SECRET = "gh-webhook-secret-1"
STRIPE_SECRET = "whsec_test_0123456789abcdef"
WEBHOOK_POLICY = f"""\
on_http_request:
  - expressions: ["req.url.path == '/hooks/github'"]
    actions:
      - type: verify-webhook
        config:
          provider: github
          secret: {GITHUB_SECRET}
  - expressions: ["req.url.path == '/hooks/stripe'"]
    actions:
      - type: verify-webhook
        config:
          provider: stripe
          secret: {STRIPE_SECRET}
"""
PAYLOAD = b'{"action":"opened","number":17,"note":"caf\xc3\xa9"}'


def _post(edge: EdgeProc, url: str, body: bytes, *headers: str) -> Response:
    args = ["-X", "POST", "--data-binary", "@-", "-H", "Content-Type: application/json"]
    for h in headers:
        args += ["-H", h]
    parts = urlsplit(url)
    port = parts.port or 443
    cmd = ["curl", "-sS", "--http1.1", "-i", "-H", "Expect:", "--max-time", "30"]
    cmd += ["--resolve", f"{parts.hostname}:{port}:127.0.0.1", "--cacert", str(edge.ca), *args, url]
    res = subprocess.run(cmd, input=body, capture_output=True, timeout=35)
    assert res.returncode == 0, res.stderr
    head, _, rest = res.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdrs: dict[str, list[str]] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs.setdefault(k.strip().lower(), []).append(v.strip())
    return Response(int(lines[0].split()[1]), hdrs, rest)


def _github_signature(body: bytes, secret: str = GITHUB_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _stripe_signature(body: bytes, ts: int, secret: str = STRIPE_SECRET) -> str:
    signed = f"{ts}.".encode() + body
    return f"t={ts},v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def test_verify_webhook_github(
    edge: EdgeProc, policy_agents: Agents, upstream: Upstream, tmp_path: Path
) -> None:
    agent = serve(policy_agents, tmp_path, upstream, WEBHOOK_POLICY)
    url = agent.url + "/hooks/github"
    good = _post(edge, url, PAYLOAD, f"X-Hub-Signature-256: {_github_signature(PAYLOAD)}")
    assert good.status == 200
    assert good.json()["body_len"] == len(PAYLOAD)  # the body still reaches the upstream whole
    tampered = PAYLOAD.replace(b"17", b"18")
    for body, signature in (
        (tampered, _github_signature(PAYLOAD)),  # body changed after signing
        (PAYLOAD, _github_signature(PAYLOAD, "another-secret")),
        (PAYLOAD, "sha256=" + "0" * 64),
    ):
        bad = _post(edge, url, body, f"X-Hub-Signature-256: {signature}")
        assert bad.status == 403
        assert bad.header("ngrok-error-code") == "ERR_NGROK_3204"
    missing = _post(edge, url, PAYLOAD)
    assert missing.status == 403 and missing.header("ngrok-error-code") == "ERR_NGROK_3204"
    assert upstream.count("/hooks/github") == 1


def test_verify_webhook_stripe(
    edge: EdgeProc, policy_agents: Agents, upstream: Upstream, tmp_path: Path
) -> None:
    agent = serve(policy_agents, tmp_path, upstream, WEBHOOK_POLICY)
    url = agent.url + "/hooks/stripe"
    now = int(time.time())
    good = _post(edge, url, PAYLOAD, f"Stripe-Signature: {_stripe_signature(PAYLOAD, now)}")
    assert good.status == 200 and good.json()["body_len"] == len(PAYLOAD)
    # Secret rotation: Stripe may send several v1 signatures; one good one is enough.
    rotated = f"t={now},v1={'ab' * 32}," + _stripe_signature(PAYLOAD, now).split(",", 1)[1]
    assert _post(edge, url, PAYLOAD, f"Stripe-Signature: {rotated}").status == 200
    for body, signature in (
        (PAYLOAD + b" ", _stripe_signature(PAYLOAD, now)),  # tampered body
        (PAYLOAD, _stripe_signature(PAYLOAD, now).replace(f"t={now}", f"t={now + 1}")),  # tampered time
        (PAYLOAD, _stripe_signature(PAYLOAD, now - 3600)),  # correctly signed, an hour old: a replay
        (PAYLOAD, _stripe_signature(PAYLOAD, now, "whsec_wrong")),
    ):
        bad = _post(edge, url, body, f"Stripe-Signature: {signature}")
        assert bad.status == 403, signature
        assert bad.header("ngrok-error-code") == "ERR_NGROK_3204"
    assert upstream.count("/hooks/stripe") == 2
    # Paths without a verify-webhook rule pass unsigned.
    assert _post(edge, agent.url + "/hooks/other", PAYLOAD).status == 200


# ---- set-vars, log, on_http_response ------------------------------------------------------------------
def test_set_vars_feed_later_rules_and_log_reaches_the_edge_log(
    edge: EdgeProc, policy_agents: Agents, upstream: Upstream, tmp_path: Path
) -> None:
    policy = """\
on_http_request:
  - actions:
      - type: set-vars
        config:
          vars:
            - tier: "${req.url.path.startsWith('/gold') ? 'gold' : 'basic'}"
            - label: "${vars.tier}-customer"
  - name: basic customers may not use /gold-only
    expressions: ["vars.tier == 'basic' && req.url.path == '/basic/gold-only'"]
    actions:
      - type: custom-response
        config:
          status_code: 402
          body: "upgrade from ${vars.tier}"
  - expressions: ["vars.tier == 'gold'"]
    actions:
      - type: add-headers
        config:
          headers:
            x-tier: "${vars.label}"
      - type: log
        config:
          metadata:
            tier: "${vars.tier}"
            path: "${req.url.path}"
            fixed: 42
"""
    agent = serve(policy_agents, tmp_path, upstream, policy)
    gold = request(edge, agent.url + "/gold/area")
    assert gold.status == 200
    assert gold.seen()["x-tier"] == ["gold-customer"]
    basic = request(edge, agent.url + "/basic/page")
    assert basic.status == 200 and "x-tier" not in basic.seen()
    refused = request(edge, agent.url + "/basic/gold-only")
    assert (refused.status, refused.body) == (402, b"upgrade from basic")

    log = edge.data_dir / "edge.log"
    expected = json.dumps({"fixed": 42, "path": "/gold/area", "tier": "gold"}, sort_keys=True)

    def logged() -> list[str]:
        return [
            line
            for line in log.read_text(errors="replace").splitlines()
            if "traffic policy log" in line and agent.url in line
        ]

    lines = wait_for(logged, within=10, what="the log action's line in the edge log")
    assert isinstance(lines, list) and len(lines) == 1, lines  # only the gold request logs
    assert expected in lines[0], lines[0]


def test_on_http_response_rules_on_status_code(
    edge: EdgeProc, policy_agents: Agents, upstream: Upstream, tmp_path: Path
) -> None:
    policy = """\
on_http_response:
  - expressions: ["res.status_code == 404"]
    actions:
      - type: custom-response
        config:
          status_code: 404
          body: '{"error": "no such page", "path": "${req.url.path}"}'
  - expressions: ["res.status_code >= 500"]
    actions:
      - type: add-headers
        config:
          headers:
            x-upstream-failed: "status ${res.status_code}"
"""
    agent = serve(policy_agents, tmp_path, upstream, policy)
    missing = request(edge, agent.url + "/status/404")
    assert missing.status == 404
    assert missing.header("content-type") == "application/json"
    assert json.loads(missing.body) == {"error": "no such page", "path": "/status/404"}
    failed = request(edge, agent.url + "/status/502")
    assert failed.status == 502
    assert failed.header("x-upstream-failed") == "status 502"
    assert failed.body == b"upstream said 502\n"  # only a header was added; the upstream's body stays
    ok = request(edge, agent.url + "/status/200")
    assert ok.status == 200 and ok.body == b"upstream said 200\n"
    assert ok.header("x-upstream-failed") is None


# ---- policies the agent refuses -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "path"),
    [
        (
            "on_http_request:\n  - expressions: ['req.url.path ==']\n    actions: [{type: deny}]\n",
            "on_http_request[0].expressions[0]",
        ),
        (
            "on_http_request:\n  - actions:\n      - type: deny\n      - type: teleport\n",
            "on_http_request[0].actions[1].type",
        ),
        (
            "on_http_request:\n  - actions:\n      - type: deny\n        config: {status_code: forbidden}\n",
            "on_http_request[0].actions[0].config.status_code",
        ),
        (
            '{"on_http_request": [{"actions": [{"type": "custom-response", "config": {"status": 200}}]}]}',
            "on_http_request[0].actions[0].config.status",
        ),
        (
            "on_http_response:\n  - actions:\n      - type: rate-limit\n        config: {}\n",
            "on_http_response[0].actions[0].type",
        ),
    ],
    ids=["bad-expression", "unknown-action", "wrong-config-type", "unknown-config-field", "wrong-phase"],
)
def test_broken_policy_is_refused_with_its_path(
    edge: EdgeProc, upstream: Upstream, tmp_path: Path, policy: str, path: str
) -> None:
    file = tmp_path / "broken-policy.yml"
    file.write_text(policy)
    proc = subprocess.run(
        [HATCHWAY, "http", str(upstream.port), "--traffic-policy-file", str(file)],
        capture_output=True,
        timeout=30,
        env=edge.env(),
        stdin=subprocess.DEVNULL,
    )
    err = proc.stderr.decode()
    assert proc.returncode != 0, (proc.stdout, err)
    # The whole path, not a longer one that starts with it (config.status vs config.status_code).
    assert re.search(re.escape(path) + r"(?![\w.\[])", err), err
