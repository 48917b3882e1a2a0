"""Agent configuration files as a user writes them: ``hatchway start`` and ``hatchway config check``.

Real ``hatchway edge`` and agent processes on loopback, curl as the client. Covers a version 2 file
(``tunnels:``) started by name and with ``--all``, a version 3 file (``agent:`` + ``endpoints:``), two
``--config`` files merged (the later file's tunnel wins whole), ``config check`` listing every error with
its field path, an unknown name at ``start``, and ``server_addr``/``root_cas``/``authtoken`` read from the
file when no dev edge can be discovered.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from e2e_support import HATCHWAY, Agents, EdgeProc, curl


def _echo_path(edge: EdgeProc, url: str, path: str = "/", *args: str) -> str:
    """GET ``url + path`` through the edge; the echo app's idea of the path (asserts a 200)."""
    res = curl(edge, url + path, "-i", *args)
    assert res.returncode == 0, res.stderr
    head, _, body = res.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return str(json.loads(body)["path"])


def _is_offline(edge: EdgeProc, url: str) -> bool:
    head = curl(edge, url, "-i").stdout.partition(b"\r\n\r\n")[0]
    return head.startswith(b"HTTP/1.1 404") and b"ngrok-error-code: ERR_NGROK_3200" in head


def _urls(agent_lines: list[dict[str, object]]) -> dict[str, str]:
    """name -> url from the ``started tunnel`` log lines."""
    return {str(line["name"]): str(line["url"]) for line in agent_lines if "url" in line}


def _v2_file(tmp_path: Path, echo_app: int, extra: str = "") -> Path:
    cfg = tmp_path / "hatchway-v2.yml"
    cfg.write_text(
        f"""\
version: 2
{extra}
tunnels:
  web:
    proto: http
    addr: {echo_app}
  admin:
    proto: http
    addr: 127.0.0.1:{echo_app}
    domain: static-v2.hatchway.localhost
    basic_auth:
      - "alice:password-one"
      - "bob:password-two"
"""
    )
    return cfg


def _edge_free_env(tmp_path: Path) -> dict[str, str]:
    """An environment in which no dev edge can be discovered and no authtoken is set."""
    empty = tmp_path / "no-edge-here"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("HATCHWAY_AUTHTOKEN", "NGROK_AUTHTOKEN")}
    env["HATCHWAY_DATA_DIR"] = str(empty)
    return env


def test_v2_file_start_one_tunnel_by_name(
    edge_proc: EdgeProc, agents: Agents, echo_app: int, tmp_path: Path
) -> None:
    cfg = _v2_file(tmp_path, echo_app)
    agent = agents.start("start", "web", "--config", str(cfg))
    urls = _urls(agent.lines)
    assert list(urls) == ["web"]
    assert urls["web"].startswith("https://") and urls["web"].endswith(
        f".hatchway.localhost:{edge_proc.https_port}"
    )
    started = next(line for line in agent.lines if "url" in line)
    assert started["addr"] == f"http://localhost:{echo_app}"
    assert _echo_path(edge_proc, urls["web"], "/from-v2?x=1") == "/from-v2?x=1"
    # Only the tunnel that was named runs.
    assert _is_offline(edge_proc, f"https://static-v2.hatchway.localhost:{edge_proc.https_port}/")


def test_v2_file_start_all(edge_proc: EdgeProc, agents: Agents, echo_app: int, tmp_path: Path) -> None:
    cfg = _v2_file(tmp_path, echo_app)
    agent = agents.start("start", "--all", "--config", str(cfg), urls=2)
    urls = _urls(agent.lines)
    assert set(urls) == {"web", "admin"}
    assert urls["admin"] == f"https://static-v2.hatchway.localhost:{edge_proc.https_port}"
    assert urls["web"] != urls["admin"]
    assert _echo_path(edge_proc, urls["web"], "/web") == "/web"
    # basic_auth is accepted and the endpoint starts; enforcement is tested elsewhere, so send the
    # right credentials, which pass whether or not it is enforced.
    assert _echo_path(edge_proc, urls["admin"], "/admin", "-u", "alice:password-one") == "/admin"


def test_v3_file_start_endpoint_by_name(
    edge_proc: EdgeProc, agents: Agents, echo_app: int, tmp_path: Path
) -> None:
    cfg = tmp_path / "hatchway-v3.yml"
    cfg.write_text(
        f"""\
version: 3
agent:
  heartbeat_interval: 5s
endpoints:
  - name: site
    url: https://static-v3.hatchway.localhost
    upstream:
      url: {echo_app}
  - name: other
    url: https://static-v3-other.hatchway.localhost
    upstream:
      url: {echo_app}
"""
    )
    agent = agents.start("start", "site", "--config", str(cfg))
    urls = _urls(agent.lines)
    assert urls == {"site": f"https://static-v3.hatchway.localhost:{edge_proc.https_port}"}
    started = next(line for line in agent.lines if "url" in line)
    assert started["addr"] == f"http://localhost:{echo_app}"
    assert _echo_path(edge_proc, urls["site"], "/v3") == "/v3"
    assert _is_offline(edge_proc, f"https://static-v3-other.hatchway.localhost:{edge_proc.https_port}/")


