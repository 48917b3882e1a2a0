"""The ``file://`` server (``hatchway.agent.fileserver``) driven through an in-memory stream.

``FakeStream`` stands in for a ``MuxStream``: it hands the server the request bytes (then EOF, like the
edge's FIN) and records what the server writes. Covers listings, index.html, redirects, headers, Range
(206/416/ignored), conditional 304s, 405, HEAD, keep-alive, traversal attempts (plain, percent-encoded,
NUL) and symlinks that lead outside the root, plus the pure helpers ``resolve`` and ``parse_range``.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from hatchway.agent import fileserver
from hatchway.agent.fileserver import Unsatisfiable, parse_range, resolve, serve_files

WAIT = 10.0


class FakeStream:
    """Just enough of ``MuxStream`` for a server: scripted reads, recorded writes."""

    def __init__(self, *chunks: bytes) -> None:
        self.incoming = collections.deque(chunks)
        self.out = bytearray()
        self.writes: list[int] = []
        self.eof_sent = False
        self.reset_code: int | None = None

    async def read(self, n: int = -1) -> bytes:
        return self.incoming.popleft() if self.incoming else b""

    async def write(self, data: bytes, fin: bool = False) -> None:
        assert not self.eof_sent, "write after FIN"
        self.out += data
        self.writes.append(len(data))

    async def write_eof(self) -> None:
        self.eof_sent = True

    def reset(self, code: int) -> None:
        self.reset_code = code


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_responses(data: bytes, methods: list[str]) -> list[Resp]:
    """Split the server's output into responses (every one of ours is Content-Length framed)."""
    out: list[Resp] = []
    pos = 0
    i = 0
    while pos < len(data):
        end = data.index(b"\r\n\r\n", pos)
        lines = data[pos:end].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        pos = end + 4
        if status < 200:
            continue  # 100 Continue
        n = 0 if methods[i] == "HEAD" or status == 304 else int(headers.get("content-length", "0"))
        out.append(Resp(status, headers, data[pos : pos + n]))
        pos += n
        i += 1
    return out


