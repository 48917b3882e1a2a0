"""One request's trip through its endpoint's Traffic Policy, as steps the listeners call.

``PolicyRun`` turns the listener's ``Request`` into the policy's ``Exchange``, runs the phases, and
writes what the actions changed back into the request head (before ``proxy.upstream_head``) and the
response head (before ``proxy.response_headers``); replies made by the edge come out as HTTP/1.1 bytes
(the HTTP/2 listener converts them like its error pages). It also hands out the body encoder that
compress-response chose and reports the final status to actions that wait for it (circuit-breaker).
No sockets of its own, no awaits: the listeners do the I/O (including reading a bounded request body
first when ``needs_body``). Endpoints without a policy never get here.

This runs for every request of a policy endpoint, so it does as little as it can: the endpoint's part of
the exchange is built once per endpoint, the request headers are decoded only when something reads them
(``_WireRequest``: ``'x' in req.headers`` and add-headers do not), and after the request phase only what
changed is written back (headers that were only appended are encoded alone). What the listener gets is
what the eager version gave (``tests/unit/policy/test_edge_glue.py`` compares the two). A static request
phase (see ``remembered``) is not even run for a request the endpoint has seen: its outcome is replayed;
for one it has not, the phase's compiled form may decide from the listener's request alone (``decided``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from hatchway.edge import errors
from hatchway.edge.proxy import Request, origin_form
from hatchway.edge.registry import Endpoint
from hatchway.http import headers as hh
from hatchway.http.h1 import ResponseHead
from hatchway.policy.compress import Encoder, new_encoder
from hatchway.policy.engine import CompiledPolicy
from hatchway.policy.model import (
    Conn,
    EndpointInfo,
    Exchange,
    Header,
    HttpRequest,
    HttpResponse,
    Reply,
    TlsInfo,
    url_of,
)
from hatchway.policy.static_request import FULL

logger = logging.getLogger(__name__)

MAX_POLICY_BODY = 1 << 20  # a request body an action needs (verify-webhook) is read up to this size
BODY_TOO_LARGE = "ERR_NGROK_3902"  # ngrok's "body too large to buffer for an action" family (3902-3905)

# The common methods as the str the exchange holds, without decoding them each time.
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}


def _text(b: bytes) -> str:
    return b.decode("latin-1")


def _raw(s: str) -> bytes:
    return s.encode("latin-1", "replace")


# Headers appended to a request whose own headers were never read (``_WireRequest.append_headers``: what
# add-headers does with constant values), as (name, value, lower-cased name) bytes: those are the same
# tuples of the compiled policy for every request, so their encodings are kept. Bounded all the same.
_ENCODED: dict[Header, tuple[bytes, bytes, bytes]] = {}
_ENCODED_MAX = 1024


def _encoded(header: Header, keep: bool) -> tuple[bytes, bytes, bytes]:
    name = _raw(header[0])
    found = (name, _raw(header[1]), name.lower())
    if keep:
        if len(_ENCODED) >= _ENCODED_MAX:
            _ENCODED.clear()
        _ENCODED[header] = found
    return found


# ---- the endpoint's part of the exchange, built once per endpoint ------------------------------------
# Keyed by id(): Endpoint is an unhashable dataclass. The weak reference's callback drops the entry when the
# endpoint goes, before its id can be reused; the URL check covers an endpoint whose fields were replaced
# (the registry never does). EndpointInfo is frozen: sharing it cannot leak one request's changes.
_ENDPOINTS: dict[int, tuple[weakref.ref[Endpoint], EndpointInfo]] = {}


def _endpoint_info(ep: Endpoint) -> EndpointInfo:
    entry = _ENDPOINTS.get(id(ep))
    if entry is not None:
        ref, info = entry
        if ref() is ep and info.url is ep.url:
            return info
    public = ep.url.rsplit(":", 1)
    port = (
        int(public[1]) if len(public) == 2 and public[1].isdigit() else (443 if ep.scheme == "https" else 80)
    )
    info = EndpointInfo(ep.tunnel_id, ep.url, ep.host, port, ep.scheme)
    key = id(ep)
    try:
        ref = weakref.ref(ep, lambda _, key=key: _ENDPOINTS.pop(key, None))  # type: ignore[misc]
    except TypeError:  # an object without weak references (a test double): no cache
        return info
    _ENDPOINTS[key] = (ref, info)
    return info


# ---- request headers decoded on first read ------------------------------------------------------------
# A request's ``_Wire`` is ``[raw, decoded, added, lower]``: the listener's header bytes; the list they
# decode to, made on first need and never changed (what the request phase's changes are compared with);
# headers appended (add-headers) while the others were still undecoded, or None; the lower-cased names of
# ``raw`` (the listener's ``Request.lower`` when it has them), or None until needed. A list: one is made
# per request, and a list display is the cheapest object to make.
_Wire = list[Any]
_RAW, _DECODED, _ADDED, _LOWER = 0, 1, 2, 3


def _decoded(wire: _Wire) -> list[Header]:
    decoded: list[Header] | None = wire[_DECODED]
    if decoded is None:
        decoded = wire[_DECODED] = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in wire[_RAW]]
    return decoded


_HEADERS_SLOT = HttpRequest.__dict__["headers"]  # the slot under the property below
_wire_of: Callable[[HttpRequest], _Wire] = _HEADERS_SLOT.__get__


class _WireRequest(HttpRequest):
    """An ``HttpRequest`` whose ``headers`` slot holds a ``_Wire`` until something reads or sets them.

    Many policies never look at the headers, and decoding costs about 0.15 µs a header. The first read
    decodes them into the slot and makes the object a plain ``HttpRequest`` (the layout is the same), so
    later reads cost what any attribute does and ``type(req) is _WireRequest`` means "never read". Until
    then ``append_headers`` (add-headers) only notes what it appends, and ``has_header`` (``'x' in
    req.headers``) looks at the lower-cased names the listener made."""

    __slots__ = ()

    @property
    def headers(self) -> list[Header]:
        wire = _wire_of(self)
        headers = list(_decoded(wire))
        if wire[_ADDED] is not None:
            headers.extend(wire[_ADDED])
        _HEADERS_SLOT.__set__(self, headers)
        self.__class__ = HttpRequest  # type: ignore[assignment]
        return headers

    @headers.setter
    def headers(self, value: list[Header]) -> None:
        _HEADERS_SLOT.__set__(self, value)
        self.__class__ = HttpRequest  # type: ignore[assignment]

    def append_headers(self, headers: Iterable[Header]) -> None:
        wire = _wire_of(self)
        if wire[_ADDED] is None:
            wire[_ADDED] = list(headers)
        else:
            wire[_ADDED].extend(headers)

    def has_header(self, lname: str) -> bool:
        wire = _wire_of(self)
        added = wire[_ADDED]
        if added is not None:
            for k, _ in added:
                if k.lower() == lname:
                    return True
        if not lname.isascii():
            return any(k.lower() == lname for k, _ in _decoded(wire))
        # An ASCII name equals a decoded name's str.lower() exactly when it equals the raw name's
        # bytes.lower(): latin-1 letters above ASCII never lower-case into ASCII.
        lower = wire[_LOWER]
        if lower is None:
            lower = wire[_LOWER] = [k.lower() for k, _ in wire[_RAW]]
        return lname.encode() in lower


class PolicyRun:
    """The policy state of one exchange on an endpoint whose ``policy`` is set."""

    __slots__ = (
        "_completed",
        "_target_path",
        "_target_query",
        "_wire",
        "closes_connection",
        "encoder",
        "ex",
        "outcome",
        "policy",
    )

    _wire: _Wire

    def __init__(self, ep: Endpoint, policy: CompiledPolicy, req: Request, conn: Conn | None = None) -> None:
        self.policy = policy
        self.encoder: Encoder | None = None
        self.closes_connection = False  # on_tcp_connect denied: close without an HTTP answer
        self._completed = False
        # After ``request`` without a reply: what it did to the head when that was only appending
        # headers (encoded, with their lower-case names; empty: nothing at all), else None.
        self.outcome: Outcome | None = None
        entry = _ENDPOINTS.get(id(ep))
        if entry is not None and entry[0]() is ep and entry[1].url is ep.url:
            endpoint = entry[1]
        else:
            endpoint = _endpoint_info(ep)
        target = req.target
        canonical = target[:1] == b"/"
        if not canonical:
            target = origin_form(target)
        path_b, sep, query_b = target.partition(b"?")
        path = path_b.decode("latin-1") or "/"
        query = query_b.decode("latin-1") if query_b else ""
        # The path and query as the target spells them, when writing them back would give the same bytes
        # (origin-form, no bare "?"): the request phase then need not rewrite the target.
        canonical = canonical and (bool(query_b) or not sep)
        self._target_path = path if canonical else None
        self._target_query = query if canonical else None
        raw = req.headers
        self._wire = wire = [raw, None, None, req.lower if len(req.lower) == len(raw) else None]
        r = HttpRequest(
            _METHODS.get(req.method) or req.method.decode("latin-1"),
            req.scheme,
            req.host,
            endpoint.port,
            path,
            query,
            req.version,
            wire,  # type: ignore[arg-type]
        )
        r.__class__ = _WireRequest
        wall = time.time()
        if conn is None:
            conn = Conn(req.client_ip, req.client_port, "", 0, None, wall)
        # Every field positionally, the containers as literals: cheaper than keywords and default factories.
        self.ex = Exchange(conn, endpoint, r, None, time.monotonic(), wall, {}, {}, [], "", [], None, {})

    @property
    def needs_body(self) -> bool:
        return self.policy.needs_request_body

    def set_body(self, body: bytes) -> None:
        self.ex.req.body = body

    def tcp_connect(self) -> Reply | None:
        """Run ``on_tcp_connect`` (per request here: routing by Host comes after the connection); a
        reply means close the connection, and it is reported to ``finish`` already."""
        reply = self.policy.on_tcp_connect(self.ex) if self.policy.has_tcp_phase else None
        self.closes_connection = reply is not None
        if reply is not None:
            self.finish(reply.status)
        return reply

    def answer(self, req: Request, body: bytes | None) -> Reply | None:
        """The request phase as the listeners run it: with the body an action needs (``body``; None when
        it was over ``MAX_POLICY_BODY``; unused when no action needs it), ``on_http_request``, and for a
        reply made here the response phase too. A reply is reported to ``finish``; without one, ``req``
        carries the actions' changes."""
        reply: Reply | None = None
        if self.needs_body:
            if body is None:
                reply = too_large(self.ex.endpoint.url)
            else:
                self.set_body(body)
        if reply is None:
            reply = self.request(req)
        if reply is None:
            return None
        reply = self.local_reply(reply)
        self.finish(reply.status)
        return reply

    def request(self, req: Request) -> Reply | None:
        """Run ``on_http_request``; without a reply, the request head takes the actions' changes."""
        ex = self.ex
        r = ex.req
        method, scheme, host, port, path, query = r.method, r.scheme, r.host, r.port, r.path, r.query
        # Headers never read are still the listener's (see _WireRequest); others are compared after.
        pristine = type(r) is _WireRequest and self._wire[_ADDED] is None
        snapshot = None if pristine else list(r.headers)
        reply = self.policy.on_http_request(ex)
        if reply is not None:
            return reply
        r = ex.req
        # Identity first (nothing changed, the usual case); equal URLs after all are no change either.
        url_changed = not (
            r.method is method
            and r.path is path
            and r.query is query
            and r.host is host
            and r.scheme is scheme
            and r.port is port
        ) and (r.method != method or r.url != url_of(scheme, host, port, path, query))
        wire = self._wire
        added: list[Header] | None = None
        if pristine and type(r) is _WireRequest:
            added = wire[_ADDED]  # what add-headers appended without reading the others
            headers_changed = added is not None
        else:
            if snapshot is None:
                snapshot = _decoded(wire)
            current = r.headers
            headers_changed = current != snapshot
            n = len(snapshot)
            if (
                headers_changed
                and snapshot is wire[_DECODED]
                and len(current) > n
                and current[:n] == snapshot
            ):
                added = current[n:]
        if not (url_changed or headers_changed):
            self.outcome = _NOTHING
            return None
        # Method and target as the actions left them (skipped when that gives the bytes already there).
        if _METHODS.get(req.method) is not r.method:
            req.method = _raw(r.method)
        if r.path is not self._target_path or r.query is not self._target_query:
            req.target = _raw(r.path + (f"?{r.query}" if r.query else ""))
        if added is not None and req.headers is wire[_RAW]:
            # Only appended to the listener's headers (add-headers): encode the new ones alone; the lower
            # names and Connection tokens of the others are the listener's (or left for upstream_head).
            keep = added is wire[_ADDED]
            new: hh.Headers = []
            lower: list[bytes] = []
            for header in added:
                name, value, lname = (_ENCODED.get(header) if keep else None) or _encoded(header, keep)
                new.append((name, value))
                lower.append(lname)
            append_encoded(req, new, lower)
            if not url_changed and r.host == req.host and self._target_path is not None:
                # (A target that was not origin-form is written back as such above: not replayed.)
                self.outcome = (tuple(new), tuple(lower))
        elif headers_changed or (url_changed and req.headers is not wire[_RAW]):
            self._set_headers(req, [(_raw(k), _raw(v)) for k, v in r.headers])
        if r.host != req.host:
            self._set_headers(req, hh.set_host(req.headers, _raw(r.host)))
            req.host = r.host
        return None

    def remember(self, ep: Endpoint, key: OutcomeKey) -> None:
        """Keep the request phase's outcome for ``key`` (see ``remembered``), if it can be replayed."""
        memo = ep.request_outcomes
        if memo is None or self.outcome is None or self.ex.on_complete or self.ex.logs:
            return
        memo.keep(key, self.outcome)

    @staticmethod
    def _set_headers(req: Request, headers: hh.Headers) -> None:
        req.headers = headers
        req.lower = [k.lower() for k, _ in headers]
        req.connection = frozenset(hh.connection_tokens(headers))

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


