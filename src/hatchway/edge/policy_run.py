"""One request's trip through its endpoint's Traffic Policy, as steps the listeners call.

``PolicyRun`` turns the listener's ``Request`` into the policy's ``Exchange``, runs the phases, and
writes what the actions changed back into the request head (before ``proxy.upstream_head``) and the
response head (before ``proxy.response_headers``); replies made by the edge come out as HTTP/1.1 bytes
(the HTTP/2 listener converts them like its error pages). It also hands out the body encoder that
compress-response chose and reports the final status to actions that wait for it (circuit-breaker).
No sockets of its own, no awaits: the listeners do the I/O (including reading a bounded request body
first when ``needs_body``). Endpoints without a policy never get here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from http import HTTPStatus

from hatchway.edge import errors
from hatchway.edge.proxy import Request, origin_form
from hatchway.edge.registry import Endpoint
from hatchway.http import headers as hh
from hatchway.http.h1 import ResponseHead
from hatchway.policy.compress import Encoder, new_encoder
from hatchway.policy.engine import CompiledPolicy
from hatchway.policy.model import Conn, EndpointInfo, Exchange, HttpRequest, HttpResponse, Reply, TlsInfo

logger = logging.getLogger(__name__)

MAX_POLICY_BODY = 1 << 20  # a request body an action needs (verify-webhook) is read up to this size
BODY_TOO_LARGE = "ERR_NGROK_3902"  # ngrok's "body too large to buffer for an action" family (3902-3905)


def _text(b: bytes) -> str:
    return b.decode("latin-1")


def _raw(s: str) -> bytes:
    return s.encode("latin-1", "replace")


class PolicyRun:
    """The policy state of one exchange on an endpoint whose ``policy`` is set."""

    __slots__ = ("_completed", "closes_connection", "encoder", "ex", "policy")

    def __init__(
        self, ep: Endpoint, policy: CompiledPolicy, req: Request, tls: TlsInfo | None = None
    ) -> None:
        self.policy = policy
        self.encoder: Encoder | None = None
        self.closes_connection = False  # on_tcp_connect denied: close without an HTTP answer
        self._completed = False
        target = origin_form(req.target)
        path, _, query = target.partition(b"?")
        public = ep.url.rsplit(":", 1)
        port = (
            int(public[1])
            if len(public) == 2 and public[1].isdigit()
            else (443 if ep.scheme == "https" else 80)
        )
        wall = time.time()
        self.ex = Exchange(
            conn=Conn(req.client_ip, req.client_port, tls=tls, ts_start=wall),
            endpoint=EndpointInfo(ep.tunnel_id, ep.url, ep.host, port, ep.scheme),
            req=HttpRequest(
                method=_text(req.method),
                scheme=req.scheme,
                host=req.host,
                port=port,
                path=_text(path) or "/",
                query=_text(query),
                version=req.version,
                headers=[(_text(k), _text(v)) for k, v in req.headers],
            ),
            now=time.monotonic(),
            wall=wall,
        )

    @property
    def needs_body(self) -> bool:
        return self.policy.needs_request_body

    def set_body(self, body: bytes) -> None:
        self.ex.req.body = body

    def tcp_connect(self) -> Reply | None:
        """Run ``on_tcp_connect`` (per request here: routing by Host comes after the connection)."""
        reply = self.policy.on_tcp_connect(self.ex) if self.policy.has_tcp_phase else None
        self.closes_connection = reply is not None
        return reply

    def request(self, req: Request) -> Reply | None:
        """Run ``on_http_request``; without a reply, the request head takes the actions' changes."""
        before = (self.ex.req.method, self.ex.req.url, list(self.ex.req.headers))
        reply = self.policy.on_http_request(self.ex)
        if reply is not None:
            return reply
        r = self.ex.req
        if (r.method, r.url, r.headers) != before:
            req.method = _raw(r.method)
            req.target = _raw(r.path + (f"?{r.query}" if r.query else ""))
            headers = [(_raw(k), _raw(v)) for k, v in r.headers]
            if r.host != req.host:
                headers = hh.set_host(headers, _raw(r.host))
                req.host = r.host
            req.headers = headers
            req.lower = [k.lower() for k, _ in headers]
            req.connection = frozenset(hh.connection_tokens(headers))
        return None

    def response(self, head: ResponseHead, method: bytes) -> Reply | None:
        """Run ``on_http_response`` on the upstream's head; without a reply, ``head`` takes the changes
        and ``encoder`` is set when the body is to be compressed."""
        if not self.policy.has_response_phase:
            return None
        self.ex.res = HttpResponse(head.status, [(_text(k), _text(v)) for k, v in head.headers])
        reply = self.policy.on_http_response(self.ex)
        if reply is not None:
            return reply
        headers = [(_raw(k), _raw(v)) for k, v in self.ex.res.headers]
        head.headers = headers
        head.lower = [k.lower() for k, _ in headers]
        head.connection = frozenset(hh.connection_tokens(headers))
        if self.ex.compress and method != b"HEAD":
            self.encoder = new_encoder(self.ex.compress)
        return None

    def local_reply(self, reply: Reply) -> Reply:
        """A reply from the request phase, after ``on_http_response`` had its turn (as in ngrok)."""
        if not self.policy.has_response_phase or reply.error_code:
            return reply
        # Content-Length lets the response rules see the real size (compress-response skips empty bodies).
        headers = [(k, v) for k, v in reply.headers if k.lower() != "content-length"]
        self.ex.res = HttpResponse(reply.status, [*headers, ("content-length", str(len(reply.body)))])
        replaced = self.policy.on_http_response(self.ex)
        if replaced is not None:
            return replaced
        body = reply.body
        if self.ex.compress and body:
            encoder = new_encoder(self.ex.compress)
            body = encoder.feed(body, flush=False) + encoder.finish()
        return Reply(reply.status, list(self.ex.res.headers), body, reply.error_code, reply.message)

    def finish(self, status: int) -> None:
        """Report the final status once (0: the upstream gave no response)."""
        if self._completed:
            return
        self._completed = True
        for callback in self.ex.on_complete:
            callback(status)
        # The engine's per-exchange state points back at the exchange: break the cycle so the objects
        # go by reference counting, not by the cyclic GC (whose full passes showed up as p99 spikes).
        self.ex.scratch.clear()
        # The log action's metadata: ngrok puts it in the request's event (traffic_policy.logs); until
        # events exist here it goes to the edge's log, one JSON object per entry.
        for entry in self.ex.logs:
            r = self.ex.req
            logger.info(
                "traffic policy log %s %s %s %d %s",
                self.ex.endpoint.url,
                r.method,
                r.path,
                status,
                json.dumps(entry, default=str, sort_keys=True),
            )