def req(target: str, method: str = "GET", *headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: files.example", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def serve(root: Path, *requests: bytes | tuple[str, ...], split: bool = False) -> list[Resp]:
    """Send ``requests`` on one stream; a tuple is (target, method, *headers). Returns the responses."""
    raw = [r if isinstance(r, bytes) else req(*r) for r in requests]
    methods = [r.split(b" ", 1)[0].decode() for r in raw]
    stream = FakeStream(*(raw if split else [b"".join(raw)]))
    async with asyncio.timeout(WAIT):
        await serve_files(str(root), stream)  # type: ignore[arg-type]
    assert stream.eof_sent
    return parse_responses(bytes(stream.out), methods)


async def get(root: Path, target: str, *headers: str, method: str = "GET") -> Resp:
    (resp,) = await serve(root, (target, method, *headers))
    return resp


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """tmp/root with files and a sub directory; tmp/secret.txt and tmp/outside/ lie outside the root."""
    r = tmp_path / "root"
    r.mkdir()
    (r / "hello.txt").write_bytes(b"0123456789abcdef")
    (r / "page.html").write_text("<p>hi</p>")
    (r / "data.bin").write_bytes(bytes(range(256)))
    (r / "we ird&<name>.txt").write_text("odd")
    (r / "sub").mkdir()
    (r / "sub" / "inner.txt").write_text("inner")
    (r / "site").mkdir()
    (r / "site" / "index.html").write_text("<h1>index</h1>")
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.txt").write_text("TOP SECRET")
    return r


# ---- pure helpers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        ("bytes=0-3", 10, (0, 3)),
        ("bytes=5-", 10, (5, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-30", 10, (0, 9)),
        ("bytes=2-100", 10, (2, 9)),
        ("bytes=9-9", 10, (9, 9)),
        ("bytes=0-1,3-4", 10, None),
        ("bytes=4-2", 10, None),
        ("bytes=abc", 10, None),
        ("bytes=1-x", 10, None),
        ("items=0-1", 10, None),
        ("0-1", 10, None),
    ],
)
def test_parse_range(value: str, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(value, size) == expected


@pytest.mark.parametrize(
    ("value", "size"), [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10), ("bytes=-5", 0)]
)
def test_parse_range_unsatisfiable(value: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(value, size)


def test_resolve_keeps_paths_inside_the_root(root: Path) -> None:
    real = os.path.realpath(root)
    assert resolve(real, "/hello.txt") == os.path.join(real, "hello.txt")
    assert resolve(real, "/sub/../hello.txt") == os.path.join(real, "hello.txt")
    assert resolve(real, "/./sub//inner.txt") == os.path.join(real, "sub", "inner.txt")
    assert resolve(real, "/we%20ird%26%3Cname%3E.txt") == os.path.join(real, "we ird&<name>.txt")
    assert resolve(real, "/") == real
    for bad in (
        "/..",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/sub/../../secret.txt",
        "/a%00b",
        "/%2E%2E%2Fsecret.txt",
    ):
        assert resolve(real, bad) is None, bad


# ---- directories -----------------------------------------------------------------------------------------
async def test_directory_listing_escapes_and_quotes_names(root: Path) -> None:
    resp = await get(root, "/")
    assert resp.status == 200
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    body = resp.body.decode()
    assert "<pre>" in body
    assert '<a href="hello.txt">hello.txt</a>' in body
    assert '<a href="sub/">sub/</a>' in body
    assert '<a href="we%20ird%26%3Cname%3E.txt">we ird&amp;&lt;name&gt;.txt</a>' in body
    assert "../" not in body  # no parent link at the root
    assert int(resp.headers["content-length"]) == len(resp.body)


async def test_sub_directory_listing_has_a_parent_link(root: Path) -> None:
    resp = await get(root, "/sub/")
    assert resp.status == 200
    assert '<a href="../">../</a>' in resp.body.decode()
    assert '<a href="inner.txt">inner.txt</a>' in resp.body.decode()


async def test_index_html_is_served_for_its_directory(root: Path) -> None:
    resp = await get(root, "/site/")
    assert resp.status == 200
    assert resp.body == b"<h1>index</h1>"
    assert resp.headers["content-type"] == "text/html"


async def test_directory_without_slash_redirects(root: Path) -> None:
    resp = await get(root, "/sub?x=1")
    assert resp.status == 301
    assert resp.headers["location"] == "/sub/?x=1"
    (root / "evil.example").mkdir()
    resp = await get(root, "//evil.example")
    assert resp.status == 301
    assert resp.headers["location"] == "/evil.example/"  # never scheme-relative


# ---- files -----------------------------------------------------------------------------------------------
async def test_file_headers_and_body(root: Path) -> None:
    resp = await get(root, "/hello.txt?ignored=1")
    assert resp.status == 200
    assert resp.body == b"0123456789abcdef"
    h = resp.headers
    assert h["content-type"] == "text/plain"
    assert h["content-length"] == "16"
    assert h["accept-ranges"] == "bytes"
    assert h["etag"].startswith('"')
    mtime = (root / "hello.txt").stat().st_mtime
    assert h["last-modified"] == email.utils.formatdate(mtime, usegmt=True)
    unknown = await get(root, "/data.bin")
    assert unknown.headers["content-type"] == "application/octet-stream"
    assert unknown.body == bytes(range(256))


async def test_percent_encoded_names(root: Path) -> None:
    resp = await get(root, "/we%20ird%26%3Cname%3E.txt")
    assert (resp.status, resp.body) == (200, b"odd")


async def test_missing_and_file_with_trailing_slash_are_404(root: Path) -> None:
    assert (await get(root, "/nope.txt")).status == 404
    assert (await get(root, "/hello.txt/")).status == 404


async def test_head_sends_headers_only_and_keeps_the_connection(root: Path) -> None:
    head, after = await serve(root, ("/hello.txt", "HEAD"), ("/sub/inner.txt",))
    assert head.status == 200
    assert head.headers["content-length"] == "16"
    assert head.body == b""
    assert (after.status, after.body) == (200, b"inner")


async def test_other_methods_get_405_with_allow(root: Path) -> None:
    post = b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    resp, after = await serve(root, post, ("/hello.txt",))
    assert resp.status == 405
    assert resp.headers["allow"] == "GET, HEAD"
    assert after.status == 200  # the request body was read and dropped; keep-alive goes on
    assert (await get(root, "/hello.txt", method="DELETE")).status == 405


# ---- ranges ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "content_range", "body"),
    [
        ("bytes=0-3", "bytes 0-3/16", b"0123"),
        ("bytes=10-", "bytes 10-15/16", b"abcdef"),
        ("bytes=-4", "bytes 12-15/16", b"cdef"),
        ("bytes=14-99", "bytes 14-15/16", b"ef"),
    ],
)
async def test_single_range_is_206(root: Path, spec: str, content_range: str, body: bytes) -> None:
    resp = await get(root, "/hello.txt", f"Range: {spec}")
    assert resp.status == 206
    assert resp.headers["content-range"] == content_range
    assert resp.headers["content-length"] == str(len(body))
    assert resp.body == body


@pytest.mark.parametrize("spec", ["bytes=16-", "bytes=99-100", "bytes=-0"])
async def test_unsatisfiable_range_is_416(root: Path, spec: str) -> None:
    resp = await get(root, "/hello.txt", f"Range: {spec}")
    assert resp.status == 416
    assert resp.headers["content-range"] == "bytes */16"


@pytest.mark.parametrize("spec", ["bytes=0-1,4-5", "bytes=zz", "pages=1-2"])
async def test_multiple_or_odd_ranges_get_the_whole_file(root: Path, spec: str) -> None:
    resp = await get(root, "/hello.txt", f"Range: {spec}")
    assert (resp.status, resp.body) == (200, b"0123456789abcdef")


async def test_if_range_mismatch_gets_the_whole_file(root: Path) -> None:
    etag = (await get(root, "/hello.txt")).headers["etag"]
    assert (await get(root, "/hello.txt", "Range: bytes=0-1", f"If-Range: {etag}")).status == 206
    resp = await get(root, "/hello.txt", "Range: bytes=0-1", 'If-Range: "other"')
    assert resp.status == 200


# ---- conditional requests --------------------------------------------------------------------------------
async def test_if_none_match_and_if_modified_since_give_304(root: Path) -> None:
    first = await get(root, "/hello.txt")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    resp = await get(root, "/hello.txt", f"If-None-Match: {etag}")
    assert resp.status == 304
    assert resp.body == b""
    assert resp.headers["etag"] == etag
    assert (await get(root, "/hello.txt", f'If-None-Match: "x", W/{etag}')).status == 304
    assert (await get(root, "/hello.txt", "If-None-Match: *")).status == 304
    assert (await get(root, "/hello.txt", f"If-Modified-Since: {modified}")).status == 304
    assert (await get(root, "/hello.txt", 'If-None-Match: "other"')).status == 200
    old = email.utils.formatdate(0, usegmt=True)
    assert (await get(root, "/hello.txt", f"If-Modified-Since: {old}")).status == 200
    # If-None-Match wins over If-Modified-Since.
    assert (
        await get(root, "/hello.txt", 'If-None-Match: "other"', f"If-Modified-Since: {modified}")
    ).status == 200


# ---- never outside the root ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "target",
    [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/..%2Fsecret.txt",
        "/sub/..%2f..%2fsecret.txt",
        "/a%00b",
        "/../outside/x.txt",
    ],
)
async def test_traversal_attempts_are_404(root: Path, target: str) -> None:
    resp = await get(root, target)
    assert resp.status == 404
    assert b"SECRET" not in resp.body


