"""HTTP/1.1 response heads and body framing, bytes in and decisions out (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hatchway.http.h1 import (
    LAST_CHUNK,
    BodyDecoder,
    ChunkedScanner,
    Framing,
    H1Error,
    encode_chunk,
    parse_response_head,
    response_framing,
)


def test_head_parses_and_reports_its_size() -> None:
    raw = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A:  b \r\n\r\nhi"
    head = parse_response_head(raw)
    assert head is not None
    assert (head.version, head.status, head.reason) == (b"1.1", 201, b"Created")
    assert head.headers == [(b"Content-Length", b"2"), (b"X-A", b"b")]
    assert raw[head.size :] == b"hi"


def test_incomplete_head_waits_and_garbage_fails_early() -> None:
    assert parse_response_head(b"HTTP/1.1 200 OK\r\nA: b\r\n") is None
    with pytest.raises(H1Error):
        parse_response_head(b"this is not http at all")
    for bad in (
        b"HTTP/1.1 2000 X\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA b: c\r\n\r\n",
    ):
        with pytest.raises(H1Error):
            parse_response_head(bad)


@pytest.mark.parametrize(
    ("raw", "method", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"GET", (Framing.LENGTH, 5)),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"GET", (Framing.CHUNKED, 0)),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"GET",
            (Framing.CHUNKED, 0),
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", b"GET", (Framing.CLOSE, 0)),
        (b"HTTP/1.1 200 OK\r\n\r\n", b"GET", (Framing.CLOSE, 0)),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"HEAD", (Framing.NONE, 0)),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", b"GET", (Framing.NONE, 0)),
        (b"HTTP/1.1 304 Not Modified\r\n\r\n", b"GET", (Framing.NONE, 0)),
        (b"HTTP/1.1 100 Continue\r\n\r\n", b"POST", (Framing.NONE, 0)),
    ],
)
def test_framing_follows_rfc_9112(raw: bytes, method: bytes, expected: tuple[Framing, int]) -> None:
    head = parse_response_head(raw)
    assert head is not None
    assert response_framing(head, method) == expected


@pytest.mark.parametrize(
    "lengths",
    [
        b"Content-Length: 5\r\nContent-Length: 6",
        b"Content-Length: 5\r\nContent-Length: 5",  # refused even when equal: no room for smuggling
        b"Content-Length: -1",
        b"Content-Length: x",
        b"Content-Length: 9\r\nTransfer-Encoding: chunked",
    ],
)
def test_ambiguous_or_bad_lengths_are_errors(lengths: bytes) -> None:
    with pytest.raises(H1Error):
        head = parse_response_head(b"HTTP/1.1 200 OK\r\n" + lengths + b"\r\n\r\n")
        assert head is not None
        response_framing(head, b"GET")


@given(
    chunks=st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    cut=st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20),
)
def test_scanner_finds_the_end_through_any_split(chunks: list[bytes], cut: list[int]) -> None:
    wire = b"".join(encode_chunk(c) for c in chunks) + LAST_CHUNK
    tail = b"HTTP/1.1 200 OK\r\n"  # the next message must not be eaten
    data = wire + tail
    scanner = ChunkedScanner()
    pieces: list[memoryview] = []
    used = 0
    pos = 0
    i = 0
    while pos < len(data) and not scanner.done:
        step = cut[i % len(cut)]
        i += 1
        n = scanner.feed(data[pos : pos + step], pieces)
        used += n
        pos += step
    assert scanner.done
    assert used == len(wire)
    assert b"".join(bytes(p) for p in pieces) == b"".join(chunks)


def test_scanner_handles_extensions_and_trailers_and_rejects_garbage() -> None:
    s = ChunkedScanner()
    wire = b"3;name=val\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
    assert s.feed(wire) == len(wire) and s.done
    for bad in (b"zz\r\n", b"3\r\nabcdef\r\n", b"-1\r\n"):
        with pytest.raises(H1Error):
            ChunkedScanner().feed(bad)
    with pytest.raises(H1Error):
        ChunkedScanner().feed(b"1" * 5000)


@pytest.mark.parametrize(
    ("framing", "length", "feeds", "body", "clean"),
    [
        (Framing.LENGTH, 5, [b"he", b"llo"], b"hello", True),
        (Framing.LENGTH, 5, [b"hello!"], b"hello", False),  # more than announced: the stream is spoilt
        (Framing.CHUNKED, 0, [b"5\r\nhel", b"lo\r\n0\r\n\r\n"], b"hello", True),
        (Framing.CHUNKED, 0, [b"2\r\nhi\r\n0\r\n\r\nHTTP"], b"hi", False),
        (Framing.CLOSE, 0, [b"any", b"thing"], b"anything", False),
        (Framing.NONE, 0, [], b"", True),
    ],
)
def test_body_decoder_strips_framing_without_copying(
    framing: Framing, length: int, feeds: list[bytes], body: bytes, clean: bool
) -> None:
    decoder = BodyDecoder(framing, length)
    got = b""
    for data in feeds:
        assert not decoder.done
        for piece in decoder.feed(data):
            assert isinstance(piece, memoryview)
            got += piece
    if framing is Framing.CLOSE:
        assert not decoder.done
        decoder.feed_eof()
    assert decoder.done and got == body and decoder.clean is clean
