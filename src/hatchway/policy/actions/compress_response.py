"""The ``compress-response`` action (on_http_response): pick a content-coding and rewrite the response head.

This action only decides and edits headers; it never touches the body. It sets ``ex.compress`` and the edge
streams the body through ``hatchway.policy.compress.new_encoder`` (no buffering).

Config: ``algorithms`` (default ``[gzip, deflate, br, zstd]``; the order breaks q-value ties). ngrok also
lists ``compress`` (LZW): it is accepted so ngrok policies load, but never chosen, since no current client
asks for it and we do not implement it; a list with nothing but ``compress`` is refused.

The response is left alone when: it already has a Content-Encoding; the request was HEAD; the status has
no body or is partial (1xx, 204, 205, 206, 304); it says ``Cache-Control: no-transform`` or has a
Content-Range; its Content-Length is 0; its Content-Type is already compressed (see
``compress.is_precompressed``); or the client's Accept-Encoding allows none of the algorithms.

When it compresses: Content-Length and Accept-Ranges go (both describe the identity body),
``Content-Encoding`` is added, ``Accept-Encoding`` joins Vary, and a strong ETag becomes weak (the bytes
differ from the upstream's, so a strong validator would lie). Results: ``actions.ngrok.compress.
{already_compressed, negotiated_algorithm}`` (ngrok's documented names), also under ``compress_response``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hatchway.policy import compress
from hatchway.policy.config import ConfigReader
from hatchway.policy.model import CompileEnv, Exchange, HttpResponse, Reply

DEFAULT_ALGORITHMS = ("gzip", "deflate", "br", "zstd")
_IGNORED = frozenset({"compress"})  # LZW: accepted for ngrok compatibility, never negotiated
_NO_BODY_STATUS = frozenset({204, 205, 206, 304})


class CompressResponse:
    needs_body = False

    def __init__(self, algorithms: tuple[str, ...]) -> None:
        self.algorithms = algorithms

    def run(self, ex: Exchange) -> Reply | None:
        res = ex.res
        if res is None:
            return None
        already = res.header("content-encoding") is not None
        result: dict[str, Any] = {"already_compressed": already, "negotiated_algorithm": ""}
        ex.results["compress"] = result
        ex.results["compress_response"] = result
        if already or ex.compress or not self._compressible(ex, res):
            return None
        accept = ex.req.header_values("accept-encoding")
        coding = compress.negotiate(", ".join(accept) if accept else None, self.algorithms)
        if coding is None:
            return None
        result["negotiated_algorithm"] = coding
        ex.compress = coding
        _rewrite_head(res, coding)
        return None

    @staticmethod
    def _compressible(ex: Exchange, res: HttpResponse) -> bool:
        if ex.req.method.upper() == "HEAD" or res.status < 200 or res.status in _NO_BODY_STATUS:
            return False
        cache_control = ",".join(res.header_values("cache-control")).lower()
        if "no-transform" in cache_control or res.header("content-range") is not None:
            return False
        length = res.header("content-length")
        if length is not None and length.strip() == "0":
            return False
        return not compress.is_precompressed(res.header("content-type"))


def _rewrite_head(res: HttpResponse, coding: str) -> None:
    res.remove_header("content-length")
    res.remove_header("accept-ranges")
    headers = res.headers
    vary_tokens = {token.strip().lower() for value in res.header_values("vary") for token in value.split(",")}
    needs_vary = not ({"*", "accept-encoding"} & vary_tokens)
    for i, (name, value) in enumerate(headers):
        lname = name.lower()
        if lname == "etag" and value and not value.startswith("W/"):
            headers[i] = (name, "W/" + value)
        elif lname == "vary" and needs_vary:
            # Extend the first Vary line rather than adding another, to keep the head tidy.
            headers[i] = (name, f"{value}, Accept-Encoding" if value.strip() else "Accept-Encoding")
            needs_vary = False
    if needs_vary:
        headers.append(("Vary", "Accept-Encoding"))
    headers.append(("Content-Encoding", coding))


def compile(config: Mapping[str, Any] | None, path: str, env: CompileEnv, phase: str) -> CompressResponse:
    r = ConfigReader(config, path)
    algorithms: list[str] = list(DEFAULT_ALGORITHMS)
    if r.raw("algorithms") is not None:
        given = r.str_list("algorithms")
        if not given and not r.problems:
            r.problem("algorithms", "must not be empty")
        algorithms = []
        for i, name in enumerate(given):
            lname = name.strip().lower()
            if lname in _IGNORED:
                continue
            if lname not in compress.CODINGS:
                known = ", ".join(compress.CODINGS)
                r.problem(f"algorithms[{i}]", f"unsupported algorithm {name!r} (use {known})")
            elif lname not in algorithms:
                algorithms.append(lname)
        if given and not algorithms and not r.problems:
            r.problem("algorithms", "'compress' (LZW) is not implemented; list gzip, deflate, br or zstd")
    r.done()
    return CompressResponse(tuple(algorithms))