# ---- the request phase from a memo ----------------------------------------------------------------------
# A "static" request phase (``CompiledPolicy.static_request``: conditions that read only the request line,
# Host and headers; actions that answer, or append fixed headers) gives the same outcome for the same
# request. When it does not answer, that outcome is remembered per endpoint and replayed without building
# an exchange: a few dict operations instead of every rule. Answers are not remembered (they run in full).

Outcome = tuple[tuple[tuple[bytes, bytes], ...], tuple[bytes, ...]]  # headers appended, their lower names
# (method, Host, target, whether the target's query was left out, header lines)
OutcomeKey = tuple[bytes, str, bytes, bool, tuple[tuple[bytes, bytes], ...]]
_NOTHING: Outcome = ((), ())
_OUTCOMES = 1024  # per endpoint; cleared when full, as the engine's URL memo
_REST = 16  # a memo full of entries hardly ever asked again rests for this many times _OUTCOMES requests


class OutcomeMemo:
    """An endpoint's remembered outcomes, bounded, and off for a while when they do not pay off.

    Keeping an outcome costs about as much as a replay saves when requests never repeat (every request
    with its own query string, say): its key is built and looked up, and the request's header lines stay
    alive until the memo is cleared. So when the memo fills up with fewer than one replay for every four
    entries, it empties and rests: for the next ``_REST`` times ``_OUTCOMES`` requests it is neither
    asked nor filled (``active`` says so to the listener), then it starts over.

    ``query_free``: the phase reads nothing of the query string (``CompiledPolicy.static_query_free``),
    so requests that differ only in their query share an entry (``outcome_key``)."""

    __slots__ = ("entries", "hits", "query_free", "rest")

    def __init__(self, query_free: bool = False) -> None:
        self.query_free = query_free
        self.entries: dict[OutcomeKey, Outcome] = {}
        self.hits = 0  # replays since the memo last started over
        self.rest = 0  # requests left before it is used again

    def __len__(self) -> int:
        return len(self.entries)

    def key(self, req: Request) -> OutcomeKey:
        return outcome_key(req, self.query_free)

    def active(self) -> bool:
        """Whether to use the memo for this request (a resting memo counts it and says no)."""
        if not self.rest:
            return True
        self.rest -= 1
        return False

    def keep(self, key: OutcomeKey, outcome: Outcome) -> None:
        entries = self.entries
        if len(entries) >= _OUTCOMES:
            if self.hits * 4 < len(entries):
                self.rest = _REST * _OUTCOMES
            entries.clear()
            self.hits = 0
            if self.rest:
                return
        entries[key] = outcome


