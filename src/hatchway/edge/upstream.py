"""Reading an upstream's response head from a Proxy stream, shared by the HTTP/1.1 and HTTP/2 listeners.

It waits for a complete head (interim 1xx heads are handed to the caller and skipped), works out the
body framing, and turns every way of getting no usable head into ``NoResponse``: ``refused`` when the
agent reset the stream before any byte (it could not reach the upstream: ERR_NGROK_8012), otherwise an
invalid or missing response (ERR_NGROK_3004). It reads only the head; bodies are the listeners' job.
"""

from __future__ import annotations

from collections.abc import Callable

from hatchway.errors import SessionClosedError, StreamResetError
from hatchway.http.h1 import Framing, H1Error, ResponseHead, parse_response_head, response_framing
from hatchway.net.transport import MuxStream
from hatchway.wire.frames import ErrorCode


class NoResponse(Exception):
    """The upstream gave no usable response head; ``refused`` means the agent could not dial it."""

    def __init__(self, *, refused: bool, detail: str) -> None:
        super().__init__(detail)
        self.refused = refused
        self.detail = detail


async def read_response_head(
    stream: MuxStream, method: bytes, on_interim: Callable[[ResponseHead], None], prefix: bytes = b""
) -> tuple[ResponseHead, Framing, int, bytearray]:
    """The final response head, its framing and length, and the buffer (head included: body bytes start
    at ``head.size``). A 101 is returned like a final head; the caller decides whether it may stand.
    ``prefix`` holds bytes of the response already taken from the stream (by a fast path that gave up)."""
    buf = bytearray(prefix)
    got_any = bool(prefix)
    while True:
        # Parse what is buffered first: an interim response and the final head often share a read.
        try:
            head = parse_response_head(buf) if buf else None
        except H1Error as exc:
            raise NoResponse(refused=False, detail=str(exc)) from exc
        if head is not None:
            if 100 <= head.status < 200 and head.status != 101:
                on_interim(head)  # 100 Continue, 103 Early Hints
                del buf[: head.size]
                continue
            break
        try:
            data = await stream.read()
        except StreamResetError as exc:
            refused = exc.mux_code == ErrorCode.STREAM_REFUSED and not got_any
            raise NoResponse(refused=refused, detail="the agent reset the stream") from exc
        except SessionClosedError as exc:
            raise NoResponse(refused=False, detail="the agent disconnected") from exc
        if not data:
            raise NoResponse(refused=False, detail="the upstream closed without a response")
        got_any = True
        buf += data
    try:
        framing, length = response_framing(head, method)
    except H1Error as exc:
        raise NoResponse(refused=False, detail=str(exc)) from exc
    return head, framing, length, buf
