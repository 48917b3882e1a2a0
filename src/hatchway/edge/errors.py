"""Error responses the edge writes itself: an HTML page (JSON when the client asks for it) carrying
``ngrok-error-code``. Pure functions; the listener decides when to send one and whether to close."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from http import HTTPStatus


@dataclass(frozen=True)
class EdgeError:
    status: int
    code: str
    message: str


def offline(url: str) -> EdgeError:
    return EdgeError(404, "ERR_NGROK_3200", f"The endpoint {url} is offline.")


def upstream_unreachable(url: str) -> EdgeError:
    return EdgeError(
        502,
        "ERR_NGROK_8012",
        f"Traffic was successfully tunneled to the agent for {url}, but the agent failed to establish a "
        "connection to the upstream web service.",
    )


def invalid_upstream_response(url: str, detail: str = "") -> EdgeError:
    extra = f" ({detail})" if detail else ""
    return EdgeError(
        502,
        "ERR_NGROK_3004",
        f"The upstream for {url} returned an invalid or incomplete HTTP response{extra}.",
    )


def bad_request(detail: str) -> EdgeError:
    return EdgeError(400, "ERR_NGROK_3001", f"The request could not be parsed: {detail}")


def head_too_large(limit: int) -> EdgeError:
    # ngrok's request/response header block limit is 1 MB; 10087 is its "request header too large" code.
    return EdgeError(
        431, "ERR_NGROK_10087", f"The request's header block is larger than the {limit // 1024} KiB allowed."
    )


def websocket_expected(detail: str) -> EdgeError:
    return EdgeError(
        400,
        "ERR_NGROK_3206",
        f"This endpoint converts WebSockets to TCP and expected a WebSocket upgrade: {detail}",
    )


def agent_unavailable(url: str) -> EdgeError:
    return EdgeError(502, "ERR_NGROK_3210", f"The edge could not forward the request for {url} to its agent.")


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{status} {reason} - {code}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em;color:#222}}
code{{background:#f3f3f3;padding:.1em .3em;border-radius:3px}}</style></head>
<body><h1>{reason}</h1><p>{message}</p><p><code>{code}</code></p>
<p><small>Served by the Hatchway edge.</small></p></body></html>
"""


def render(
    err: EdgeError, accept: bytes | None = None, *, close: bool = False, head_only: bool = False
) -> bytes:
    """The whole HTTP/1.1 response for ``err``; JSON when ``Accept`` prefers application/json."""
    reason = HTTPStatus(err.status).phrase
    wants_json = accept is not None and b"application/json" in accept and b"text/html" not in accept
    if wants_json:
        body = json.dumps({"error_code": err.code, "status_code": err.status, "msg": err.message}).encode()
        ctype = b"application/json"
    else:
        body = _PAGE.format(
            status=err.status, reason=reason, code=err.code, message=html.escape(err.message)
        ).encode()
        ctype = b"text/html; charset=utf-8"
    head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nngrok-error-code: %s\r\n" % (
        err.status,
        reason.encode(),
        ctype,
        len(body),
        err.code.encode(),
    )
    if close:
        head += b"connection: close\r\n"
    return head + b"\r\n" + (b"" if head_only else body)
