"""The agent's built-in file server for ``file://`` upstreams: HTTP/1.1 (h11) served on a proxy stream.

One ``serve_files`` call serves one proxy stream: sequential keep-alive requests until the edge's FIN.
GET and HEAD only; a directory answers with its ``index.html`` or an HTML listing; files carry
Content-Type, Content-Length, Last-Modified, ETag and Accept-Ranges, honour a single byte range and
If-None-Match / If-Modified-Since. Bodies are streamed in 64 KiB reads done off the event loop.

Rules: nothing outside the root is ever served or listed — ``..`` that would climb above the root and
symlinks that resolve outside it are a 404, like a missing file. Only regular files are opened (never a
FIFO or device, which could block). This module never dials anything and never buffers a whole file.
"""

from __future__ import annotations

import asyncio
import email.utils
import html
import mimetypes
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import quote, unquote_to_bytes

import h11

from hatchway.errors import SessionClosedError, StreamResetError
from hatchway.net.transport import MuxStream
from hatchway.wire.frames import ErrorCode

CHUNK = 64 * 1024
#: The request head may be as large as ngrok allows (1 MB).
MAX_HEAD = 1 << 20
ALLOW = b"GET, HEAD"
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)

Headers = list[tuple[bytes, bytes]]


class Unsatisfiable(Exception):
    """A single byte range that lies wholly outside the file (answered with 416)."""


def resolve(root: str, url_path: str) -> str | None:
    """The real filesystem path for ``url_path`` (percent-encoded, no query), or None if it escapes.

    ``root`` must already be a real path (``os.path.realpath``). ``.`` and empty segments are dropped,
    ``..`` goes up one level but never above the root, and the result is resolved through symlinks and
    checked to lie inside the root. The path need not exist.
    """
    raw = unquote_to_bytes(url_path)
    if b"\x00" in raw:
        return None
    parts: list[str] = []
    for seg in os.fsdecode(raw).split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if not parts:
                return None
            parts.pop()
            continue
        if os.sep in seg or (os.altsep and os.altsep in seg) or os.path.splitdrive(seg)[0]:
            return None  # a separator of this OS or a drive letter inside one URL segment
        parts.append(seg)
    real = os.path.realpath(os.path.join(root, *parts))
    return real if _inside(root, real) else None


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """The inclusive ``(first, last)`` byte positions of a single ``bytes=`` range, or None for "whole file".

    None also covers what RFC 9110 says to ignore: another unit, a malformed header, several ranges
    (answered with the whole file). A well-formed range that selects nothing raises ``Unsatisfiable``.
    """
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    first_s, last_s = first_s.strip(), last_s.strip()
    if not dash or not (first_s.isdigit() or last_s.isdigit()):
        return None
    if not first_s:  # suffix: the last n bytes
        if not last_s.isdigit():
            return None
        n = int(last_s)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - n), size - 1
    if not first_s.isdigit() or (last_s and not last_s.isdigit()):
        return None
    first = int(first_s)
    last = int(last_s) if last_s else max(first, size - 1)
    if last < first:
        return None  # syntactically invalid: ignored
    if first >= size:
        raise Unsatisfiable
    return first, min(last, size - 1)


def listing_html(url_path: str, entries: Iterable[tuple[str, bool]]) -> bytes:
    """An HTML directory listing in ``<pre>``: ``entries`` are (name, is_directory) pairs."""
    title = html.escape(_display(unquote_to_bytes(url_path)), quote=False)
    lines = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>Directory listing for {title}</title></head>",
        f"<body><h1>Directory listing for {title}</h1><hr><pre>",
    ]
    if url_path != "/":
        lines.append('<a href="../">../</a>')
    for name, is_dir in sorted(entries, key=lambda e: (e[0].lower(), e[0])):
        slash = "/" if is_dir else ""
        href = quote(os.fsencode(name)) + slash
        text = html.escape(_display(os.fsencode(name)), quote=False) + slash
        lines.append(f'<a href="{html.escape(href)}">{text}</a>')
    lines.append("</pre><hr></body></html>\n")
    return "\n".join(lines).encode("utf-8")


