"""HTTP/1.1 message pieces the proxy needs, sans-IO: response heads and body framing.

The edge forwards response bodies as the upstream framed them (chunked bytes pass through untouched),
so it only needs to know where a message ends: ``parse_response_head`` reads the status line and
headers, ``response_framing`` applies RFC 9112 §6.3, and ``ChunkedScanner`` follows chunk boundaries
without copying data. Request heads come from httptools in the listener. Nothing here does I/O.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass, field

import httptools

from hatchway.http.headers import ERROR_CODE_HEADER, HOP_BY_HOP, Headers

MAX_HEAD = 1 << 20  # ngrok's limit on a header block (ngrok-reference.md §11)


class H1Error(ValueError):
    """The bytes are not valid HTTP/1.x (the proxy answers ERR_NGROK_3004 for an upstream)."""


@dataclass(slots=True)
class ResponseHead:
    version: bytes  # b"1.1" or b"1.0"
    status: int
    reason: bytes
    headers: Headers
    size: int  # bytes of the head, CRLFCRLF included
    # Gathered while parsing, so the proxy's hot path walks the headers once:
    lower: list[bytes] = field(default_factory=list)  # lowercased names, aligned with ``headers``
    connection: frozenset[bytes] = frozenset()  # tokens of the Connection headers, lowercased


class _HeadCollector:
    """httptools callbacks for one response head (the head only: bodies are framed by us)."""

    __slots__ = ("complete", "connection", "headers", "lower", "reason")

    def __init__(self) -> None:
        self.headers: Headers = []
        self.lower: list[bytes] = []
        self.connection: set[bytes] = set()
        self.reason = b""
        self.complete = False

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        value = value.strip(b" \t")
        lname = name.lower()
        self.headers.append((name, value))
        self.lower.append(lname)
        if lname == b"connection":
            self.connection.update(t.strip().lower() for t in value.split(b",") if t.strip())

    def on_headers_complete(self) -> None:
        self.complete = True


def parse_response_head(buf: bytes | bytearray) -> ResponseHead | None:
    """The head at the start of ``buf``, or None while incomplete. Raises ``H1Error`` when malformed.

    The end of the head is found with one C-level search; the head alone is then parsed by httptools
    (llhttp), about 4x faster than doing it in Python, which matters once per proxied request.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise H1Error("response head too large")
        # A head that does not even start like one will never become valid: fail early.
        if len(buf) >= 5 and not bytes(buf[:5]) == b"HTTP/":
            raise H1Error("not an HTTP response")
        return None
    if end + 4 > MAX_HEAD:
        raise H1Error("response head too large")
    head = bytes(buf[: end + 4])
    cb = _HeadCollector()
    parser = httptools.HttpResponseParser(cb)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # 101 Switching Protocols: the head is complete, what follows is the new protocol
    except httptools.HttpParserError as exc:
        raise H1Error(str(exc) or "invalid response head") from exc
    if not cb.complete:
        raise H1Error("invalid response head")
    version = parser.get_http_version().encode()
    if version not in (b"1.1", b"1.0"):
        raise H1Error(f"unsupported HTTP version {version!r}")
    return ResponseHead(
        version, parser.get_status_code(), cb.reason, cb.headers, end + 4, cb.lower, frozenset(cb.connection)
    )


class Framing(enum.Enum):
    NONE = "none"  # no body
    LENGTH = "length"  # Content-Length bytes
    CHUNKED = "chunked"
    CLOSE = "close"  # until the upstream closes


def response_framing(head: ResponseHead, request_method: bytes) -> tuple[Framing, int]:
    """How the body of this response is delimited (RFC 9112 §6.3): ``(framing, content_length)``."""
    if request_method == b"HEAD" or 100 <= head.status < 200 or head.status in (204, 304):
        return Framing.NONE, 0
    names = head.lower or [k.lower() for k, _ in head.headers]
    te = [v for (_, v), n in zip(head.headers, names, strict=True) if n == b"transfer-encoding"]
    if te:
        codings = [c.strip().lower() for v in te for c in v.split(b",") if c.strip()]
        if codings and codings[-1] == b"chunked":
            return Framing.CHUNKED, 0
        return Framing.CLOSE, 0
    lengths = {v.strip() for (_, v), n in zip(head.headers, names, strict=True) if n == b"content-length"}
    if lengths:
        if len(lengths) != 1:
            raise H1Error("conflicting Content-Length headers")
        (value,) = lengths
        if not value.isdigit():
            raise H1Error(f"bad Content-Length {value[:40]!r}")
        return Framing.LENGTH, int(value)
    return Framing.CLOSE, 0


class ChunkedScanner:
    """Follows chunked framing through arbitrary splits, without copying the data.

    ``feed(data)`` returns how many bytes of ``data`` belong to this message; once ``done`` is True the
    message (trailers included) has ended and any later bytes belong to the next message. Given a
    ``pieces`` list, it also appends the chunk data found in ``data`` (views, no copies): a decoder for
    the listeners that must strip the framing (HTTP/2). Trailers are dropped.
    """

    __slots__ = ("_line", "_remaining", "_state", "done")

    # One assignment each: mypyc compiles this module (hatchway/_native.py) and refuses tuple unpacking here.
    _SIZE = 0
    _DATA = 1
    _DATA_CRLF = 2
    _TRAILER = 3

    def __init__(self) -> None:
        self._state = self._SIZE
        self._remaining = 0
        self._line = bytearray()
        self.done = False

    def feed(self, data: bytes | memoryview, pieces: list[memoryview] | None = None) -> int:
        pos = 0
        n = len(data)
        while pos < n and not self.done:
            st = self._state
            if st == self._DATA:
                take = min(self._remaining, n - pos)
                if pieces is not None:
                    pieces.append(memoryview(data)[pos : pos + take])
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = self._DATA_CRLF
                continue
            # Line-oriented states: collect up to LF.
            nl = bytes(data[pos : min(n, pos + 4096)]).find(b"\n")
            if nl < 0:
                self._line += data[pos:n]
                if len(self._line) > 4096:
                    raise H1Error("chunk line too long")
                pos = n
                break
            self._line += data[pos : pos + nl]
            pos += nl + 1
            line = bytes(self._line).rstrip(b"\r")
            self._line.clear()
            if st == self._SIZE:
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError as exc:
                    raise H1Error(f"bad chunk size {size_text[:20]!r}") from exc
                if size < 0:
                    raise H1Error("negative chunk size")
                if size == 0:
                    self._state = self._TRAILER
                else:
                    self._remaining = size
                    self._state = self._DATA
            elif st == self._DATA_CRLF:
                if line:
                    raise H1Error("chunk data longer than its size")
                self._state = self._SIZE
            else:  # trailer section: ends at an empty line
                if not line:
                    self.done = True
        return pos


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


