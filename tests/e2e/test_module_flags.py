"""``hatchway http`` module flags through a real edge, as a user sees them with curl.

Each test starts ``hatchway edge`` and ``hatchway http`` with one module flag and checks what a client
notices: the status, the ``ngrok-error-code`` header, the body. Also: a broken ``--traffic-policy-file``
stops the agent before it connects (exit 1, the policy path printed), and a module the edge does not
enforce (``--oauth``) is refused with the edge's message and code rather than published unprotected.
Must not: sleep, or wait without a bound (every process and curl call has a timeout).
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import subprocess
from pathlib import Path

from e2e_support import HATCHWAY, Agents, EdgeProc, curl

RUN_TIMEOUT = 30


def _status(res: subprocess.CompletedProcess[bytes]) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of ``curl -i`` output (the last response, for HTTP/1.1)."""
    assert res.returncode == 0, res.stderr
    head, _, body = res.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _run_agent(edge: EdgeProc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HATCHWAY, "http", *args, "--log", "stdout"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=edge.env(),
        stdin=subprocess.DEVNULL,
    )


def test_basic_auth_needs_valid_credentials(edge_proc: EdgeProc, agents: Agents, echo_app: int) -> None:
    agent = agents.start(
        "http", str(echo_app), "--basic-auth", "alice:correct-horse", "--basic-auth", "bob:battery-staple"
    )
    status, headers, _ = _status(curl(edge_proc, agent.url + "/", "-i"))
    assert status == 401
    assert headers["www-authenticate"].lower().startswith("basic realm=")
    for user in ("alice:correct-horse", "bob:battery-staple"):
        status, _, body = _status(curl(edge_proc, agent.url + "/in", "-i", "-u", user))
        assert status == 200, user
        assert json.loads(body)["path"] == "/in"
    status, _, _ = _status(curl(edge_proc, agent.url + "/", "-i", "-u", "alice:wrong-password"))
    assert status == 401


def test_cidr_deny_refuses_the_client(edge_proc: EdgeProc, agents: Agents, echo_app: int) -> None:
    agent = agents.start("http", str(echo_app), "--cidr-deny", "127.0.0.0/8")
    status, headers, _ = _status(curl(edge_proc, agent.url + "/", "-i"))
    assert status == 403
    assert headers["ngrok-error-code"] == "ERR_NGROK_3205"


def test_cidr_allow_without_the_client_refuses_it(edge_proc: EdgeProc, agents: Agents, echo_app: int) -> None:
    agent = agents.start("http", str(echo_app), "--cidr-allow", "10.0.0.0/8")
    status, headers, _ = _status(curl(edge_proc, agent.url + "/", "-i"))
    assert status == 403
    assert headers["ngrok-error-code"] == "ERR_NGROK_3205"
    allowed = agents.start("http", str(echo_app), "--cidr-allow", "10.0.0.0/8,127.0.0.0/8")
    status, _, _ = _status(curl(edge_proc, allowed.url + "/", "-i"))
    assert status == 200


def test_compression_gzips_for_clients_that_ask(edge_proc: EdgeProc, agents: Agents, echo_app: int) -> None:
    agent = agents.start("http", str(echo_app), "--compression")
    long_path = "/" + "x" * 2000  # echoed back, so the body is worth compressing
    res = curl(edge_proc, agent.url + long_path, "-i", "-H", "Accept-Encoding: gzip")
    status, headers, body = _status(res)
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(body))["path"] == long_path
    # curl --compressed decodes it again: the client sees the original body.
    decoded = curl(edge_proc, agent.url + long_path, "--compressed")
    assert json.loads(decoded.stdout)["path"] == long_path
    # A client that asks for nothing gets the identity body.
    status, headers, body = _status(curl(edge_proc, agent.url + "/plain", "-i", "-H", "Accept-Encoding:"))
    assert "content-encoding" not in headers
    assert json.loads(body)["path"] == "/plain"