def _display(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def etag_for(st: os.stat_result) -> bytes:
    return b'"%x-%x"' % (st.st_mtime_ns, st.st_size)


def not_modified(request: dict[bytes, bytes], etag: bytes, mtime: float) -> bool:
    """RFC 9110 §13.2.2 for GET/HEAD: If-None-Match wins; If-Modified-Since only without it."""
    inm = request.get(b"if-none-match")
    if inm is not None:
        tags = {t.strip().removeprefix(b"W/") for t in inm.split(b",")}
        return b"*" in tags or etag.removeprefix(b"W/") in tags
    ims = request.get(b"if-modified-since")
    if ims is None:
        return False
    try:
        since = email.utils.parsedate_to_datetime(ims.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
    return int(mtime) <= since


def _now() -> bytes:
    return email.utils.formatdate(usegmt=True).encode()


class _Server:
    """State for one proxy stream: the h11 connection and the (real) root."""

    def __init__(self, root: str, stream: MuxStream) -> None:
        self.root = os.path.realpath(root)
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)

    async def run(self, first: bytes) -> None:
        conn = self.h11
        if first:
            conn.receive_data(first)
        try:
            while True:
                event = await self._next()
                if not isinstance(event, h11.Request):
                    break  # ConnectionClosed: the edge is done with this stream
                while not isinstance(await self._next(), (h11.EndOfMessage, h11.ConnectionClosed)):
                    pass  # a request body means nothing here: read it and drop it
                if not await self._handle(event):
                    return  # the response broke off midway; the stream was reset
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break  # Connection: close (either side)
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                status = exc.error_status_hint
                await self._simple(status, f"{HTTPStatus(status).phrase}: {exc}\n", close=True)
        except (StreamResetError, SessionClosedError):
            return
        await self.stream.write_eof()

    async def _next(self) -> h11.Event:
        conn = self.h11
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    await self._send(h11.InformationalResponse(status_code=100, headers=[]))
                conn.receive_data(await self.stream.read())
            elif event is h11.PAUSED:
                # An Upgrade/CONNECT proposal after its EndOfMessage: we never switch, so nothing more.
                return h11.ConnectionClosed()
            else:
                assert isinstance(event, h11.Event)
                return event

    async def _send(self, *events: h11.Event) -> None:
        data = b"".join(self.h11.send(e) or b"" for e in events)
        if data:
            await self.stream.write(data)

    async def _simple(
        self, status: int, text: str, extra: Headers | None = None, *, head: bool = False, close: bool = False
    ) -> None:
        body = text.encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"date", _now()),
            *(extra or []),
        ]
        if close:
            headers.append((b"connection", b"close"))
        response = h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase)
        if head:
            await self._send(response, h11.EndOfMessage())
        else:
            await self._send(response, h11.Data(data=body), h11.EndOfMessage())

    async def _handle(self, req: h11.Request) -> bool:
        """Answer one request; False when the response could not be completed (the stream was reset)."""
        if req.method not in (b"GET", b"HEAD"):
            await self._simple(405, "Method Not Allowed\n", [(b"allow", ALLOW)])
            return True
        head = req.method == b"HEAD"
        target = req.target.decode("ascii", "replace")
        if "://" in target and not target.startswith("/"):  # absolute-form: keep the path
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        raw_path, _, query = target.partition("#")[0].partition("?")
        loop = asyncio.get_running_loop()
        # Path resolution, stat, listing and open touch the disk: keep them off the event loop.
        pending = loop.run_in_executor(None, locate, self.root, raw_path)
        try:
            found = await pending
        except asyncio.CancelledError:
            pending.add_done_callback(_close_found)
            raise
        if found.kind == "file":
            try:
                return await self._file(found, req, head)
            finally:
                os.close(found.fd)
        if found.kind == "redirect":
            # "//evil.example/x" must not become a scheme-relative redirect.
            location = "/" + raw_path.lstrip("/") + "/" + (f"?{query}" if query else "")
            await self._simple(301, "Moved Permanently\n", [(b"location", location.encode())], head=head)
        elif found.kind == "listing":
            headers = [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", b"%d" % len(found.body)),
                (b"date", _now()),
            ]
            response = h11.Response(status_code=200, headers=headers, reason=b"OK")
            await self._send(response, *([] if head else [h11.Data(data=found.body)]), h11.EndOfMessage())
        elif found.kind == "forbidden":
            await self._simple(403, "Forbidden\n", head=head)
        else:
            await self._simple(404, "Not Found\n", head=head)
        return True

    async def _file(self, found: Found, req: h11.Request, head: bool) -> bool:
        st = found.st
        assert st is not None
        size = st.st_size
        etag = etag_for(st)
        modified = email.utils.formatdate(st.st_mtime, usegmt=True).encode()
        common = [(b"etag", etag), (b"last-modified", modified), (b"date", _now())]
        request = {name: value for name, value in req.headers}
        if not_modified(request, etag, st.st_mtime):
            not_mod = h11.Response(status_code=304, headers=common, reason=b"Not Modified")
            await self._send(not_mod, h11.EndOfMessage())
            return True
        first, last = 0, size - 1
        status = 200
        range_value = request.get(b"range")
        if_range = request.get(b"if-range")
        if range_value is not None and (if_range is None or if_range in (etag, modified)):
            try:
                chosen = parse_range(range_value.decode("latin-1"), size)
            except Unsatisfiable:
                extra = [(b"content-range", b"bytes */%d" % size), *common]
                await self._simple(416, "Range Not Satisfiable\n", extra, head=head)
                return True
            if chosen is not None:
                first, last = chosen
                status = 206
        ctype = mimetypes.guess_type(found.path)[0] or "application/octet-stream"
        headers = [
            (b"content-type", ctype.encode()),
            (b"content-length", b"%d" % (last - first + 1)),
            (b"accept-ranges", b"bytes"),
            *common,
        ]
        if status == 206:
            headers.append((b"content-range", b"bytes %d-%d/%d" % (first, last, size)))
        await self._send(h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase))
        if not head and not await self._body(found.fd, first, last - first + 1):
            return False
        await self._send(h11.EndOfMessage())
        return True

    async def _body(self, fd: int, offset: int, length: int) -> bool:
        """Stream ``length`` bytes from ``offset``; False (stream reset) if the file shrank meanwhile."""
        loop = asyncio.get_running_loop()
        while length > 0:
            data = await loop.run_in_executor(None, _pread, fd, min(CHUNK, length), offset)
            if not data:
                self.stream.reset(ErrorCode.STREAM_RESET)  # Content-Length promised more than there is
                return False
            offset += len(data)
            length -= len(data)
            await self._send(h11.Data(data=data))
        return True