def test_two_config_files_are_merged(
    edge_proc: EdgeProc, agents: Agents, echo_app: int, tmp_path: Path
) -> None:
    first = tmp_path / "base.yml"
    first.write_text(
        """\
version: 2
tunnels:
  web:
    proto: http
    addr: 1
    request_header:
      add: ["x-from-base: yes"]
  side:
    proto: http
    addr: 1
    domain: merged-side.hatchway.localhost
"""
    )
    second = tmp_path / "override.yml"
    second.write_text(
        f"""\
tunnels:
  web:
    proto: http
    addr: {echo_app}
    domain: merged-web.hatchway.localhost
"""
    )
    agent = agents.start("start", "--all", "--config", str(first), "--config", str(second), urls=2)
    urls = _urls(agent.lines)
    port = edge_proc.https_port
    assert urls == {
        "web": f"https://merged-web.hatchway.localhost:{port}",
        "side": f"https://merged-side.hatchway.localhost:{port}",  # kept from the first file
    }
    started = {str(line["name"]): line for line in agent.lines if "url" in line}
    assert started["web"]["addr"] == f"http://localhost:{echo_app}"  # the second file's addr won
    res = curl(edge_proc, urls["web"] + "/merged")
    assert res.returncode == 0, res.stderr
    seen = {k.lower() for k, _ in json.loads(res.stdout)["headers"]}
    # A tunnel named in both files is taken whole from the later one: no header from the base file.
    assert "x-from-base" not in seen


def test_comma_separated_config_list_is_merged_too(
    edge_proc: EdgeProc, agents: Agents, echo_app: int, tmp_path: Path
) -> None:
    first = tmp_path / "a.yml"
    first.write_text("version: 2\ntunnels:\n  web:\n    proto: http\n    addr: 1\n")
    second = tmp_path / "b.yml"
    second.write_text(f"tunnels:\n  web:\n    proto: http\n    addr: {echo_app}\n")
    agent = agents.start("start", "web", "--config", f"{first},{second}")
    assert _echo_path(edge_proc, agent.url, "/comma") == "/comma"


def test_config_check_lists_every_error_with_its_field_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        """\
version: 2
log_level: loud
heartbeat_interval: soon
tunnels:
  web:
    proto: http
    addr: 8080
    basic_auth: ["bob:short"]
    schemes: [ftp]
  other:
    proto: htp
    adr: 9090
"""
    )
    res = subprocess.run(
        [HATCHWAY, "config", "check", "--config", str(bad)], capture_output=True, timeout=30, text=True
    )
    assert res.returncode == 1
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    expected = {
        "log_level": "loud",
        "heartbeat_interval": "soon",
        "tunnels.web.basic_auth[0]": "8 to 128",
        "tunnels.web.schemes": "ftp",
        "tunnels.other.proto": "htp",
        "tunnels.other.adr": "addr",  # "did you mean 'addr'?"
    }
    for field_path, hint in expected.items():
        matching = [line for line in lines if f"{bad}: {field_path}: " in line]
        assert matching, f"no error for {field_path} in {lines}"
        assert hint in matching[0], matching[0]
    assert "Valid" not in res.stdout


def test_config_check_valid_file(tmp_path: Path, echo_app: int) -> None:
    cfg = _v2_file(tmp_path, echo_app)
    res = subprocess.run(
        [HATCHWAY, "config", "check", "--config", str(cfg)], capture_output=True, timeout=30, text=True
    )
    assert res.returncode == 0, res.stderr
    assert "Valid" in res.stdout and str(cfg) in res.stdout


def test_start_unknown_name_names_the_known_endpoints(
    edge_proc: EdgeProc, echo_app: int, tmp_path: Path
) -> None:
    cfg = _v2_file(tmp_path, echo_app)
    res = subprocess.run(
        [HATCHWAY, "start", "missing", "--config", str(cfg), "--log", "stdout"],
        capture_output=True,
        timeout=30,
        text=True,
        env=edge_proc.env(),
    )
    assert res.returncode == 1
    assert "'missing'" in res.stderr
    assert "web" in res.stderr and "admin" in res.stderr, res.stderr
    assert "url" not in res.stdout  # nothing started


def test_server_addr_root_cas_and_authtoken_from_the_file(
    edge_proc: EdgeProc, agents: Agents, echo_app: int, tmp_path: Path
) -> None:
    env = _edge_free_env(tmp_path)
    plain = _v2_file(tmp_path, echo_app)
    # Control: with no dev edge to discover and nothing in the file, the agent cannot connect.
    res = subprocess.run(
        [HATCHWAY, "start", "web", "--config", str(plain), "--log", "stdout"],
        capture_output=True,
        timeout=30,
        text=True,
        env=env,
    )
    assert res.returncode == 1 and "server_addr" in res.stderr, res.stderr

    cfg = _v2_file(
        tmp_path,
        echo_app,
        extra=(
            f"server_addr: {edge_proc.tunnel_addr}\n"
            f"root_cas: {edge_proc.ca}\n"
            f"authtoken: {json.dumps(edge_proc.token)}\n"
        ),
    )
    agent = agents.start("start", "web", "--config", str(cfg), env=env)
    assert _echo_path(edge_proc, agent.url, "/from-file-settings") == "/from-file-settings"