def test_ua_filter_deny_refuses_curl(edge_proc: EdgeProc, agents: Agents, echo_app: int) -> None:
    agent = agents.start("http", str(echo_app), "--ua-filter-deny", "curl/.*")
    status, headers, _ = _status(curl(edge_proc, agent.url + "/", "-i"))
    assert status == 403
    assert headers["ngrok-error-code"] == "ERR_NGROK_3211"
    status, _, _ = _status(curl(edge_proc, agent.url + "/", "-i", "-A", "Mozilla/5.0 (X11)"))
    assert status == 200


def test_verify_webhook_github(edge_proc: EdgeProc, agents: Agents, echo_app: int) -> None:
    secret = "it's-a-secret-to-everybody"
    agent = agents.start(
        "http", str(echo_app), "--verify-webhook", "github", "--verify-webhook-secret", secret
    )
    payload = b'{"action": "opened", "number": 1}'
    signature = "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()

    def post(body: bytes, sig: str) -> tuple[int, dict[str, str], bytes]:
        args = ["-i", "-X", "POST", "--data-binary", body.decode(), "-H", "Content-Type: application/json"]
        return _status(curl(edge_proc, agent.url + "/hook", *args, "-H", f"X-Hub-Signature-256: {sig}"))

    status, _, body = post(payload, signature)
    assert status == 200
    assert json.loads(body)["body_len"] == len(payload)  # the upstream got the whole body
    status, headers, _ = post(payload.replace(b"opened", b"closed"), signature)  # tampered
    assert status == 403
    assert headers["ngrok-error-code"] == "ERR_NGROK_3204"


def test_broken_traffic_policy_file_stops_before_connecting(
    edge_proc: EdgeProc, echo_app: int, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yml"
    policy.write_text(
        "on_http_request:\n"
        "  - actions:\n"
        "      - type: add-headers\n"
        "        config: {headers: {x-ok: yes}}\n"
        "  - actions:\n"
        "      - type: custom-response\n"
        "        config: {status_code: 9999}\n"
    )
    res = _run_agent(edge_proc, str(echo_app), "--traffic-policy-file", str(policy))
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert (
        "ERROR: --traffic-policy-file: on_http_request[1].actions[0].config.status_code: "
        "must be between 100 and 999" in res.stderr
    )
    assert "started tunnel" not in res.stdout  # nothing went online


def test_working_traffic_policy_file_is_applied(
    edge_proc: EdgeProc, agents: Agents, echo_app: int, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yml"
    policy.write_text(
        "on_http_request:\n"
        "  - expressions: [\"req.url.path == '/teapot'\"]\n"
        "    actions: [{type: custom-response, config: {status_code: 418, body: short and stout}}]\n"
    )
    agent = agents.start("http", str(echo_app), "--traffic-policy-file", str(policy))
    status, _, body = _status(curl(edge_proc, agent.url + "/teapot", "-i"))
    assert (status, body) == (418, b"short and stout")
    status, _, _ = _status(curl(edge_proc, agent.url + "/other", "-i"))
    assert status == 200


def test_oauth_is_refused_by_the_edge_with_its_code(edge_proc: EdgeProc, echo_app: int) -> None:
    res = _run_agent(edge_proc, str(echo_app), "--oauth", "google", "--oauth-allow-domain", "example.com")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    [line] = [line for line in res.stderr.splitlines() if line.startswith("ERROR: ")]
    assert "OAuth" in line and line.endswith("[ERR_NGROK_9027]"), line


def test_bad_module_values_are_refused_locally(edge_proc: EdgeProc, echo_app: int) -> None:
    res = _run_agent(
        edge_proc,
        str(echo_app),
        "--cidr-allow",
        "10.0.0.0/8,not-a-cidr",
        "--circuit-breaker",
        "1.5",
        "--verify-webhook",
        "gitbub",
        "--verify-webhook-secret",
        "s",
        "--basic-auth",
        "user:short",
    )
    assert res.returncode == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("ERROR: ")]
    assert [e.split(":")[1].strip() for e in errors] == [
        "--basic-auth[0]",
        "--cidr-allow[1]",
        "--circuit-breaker",
        "--verify-webhook",
    ]
    assert "started tunnel" not in res.stdout
