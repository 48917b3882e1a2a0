"""Streaming response compression, sans-IO: content-coding negotiation and incremental encoders.

``compress-response`` decides *whether* and *which* coding; the edge then pushes the body through
``new_encoder(coding)`` chunk by chunk. Nothing here reads a socket, a clock or a thread: bytes in, bytes
out. The encoders never hold a whole body, and each one's memory is bounded by its fixed window and tables
(roughly: gzip/deflate 260 KiB, br 1 MiB, zstd 1.7 MiB), whatever the body size.

Flushing: ``feed(data)`` flushes by default (zlib ``Z_SYNC_FLUSH``, brotli ``flush()``, zstd block flush),
so every chunk the upstream sent reaches the client as soon as it arrives. That keeps server-sent events,
long polls and progressive HTML working through the compressor, at the cost of some ratio when the
upstream writes many tiny chunks. A caller that knows more data is already waiting (a large read split
in pieces) passes ``flush=False`` and flushes with the last piece.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Protocol

import brotli
import zstandard

# The codings we can produce, in ngrok's default preference order plus zstd.
CODINGS: tuple[str, ...] = ("gzip", "deflate", "br", "zstd")

# Aliases a client may send in Accept-Encoding for a coding we produce (RFC 9110 §8.4.1.3).
_ALIASES = {"x-gzip": "gzip"}

# Levels chosen for streaming: close to the libraries' speed sweet spots, since the edge compresses
# every response live and cannot amortise a slow setting over a cached result.
_ZLIB_LEVEL = 6
_ZLIB_MEM_LEVEL = 8  # 128 KiB of hash tables, plus the 32 KiB window (x4 for deflate's state)
_BROTLI_QUALITY = 4  # the fastest quality with brotli's stronger matcher; 11 is far too slow for live data
_BROTLI_LGWIN = 18  # 256 KiB window instead of the 4 MiB default: bounds memory per stream
_ZSTD_LEVEL = 3
_ZSTD_WINDOW_LOG = 19  # 512 KiB window: bounded memory, and well under the 8 MiB browsers accept
_ZSTD_HASH_LOG = 16
_ZSTD_CHAIN_LOG = 15


class Encoder(Protocol):
    """One response body's compressor. ``feed`` returns what can be sent now; ``finish`` ends the stream."""

    coding: str

    def feed(self, data: bytes | memoryview, flush: bool = True) -> bytes: ...

    def finish(self) -> bytes: ...


class _Base:
    """Shared bookkeeping: refuse use after ``finish`` and skip empty flushes (they cost bytes)."""

    coding = ""

    def __init__(self) -> None:
        self._pending = False  # data went in without a flush since the last flush
        self._done = False

    def feed(self, data: bytes | memoryview, flush: bool = True) -> bytes:
        if self._done:
            raise ValueError(f"{self.coding} encoder already finished")
        out = self._process(data) if data else b""
        if data:
            self._pending = True
        if flush and self._pending:
            out += self._flush()
            self._pending = False
        return out

    def finish(self) -> bytes:
        if self._done:
            return b""
        self._done = True
        return self._finish()

    def _process(self, data: bytes | memoryview) -> bytes:
        raise NotImplementedError

    def _flush(self) -> bytes:
        raise NotImplementedError

    def _finish(self) -> bytes:
        raise NotImplementedError


class _ZlibEncoder(_Base):
    """gzip (RFC 1952 framing) or deflate, which HTTP defines as the zlib format (RFC 9110 §8.4.1.2)."""

    def __init__(self, coding: str, wbits: int) -> None:
        super().__init__()
        self.coding = coding
        self._z = zlib.compressobj(_ZLIB_LEVEL, zlib.DEFLATED, wbits, _ZLIB_MEM_LEVEL)

    def _process(self, data: bytes | memoryview) -> bytes:
        return self._z.compress(data)

    def _flush(self) -> bytes:
        return self._z.flush(zlib.Z_SYNC_FLUSH)

    def _finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class _BrotliEncoder(_Base):
    coding = "br"

    def __init__(self) -> None:
        super().__init__()
        self._c = brotli.Compressor(quality=_BROTLI_QUALITY, lgwin=_BROTLI_LGWIN)

    def _process(self, data: bytes | memoryview) -> bytes:
        out: bytes = self._c.process(data)
        return out

    def _flush(self) -> bytes:
        out: bytes = self._c.flush()
        return out

    def _finish(self) -> bytes:
        out: bytes = self._c.finish()
        return out


