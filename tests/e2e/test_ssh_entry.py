"""The SSH entry with Debian's OpenSSH client: endpoints from ``ssh -R`` with no agent installed.

Each test starts a real ``hatchway edge`` (its SSH entry on a free port) and a real ``ssh`` process, reaches
the endpoint with curl (or a WebSocket / TCP client), and checks what the ssh user sees: the banner with
the URL, per-request lines with ``--verbose``, messages and exit statuses for refused logins and bad
commands, and the endpoint offline (ERR_NGROK_3200) once the client is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from e2e_support import HATCHWAY, EdgeProc, curl, wait_for

pytestmark = pytest.mark.timeout(120)


class Ssh:
    """A running ``ssh -R`` client; its output lines are collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, tty: bool = False) -> None:
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if tty else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(pipe, sink), daemon=True)
            for pipe, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(pipe: object, sink: list[str]) -> None:
        for raw in iter(pipe.readline, b""):  # type: ignore[attr-defined]
            sink.append(raw.decode(errors="replace").rstrip("\r\n"))

    def urls(self, count: int = 1) -> list[str]:
        def found() -> list[str] | None:
            if self.proc.poll() is not None and not self._forwarding():
                raise AssertionError(f"ssh exited {self.proc.returncode}: {self.out} {self.err}")
            got = self._forwarding()
            return got if len(got) >= count else None

        return wait_for(found, within=20, what="the Forwarding line")  # type: ignore[return-value]

    def _forwarding(self) -> list[str]:
        return [line.split()[1] for line in list(self.out) if line.startswith("Forwarding")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for t in self._readers:
            t.join(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def ssh_args(
    edge: EdgeProc, user: str, forward: str, *command: str, key: Path | None = None, tty: bool = False
) -> list[str]:
    args = ["ssh", "-tt" if tty else "-T", "-F", "/dev/null", "-p", str(edge.ssh_port)]
    args += ["-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={edge.data_dir / 'known_hosts'}"]
    args += ["-o", "ExitOnForwardFailure=yes", "-o", "ConnectTimeout=10"]
    if key is not None:
        args += ["-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
    elif "BatchMode=no" not in command:
        args += ["-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no"]
    args += ["-R", forward, f"{user}@127.0.0.1", *[c for c in command if c != "BatchMode=no"]]
    return args


@contextlib.contextmanager
def ssh(edge: EdgeProc, user: str, forward: str, *command: str, **kw: object) -> Iterator[Ssh]:
    client = Ssh(ssh_args(edge, user, forward, *command, **kw))  # type: ignore[arg-type]
    try:
        yield client
    finally:
        client.stop()


def refused(
    edge: EdgeProc, user: str, *command: str, key: Path | None = None, env: dict[str, str] | None = None
):
    args = ssh_args(edge, user, "443:localhost:9", *command, key=key)
    return subprocess.run(args, capture_output=True, timeout=30, stdin=subprocess.DEVNULL, env=env)


def keypair(tmp: Path, name: str) -> Path:
    key = tmp / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    return key


def register(edge: EdgeProc, pub: Path, account: str = "default") -> None:
    subprocess.run(
        [
            HATCHWAY,
            "edge",
            "ssh-key",
            "add",
            str(pub),
            "--account",
            account,
            "--data-dir",
            str(edge.data_dir),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


def offline(edge: EdgeProc, url: str) -> bool:
    r = curl(edge, url + "/", "-i")
    return b"ERR_NGROK_3200" in r.stdout and b" 404" in r.stdout.split(b"\r\n", 1)[0]


# ---- endpoints ----------------------------------------------------------------------------------------


def test_token_as_user_opens_https_endpoint_with_request_lines(edge_proc: EdgeProc, echo_app: int) -> None:
    with ssh(edge_proc, edge_proc.token, f"443:localhost:{echo_app}", "http", "--verbose") as client:
        (url,) = client.urls()
        assert url.startswith("https://") and url.endswith(f".hatchway.localhost:{edge_proc.https_port}")
        r = curl(edge_proc, url + "/hello?x=1")
        assert r.returncode == 0, r.stderr
        seen = json.loads(r.stdout)
        assert seen["path"] == "/hello?x=1"
        headers = {k.lower(): v for k, v in seen["headers"]}
        assert headers["x-forwarded-proto"] == "https"
        assert headers["host"] == urlsplit(url).netloc
        wait_for(lambda: "GET /hello?x=1 200" in client.out, what="the --verbose request line")
        # Same endpoint over HTTP/2 from the client: still one SSH channel per client connection.
        assert (
            curl(edge_proc, url + "/h2", "-o", "/dev/null", "-w", "%{http_code}", http="2").stdout == b"200"
        )
    # The client is gone: the endpoint is offline with ngrok's code.
    wait_for(lambda: offline(edge_proc, url), what="ERR_NGROK_3200 after ssh exits")


def test_registered_key_and_basic_auth(edge_proc: EdgeProc, echo_app: int, tmp_path: Path) -> None:
    key = keypair(tmp_path, "id_alice")
    register(edge_proc, key.with_suffix(".pub"))
    cmd = ("http", "--basic-auth", "alice:wonderland42")
    # -R 0: the edge picks (an https endpoint with a random name), as with -R 443.
    with ssh(edge_proc, "v2", f"0:localhost:{echo_app}", *cmd, key=key) as client:
        (url,) = client.urls()
        assert url.startswith("https://") and url.endswith(f".hatchway.localhost:{edge_proc.https_port}")
        denied = curl(edge_proc, url + "/", "-i")
        assert denied.stdout.split(b"\r\n", 1)[0].split()[1] == b"401", denied.stdout[:200]
        ok = curl(edge_proc, url + "/", "-u", "alice:wonderland42", "-o", "/dev/null", "-w", "%{http_code}")
        assert ok.stdout == b"200"
        wrong = curl(
            edge_proc, url + "/", "-u", "alice:nope-nope-nope", "-o", "/dev/null", "-w", "%{http_code}"
        )
        assert wrong.stdout == b"401"


def test_static_domain_from_the_bind_address(edge_proc: EdgeProc, echo_app: int) -> None:
    host = "static-demo.hatchway.localhost"
    with ssh(edge_proc, edge_proc.token, f"{host}:443:localhost:{echo_app}", "http") as client:
        (url,) = client.urls()
        assert url == f"https://{host}:{edge_proc.https_port}"
        assert json.loads(curl(edge_proc, url + "/s").stdout)["path"] == "/s"
        # A second client asking for the same name is refused with ngrok's code; the first keeps it.
        again = refused_bind(edge_proc, f"{host}:443:localhost:{echo_app}")
        assert again.returncode == 1
        assert b"ERR_NGROK_334" in again.stderr and b"already online" in again.stderr
        assert json.loads(curl(edge_proc, url + "/still").stdout)["path"] == "/still"


def refused_bind(edge: EdgeProc, forward: str, *command: str) -> subprocess.CompletedProcess[bytes]:
    args = ssh_args(edge, edge.token, forward, *(command or ("http",)))
    return subprocess.run(args, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)


def test_wildcard_domain(edge_proc: EdgeProc, echo_app: int) -> None:
    subprocess.run(
        [HATCHWAY, "edge", "domain", "add", "*.wild.example.com", "--data-dir", str(edge_proc.data_dir)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    with ssh(edge_proc, edge_proc.token, f"*.wild.example.com:443:localhost:{echo_app}", "http") as client:
        (url,) = client.urls()
        assert url == f"https://*.wild.example.com:{edge_proc.https_port}"
        for host in ("a.wild.example.com", "deep.er.wild.example.com"):
            r = curl(edge_proc, f"https://{host}:{edge_proc.https_port}/w")
            assert r.returncode == 0, r.stderr
            assert {k.lower(): v for k, v in json.loads(r.stdout)["headers"]}["host"].startswith(host)
    # An unreserved wildcard is refused, with the reason on the session.
    r = refused_bind(edge_proc, f"*.other.example.com:443:localhost:{echo_app}")
    assert r.returncode == 1 and b"ERR_NGROK_319" in r.stderr


def test_plain_http_scheme(edge_proc: EdgeProc, echo_app: int) -> None:
    with ssh(edge_proc, edge_proc.token, f"80:localhost:{echo_app}", "http", "--schemes", "http") as client:
        (url,) = client.urls()
        assert url.startswith("http://") and url.endswith(f":{edge_proc.http_port}")
        seen = json.loads(curl(edge_proc, url + "/p").stdout)
        assert {k.lower(): v for k, v in seen["headers"]}["x-forwarded-proto"] == "http"
        # No https twin: the same name over https is offline.
        host = urlsplit(url).hostname
        assert offline(edge_proc, f"https://{host}:{edge_proc.https_port}")
    # -R 80 alone means http too.
    with ssh(edge_proc, edge_proc.token, f"80:localhost:{echo_app}", "http") as client:
        (url,) = client.urls()
        assert url.startswith("http://")


async def test_websocket_through_ssh(edge_proc: EdgeProc) -> None:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0, max_size=4 << 20) as server:
        port = server.sockets[0].getsockname()[1]
        client = Ssh(ssh_args(edge_proc, edge_proc.token, f"443:localhost:{port}", "http"))
        try:
            (url,) = await asyncio.to_thread(client.urls)
            parts = urlsplit(url)
            ctx = ssl.create_default_context(cafile=str(edge_proc.ca))
            uri = url.replace("https://", "wss://") + "/ws"
            async with connect(
                uri,
                host="127.0.0.1",
                port=parts.port,
                ssl=ctx,
                server_hostname=parts.hostname,
                max_size=4 << 20,
                open_timeout=10,
                proxy=None,
            ) as ws:
                big = random.Random(5).randbytes(1 << 20)
                for message in ("hello", b"\x00\x01", big):
                    await ws.send(message)
                    async with asyncio.timeout(20):
                        assert await ws.recv() == message
        finally:
            await asyncio.to_thread(client.stop)


def test_tcp_endpoint(edge_proc: EdgeProc) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                with conn:
                    while data := conn.recv(65536):
                        conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    try:
        with ssh(edge_proc, edge_proc.token, f"0:localhost:{port}", "tcp") as client:
            (url,) = client.urls()
            parts = urlsplit(url)
            assert parts.scheme == "tcp" and parts.port
            payload = random.Random(3).randbytes(300_000)
            with socket.create_connection(("127.0.0.1", parts.port), timeout=20) as c:
                c.sendall(payload)
                c.shutdown(socket.SHUT_WR)
                got = bytearray()
                while chunk := c.recv(65536):
                    got += chunk
            assert bytes(got) == payload

        def closed() -> bool:
            try:
                socket.create_connection(("127.0.0.1", parts.port), timeout=2).close()
            except OSError:
                return True
            return False

        wait_for(closed, what="the TCP endpoint closed after ssh exits")
    finally:
        server.close()


class _BulkApp(BaseHTTPRequestHandler):
    """GET: a fixed random blob; POST: the SHA-256 of the body it read."""

    protocol_version = "HTTP/1.1"
    blob = random.Random(11).randbytes(8 << 20)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.blob)))
        self.end_headers()
        self.wfile.write(self.blob)

    def do_POST(self) -> None:
        left = int(self.headers["content-length"])
        digest = hashlib.sha256()
        while left:
            chunk = self.rfile.read(min(left, 1 << 16))
            digest.update(chunk)
            left -= len(chunk)
        out = digest.hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def test_bulk_bodies_both_ways_keep_their_bytes(edge_proc: EdgeProc, tmp_path: Path) -> None:
    """8 MiB down and up through the SSH channel: more than its windows, so flow control and the
    splice's pause/resume are exercised (a reordering bug there once corrupted downloads)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BulkApp)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with ssh(edge_proc, edge_proc.token, f"443:localhost:{server.server_address[1]}", "http") as client:
            (url,) = client.urls()
            for _ in range(2):
                down = curl(edge_proc, url + "/blob", timeout=60)
                assert down.returncode == 0, down.stderr
                assert hashlib.sha256(down.stdout).digest() == hashlib.sha256(_BulkApp.blob).digest()
            body = tmp_path / "up.bin"
            body.write_bytes(random.Random(12).randbytes(8 << 20))
            up = curl(edge_proc, url + "/up", "--data-binary", f"@{body}", timeout=60)
            assert up.stdout.decode() == hashlib.sha256(body.read_bytes()).hexdigest()
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_local_address_is_ngrok_8012(edge_proc: EdgeProc) -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: the client's connect fails
    with ssh(edge_proc, edge_proc.token, f"443:localhost:{dead_port}", "http") as client:
        (url,) = client.urls()
        r = curl(edge_proc, url + "/", "-i")
        head = r.stdout.split(b"\r\n\r\n", 1)[0].lower()
        assert head.split(b"\r\n", 1)[0].split()[1] == b"502"
        assert b"ngrok-error-code: err_ngrok_8012" in head
        assert client.proc.poll() is None  # the session stays up for the next try


# ---- who may connect ----------------------------------------------------------------------------------


def test_wrong_key_token_and_password_are_refused(edge_proc: EdgeProc, tmp_path: Path) -> None:
    stranger = keypair(tmp_path, "id_stranger")
    r = refused(edge_proc, "v2", "http", key=stranger)
    assert r.returncode == 255 and b"Permission denied" in r.stderr
    r = refused(edge_proc, "hw_not_a_real_token", "http")
    assert r.returncode == 255 and b"Permission denied" in r.stderr
    askpass = tmp_path / "askpass.sh"
    askpass.write_text("#!/bin/sh\necho hw_wrong_password\n")
    askpass.chmod(0o700)
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"}
    r = refused(edge_proc, "v2", "http", "BatchMode=no", env=env)
    assert r.returncode == 255 and b"Permission denied" in r.stderr
    # No endpoint came of any of them.
    assert not [
        line
        for line in (edge_proc.data_dir / "edge.log").read_text().splitlines()
        if "ssh endpoint online" in line
    ]


def test_token_as_password(edge_proc: EdgeProc, echo_app: int, tmp_path: Path) -> None:
    askpass = tmp_path / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\necho {edge_proc.token}\n")
    askpass.chmod(0o700)
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"}
    args = ssh_args(edge_proc, "v2", f"443:localhost:{echo_app}", "http", "BatchMode=no")
    args[1:1] = ["-o", "PreferredAuthentications=password", "-o", "NumberOfPasswordPrompts=1"]
    client = Ssh(args, env=env)
    try:
        (url,) = client.urls()
        assert json.loads(curl(edge_proc, url + "/pw").stdout)["path"] == "/pw"
    finally:
        client.stop()


def test_revoking_the_token_closes_the_session(edge_proc: EdgeProc, echo_app: int) -> None:
    made = subprocess.run(
        [HATCHWAY, "edge", "token", "create", "--data-dir", str(edge_proc.data_dir)],
        capture_output=True,
        timeout=30,
        check=True,
    )
    token, token_id = made.stdout.decode().strip(), made.stderr.decode().split()[1]
    with ssh(edge_proc, token, f"443:localhost:{echo_app}", "http") as client:
        (url,) = client.urls()
        assert curl(edge_proc, url + "/", "-o", "/dev/null", "-w", "%{http_code}").stdout == b"200"
        subprocess.run(
            [HATCHWAY, "edge", "token", "revoke", token_id, "--data-dir", str(edge_proc.data_dir)],
            capture_output=True,
            timeout=30,
            check=True,
        )
        wait_for(lambda: client.proc.poll() is not None, what="ssh to end after the revoke")
        assert offline(edge_proc, url)


# ---- commands -----------------------------------------------------------------------------------------


def test_bad_commands_get_messages_and_the_edge_keeps_serving(edge_proc: EdgeProc, echo_app: int) -> None:
    with ssh(edge_proc, edge_proc.token, f"443:localhost:{echo_app}", "http") as good:
        (url,) = good.urls()
        cases = [
            (("http", "--bogus-flag"), b"No such option: --bogus-flag"),
            (("http", "--basic-auth", "nocolon"), b"--basic-auth[0]: must be username:password"),
            (("http", "--config", "/etc/passwd"), b"--config is not available over ssh"),
            (("ftp",), b"unknown command 'ftp'"),
            ((), b"no command"),
            (("http", "--traffic-policy", "on_http_request: [{actions: [{type: nope}]}]"), b"nope"),
        ]
        for command, message in cases:
            r = (
                refused_bind(edge_proc, f"443:localhost:{echo_app}", *command)
                if command
                else subprocess.run(
                    ssh_args(edge_proc, edge_proc.token, f"443:localhost:{echo_app}"),
                    capture_output=True,
                    timeout=30,
                    stdin=subprocess.DEVNULL,
                )
            )
            assert r.returncode == 2, (command, r.returncode, r.stderr)
            assert message in r.stderr, (command, r.stderr)
        # Everything above left the first endpoint alone.
        assert json.loads(curl(edge_proc, url + "/alive").stdout)["path"] == "/alive"


def test_inline_policy_in_url_safe_form(edge_proc: EdgeProc, echo_app: int) -> None:
    import base64

    doc = (
        "on_http_request:\n  - actions:\n      - type: add-headers\n"
        "        config: {headers: {x-from-ssh: hello}}\n"
    )
    encoded = base64.urlsafe_b64encode(doc.encode()).decode().rstrip("=")
    with ssh(
        edge_proc, edge_proc.token, f"443:localhost:{echo_app}", "http", f"--traffic-policy={encoded}"
    ) as c:
        (url,) = c.urls()
        seen = json.loads(curl(edge_proc, url + "/").stdout)
        assert {k.lower(): v for k, v in seen["headers"]}["x-from-ssh"] == "hello"


def test_ctrl_c_on_a_terminal_takes_the_endpoint_offline(edge_proc: EdgeProc, echo_app: int) -> None:
    client = Ssh(
        ssh_args(edge_proc, edge_proc.token, f"443:localhost:{echo_app}", "http", tty=True), tty=True
    )
    try:
        (url,) = client.urls()
        assert curl(edge_proc, url + "/", "-o", "/dev/null", "-w", "%{http_code}").stdout == b"200"
        assert client.proc.stdin is not None
        client.proc.stdin.write(b"\x03")
        client.proc.stdin.flush()
        assert client.proc.wait(timeout=20) == 0
        assert offline(edge_proc, url)
    finally:
        client.stop()
