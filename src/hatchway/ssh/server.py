"""The edge's SSH entry: ``ssh -R 443:localhost:8080 -p 2222 v2@EDGE http [flags]`` opens an endpoint.

An asyncssh server. Who may connect: a public key registered to an account (``hatchway edge ssh-key
add``), or an authtoken given as the user name (``TOKEN@EDGE``) or as the password. A ``-R`` request is
accepted without binding any socket (the edge routes the traffic itself); the session's command then
says what to open (``command.py``), an in-process agent session binds it (``bridge.py``), and each
proxied connection becomes a ``forwarded-tcpip`` channel back to the client. The endpoint lives as long
as the SSH connection: it goes offline when the client disconnects or presses Ctrl-C.

Must not: bind real ports for ``-R`` requests, accept local forwards (``-L``), agent or X11 forwarding,
or let one bad session disturb the others (every problem ends that session only, with a message).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from hatchway.edge.app import Edge, split_hostport
from hatchway.edge.registry import Registry
from hatchway.errors import RpcError
from hatchway.ssh.bridge import Bridge, ChannelSession
from hatchway.ssh.command import USAGE, CommandError, Forward, Plan, plan
from hatchway.ssh.verbose import RequestLog

logger = logging.getLogger(__name__)

HOST_KEY_FILE = "ssh_host_ed25519_key"
#: How long a session waits for its ``-R`` request when the command arrives first.
FORWARD_WAIT = 5.0
#: How often logged-in connections are checked against the store (a few indexed SQLite reads).
REVALIDATE_EVERY = 1.0

Lookup = Callable[[str], str | None]


@dataclass
class Access:
    """How the entry checks credentials: authtoken -> account, key fingerprint -> account."""

    check_token: Lookup
    key_owner: Lookup


class _Virtual(asyncssh.SSHListener):
    """What a ``-R`` request gets instead of a socket: only the port the client will know it by."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self._port = port

    def get_port(self) -> int:
        return self._port

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


class _Connection(asyncssh.SSHServer):
    """One SSH client: its account once authenticated, its ``-R`` forward, its end."""

    def __init__(self, entry: SshEntry) -> None:
        self.entry = entry
        self.conn: asyncssh.SSHServerConnection | None = None
        self.account: str | None = None
        self.forward: Forward | None = None
        self.forward_seen = asyncio.Event()
        self.closed = asyncio.Event()
        # Asks the store again whether the credential used to log in still holds (revoked, removed).
        self.still_valid: Callable[[], bool] = lambda: True

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.entry.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self.entry.connections.discard(self)

    # ---- authentication ---------------------------------------------------------------------------
    def begin_auth(self, username: str) -> bool:
        # An authtoken as the user name (TOKEN@EDGE) needs no further proof: it is the secret.
        check = self.entry.access.check_token
        account = check(username) if username else None
        if account is not None:
            self.account = account
            self.still_valid = lambda: check(username) is not None
            return False
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        check = self.entry.access.check_token
        account = check(password)
        if account is None:
            return False
        self.account = account
        self.still_valid = lambda: check(password) is not None
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        owner, fingerprint = self.entry.access.key_owner, key.get_fingerprint("sha256")
        account = owner(fingerprint)
        if account is None:
            return False
        self.account = account
        self.still_valid = lambda: owner(fingerprint) == account
        return True

    def kbdint_auth_supported(self) -> bool:
        return False

    # ---- forwards ---------------------------------------------------------------------------------
    def server_requested(self, listen_host: str, listen_port: int) -> asyncssh.SSHListener | bool:
        if self.forward is not None:
            return False  # one endpoint per connection, as ngrok's SSH entry
        # The client matches channels by the port we answer: for -R 0 we name one; nothing is bound.
        port = listen_port or 443
        self.forward = Forward(listen_host, listen_port, port)
        self.forward_seen.set()
        return _Virtual(port)

    async def open_channel(
        self, factory: Callable[[], asyncio.Protocol], client_addr: str, log: RequestLog | None
    ) -> object:
        conn, fwd = self.conn, self.forward
        if conn is None or fwd is None:
            raise ConnectionRefusedError("the ssh client is gone")
        host, _, port = client_addr.rpartition(":")
        chan, _session = await conn.create_connection(
            lambda: ChannelSession(factory(), log),
            fwd.listen_host,
            fwd.port,
            host.strip("[]"),
            int(port) if port.isdigit() else 0,
        )
        return chan