async def test_symlinks_out_of_the_root_are_404(root: Path) -> None:
    (root / "leak.txt").symlink_to(root.parent / "secret.txt")
    (root / "leakdir").symlink_to(root.parent / "outside", target_is_directory=True)
    (root / "inside.txt").symlink_to(root / "hello.txt")
    (root / "trap").mkdir()
    (root / "trap" / "index.html").symlink_to(root.parent / "secret.txt")
    for target in ("/leak.txt", "/leakdir/", "/leakdir/x.txt", "/leakdir"):
        resp = await get(root, target)
        assert resp.status == 404, target
        assert b"SECRET" not in resp.body
    assert (await get(root, "/inside.txt")).body == b"0123456789abcdef"
    trap = await get(root, "/trap/")  # the index.html link is ignored: a listing instead
    assert trap.status == 200
    assert b"SECRET" not in trap.body


async def test_special_files_are_not_opened(root: Path) -> None:
    os.mkfifo(root / "pipe")
    assert (await get(root, "/pipe")).status == 404


# ---- the connection --------------------------------------------------------------------------------------
async def test_keep_alive_requests_split_across_reads(root: Path) -> None:
    responses = await serve(root, ("/hello.txt",), ("/sub/",), ("/nope",), split=True)
    assert [r.status for r in responses] == [200, 200, 404]


async def test_connection_close_ends_after_one_response(root: Path) -> None:
    responses = await serve(root, ("/hello.txt", "GET", "Connection: close"), ("/sub/",))
    assert [r.status for r in responses] == [200]


async def test_malformed_request_is_400(root: Path) -> None:
    stream = FakeStream(b"NOT HTTP AT ALL\r\n\r\n")
    async with asyncio.timeout(WAIT):
        await serve_files(str(root), stream)  # type: ignore[arg-type]
    assert stream.out.startswith(b"HTTP/1.1 400 ")
    assert stream.eof_sent


async def test_expect_100_continue_is_answered(root: Path) -> None:
    post = b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    stream = FakeStream(post, b"abc")
    async with asyncio.timeout(WAIT):
        await serve_files(str(root), stream)  # type: ignore[arg-type]
    assert stream.out.startswith(b"HTTP/1.1 100 ")
    assert b"HTTP/1.1 200 OK" in stream.out


async def test_large_files_are_streamed_in_bounded_chunks(root: Path) -> None:
    size = 8 * 1024 * 1024 + 5
    big = root / "big.bin"
    big.touch()
    os.truncate(big, size)  # sparse: no disk needed
    stream = FakeStream(req("/big.bin"))
    async with asyncio.timeout(WAIT):
        await serve_files(str(root), stream)  # type: ignore[arg-type]
    assert max(stream.writes) <= fileserver.CHUNK + 1024
    head, _, body = bytes(stream.out).partition(b"\r\n\r\n")
    assert f"content-length: {size}".encode() in head.lower()
    assert len(body) == size


async def test_a_file_that_shrinks_midway_resets_the_stream(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (root / "shrinks.bin").write_bytes(b"x" * (3 * fileserver.CHUNK))
    real_pread = fileserver._pread

    def short_pread(fd: int, n: int, offset: int) -> bytes:
        return b"" if offset >= fileserver.CHUNK else real_pread(fd, n, offset)

    monkeypatch.setattr(fileserver, "_pread", short_pread)
    stream = FakeStream(req("/shrinks.bin"))
    async with asyncio.timeout(WAIT):
        await serve_files(str(root), stream)  # type: ignore[arg-type]
    assert stream.reset_code is not None
    assert not stream.eof_sent