def outcome_key(req: Request, query_free: bool = False) -> OutcomeKey:
    """What a static request phase reads (the scheme and port are the endpoint's own); with
    ``query_free``, a non-empty query string is left out (a bare "?" is not: running the rules drops it
    from the target, which a replay would not)."""
    if query_free:
        path, _, query = req.target.partition(b"?")
        if query:
            return (req.method, req.host, path, True, tuple(req.headers))
    return (req.method, req.host, req.target, False, tuple(req.headers))


def remembered(ep: Endpoint, key: OutcomeKey, req: Request) -> bool:
    """Apply the remembered outcome of the request phase for ``key`` to ``req``; False: none yet."""
    memo = ep.request_outcomes
    if memo is None:
        return False
    found = memo.entries.get(key)
    if found is None:
        return False
    memo.hits += 1
    if found[0]:
        append_encoded(req, list(found[0]), list(found[1]))
    return True


def shortcut(policy: CompiledPolicy, ep: Endpoint, req: Request) -> tuple[bool, OutcomeKey | None]:
    """The listener's ways around a ``PolicyRun`` for a static request phase, in order: the memo's replay
    (``remembered``), then the phase on the request's bytes (``decided``). Returns whether one of them
    settled the request, and the key under which to remember a full run's outcome (``PolicyRun.remember``;
    None: the memo is off)."""
    memo = ep.request_outcomes
    key = memo.key(req) if memo is not None and memo.active() else None
    if key is not None and remembered(ep, key, req):
        return True, key
    return decided(policy, ep, req, key), key