class SshEntry:
    """The SSH listener. ``await SshEntry.start(registry, access, data_dir, host, port)``."""

    def __init__(self, registry: Registry, access: Access) -> None:
        self.registry = registry
        self.access = access
        self.connections: set[_Connection] = set()
        self.address: tuple[str, int] = ("", 0)
        self._server: asyncssh.SSHAcceptor | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, registry: Registry, access: Access, data_dir: Path, host: str, port: int
    ) -> SshEntry:
        self = cls(registry, access)
        self._server = await asyncssh.listen(
            host,
            port,
            server_host_keys=[host_key(data_dir)],
            server_factory=lambda: _Connection(self),
            process_factory=self._process,
            encoding=None,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            sftp_factory=None,
            keepalive_interval=30,
            keepalive_count_max=3,
            login_timeout=30,
        )
        sock = self._server.sockets[0].getsockname()
        self.address = (str(sock[0]), int(sock[1]))
        self._watcher = asyncio.ensure_future(self._watch_credentials())
        return self

    async def _watch_credentials(self) -> None:
        """Close connections whose token was revoked or key removed (``hatchway edge token revoke``)."""
        while True:
            await asyncio.sleep(REVALIDATE_EVERY)
            for c in list(self.connections):
                if c.account is not None and c.conn is not None and not c.still_valid():
                    logger.info("ssh credential revoked: closing the connection of account %s", c.account)
                    c.conn.close()

    async def _process(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._sessions.add(task)
        try:
            conn = process.get_extra_info("connection")
            owner = conn.get_owner() if conn is not None else None
            if not isinstance(owner, _Connection):
                process.exit(1)
                return
            status = await _Session(self, owner, process).run()
        except Exception:
            logger.exception("ssh session failed")
            status = 1
        finally:
            if task is not None:
                self._sessions.discard(task)
        with contextlib.suppress(Exception):
            process.exit(status)

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self._server is not None:
            self._server.close()
        for c in list(self.connections):
            if c.conn is not None:
                c.conn.close()
        if self._sessions:
            await asyncio.wait(list(self._sessions), timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)


class _Session:
    """The session channel of one connection: parse the command, bind, print, wait for the end."""

    def __init__(
        self, entry: SshEntry, owner: _Connection, process: asyncssh.SSHServerProcess[bytes]
    ) -> None:
        self.entry = entry
        self.owner = owner
        self.process = process
        self.tty = process.get_terminal_type() is not None

    def out(self, text: str, *, err: bool = False) -> None:
        nl = "\r\n" if self.tty else "\n"
        stream = self.process.stderr if err else self.process.stdout
        with contextlib.suppress(Exception):
            stream.write((text.replace("\n", nl) + nl).encode())

    async def run(self) -> int:
        owner = self.owner
        if owner.account is None:
            self.out("ERROR: not authenticated", err=True)
            return 1
        if owner.forward is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FORWARD_WAIT):
                    await owner.forward_seen.wait()
        command = self.process.command
        fwd = owner.forward
        try:
            the_plan = plan(command, fwd or Forward("", 0, 0))
        except CommandError as exc:
            self.out("\n".join(exc.lines), err=True)
            return 2
        if the_plan.help_text:
            self.out(the_plan.help_text)
            return 0
        if fwd is None:
            self.out("ERROR: no remote forward: add -R 443:localhost:PORT to the ssh command", err=True)
            self.out(USAGE, err=True)
            return 2
        return await self._serve(the_plan, owner.account)

    async def _serve(self, the_plan: Plan, account: str) -> int:
        log_lines = the_plan.verbose

        def emit(line: str) -> None:
            self.out(line)

        async def open_channel(factory: Callable[[], asyncio.Protocol], client_addr: str) -> object:
            log = RequestLog(emit) if log_lines else None
            return await self.owner.open_channel(factory, client_addr, log)

        bridge = await Bridge.open(self.entry.registry, account, open_channel)
        try:
            urls: list[str] = []
            for proto, opts in the_plan.binds:
                if urls and proto != "tcp":
                    # The second scheme gets the name the first one was given (ngrok's "both schemes").
                    opts = {**opts, "Hostname": urls[0].split("://", 1)[1].split(":")[0].split("/")[0]}
                try:
                    urls.append(await bridge.bind(proto, opts, forwards_to="ssh", metadata=the_plan.metadata))
                except RpcError as exc:
                    code = f" [{exc.ngrok_code}]" if exc.ngrok_code else ""
                    self.out(f"ERROR: {exc.message}{code}", err=True)
                    return 1
            self.out("Hatchway: endpoint online")
            for url in urls:
                self.out(f"Forwarding  {url}")
            self.out("Press Ctrl+C to stop." if self.tty else "Disconnect to stop.")
            logger.info("ssh endpoint online %s (account %s)", " ".join(urls), account)
            return await self._wait(bridge)
        finally:
            await bridge.aclose()

    async def _wait(self, bridge: Bridge) -> int:
        """Until the client leaves (or presses Ctrl-C on a terminal), or the edge drops the session."""
        waits = {
            asyncio.ensure_future(self.owner.closed.wait()): 0,
            asyncio.ensure_future(self._interrupted()): 0,
            asyncio.ensure_future(bridge.edge.conn.wait_closed()): 1,
        }
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in waits:
                t.cancel()
        status = max(waits[t] for t in done)
        if status:
            self.out("the edge closed this endpoint", err=True)
        return status

    async def _interrupted(self) -> None:
        """Returns on Ctrl-C or Ctrl-D from a terminal, or a signal or break from the client. Without a
        terminal, stdin's EOF means nothing (``ssh -T ... < /dev/null`` is normal use)."""
        stdin = self.process.stdin
        while True:
            try:
                data = await stdin.read(1024)
            except (asyncssh.BreakReceived, asyncssh.SignalReceived):
                return
            except asyncssh.TerminalSizeChanged:
                continue
            if not data:
                await asyncio.Event().wait()  # EOF: keep serving until the connection ends
            if self.tty and (b"\x03" in data or b"\x04" in data):
                return


def host_key(data_dir: Path) -> asyncssh.SSHKey:
    """The edge's SSH host key, made on first start and kept (0600) so clients' known_hosts stay valid."""
    path = data_dir / HOST_KEY_FILE
    try:
        return asyncssh.read_private_key(str(path))
    except FileNotFoundError:
        pass
    key = asyncssh.generate_private_key("ssh-ed25519")
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.export_private_key())
    return key


async def serve_ssh(edge: Edge, addr: str) -> SshEntry:
    """Start the SSH entry of ``edge`` on ``addr`` (``host:port``), checking credentials in its store."""
    host, port = split_hostport(addr)
    # asyncssh logs every channel at INFO; the edge logs what matters (endpoints online and offline).
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    access = Access(check_token=edge.account_for_token, key_owner=edge.account_for_ssh_key)
    return await SshEntry.start(edge.registry, access, edge.config.data_dir, host, port)
