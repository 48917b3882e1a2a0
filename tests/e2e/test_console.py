"""In a terminal, ``hatchway http`` shows a live status screen like ngrok's (session status, forwarding
line, connection counts); run under a real pseudo-terminal and read what it draws."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time

from e2e_support import HATCHWAY, EdgeProc, curl

_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def _read_until(fd: int, pattern: bytes, within: float = 20.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
            plain = _ANSI.sub(b"", seen)
            if re.search(pattern, plain):
                return plain
    raise AssertionError(f"never saw {pattern!r} in: {seen[-2000:]!r}")


def test_status_screen_in_a_terminal(edge_proc: EdgeProc, echo_app: int) -> None:
    leader, follower = pty.openpty()
    env = {**edge_proc.env(), "COLUMNS": "120", "LINES": "30", "TERM": "xterm"}
    proc = subprocess.Popen(
        [HATCHWAY, "http", str(echo_app)],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        close_fds=True,
    )
    os.close(follower)
    try:
        screen = _read_until(leader, rb"Forwarding\s+https://\S+ -> http://localhost:\d+")
        assert b"Session Status" in screen and b"online" in screen
        url = re.search(rb"Forwarding\s+(https://\S+)", screen)
        assert url is not None
        assert curl(edge_proc, url.group(1).decode(), "-i").stdout.startswith(b"HTTP/1.1 200")
        # The connection counters move once a request went through.
        _read_until(leader, rb"ttl\s+opn\s+p50\s+p90\s*\r?\n\s*1\s+0\s", within=10)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        os.close(leader)
    assert proc.returncode == 0
