"""The official npm ``@ngrok/ngrok`` SDK (1.7.0, Rust ngrok 0.18) against an edge built from Hatchway's parts.

The test installs the package with npm into ``.cache/node`` when it is missing, runs a small Node script
that forwards to a local app, and drives a request through the edge. 0.18 sends the domain in
``Opts.Domain`` (with ``Hostname`` empty) and adds ``PoolingEnabled``: both must be understood.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import TOKEN, App, Edge
from helpers import proxy_get

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / ".cache" / "node"
PACKAGE = "@ngrok/ngrok@1.7.0"

SCRIPT = r"""
const ngrok = require("@ngrok/ngrok");
const [port, serverAddr, caPath, token] = process.argv.slice(1);
const fs = require("fs");
(async () => {
  const listener = await ngrok.forward({
    addr: Number(port), authtoken: token, server_addr: serverAddr,
    session_ca_cert: fs.readFileSync(caPath, "utf8"),
    domain: "nodeapp.example.test", basic_auth: ["bob:an0therpassw0rd"],
    pooling_enabled: true, metadata: "node-listener-metadata",
  });
  console.log(JSON.stringify({url: listener.url(), id: listener.id()}));
  // Stay up until the test closes stdin (bounded: exit after 60 s in any case).
  const bye = async () => { await listener.close(); process.exit(0); };
  process.stdin.on("end", bye); process.stdin.resume();
  setTimeout(bye, 60000);
})().catch((e) => { console.error(String(e)); process.exit(1); });
"""


def _ensure_package() -> Path:
    modules = NODE_DIR / "node_modules"
    if not (modules / "@ngrok" / "ngrok" / "package.json").exists():
        npm = shutil.which("npm")
        assert npm is not None, "npm is needed for the npm SDK interop test (Node.js ships it)"
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent", PACKAGE],
            cwd=NODE_DIR,
            check=True,
            timeout=300,
        )
    return modules


async def test_npm_sdk_binds_with_domain_and_serves(edge: Edge, http_app: App, tmp_path: Path) -> None:
    modules = await asyncio.to_thread(_ensure_package)
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(edge.ca_pem)
    node = shutil.which("node")
    assert node is not None
    proc = await asyncio.create_subprocess_exec(
        node,
        "-e",
        SCRIPT,
        str(http_app.port),
        edge.addr,
        str(ca_path),
        TOKEN,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(modules)},
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        async with asyncio.timeout(30):
            line = await proc.stdout.readline()
        if not line:
            assert proc.stderr is not None
            pytest.fail(f"node script failed: {(await proc.stderr.read()).decode()}")
        info = json.loads(line)
        assert info["url"] == "https://nodeapp.example.test"
        bind = edge.registry.binds[-1]
        assert bind.opts.get("Domain") == "nodeapp.example.test" and bind.opts.get("Hostname") == ""
        assert bind.http_opts().requested_domain == "nodeapp.example.test"
        creds = bind.http_opts().basic_auth
        assert creds is not None and creds.credentials[0].username == "bob"
        assert bind.extra.metadata == "node-listener-metadata"
        assert edge.registry.auths[-1].extra.client_type == "ngrok-javascript"
        session, tunnel_id = edge.registry.lookup("nodeapp.example.test") or (None, "")
        assert session is not None and tunnel_id == info["id"]
        answer = await proxy_get(session, tunnel_id, "/from-node", client="198.51.100.9:40000")
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert answer.endswith(b"hello from the local app: /from-node")
        proc.stdin.close()
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
        # listener.close() sent Unbind: the endpoint is offline.
        await edge.registry.wait_for(lambda: edge.registry.lookup("nodeapp.example.test") is None)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