_ZSTD_PARAMS = zstandard.ZstdCompressionParameters.from_level(
    _ZSTD_LEVEL, window_log=_ZSTD_WINDOW_LOG, hash_log=_ZSTD_HASH_LOG, chain_log=_ZSTD_CHAIN_LOG
)


class _ZstdEncoder(_Base):
    coding = "zstd"

    def __init__(self) -> None:
        super().__init__()
        # No content size in the frame header: a streamed body's size is unknown up front.
        self._c = zstandard.ZstdCompressor(compression_params=_ZSTD_PARAMS).compressobj()

    def _process(self, data: bytes | memoryview) -> bytes:
        out: bytes = self._c.compress(data)
        return out

    def _flush(self) -> bytes:
        out: bytes = self._c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return out

    def _finish(self) -> bytes:
        out: bytes = self._c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
        return out


def new_encoder(coding: str) -> Encoder:
    """A fresh encoder for ``coding`` (one of ``CODINGS``); ``ValueError`` for anything else."""
    if coding == "gzip":
        return _ZlibEncoder("gzip", 16 + zlib.MAX_WBITS)
    if coding == "deflate":
        return _ZlibEncoder("deflate", zlib.MAX_WBITS)
    if coding == "br":
        return _BrotliEncoder()
    if coding == "zstd":
        return _ZstdEncoder()
    raise ValueError(f"unsupported content-coding {coding!r}")


def parse_accept_encoding(value: str) -> dict[str, float]:
    """``Accept-Encoding`` as ``{coding: q}`` (lower-case; ``*`` kept as is; aliases folded).

    An element whose q-value does not parse is dropped rather than guessed at. When a coding appears
    twice the first one counts, as the header's order is the client's.
    """
    found: dict[str, float] = {}
    for element in value.split(","):
        name, _, params = element.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        name = _ALIASES.get(name, name)
        q: float | None = 1.0
        for param in params.split(";"):
            key, _, raw = param.partition("=")
            if key.strip().lower() == "q":
                q = _qvalue(raw.strip())
        if q is not None and name not in found:
            found[name] = q
    return found


def _qvalue(raw: str) -> float | None:
    # RFC 9110 §12.4.2: "0" to "1" with at most three decimals; be lenient about the decimals only.
    try:
        q = float(raw)
    except ValueError:
        return None
    return q if 0.0 <= q <= 1.0 else None


def negotiate(accept_encoding: str | None, offered: Iterable[str]) -> str | None:
    """The coding to use from ``offered`` (in preference order), or None to send the body as is.

    The highest q-value wins; equal q-values go to the earlier entry of ``offered``. ``q=0`` excludes a
    coding, ``*`` stands for every coding the client did not name. No header at all means no
    compression: RFC 9110 would allow any coding, but clients that send nothing rarely expect one.
    """
    if accept_encoding is None:
        return None
    prefs = parse_accept_encoding(accept_encoding)
    star = prefs.get("*", 0.0)
    best, best_q = None, 0.0
    for coding in offered:
        q = prefs.get(coding, star)
        if q > best_q:
            best, best_q = coding, q
    return best


# Media types whose bodies are compressed already: a second pass costs CPU and saves nothing.
_PRECOMPRESSED_TOP = ("image/", "video/", "audio/")
_COMPRESSIBLE_IMAGES = frozenset({"image/svg+xml", "image/bmp", "image/x-icon", "image/vnd.microsoft.icon"})
_PRECOMPRESSED = frozenset(
    {
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/zstd",
        "application/x-bzip2",
        "application/x-xz",
        "application/x-7z-compressed",
        "application/x-rar-compressed",
        "application/vnd.rar",
        "application/x-brotli",
        "application/octet-stream",
        "application/pdf",
        "font/woff",
        "font/woff2",
    }
)


def is_precompressed(content_type: str | None) -> bool:
    """Whether a body of ``content_type`` is not worth compressing (see ``_PRECOMPRESSED``).

    Images, video and audio are (except SVG, BMP and icons, which are text or raw pixels), and so are
    archives, PDF, web fonts and ``application/octet-stream`` (usually a download of some packed file).
    A missing Content-Type says nothing, so it is compressed.
    """
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _PRECOMPRESSED:
        return True
    return media.startswith(_PRECOMPRESSED_TOP) and media not in _COMPRESSIBLE_IMAGES