@dataclass
class Found:
    """What a URL path names under the root: ``kind`` is missing, forbidden, redirect, listing or file.

    For ``file`` the file is already open as ``fd`` (the caller closes it) and ``st`` is its ``fstat``;
    for ``listing`` ``body`` holds the HTML.
    """

    kind: str
    path: str = ""
    fd: int = -1
    st: os.stat_result | None = None
    body: bytes = b""


def locate(root: str, url_path: str) -> Found:
    """Resolve ``url_path`` under the real path ``root`` and open or list what it names (blocking)."""
    path = resolve(root, url_path) if url_path.startswith("/") else None
    if path is None:
        return Found("missing")
    try:
        st = os.stat(path)
    except OSError:
        return Found("missing")
    if stat.S_ISDIR(st.st_mode):
        if not url_path.endswith("/"):
            return Found("redirect")
        index = os.path.realpath(os.path.join(path, "index.html"))
        if _inside(root, index) and os.path.isfile(index):
            return _open(index)
        try:
            with os.scandir(path) as it:
                entries = [(e.name, _is_dir(e)) for e in it]
        except PermissionError:
            return Found("forbidden")
        except OSError:
            return Found("missing")
        return Found("listing", path, body=listing_html(url_path, entries))
    if url_path.endswith("/") or not stat.S_ISREG(st.st_mode):
        return Found("missing")
    return _open(path)


def _open(path: str) -> Found:
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except PermissionError:
        return Found("forbidden")
    except OSError:
        return Found("missing")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # swapped for something else since the stat
        os.close(fd)
        return Found("missing")
    return Found("file", path, fd, st)


def _close_found(fut: asyncio.Future[Found]) -> None:
    if not fut.cancelled() and fut.exception() is None and fut.result().fd >= 0:
        os.close(fut.result().fd)


def _pread(fd: int, n: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - Windows has no pread
    return os.read(fd, n)  # pragma: no cover


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


async def serve_files(root: str, stream: MuxStream, first: bytes = b"") -> None:
    """Serve the directory ``root`` over one proxy stream until the edge finishes it.

    ``first`` is what the session already read after the ProxyHeader (the start of the first request).
    """
    await _Server(root, stream).run(first)
