"""The edge answers HTTP-01 validation requests for tokens its ACME manager published, on the plain HTTP
listener and before routing; other tokens (and everything when ACME is off) are routed as usual. Also:
which challenge the order picks for a name (``AcmeIssuer._pick``)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from acme import messages
from josepy.jwk import JWKEC

from hatchway.edge.app import Edge, EdgeConfig
from hatchway.edge.tls.acme_client import AcmeError, AcmeIssuer, _jwk, new_key_pem


def config(tmp_path: Path, **kw: str) -> EdgeConfig:
    return EdgeConfig(
        data_dir=tmp_path,
        http_addr="127.0.0.1:0",
        https_addr="127.0.0.1:0",
        tunnel_addr="127.0.0.1:0",
        **kw,  # type: ignore[arg-type]
    )


async def exchange(port: int, raw: bytes, responses: int = 1) -> list[tuple[bytes, bytes]]:
    """Send ``raw`` (one or more requests) and read ``responses`` responses: (head, body) each."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    try:
        writer.write(raw)
        async with asyncio.timeout(5):
            for _ in range(responses):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                out.append((head, await reader.readexactly(length)))
    finally:
        writer.close()
    return out


def get(path: str, host: str = "app.example.com") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


async def test_published_token_is_answered_before_routing(tmp_path: Path) -> None:
    edge = Edge(config(tmp_path, acme_directory="https://127.0.0.1:1/dir"))
    await edge.start()
    try:
        assert edge.acme is not None
        edge.acme.tokens["tok-1"] = b"tok-1.thumbprint"
        port = edge.addresses["http"][1]
        [(head, body)] = await exchange(port, get("/.well-known/acme-challenge/tok-1"))
        assert head.startswith(b"HTTP/1.1 200")
        assert body == b"tok-1.thumbprint"
        # Not ours: routed like any request (no endpoint online here: the edge's 404).
        [(head, _)] = await exchange(port, get("/.well-known/acme-challenge/other"))
        assert head.startswith(b"HTTP/1.1 404") and b"ERR_NGROK_3200" in head
        # Pipelined behind another request on a kept-alive connection: answered in order.
        both = await exchange(port, get("/first") + get("/.well-known/acme-challenge/tok-1"), responses=2)
        assert both[0][0].startswith(b"HTTP/1.1 404")
        assert both[1][0].startswith(b"HTTP/1.1 200") and both[1][1] == b"tok-1.thumbprint"
        # Withdrawn: routed again.
        del edge.acme.tokens["tok-1"]
        [(head, _)] = await exchange(port, get("/.well-known/acme-challenge/tok-1"))
        assert head.startswith(b"HTTP/1.1 404")
    finally:
        await edge.aclose(drain=0.5)


async def test_acme_off_routes_challenge_paths(tmp_path: Path) -> None:
    edge = Edge(config(tmp_path))
    await edge.start()
    try:
        assert edge.acme is None
        [(head, _)] = await exchange(edge.addresses["http"][1], get("/.well-known/acme-challenge/tok-1"))
        assert head.startswith(b"HTTP/1.1 404")
    finally:
        await edge.aclose(drain=0.5)


def test_bad_dns_provider_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--acme-dns-exec"):
        Edge(config(tmp_path, acme_directory="https://127.0.0.1:1/dir", acme_dns_provider="exec"))


# ---- challenge choice ------------------------------------------------------------------------------------
def token(i: int) -> str:
    return base64.urlsafe_b64encode(bytes([i]) * 32).decode().rstrip("=")


def authz(ident: str, wildcard: bool, types: tuple[str, ...]) -> messages.AuthorizationResource:
    body = {
        "identifier": {"type": "dns", "value": ident},
        "status": "pending",
        "challenges": [
            {"type": t, "url": f"https://ca.test/chall/{i}", "token": token(i), "status": "pending"}
            for i, t in enumerate(types)
        ],
    }
    if wildcard:
        body["wildcard"] = True
    return messages.AuthorizationResource(
        body=messages.Authorization.from_json(body), uri="https://ca.test/a"
    )


KEY: JWKEC = _jwk(new_key_pem())


def test_plain_name_uses_http01() -> None:
    _challb, ch, _resp = AcmeIssuer._pick(authz("app.example.com", False, ("dns-01", "http-01")), KEY)
    assert ch.kind == "http-01" and ch.name == token(1)
    assert ch.value.startswith(token(1) + ".")  # key authorization: token.thumbprint


def test_wildcard_uses_dns01_at_the_base_name() -> None:
    _challb, ch, _resp = AcmeIssuer._pick(authz("example.com", True, ("http-01", "dns-01")), KEY)
    assert ch.kind == "dns-01"
    assert ch.name == "_acme-challenge.example.com."
    assert len(ch.value) == 43  # base64url(sha256(key authorization)) without padding


def test_no_usable_challenge_is_an_error() -> None:
    with pytest.raises(AcmeError, match="offers no http-01"):
        AcmeIssuer._pick(authz("app.example.com", False, ("tls-alpn-01",)), KEY)
