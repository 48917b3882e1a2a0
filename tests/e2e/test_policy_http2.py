"""Policies hold over HTTP/2 as they do over HTTP/1.1: the protocol a client picks is no way around them.

One agent (``--scheme https``) with ``--basic-auth``, ``--compression`` and a policy file (a deny rule, a
request header added, a response header changed, a custom-response, a webhook check that must read the
body) is reached with ``curl --http2`` (ALPN h2) and ``--http1.1``; every case must give the same answer
on both. Loopback only; every curl call is bounded.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import subprocess
from pathlib import Path

import pytest

from e2e_support import Agents, EdgeProc, curl

pytestmark = pytest.mark.timeout(90)

POLICY = """\
on_http_request:
  - expressions: ["req.url.path.startsWith('/blocked')"]
    actions: [{type: deny, config: {status_code: 403}}]
  - expressions: ["req.url.path == '/made-here'"]
    actions: [{type: custom-response, config: {status_code: 202, body: "made for ${req.url.path}"}}]
  - expressions: ["req.url.path == '/hook'"]
    actions: [{type: verify-webhook, config: {provider: github, secret: hook-secret}}]
  - actions:
      - type: add-headers
        config:
          headers: {x-from-policy: "${req.method}", x-tls: "${conn.tls.sni} ${conn.tls.negotiated_alpn}"}
on_http_response:
  - actions: [{type: add-headers, config: {headers: {x-status: "${string(res.status_code)}"}}}]
"""


def _parse(res: subprocess.CompletedProcess[bytes]) -> tuple[int, dict[str, str], bytes]:
    assert res.returncode == 0, res.stderr
    head, _, body = res.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("http", ["2", "1.1"])
def test_policy_and_modules_over_both_protocols(
    edge_proc: EdgeProc, agents: Agents, echo_app: int, tmp_path: Path, http: str
) -> None:
    policy = tmp_path / "policy.yml"
    policy.write_text(POLICY)
    agent = agents.start(
        "http", str(echo_app), "--scheme", "https", "--basic-auth", "user:long-password",
        "--compression", "--traffic-policy-file", str(policy),
    )  # fmt: skip
    auth = ("-u", "user:long-password")

    def get(path: str, *args: str) -> tuple[int, dict[str, str], bytes]:
        res = curl(edge_proc, agent.url + path, "-i", *args, http=http)
        version = res.stdout.split(b" ", 1)[0]
        assert version == (b"HTTP/2" if http == "2" else b"HTTP/1.1")
        return _parse(res)

    assert get("/anything")[0] == 401  # basic auth first, before any of the user's rules
    assert get("/blocked", *auth)[0] == 403
    status, headers, body = get("/made-here", *auth)
    assert (status, body) == (202, b"made for /made-here")
    status, headers, body = get("/seen", *auth, "-H", "Accept-Encoding: gzip")
    assert status == 200 and headers["content-encoding"] == "gzip" and headers["x-status"] == "200"
    seen = json.loads(gzip.decompress(body))
    sent = {k.lower(): v for k, v in seen["headers"]}
    assert sent["x-from-policy"] == "GET"
    assert sent["x-tls"] == f"{agent.host} {'h2' if http == '2' else 'http/1.1'}"  # conn.tls.* of this client
    payload = b'{"action": "opened"}'
    good = "sha256=" + hmac.new(b"hook-secret", payload, hashlib.sha256).hexdigest()
    hook = ("-X", "POST", "--data-binary", payload.decode(), "-H", "Content-Type: application/json")
    assert get("/hook", *auth, *hook, "-H", f"X-Hub-Signature-256: {good}")[0] == 200
    status, headers, _ = get("/hook", *auth, *hook, "-H", "X-Hub-Signature-256: sha256=" + "0" * 64)
    assert status == 403 and headers["ngrok-error-code"] == "ERR_NGROK_3204"