def tls_info(transport: asyncio.BaseTransport | None) -> TlsInfo | None:
    """``conn.tls.*`` for a client connection (None for plain HTTP)."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return TlsInfo(
        version=ssl_object.version() or "",
        cipher_suite=cipher[0] if cipher else "",
        sni=getattr(ssl_object, "server_hostname", None) or "",
        negotiated_alpn=ssl_object.selected_alpn_protocol() or "",
    )


def too_large(url: str) -> Reply:
    return Reply(
        413,
        error_code=BODY_TOO_LARGE,
        message=f"The request body for {url} is over the {MAX_POLICY_BODY} bytes a policy action may read.",
    )


def reply_bytes(reply: Reply, accept: bytes | None, *, close: bool, head_only: bool) -> bytes:
    """The whole HTTP/1.1 response for a reply made by the edge."""
    if reply.error_code and not reply.body:
        err = errors.EdgeError(
            reply.status, reply.error_code, reply.message or HTTPStatus(reply.status).phrase
        )
        return errors.render(err, accept, close=close, head_only=head_only)
    headers = [
        (_raw(k), _raw(v)) for k, v in reply.headers if k.lower() not in ("content-length", "connection")
    ]
    headers = [h for h in headers if h[0].lower() not in hh.HOP_BY_HOP]
    if reply.error_code:
        headers.append((hh.ERROR_CODE_HEADER, _raw(reply.error_code)))
    if reply.status not in (204, 304) and reply.status >= 200:
        headers.append((b"content-length", b"%d" % len(reply.body)))
    if close:
        headers.append((b"connection", b"close"))
    try:
        reason = HTTPStatus(reply.status).phrase.encode()
    except ValueError:
        reason = b"-"
    head = hh.serialize_response_head(reply.status, reason, headers)
    return head if head_only or reply.status in (204, 304) else head + reply.body
