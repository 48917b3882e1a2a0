"""CLI options a user sets once and forgets: the edge's ``--config`` file, and the agent's ``--metadata``,
``--log FILE`` with logfmt lines, and the authtoken from ``NGROK_AUTHTOKEN``."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

from e2e_support import HATCHWAY, EdgeProc, curl, start_edge, wait_for


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def test_edge_config_file_sets_the_base_domain_and_rejects_unknown_keys(
    tmp_path: Path, echo_app: int
) -> None:
    data = tmp_path / "edge"
    bad = tmp_path / "bad.yml"
    bad.write_text("base_domian: oops.test\n")
    res = subprocess.run(
        [HATCHWAY, "edge", "--data-dir", str(data), "--config", str(bad)], capture_output=True, timeout=30
    )
    assert res.returncode != 0 and b"base_domian" in res.stderr
    good = tmp_path / "edge.yml"
    good.write_text("base_domain: tunnels.test\n")
    edge = start_edge(data, "--config", str(good))
    log = tmp_path / "agent.log"
    proc = subprocess.Popen(
        [HATCHWAY, "http", str(echo_app), "--log", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=edge.env(),
    )
    try:
        line = wait_for(
            lambda: log.exists() and re.search(r"url=(\S+)", log.read_text()), what="url in the log"
        )
        assert isinstance(line, re.Match)
        url = line.group(1)
        assert re.fullmatch(rf"https://[a-z-]+\.tunnels\.test:{edge.https_port}", url), url
        assert curl(edge, url + "/", "-i").stdout.startswith(b"HTTP/1.1 200")
    finally:
        _stop(proc)
        edge.stop()


def test_metadata_log_file_and_ngrok_authtoken(edge_proc: EdgeProc, echo_app: int, tmp_path: Path) -> None:
    d = str(edge_proc.data_dir)
    token = (
        subprocess.run(
            [HATCHWAY, "edge", "token", "create", "--account", "team-b", "--data-dir", d],
            capture_output=True,
            check=True,
            timeout=30,
        )
        .stdout.decode()
        .strip()
    )
    log = tmp_path / "agent.log"
    env = {**edge_proc.env(), "NGROK_AUTHTOKEN": token}  # wins over the dev edge's own token
    env.pop("HATCHWAY_AUTHTOKEN", None)
    proc = subprocess.Popen(
        [
            HATCHWAY,
            "http",
            str(echo_app),
            "--metadata",
            "build-42",
            "--log",
            str(log),
            "--log-format",
            "logfmt",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    try:
        found = wait_for(
            lambda: log.exists() and re.search(r"url=(\S+)", log.read_text()), what="url in the log"
        )
        assert isinstance(found, re.Match)
        text = log.read_text()
        # logfmt: key=value pairs, one event per line
        started = next(line for line in text.splitlines() if 'msg="started tunnel"' in line)
        assert re.search(r"\blvl=info\b", started) and re.search(r"\bt=\S+", started)
        assert curl(edge_proc, found.group(1) + "/", "-i").stdout.startswith(b"HTTP/1.1 200")
        edge_log = (edge_proc.data_dir / "edge.log").read_text()
        online = [line for line in edge_log.splitlines() if "endpoint online " + found.group(1) in line]
        assert online and "account team-b" in online[-1] and "'build-42'" in online[-1]
    finally:
        _stop(proc)
