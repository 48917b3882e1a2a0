"""The SDK's builder path in async code: ``listen()`` binds with no upstream (streams are refused, which
the edge shows as ERR_NGROK_8012) and ``listener.forward(addr)`` starts serving without a rebind."""

from __future__ import annotations

import pytest

import hatchway
from hatchway.errors import StreamResetError
from hatchway.wire.frames import ErrorCode

from conftest import TOKEN, App, Edge
from helpers import proxy_get


async def test_listen_then_forward(edge: Edge, http_app: App) -> None:
    session = (
        await hatchway.SessionBuilder().authtoken(TOKEN).server_addr(edge.addr).ca_cert(edge.ca_pem).connect()
    )
    listener = await session.http_endpoint().domain("sdk-listen.example.test").metadata("m1").listen()
    try:
        assert listener.url() == "https://sdk-listen.example.test"
        assert edge.registry.binds[-1].extra.metadata == "m1"
        found = edge.registry.lookup("sdk-listen.example.test")
        assert found is not None
        with pytest.raises(StreamResetError) as info:
            await proxy_get(*found, "/before")
        assert info.value.mux_code == ErrorCode.STREAM_REFUSED
        listener.forward(http_app.port)
        assert listener.forwards_to() == f"http://localhost:{http_app.port}"
        answer = await proxy_get(*found, "/after")
        assert answer.endswith(b"hello from the local app: /after")
        assert len(edge.registry.binds) == 1  # forward() did not rebind
    finally:
        await listener.close()
    await edge.registry.wait_for(lambda: edge.registry.lookup("sdk-listen.example.test") is None)


async def test_forward_rejects_unknown_options(edge: Edge) -> None:
    with pytest.raises(TypeError, match="no_such_option"):
        hatchway.forward(8080, server_addr=edge.addr, authtoken=TOKEN, no_such_option=1)
