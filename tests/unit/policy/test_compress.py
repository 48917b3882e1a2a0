"""compress-response and the streaming encoders: what a client decodes, which coding it gets, and when not.

Every compressed stream is checked with the real decoders (zlib, brotli, zstandard), whole and chunk by
chunk, so "the client can read each flushed chunk as it arrives" is tested, not assumed.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable
from typing import Any

import brotli
import pytest
import zstandard

from hatchway.policy import compress
from hatchway.policy.actions import compress_response
from hatchway.policy.model import (
    Conn,
    EndpointInfo,
    Exchange,
    HttpRequest,
    HttpResponse,
    LiteralEnv,
    PolicyError,
)

PATH = "on_http_response[0].actions[0]"
TEXT = b"".join(b"line %d: the quick brown fox jumps over the lazy dog\n" % i for i in range(5000))


# ---- encoders -----------------------------------------------------------------------------------------
def decode_all(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "deflate":
        return zlib.decompress(data)  # RFC 9110 "deflate" is the zlib format
    if coding == "br":
        out: bytes = brotli.decompress(data)
        return out
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def stream_decoder(coding: str) -> Callable[[bytes], bytes]:
    """A decoder fed piece by piece, returning what each piece makes readable."""
    if coding in ("gzip", "deflate"):
        return zlib.decompressobj(31 if coding == "gzip" else 15).decompress
    if coding == "br":
        return brotli.Decompressor().process  # type: ignore[no-any-return]
    return zstandard.ZstdDecompressor().decompressobj().decompress


@pytest.mark.parametrize("coding", compress.CODINGS)
def test_one_big_feed_round_trips_and_shrinks(coding: str) -> None:
    enc = compress.new_encoder(coding)
    assert enc.coding == coding
    out = enc.feed(TEXT) + enc.finish()
    assert decode_all(coding, out) == TEXT
    assert len(out) < len(TEXT) // 5


@pytest.mark.parametrize("coding", compress.CODINGS)
def test_many_small_feeds_are_each_readable_as_soon_as_sent(coding: str) -> None:
    enc = compress.new_encoder(coding)
    decode = stream_decoder(coding)
    sent = b""
    body = TEXT[:20_000]
    for i in range(0, len(body), 7):
        piece = body[i : i + 7]
        chunk = enc.feed(piece)
        assert chunk  # flushed: something goes out for every piece (server-sent events need this)
        assert decode(chunk) == piece
        sent += chunk
    sent += enc.finish()
    assert decode_all(coding, sent) == body


@pytest.mark.parametrize("coding", compress.CODINGS)
def test_unflushed_feeds_and_empty_feeds(coding: str) -> None:
    enc = compress.new_encoder(coding)
    out = enc.feed(b"")  # nothing to say yet: no empty flush block
    assert out == b""
    out += enc.feed(TEXT[:1000], flush=False)
    out += enc.feed(TEXT[1000:3000], flush=False)
    flushed = out + enc.feed(b"")  # an empty feed flushes what is pending
    assert stream_decoder(coding)(flushed) == TEXT[:3000]
    out = flushed + enc.finish()
    assert enc.finish() == b""  # idempotent
    assert decode_all(coding, out) == TEXT[:3000]
    with pytest.raises(ValueError):
        enc.feed(b"more")


@pytest.mark.parametrize("coding", compress.CODINGS)
def test_incompressible_and_empty_bodies(coding: str) -> None:
    noise = os.urandom(300_000)
    enc = compress.new_encoder(coding)
    out = b"".join(enc.feed(noise[i : i + 65536]) for i in range(0, len(noise), 65536)) + enc.finish()
    assert decode_all(coding, out) == noise
    empty = compress.new_encoder(coding)
    assert decode_all(coding, empty.finish()) == b""


def test_unknown_coding_is_refused() -> None:
    with pytest.raises(ValueError):
        compress.new_encoder("compress")


# ---- negotiation ----------------------------------------------------------------------------------------
ALL = ("gzip", "deflate", "br", "zstd")


@pytest.mark.parametrize(
    ("accept", "offered", "chosen"),
    [
        (None, ALL, None),  # no header: leave the body alone
        ("", ALL, None),
        ("identity", ALL, None),
        ("gzip, deflate, br, zstd", ALL, "gzip"),  # ties go to the configured order
        ("gzip, deflate, br, zstd", ("br", "gzip"), "br"),
        ("gzip;q=1.0, br; q=0.5, *;q=0", ALL, "gzip"),  # ngrok's documented example
        ("gzip;q=0.5, br;q=0.9", ALL, "br"),
        ("gzip;q=0, deflate", ALL, "deflate"),  # q=0 excludes
        ("GZIP;Q=0, *", ALL, "deflate"),  # case-insensitive; * stands for the unnamed ones
        ("*", ("zstd", "br"), "zstd"),
        ("*;q=0.1, br;q=0.2", ALL, "br"),
        ("*;q=0", ALL, None),
        ("br;q=0, zstd;q=0", ("br", "zstd"), None),
        ("x-gzip", ALL, "gzip"),
        ("compress, br;q=0.5", ALL, "br"),  # LZW is never produced
        ("gzip;q=abc, deflate;q=0.3", ALL, "deflate"),  # an unparseable q drops the element
        ("gzip;q=2, deflate;q=0.3", ALL, "deflate"),
        ("br;q=0.8;level=9, gzip;q=0.7", ALL, "br"),
        ("gzip;q=0, gzip;q=1", ALL, None),  # the first mention counts
    ],
)
def test_negotiate(accept: str | None, offered: tuple[str, ...], chosen: str | None) -> None:
    assert compress.negotiate(accept, offered) == chosen


@pytest.mark.parametrize(
    ("content_type", "skip"),
    [
        (None, False),
        ("text/html; charset=utf-8", False),
        ("application/json", False),
        ("image/svg+xml", False),
        ("text/event-stream", False),
        ("image/png", True),
        ("IMAGE/JPEG", True),
        ("video/mp4", True),
        ("audio/ogg", True),
        ("application/zip", True),
        ("application/gzip", True),
        ("application/zstd", True),
        ("font/woff2", True),
        ("application/octet-stream", True),
    ],
)
def test_precompressed_types(content_type: str | None, skip: bool) -> None:
    assert compress.is_precompressed(content_type) is skip


# ---- the action ----------------------------------------------------------------------------------------
def action(**config: Any) -> compress_response.CompressResponse:
    return compress_response.compile(config, PATH, LiteralEnv(), "on_http_response")


def exchange(
    req_headers: list[tuple[str, str]] | None = None,
    res_headers: list[tuple[str, str]] | None = None,
    status: int = 200,
    method: str = "GET",
) -> Exchange:
    if req_headers is None:
        req_headers = [("Accept-Encoding", "gzip, deflate, br, zstd")]
    if res_headers is None:
        res_headers = [("Content-Type", "text/html"), ("Content-Length", "5000")]
    return Exchange(
        conn=Conn("203.0.113.7", 50123),
        endpoint=EndpointInfo("ep_1", "https://a.test", "a.test", 443, "https"),
        req=HttpRequest(method, "https", "a.test", 443, "/", "", "1.1", req_headers),
        res=HttpResponse(status, res_headers),
    )


def test_compressing_rewrites_the_response_head() -> None:
    ex = exchange(
        res_headers=[
            ("Content-Type", "application/json"),
            ("Content-Length", "5000"),
            ("ETag", '"v1"'),
            ("Vary", "Origin"),
            ("Accept-Ranges", "bytes"),
        ]
    )
    assert action().run(ex) is None
    assert ex.compress == "gzip"
    assert ex.res is not None
    assert ex.res.headers == [
        ("Content-Type", "application/json"),
        ("ETag", 'W/"v1"'),
        ("Vary", "Origin, Accept-Encoding"),
        ("Content-Encoding", "gzip"),
    ]
    assert ex.results["compress"] == {"already_compressed": False, "negotiated_algorithm": "gzip"}
    assert ex.results["compress_response"] is ex.results["compress"]


def test_vary_is_added_once_and_weak_etags_stay() -> None:
    ex = exchange(res_headers=[("etag", 'W/"v1"')])
    action().run(ex)
    assert ex.res is not None
    assert ex.res.headers == [("etag", 'W/"v1"'), ("Vary", "Accept-Encoding"), ("Content-Encoding", "gzip")]
    ex = exchange(res_headers=[("Vary", "accept-encoding, Cookie")])
    action().run(ex)
    assert ex.res is not None
    assert ex.res.header_values("vary") == ["accept-encoding, Cookie"]


def test_algorithm_order_in_config_breaks_ties() -> None:
    ex = exchange()
    action(algorithms=["zstd", "br"]).run(ex)
    assert ex.compress == "zstd"
    ex = exchange([("Accept-Encoding", "gzip, br;q=0")])
    action(algorithms=["br"]).run(ex)
    assert ex.compress == ""
    assert ex.results["compress"]["negotiated_algorithm"] == ""


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"req_headers": []}, "no Accept-Encoding"),
        ({"req_headers": [("Accept-Encoding", "gzip;q=0, deflate;q=0, br;q=0, zstd;q=0")]}, "q=0"),
        ({"res_headers": [("Content-Encoding", "br")]}, "already encoded"),
        ({"method": "HEAD"}, "HEAD"),
        ({"status": 204}, "no body"),
        ({"status": 304}, "not modified"),
        ({"status": 101}, "switching protocols"),
        ({"status": 206, "res_headers": [("Content-Range", "bytes 0-9/100")]}, "a range"),
        ({"res_headers": [("Content-Range", "bytes */100")]}, "Content-Range"),
        ({"res_headers": [("Cache-Control", "public, no-transform")]}, "no-transform"),
        ({"res_headers": [("Content-Length", "0")]}, "empty body"),
        ({"res_headers": [("Content-Type", "image/webp")]}, "already compressed type"),
    ],
)
def test_left_alone(kwargs: dict[str, Any], why: str) -> None:
    ex = exchange(**kwargs)
    assert ex.res is not None
    before = list(ex.res.headers)
    assert action().run(ex) is None
    assert ex.compress == "", why
    assert ex.res.headers == before, why


def test_already_compressed_is_reported() -> None:
    ex = exchange(res_headers=[("Content-Encoding", "gzip")])
    action().run(ex)
    assert ex.results["compress"] == {"already_compressed": True, "negotiated_algorithm": ""}


def test_a_second_action_does_not_compress_twice() -> None:
    ex = exchange()
    action().run(ex)
    action(algorithms=["br"]).run(ex)
    assert ex.compress == "gzip"
    assert ex.res is not None and ex.res.header_values("content-encoding") == ["gzip"]


def test_accept_encoding_over_several_header_lines() -> None:
    ex = exchange([("Accept-Encoding", "gzip;q=0.1"), ("accept-encoding", "zstd")])
    action().run(ex)
    assert ex.compress == "zstd"


def test_config_compress_is_accepted_but_never_chosen() -> None:
    a = action(algorithms=["compress", "deflate", "GZIP", "deflate"])
    assert a.algorithms == ("deflate", "gzip")
    ex = exchange([("Accept-Encoding", "compress, gzip;q=0.5")])
    a.run(ex)
    assert ex.compress == "gzip"


def test_default_algorithms() -> None:
    assert action().algorithms == ("gzip", "deflate", "br", "zstd")


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"algorithms": ["gzip", "lzma"]}, "algorithms[1]: unsupported algorithm 'lzma'"),
        ({"algorithms": []}, "algorithms: must not be empty"),
        ({"algorithms": ["compress"]}, "algorithms: 'compress' (LZW) is not implemented"),
        ({"algorithms": "gzip"}, "algorithms: must be a list of strings"),
        ({"level": 9}, "level: unknown field"),
    ],
)
def test_bad_configs_are_refused_with_the_path(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(PolicyError) as err:
        action(**config)
    assert any(str(p).startswith(f"{PATH}.config.{problem}") for p in err.value.problems), err.value.problems