class _Validate:
    """No callbacks: httptools then only checks the syntax, in C, without calling back into Python."""

    __slots__ = ()


_VALIDATE = _Validate()

# Headers that make a response need the general path (framing, hop-by-hop, our own error header).
_GENERAL_PATH_NAMES = (HOP_BY_HOP - {b"connection"}) | {ERROR_CODE_HEADER}
_CONTENT_LENGTH = b"\r\ncontent-length:"
_CONNECTION = b"\r\nconnection:"


@functools.lru_cache(maxsize=256)
def general_path_pattern(extra: frozenset[bytes] = frozenset()) -> re.Pattern[bytes]:
    """One regex finding any header line that needs the general path (one C scan, not one per name);
    ``extra`` adds lowercase names, such as an endpoint's response header removals."""
    names = sorted(_GENERAL_PATH_NAMES | extra)
    return re.compile(b"\r\n(?:" + b"|".join(re.escape(n) for n in names) + b")[ \t]*:")


def passthrough_head(
    head: bytes, pattern: re.Pattern[bytes] | None = None, add: bytes = b""
) -> tuple[bytes, int] | None:
    """The upstream's response ``head`` (CRLFCRLF included) as a keep-alive HTTP/1.1 client may get it,
    and its Content-Length; None when the general path (``parse_response_head`` and friends) must run.

    This is the edge's fast path for the commonest response: HTTP/1.1, a final status with a body of
    known length, no hop-by-hop header but ``Connection: keep-alive`` (which is cut out), no
    ``ngrok-error-code``. The head is checked by httptools without callbacks and then passed on as the
    upstream wrote it, instead of being split into headers and put together again (about 6 µs less per
    response). ``pattern`` (from ``general_path_pattern``) finds the header lines that need the general
    path; ``add`` is appended as ready header lines.
    """
    if head[:9] != b"HTTP/1.1 " or not head[9:12].isdigit():
        return None
    status = int(head[9:12])
    if status < 200 or status == 204 or status == 304:
        return None
    low = head.lower()
    if (pattern or general_path_pattern()).search(low) is not None:
        return None
    i = low.find(_CONTENT_LENGTH)
    if i < 0:
        return None
    # The syntax check, in C: it refuses bare CR or LF, obs-folded lines, bad header names and a
    # Content-Length that is not one run of digits or comes twice, so none of that is checked here.
    try:
        httptools.HttpResponseParser(_VALIDATE).feed_data(head)
    except httptools.HttpParserError:
        return None
    length = int(low[i + len(_CONTENT_LENGTH) : low.find(b"\r\n", i + 2)])  # int() ignores the blanks
    c = low.find(_CONNECTION)
    if c >= 0:
        e = low.find(b"\r\n", c + 2)
        if low[c + len(_CONNECTION) : e].strip(b" \t") != b"keep-alive" or low.find(_CONNECTION, e) >= 0:
            return None
        head = head[:c] + head[e:]
    if add:
        head = head[:-2] + add + b"\r\n"
    return head, length


class BodyDecoder:
    """The body bytes of one response, framing removed, as views into what is fed (no copies).

    For a relay that must see the body itself (compression) rather than pass the framing on: ``feed``
    returns the pieces of body in ``data``; ``done`` tells the body ended, and ``clean`` that it ended
    exactly at the end of what was fed (the stream may then carry another response). A close-delimited
    body ends with ``feed_eof``. Raises ``H1Error`` on broken chunked framing.
    """

    __slots__ = ("_framing", "_remaining", "_scanner", "clean", "done")

    def __init__(self, framing: Framing, length: int) -> None:
        self._framing = framing
        self._remaining = length if framing is Framing.LENGTH else 0
        self._scanner = ChunkedScanner() if framing is Framing.CHUNKED else None
        self.done = framing is Framing.NONE or (framing is Framing.LENGTH and length == 0)
        self.clean = framing is not Framing.CLOSE

    def feed(self, data: bytes | memoryview) -> list[memoryview]:
        view = memoryview(data)
        if self.done or not len(view):
            self.clean = self.clean and not len(view)
            return []
        if self._scanner is not None:
            pieces: list[memoryview] = []
            used = self._scanner.feed(view, pieces)
            if self._scanner.done:
                self.done = True
                self.clean = used == len(view)
            return pieces
        if self._framing is Framing.LENGTH:
            take = min(len(view), self._remaining)
            self._remaining -= take
            if self._remaining == 0:
                self.done = True
                self.clean = take == len(view)
            return [view[:take]]
        return [view]

    def feed_eof(self) -> None:
        """The upstream closed: the end of a close-delimited body (for the others, a cut the caller sees
        as ``done`` still False)."""
        if self._framing is Framing.CLOSE:
            self.done = True
