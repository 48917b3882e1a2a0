"""The official PyPI ``ngrok`` SDK (1.4.0) with its module options, against a real ``hatchway edge``.

Each test runs ``ngrok.forward(port, **options)`` in a subprocess (as ``test_official_sdks.py`` does: the
SDK keeps one session per process, so one process per endpoint keeps the tests apart) and checks with
curl, over HTTPS and HTTP/1.1, that the edge enforces what the options asked for. The option names are
ngrok-python's ``forward`` keywords: ``basic_auth`` ("user:password" strings), ``allow_cidr`` /
``deny_cidr``, ``request_header_add`` / ``response_header_add`` ("name:value"), ``compression`` (bool)
and ``traffic_policy`` (a document as text). The SDK silently ignores keywords it does not know, so every
test checks an effect a missing option could not produce.

The edge turns module options into rules that run before the user's own policy (``edge/modules.py``);
the last test checks that order with basic auth and a deny rule together.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import sys
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest

from e2e_support import EchoHandler, EdgeProc, curl, sdk_process, serving, start_edge

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

SDK_SCRIPT = r"""
import json, os, sys
import ngrok
port, token, addr, ca, domain, options = sys.argv[1:7]
listener = ngrok.forward(int(port), authtoken=token, server_addr=addr,
                         session_ca_cert=bytearray(open(ca, "rb").read()), domain=domain,
                         **json.loads(options))
print(json.dumps({"url": listener.url(), "id": listener.id()}), flush=True)
sys.stdin.read()  # until the test closes stdin
os._exit(0)
"""


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeProc]:
    # One edge for the module; every test binds its own domain.
    proc = start_edge(tmp_path_factory.mktemp("sdk-modules-edge"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    with serving(server):
        yield int(server.server_address[1])


@contextlib.contextmanager
def sdk_endpoint(edge: EdgeProc, port: int, name: str, **options: object) -> Iterator[str]:
    """``ngrok.forward(port, domain=NAME.hatchway.localhost, **options)`` in a subprocess; yields its URL."""
    domain = f"{name}.hatchway.localhost"
    cmd = [
        sys.executable,
        "-c",
        SDK_SCRIPT,
        str(port),
        edge.token,
        edge.tunnel_addr,
        str(edge.ca),
        domain,
        json.dumps(options),
    ]
    with sdk_process(cmd) as info:
        assert info["url"] == f"https://{domain}:{edge.https_port}"
        yield info["url"]


def get(edge: EdgeProc, url: str, *args: str) -> tuple[int, dict[str, list[str]], bytes]:
    """(status, lower-case headers, raw body) of one HTTP/1.1 request with curl."""
    res = curl(edge, url, "-i", *args)
    assert res.returncode == 0, res.stderr
    head, _, body = res.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), []).append(v.strip())
    return int(lines[0].split()[1]), headers, body


def seen_headers(body: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in json.loads(body)["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def test_basic_auth(edge: EdgeProc, upstream: int) -> None:
    with sdk_endpoint(edge, upstream, "sdk-basic-auth", basic_auth=["alice:sdk-password-1"]) as url:
        status, headers, _ = get(edge, url + "/secret")
        assert status == 401
        assert headers["www-authenticate"] == ['Basic realm="ngrok"']
        assert get(edge, url + "/secret", "-u", "alice:wrong-password")[0] == 401
        status, _, body = get(edge, url + "/secret", "-u", "alice:sdk-password-1")
        assert status == 200 and json.loads(body)["path"] == "/secret"
        token = base64.b64encode(b"alice:sdk-password-1").decode()
        assert seen_headers(body)["authorization"] == [f"Basic {token}"]


@pytest.mark.parametrize(
    ("options", "allowed"),
    [
        ({"allow_cidr": ["127.0.0.1/32"]}, True),
        ({"allow_cidr": ["10.0.0.0/8", "192.0.2.0/24"]}, False),
        ({"deny_cidr": ["127.0.0.0/8"]}, False),
        ({"allow_cidr": ["0.0.0.0/0"], "deny_cidr": ["127.0.0.1/32"]}, False),
        ({"allow_cidr": ["0.0.0.0/0"], "deny_cidr": ["10.0.0.0/8"]}, True),
    ],
    ids=["allow-loopback", "allow-others", "deny-loopback", "allow-all-deny-loopback", "deny-others"],
)
def test_allow_and_deny_cidr(
    edge: EdgeProc, upstream: int, options: dict[str, list[str]], allowed: bool
) -> None:
    name = "sdk-cidr-" + "-".join(f"{k[0]}{len(v)}" for k, v in options.items()) + ("-ok" if allowed else "")
    with sdk_endpoint(edge, upstream, name, **options) as url:
        status, headers, body = get(edge, url + "/ip")
        if allowed:
            assert status == 200 and json.loads(body)["path"] == "/ip"
        else:
            assert status == 403, body
            assert headers["ngrok-error-code"] == ["ERR_NGROK_3205"]


def test_request_and_response_header_add(edge: EdgeProc, upstream: int) -> None:
    with sdk_endpoint(
        edge,
        upstream,
        "sdk-headers",
        request_header_add=["x-sdk-request:added by the edge"],
        response_header_add=["x-sdk-response:also the edge"],
    ) as url:
        status, headers, body = get(edge, url + "/h")
        assert status == 200
        assert seen_headers(body)["x-sdk-request"] == ["added by the edge"]
        assert headers["x-sdk-response"] == ["also the edge"]


def test_compression(edge: EdgeProc, upstream: int) -> None:
    with sdk_endpoint(edge, upstream, "sdk-compression", compression=True) as url:
        status, headers, body = get(edge, url + "/gz", "-H", "Accept-Encoding: gzip")
        assert status == 200
        assert headers["content-encoding"] == ["gzip"]
        assert json.loads(gzip.decompress(body))["path"] == "/gz"
        status, headers, body = get(edge, url + "/plain", "-H", "Accept-Encoding:")
        assert status == 200 and "content-encoding" not in headers
        assert json.loads(body)["path"] == "/plain"


def test_traffic_policy_deny_rule(edge: EdgeProc, upstream: int) -> None:
    policy = {
        "on_http_request": [
            {
                "expressions": ["req.url.path.startsWith('/blocked')"],
                "actions": [{"type": "deny", "config": {"status_code": 404}}],
            }
        ]
    }
    with sdk_endpoint(edge, upstream, "sdk-policy", traffic_policy=json.dumps(policy)) as url:
        status, _, body = get(edge, url + "/blocked/page")
        assert (status, body) == (404, b"")
        status, _, body = get(edge, url + "/open")
        assert status == 200 and json.loads(body)["path"] == "/open"


def test_modules_run_before_the_traffic_policy(edge: EdgeProc, upstream: int) -> None:
    policy = (
        "on_http_request:\n  - expressions: [\"req.url.path == '/blocked'\"]\n    actions: [{type: deny}]\n"
    )
    with sdk_endpoint(
        edge, upstream, "sdk-order", basic_auth=["bob:sdk-password-2"], traffic_policy=policy
    ) as url:
        # Basic auth (a module) decides first: an anonymous client never learns /blocked is denied.
        assert get(edge, url + "/blocked")[0] == 401
        assert get(edge, url + "/blocked", "-u", "bob:sdk-password-2")[0] == 403
        assert get(edge, url + "/open", "-u", "bob:sdk-password-2")[0] == 200
