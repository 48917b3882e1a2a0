"""The official ngrok SDKs against a real ``hatchway edge`` process, driven with curl as a user would.

Unlike ``tests/interop`` (an edge built in-process from Hatchway's parts), these run the ``hatchway edge``
CLI with its store, dev CA and dev token, and reach the endpoints through its HTTPS listener:

* PyPI ``ngrok`` 1.4.0 (Rust ngrok 0.14): ``ngrok.forward(..., domain=, request_header_add=)`` in a
  subprocess; reachable over HTTPS with HTTP/1.1 and HTTP/2; the edge adds the header from the Bind
  options, so the upstream sees it.
* npm ``@ngrok/ngrok`` 1.7.0 (Rust ngrok 0.18, ``Opts.Domain``): ``forward({addr, authtoken,
  server_addr, session_ca_cert, domain, request_header_add})`` in Node; reachable with curl.

Each SDK's ``listener.url()`` and ``listener.id()`` must be what the edge logged when it bound the endpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from e2e_support import EdgeProc, curl, sdk_process

pytestmark = pytest.mark.interop

NODE_MODULES = Path(__file__).resolve().parents[2] / ".cache" / "node" / "node_modules"

PY_SCRIPT = r"""
import json, os, sys
import ngrok
port, token, addr, ca, domain = sys.argv[1:6]
listener = ngrok.forward(int(port), authtoken=token, server_addr=addr,
                         session_ca_cert=bytearray(open(ca, "rb").read()), domain=domain,
                         request_header_add=["x-from-sdk: yes"])
print(json.dumps({"url": listener.url(), "id": listener.id()}), flush=True)
sys.stdin.read()  # until the test closes stdin
os._exit(0)
"""

NODE_SCRIPT = r"""
const fs = require("fs");
const ngrok = require("@ngrok/ngrok");
const [port, token, addr, ca, domain] = process.argv.slice(1);
(async () => {
  const listener = await ngrok.forward({
    addr: Number(port), authtoken: token, server_addr: addr,
    session_ca_cert: fs.readFileSync(ca, "utf8"), domain: domain,
    request_header_add: ["x-from-node: yes"],
  });
  console.log(JSON.stringify({url: listener.url(), id: listener.id()}));
  const bye = () => process.exit(0);
  process.stdin.on("end", bye); process.stdin.resume();
  setTimeout(bye, 120000);
})().catch((e) => { console.error(String(e)); process.exit(1); });
"""


def _bound_in_edge_log(edge: EdgeProc) -> dict[str, str]:
    """URL -> tunnel id for each "endpoint online" line the edge logged."""
    log = (edge.data_dir / "edge.log").read_text()
    return dict(re.findall(r"endpoint online (\S+) \(tunnel (\S+),", log))


def _seen_headers(body: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in json.loads(body)["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def _get(edge: EdgeProc, url: str, http: str) -> tuple[str, dict[str, object], dict[str, list[str]]]:
    """GET ``url`` with curl; returns (HTTP version, the echo app's JSON answer, the headers it saw)."""
    res = curl(edge, url, "-w", "\n%{http_version} %{http_code}", http=http)
    assert res.returncode == 0, res.stderr
    body, _, tail = res.stdout.rpartition(b"\n")
    version, code = tail.decode().split()
    assert code == "200", res.stdout
    return version, json.loads(body), _seen_headers(body)


def test_pypi_sdk_forward_with_domain_and_request_header(edge_proc: EdgeProc, echo_app: int) -> None:
    edge = edge_proc
    domain = "sdk-py.hatchway.localhost"
    cmd = [sys.executable, "-c", PY_SCRIPT, str(echo_app), edge.token, edge.tunnel_addr, str(edge.ca), domain]
    with sdk_process(cmd) as info:
        url = f"https://{domain}:{edge.https_port}"
        assert info["url"] == url
        assert _bound_in_edge_log(edge).get(url) == info["id"]
        for http in ("1.1", "2"):
            version, answer, seen = _get(edge, url + f"/from-curl?over={http}", http)
            assert version == http
            assert answer["path"] == f"/from-curl?over={http}"
            assert seen["x-from-sdk"] == ["yes"]  # request_header_add, applied by the edge
            assert seen["host"] == [f"{domain}:{edge.https_port}"]
            assert seen["x-forwarded-proto"] == ["https"]


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_npm_sdk_forward_with_domain(edge_proc: EdgeProc, echo_app: int) -> None:
    if not (NODE_MODULES / "@ngrok" / "ngrok" / "package.json").exists():
        pytest.skip("@ngrok/ngrok is not installed (tests/interop/test_ngrok_node.py installs it)")
    edge = edge_proc
    domain = "sdk-node.hatchway.localhost"
    node = shutil.which("node")
    assert node is not None
    cmd = [node, "-e", NODE_SCRIPT, str(echo_app), edge.token, edge.tunnel_addr, str(edge.ca), domain]
    with sdk_process(cmd, env={**os.environ, "NODE_PATH": str(NODE_MODULES)}) as info:
        url = f"https://{domain}:{edge.https_port}"
        assert info["url"] == url
        assert _bound_in_edge_log(edge).get(url) == info["id"]
        for http in ("1.1", "2"):
            version, answer, seen = _get(edge, url + "/from-curl", http)
            assert version == http and answer["path"] == "/from-curl"
            assert seen["x-from-node"] == ["yes"]
            assert seen["host"] == [f"{domain}:{edge.https_port}"]