def decided(policy: CompiledPolicy, ep: Endpoint, req: Request, key: OutcomeKey | None) -> bool:
    """Decide a static request phase from the listener's request alone (``CompiledPolicy.static_run``,
    no exchange built): True when it did (what it appends is on ``req``, and remembered under ``key``),
    False when the phase must run in full (it answers, or the request is not one it covers)."""
    run = policy.static_run
    if run is None:
        return False
    found = run(req)
    if found is FULL:
        return False
    if found is not None:
        append_encoded(req, list(found[0]), list(found[1]))
    memo = ep.request_outcomes
    if key is not None and memo is not None:
        memo.keep(key, found or _NOTHING)
    return True


def append_encoded(req: Request, new: hh.Headers, lower: list[bytes]) -> None:
    """Append ready header lines (and their lower-case names) to the listener's request head."""
    n = len(req.headers)
    headers = req.headers + new
    if len(req.lower) == n:
        req.lower = req.lower + lower
    elif req.lower:
        req.lower = [k.lower() for k, _ in headers]
    if b"connection" in lower:
        req.connection = frozenset(hh.connection_tokens(headers))
    req.headers = headers


def connection_info(
    transport: asyncio.BaseTransport | None, client_ip: str, client_port: int, started: float, sni: str = ""
) -> Conn:
    """``conn.*`` of a client connection accepted at ``started`` (unix seconds) whose ClientHello asked
    for ``sni``, made once per connection: its requests share it (nothing changes a ``Conn``)."""
    return Conn(client_ip, client_port, "", 0, tls_info(transport, sni), started)


def tls_info(transport: asyncio.BaseTransport | None, sni: str = "") -> TlsInfo | None:
    """``conn.tls.*`` for a client connection (None for plain HTTP)."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return TlsInfo(
        version=ssl_object.version() or "",
        cipher_suite=cipher[0] if cipher else "",
        sni=sni,  # (a server-side SSLObject's server_hostname is always None)
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
