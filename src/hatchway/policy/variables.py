"""The CEL variables of one exchange (``req``, ``res``, ``conn``, ``endpoint``, ``time``, ``vars``...).

Role: turn an ``Exchange`` into the values expressions read, computed on first use and cached per exchange
in ``ex.scratch`` (a ``VarState``), and describe which variables exist (``SCHEMA``, used by ``cel`` to refuse
``req.methd`` when a policy is loaded). Must not: evaluate CEL, change the exchange, or do I/O.

Shapes worth knowing (ngrok documents some names both as a string and as a struct; CEL values cannot be
both, so these are structs and ``cel`` rewrites a bare use to the field in brackets):

- ``req.url``: ``{scheme, host, port, authority, path, raw_path, query, query_params, uri, raw,
  user_password}``. ``path`` is percent-decoded, ``raw_path`` as received, ``uri`` is path plus ``?query``,
  ``raw`` the whole URL (scheme, host, the port when not the default, path, query). Bare ``req.url``
  and ``req.url.<string method>(...)`` mean ``req.url.raw``.
- ``req.content_type`` / ``res.content_type``: ``{raw, media_type, parameters}``; bare means ``media_type``.
- ``req.user_agent``: ``{raw, name, version, is_bot, is_mobile}``; bare means ``raw`` (so the module-era
  ``req.user_agent.matches('curl')`` works).
- Headers are maps from the lower-case name to the list of values; cookies map a name to a list of
  ``{name, value}`` (response cookies carry their attributes too).
- ``req.content_length`` / ``res.content_length`` are absent when no Content-Length was sent.
- Times (``time.now``, ``conn.ts.start``) are RFC 3339 strings in UTC, e.g. ``2024-05-01T12:00:00Z``.

Actions change ``ex.req`` / ``ex.res`` / ``ex.vars`` / ``ex.results``; the engine marks the state dirty
after each action so that values derived from them are recomputed when next read (the cheap leaf values
read the exchange directly and are never stale). The one exception is an action that only appends request
headers and says so (``dirties = 0``): it calls ``appended`` itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final
from urllib.parse import parse_qs, unquote

from hatchway.policy.model import DEFAULT_PORTS, Exchange, Header

SCRATCH_KEY: Final = "policy.vars"


class _Missing:
    """The value of a variable that does not exist for this exchange (reading it is a CEL error)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()

# ---- schema: what a policy may name ------------------------------------------------------------------
# A node is LEAF (a scalar), ANY (a map or list whose keys are data: anything may follow), or a dict of
# its fields. ``DUAL`` names the structs whose bare use means one of their fields.
LEAF: Final = "leaf"
ANY: Final = "any"

_URL = {
    k: LEAF
    for k in (
        "scheme",
        "host",
        "port",
        "authority",
        "path",
        "raw_path",
        "query",
        "uri",
        "raw",
        "user_password",
    )
}
_URL["query_params"] = ANY
_CONTENT_TYPE = {"raw": LEAF, "media_type": LEAF, "parameters": ANY}
_USER_AGENT = {k: LEAF for k in ("raw", "name", "version", "is_bot", "is_mobile")}
_TLS = {k: LEAF for k in ("version", "cipher_suite", "sni", "negotiated_alpn")} | {"client": ANY}

SCHEMA: Final[dict[str, Any]] = {
    "req": {
        "method": LEAF,
        "version": LEAF,
        "host": LEAF,
        "url": _URL,
        "headers": ANY,
        "trailers": ANY,
        "cookies": ANY,
        "content_type": _CONTENT_TYPE,
        "content_encoding": ANY,
        "content_length": LEAF,
        "user_agent": _USER_AGENT,
    },
    "res": {
        "status_code": LEAF,
        "headers": ANY,
        "trailers": ANY,
        "cookies": ANY,
        "location": LEAF,
        "content_type": _CONTENT_TYPE,
        "content_encoding": ANY,
        "content_length": LEAF,
    },
    "conn": {
        "client_ip": LEAF,
        "client_port": LEAF,
        "server_ip": LEAF,
        "server_port": LEAF,
        "ts": {"start": LEAF},
        "tls": _TLS,
    },
    "endpoint": {k: LEAF for k in ("id", "url", "host", "port", "protocol")},
    "time": {"now": LEAF},
    "vars": ANY,
    "actions": {"ngrok": ANY},
}

# Bare use of these structs means this field.
DUAL: Final = {
    "req.url": "raw",
    "req.content_type": "media_type",
    "res.content_type": "media_type",
    "req.user_agent": "raw",
}

# Documented by ngrok but not filled by Hatchway: refused with a clearer message than "unknown".
NOT_AVAILABLE: Final = frozenset(
    {
        "conn.server_region",
        "conn.bytes_in",
        "conn.bytes_out",
        "conn.geo",
        "conn.k8s",
        "conn.client_ip.categories",
        "conn.client_ip.is_on_blocklist",
        "conn.client_ip.is_tor_node",
        "conn.client_ip.as",
        "conn.client_ip.geo",
        "conn.server_ip.categories",
        "conn.server_ip.as",
        "conn.server_ip.geo",
        "conn.tls.ja4_fingerprint",
        "conn.tls.session_resumed",
        "conn.tls.server",
        "req.location",
        "req.ts",
        "req.url.fragment",
        "req.user_agent.os",
        "req.user_agent.os_version",
        "req.user_agent.device",
        "req.user_agent.is_tablet",
        "req.user_agent.is_desktop",
        "req.user_agent.url",
        "endpoint.addr",
    }
)

# ---- small parsers -----------------------------------------------------------------------------------


def rfc3339(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def header_map(headers: list[Header]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in headers:
        lname = name.lower()
        values = out.get(lname)
        if values is None:
            out[lname] = [value]
        else:
            values.append(value)
    return out


def _unquote_cookie(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def request_cookies(values: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for header in values:
        for part in header.split(";"):
            name, eq, value = part.strip().partition("=")
            if not eq or not name:
                continue
            out.setdefault(name, []).append({"name": name, "value": _unquote_cookie(value.strip())})
    return out


_COOKIE_FLAGS = {"secure": "secure", "httponly": "http_only"}
_COOKIE_ATTRS = {"domain": "domain", "path": "path", "expires": "expires", "samesite": "same_site"}


def response_cookies(values: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for header in values:
        first, *attrs = header.split(";")
        name, eq, value = first.strip().partition("=")
        if not eq or not name:
            continue
        cookie: dict[str, Any] = {
            "name": name,
            "value": _unquote_cookie(value.strip()),
            "domain": "",
            "path": "",
            "expires": "",
            "max_age": 0,
            "secure": False,
            "http_only": False,
            "same_site": "",
            "unparsed_attributes": [],
        }
        for attr in attrs:
            key, _, val = attr.strip().partition("=")
            lkey = key.lower()
            if lkey in _COOKIE_FLAGS:
                cookie[_COOKIE_FLAGS[lkey]] = True
            elif lkey in _COOKIE_ATTRS:
                cookie[_COOKIE_ATTRS[lkey]] = val.strip()
            elif lkey == "max-age" and val.strip().lstrip("-").isdigit():
                cookie["max_age"] = int(val.strip())
            elif attr.strip():
                cookie["unparsed_attributes"].append(attr.strip())
        out.setdefault(name, []).append(cookie)
    return out


def content_type(value: str | None) -> dict[str, Any]:
    if value is None:
        return {"raw": "", "media_type": "", "parameters": {}}
    media, *params = value.split(";")
    parameters: dict[str, str] = {}
    for param in params:
        key, eq, val = param.strip().partition("=")
        if eq and key:
            parameters[key.lower()] = val.strip().strip('"')
    return {"raw": value, "media_type": media.strip().lower(), "parameters": parameters}


def content_length(values: list[str]) -> int | _Missing:
    if values and values[0].strip().isdigit():
        return int(values[0].strip())
    return MISSING


def content_encoding(values: list[str]) -> list[str]:
    return [c.strip().lower() for v in values for c in v.split(",") if c.strip()]


_BROWSERS = (("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"))
_PRODUCT = re.compile(r"([^\s/()]+)/([^\s;()]+)")
_BOT = re.compile(r"bot|crawl|spider|slurp", re.IGNORECASE)


def user_agent(raw: str | None) -> dict[str, Any]:
    """``req.user_agent``: a rough name/version (well-known browsers, else the first product token)."""
    raw = raw or ""
    name = version = ""
    for token, browser in _BROWSERS:
        at = raw.find(token)
        if at >= 0:
            name, version = browser, raw[at + len(token) :].split(" ", 1)[0]
            break
    else:
        if "Safari/" in raw and "Version/" in raw:
            name, version = "Safari", raw.split("Version/", 1)[1].split(" ", 1)[0]
        elif (m := _PRODUCT.match(raw)) is not None:
            name, version = m.group(1), m.group(2)
    return {
        "raw": raw,
        "name": name,
        "version": version,
        "is_bot": bool(_BOT.search(raw)),
        "is_mobile": "Mobi" in raw,
    }


# ---- the per-exchange state --------------------------------------------------------------------------


class VarState:
    """One exchange's variable values: leaf values read live, derived maps cached until something changes.

    ``changed()`` (after each action) only marks the state dirty; the next read compares the exchange with
    snapshots (URL parts, header lists, the response object, and ``vars``/results while an activation
    carries them), drops or extends what changed and records its kind in ``changes``. The request's
    snapshots are taken when something derived from them is first kept (a cached value, an activation):
    until then nothing can be stale, and the edge decodes the request headers only when they are read.
    The CEL activation (``act``) is rebuilt only when a kind it carries changed or an expression needs
    fields it lacks: converting Python values into CEL is the expensive part of evaluating (about 0.4 µs
    per header).
    """

    __slots__ = (
        "_req_hdrs",
        "_req_key",
        "_res_hdrs",
        "_res_obj",
        "_results",
        "_vars",
        "act",
        "act_kinds",
        "act_needs",
        "cache",
        "changes",
        "dirty",
        "ex",
    )

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self.cache: dict[str, Any] = {}
        self.dirty = 0  # bits of the kinds below that may have changed since they were last compared
        self.changes = 0  # kinds that changed since the activation was built
        self.act: Any = None
        self.act_needs: frozenset[str] = frozenset()
        self.act_kinds = 0  # kinds the activation's values were derived from
        self._req_key: tuple[Any, ...] | None = None  # taken when first needed (see _snap)
        self._req_hdrs: list[Header] | None = None
        self._res_obj = ex.res
        self._res_hdrs = None if ex.res is None else list(ex.res.headers)
        self._vars: dict[str, Any] | None = None  # snapshots, taken while the activation holds them
        self._results: dict[str, Any] | None = None

    def changed(self) -> None:
        """An action (or the edge) may have changed the exchange: re-check derived values on next read."""
        self.dirty = ALL_DIRTY

    def refresh(self, kinds: int = 15) -> None:
        """Compare the exchange with the snapshots of ``kinds`` (bits: URL, request headers, response,
        vars/results); drop or extend what changed and add its kind to ``changes``."""
        kinds &= self.dirty
        self.dirty &= ~kinds
        ex, cache = self.ex, self.cache
        if kinds & _URL_DERIVED and self._req_key is not None:
            key = _req_key(ex)
            if key != self._req_key:
                self._req_key = key
                _drop(cache, _URL_KEYS)
                self.changes |= _URL_DERIVED
        if (
            kinds & _REQ_HEADERS
            and self._req_hdrs is not None
            and _recheck(cache, self._req_hdrs, ex.req.headers, "req.headers", _REQ_HEADER_KEYS)
        ):
            self.changes |= _REQ_HEADERS
        if kinds & _RES_HEADERS:
            res = ex.res
            if res is not self._res_obj:
                self._res_obj = res
                self._res_hdrs = None if res is None else list(res.headers)
                _drop(cache, _RES_HEADER_KEYS)
                self.changes |= _RES_HEADERS
            elif (
                res is not None
                and self._res_hdrs is not None
                and _recheck(cache, self._res_hdrs, res.headers, "res.headers", _RES_HEADER_KEYS)
            ):
                self.changes |= _RES_HEADERS
        if kinds & _VARS and (
            (self._vars is not None and self._vars != ex.vars)
            or (self._results is not None and self._results != ex.results)
        ):
            self.changes |= _VARS

    def get(self, key: str) -> Any:
        """The value of the variable ``key`` (``"req.url"``, ``"req.url.query_params"``), or ``MISSING``."""
        getter, kind = FIELDS[key]
        if self.dirty & kind:
            self.refresh(kind)
        value = self.cache.get(key, MISSING)
        if value is not MISSING:
            return value
        value = getter(self.ex)
        if kind and value is not MISSING:
            if kind & _REQ_SNAPPED:
                self._snap(kind)
            self.cache[key] = value
        return value

    def _snap(self, kinds: int) -> None:
        """Take the request's snapshots of ``kinds`` not taken yet: a value derived from them is kept now
        (the state is current: reads refresh first, and nothing changes the exchange in between)."""
        if kinds & _URL_DERIVED and self._req_key is None:
            self._req_key = _req_key(self.ex)
        if kinds & _REQ_HEADERS and self._req_hdrs is None:
            self._req_hdrs = list(self.ex.req.headers)

    def header_values(self, side: str, name: str) -> list[str]:
        headers = self.get(f"{side}.headers")
        if headers is MISSING:
            return []
        values: list[str] = headers.get(name.lower(), [])
        return values

    def activation(
        self, needs: frozenset[str], kinds: int, wide: frozenset[str], build: Callable[[dict[str, Any]], Any]
    ) -> Any:
        """A CEL activation whose values for ``needs`` (which depend on ``kinds``, see ``kinds_of``) are
        current; when one must be built (by ``build(data)``), it carries ``wide`` too, so that the other
        expressions of the phase can use it."""
        if self.dirty:
            self.refresh(ALL_DIRTY)
        act = self.act
        if act is not None and needs <= self.act_needs and not self.changes & kinds:
            return act  # what else changed, this expression does not read
        carry = needs | wide
        if act is not None and not self.changes & self.act_kinds:
            carry |= self.act_needs
        act = self.act = build(self.data(carry))
        self.act_needs = carry
        self.act_kinds = kinds_of(carry)
        self._snap(self.act_kinds)  # live values it carries (req.method...) must be compared from now on
        self.changes = 0
        if "vars.*" in carry:
            self._vars = dict(self.ex.vars)
        if "actions.*" in carry:
            self._results = dict(self.ex.results)
        return act

    def data(self, needs: frozenset[str]) -> dict[str, Any]:
        """The activation's variables: for each root, the needed fields (``"req.*"`` = all of them)."""
        out: dict[str, Any] = {}
        get, missing = self.get, MISSING
        for root, fields in _plan(needs):
            if root in WHOLE:  # vars / actions are whole values owned by the exchange
                out[root] = WHOLE[root](self.ex)
                continue
            group = out[root] = {}
            for key, name in fields:
                value = get(key)
                if value is not missing:
                    group[name] = value
        return out


@lru_cache(maxsize=256)
def kinds_of(needs: frozenset[str]) -> int:
    """The kinds of change that make an activation carrying ``needs`` stale."""
    kinds = 0
    for need in needs:
        root, _, name = need.partition(".")
        if root in WHOLE:
            kinds |= _VARS
        elif root == "req" and name in ("*", "method", "version", "host"):
            kinds |= _URL_DERIVED | (_REQ_HEADERS if name == "*" else 0)  # live values url-rewrite changes
        elif root == "res":
            kinds |= _RES_HEADERS  # the response object itself, status included
        elif need in FIELDS and FIELDS[need][1] != _CONST:
            kinds |= FIELDS[need][1]
    return kinds


@lru_cache(maxsize=256)
def _plan(needs: frozenset[str]) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """For each root in ``needs``, the (variable key, field name) pairs an activation carries."""
    roots: dict[str, dict[str, str]] = {}
    for need in sorted(needs):
        root, _, name = need.partition(".")
        fields = roots.setdefault(root, {})
        for key in GROUPS.get(root, ()) if name == "*" else (need,):
            fields[key] = key.partition(".")[2]
    return tuple((root, tuple(fields.items())) for root, fields in roots.items())


def state(ex: Exchange) -> VarState:
    """The exchange's ``VarState``, created on first use."""
    st: VarState | None = ex.scratch.get(SCRATCH_KEY)
    if st is None:
        st = ex.scratch[SCRATCH_KEY] = VarState(ex)
    return st


def changed(ex: Exchange) -> None:
    """Tell the cached variables that ``ex`` was changed (after set-vars, an action, or between phases)."""
    st: VarState | None = ex.scratch.get(SCRATCH_KEY)
    if st is not None:
        st.dirty = ALL_DIRTY


def _req_key(ex: Exchange) -> tuple[Any, ...]:
    r = ex.req
    return (r.scheme, r.host, r.port, r.path, r.query, r.method, r.version)


def _recheck(
    cache: dict[str, Any], snap: list[Header], headers: list[Header], map_key: str, derived: frozenset[str]
) -> bool:
    """Bring the values derived from a header list up to date with it, and ``snap`` too; True if it changed.

    add-headers only appends, and 20 rules may run several of them: extend the cached name -> values map
    with the new headers instead of rebuilding it, and keep the other derived values unless one of the
    headers they read was added."""
    n = len(snap)
    if len(headers) == n and (n == 0 or headers[-1] is snap[-1]) and headers == snap:
        return False
    if len(headers) > n and headers[:n] == snap:
        _extend(cache, snap, headers[n:], map_key, derived)
        return True
    _drop(cache, derived)
    snap[:] = headers
    return True


def _extend(
    cache: dict[str, Any], snap: list[Header], added: Sequence[Header], map_key: str, derived: frozenset[str]
) -> None:
    """``added`` was appended to the header list ``snap`` was current with: extend both."""
    hmap = cache.get(map_key)
    stale = False
    for name, value in added:
        lname = name.lower()
        if hmap is not None:
            values = hmap.get(lname)
            if values is None:
                hmap[lname] = [value]
            else:
                values.append(value)
        stale = stale or lname in _DERIVED_FROM
    if stale:
        _drop(cache, derived - {map_key})
    snap.extend(added)


def appended(ex: Exchange, headers: Sequence[Header]) -> None:
    """For an action that declares it changes nothing else (``dirties = 0``, see the engine): ``headers``
    were just appended to the request's. If the derived values were current, they are extended (and the
    activation told) here, which is cheaper than the comparison the next read would make; if not, that
    comparison still comes, as the request headers are marked dirty already."""
    st: VarState | None = ex.scratch.get(SCRATCH_KEY)
    if st is None or st._req_hdrs is None or st.dirty & _REQ_HEADERS:
        return
    _extend(st.cache, st._req_hdrs, headers, "req.headers", _REQ_HEADER_KEYS)
    st.changes |= _REQ_HEADERS


def _drop(cache: dict[str, Any], keys: frozenset[str]) -> None:
    for key in keys:
        cache.pop(key, None)


# ---- the fields --------------------------------------------------------------------------------------
# Each variable: how to compute it, and what it depends on, as a bit of ``VarState.dirty``. Live values are
# cheap and read from the exchange every time; constant ones cannot change during the exchange.
_LIVE = 0
_CONST = 16  # cached, and never dirty (outside ALL_DIRTY)
_URL_DERIVED = 1
_REQ_HEADERS = 2
_RES_HEADERS = 4
_VARS = 8  # vars / actions results, compared only while an activation carries them
ALL_DIRTY: Final = 15
_REQ_SNAPPED = _URL_DERIVED | _REQ_HEADERS  # kinds whose snapshots VarState takes when first needed
REQ_HEADERS: Final = _REQ_HEADERS  # for cel's inline reads of req.headers
URL_DERIVED: Final = _URL_DERIVED  # for the engine: an action that may have changed the URL


def req_authority(ex: Exchange) -> str:
    r = ex.req
    return r.host if DEFAULT_PORTS.get(r.scheme) == r.port else f"{r.host}:{r.port}"


def req_uri(ex: Exchange) -> str:
    r = ex.req
    return f"{r.path or '/'}?{r.query}" if r.query else r.path or "/"


def req_version(ex: Exchange) -> str:
    v = ex.req.version
    return f"HTTP/{v}.0" if "." not in v else f"HTTP/{v}"


# Leaves the fast path reads without building the enclosing map. (STR_LEAVES, below: those always a str.)
LEAVES: Final[dict[str, Callable[[Exchange], Any]]] = {
    "req.method": lambda ex: ex.req.method,
    "req.version": req_version,
    "req.host": lambda ex: ex.req.host,
    "req.url.scheme": lambda ex: ex.req.scheme,
    "req.url.host": lambda ex: ex.req.host,
    "req.url.port": lambda ex: ex.req.port,
    "req.url.authority": req_authority,
    "req.url.path": lambda ex: unquote(ex.req.path or "/"),
    "req.url.raw_path": lambda ex: ex.req.path or "/",
    "req.url.query": lambda ex: ex.req.query,
    "req.url.uri": req_uri,
    "req.url.raw": lambda ex: ex.req.url,
    "req.url.user_password": lambda ex: "",
    "req.user_agent.raw": lambda ex: ex.req.header("user-agent") or "",
    "conn.client_ip": lambda ex: ex.conn.client_ip,
    "conn.client_port": lambda ex: ex.conn.client_port,
    "conn.server_ip": lambda ex: ex.conn.server_ip,
    "conn.server_port": lambda ex: ex.conn.server_port,
    "endpoint.id": lambda ex: ex.endpoint.id,
    "endpoint.url": lambda ex: ex.endpoint.url,
    "endpoint.host": lambda ex: ex.endpoint.host,
    "endpoint.port": lambda ex: ex.endpoint.port,
    "endpoint.protocol": lambda ex: ex.endpoint.protocol,
    "res.status_code": lambda ex: MISSING if ex.res is None else ex.res.status,
}


def _url(ex: Exchange) -> dict[str, Any]:
    out = {name: fn(ex) for name, fn in _URL_LEAVES}
    out["query_params"] = parse_qs(ex.req.query, keep_blank_values=True)
    return out


def _tls(ex: Exchange) -> dict[str, Any]:
    tls = ex.conn.tls
    if tls is None:
        return {"version": "", "cipher_suite": "", "sni": "", "negotiated_alpn": ""}
    out: dict[str, Any] = {
        "version": tls.version,
        "cipher_suite": tls.cipher_suite,
        "sni": tls.sni,
        "negotiated_alpn": tls.negotiated_alpn,
    }
    if tls.client_cert is not None:
        out["client"] = tls.client_cert
    return out


def _res_headers(ex: Exchange) -> list[Header]:
    return [] if ex.res is None else ex.res.headers


def _res_values(ex: Exchange, name: str) -> list[str]:
    return [] if ex.res is None else ex.res.header_values(name)


def _res_first(ex: Exchange, name: str) -> str | None:
    return None if ex.res is None else ex.res.header(name)


def _or_missing(value: str | None) -> str | _Missing:
    return MISSING if value is None else value


def _leaf(key: str) -> tuple[Callable[[Exchange], Any], int]:
    return LEAVES[key], _LIVE


FIELDS: Final[dict[str, tuple[Callable[[Exchange], Any], int]]] = {
    "req.method": _leaf("req.method"),
    "req.version": _leaf("req.version"),
    "req.host": _leaf("req.host"),
    "req.url": (_url, _URL_DERIVED),
    # Third level, cached on its own: the fast path reads it without building the rest of req.url.
    "req.url.query_params": (lambda ex: parse_qs(ex.req.query, keep_blank_values=True), _URL_DERIVED),
    "req.headers": (lambda ex: header_map(ex.req.headers), _REQ_HEADERS),
    "req.trailers": (lambda ex: {}, _CONST),
    "req.cookies": (lambda ex: request_cookies(ex.req.header_values("cookie")), _REQ_HEADERS),
    "req.content_type": (lambda ex: content_type(ex.req.header("content-type")), _REQ_HEADERS),
    "req.content_encoding": (
        lambda ex: content_encoding(ex.req.header_values("content-encoding")),
        _REQ_HEADERS,
    ),
    "req.content_length": (lambda ex: content_length(ex.req.header_values("content-length")), _REQ_HEADERS),
    "req.user_agent": (lambda ex: user_agent(ex.req.header("user-agent")), _REQ_HEADERS),
    "res.status_code": _leaf("res.status_code"),
    "res.headers": (lambda ex: header_map(_res_headers(ex)), _RES_HEADERS),
    "res.trailers": (lambda ex: {}, _CONST),
    "res.cookies": (lambda ex: response_cookies(_res_values(ex, "set-cookie")), _RES_HEADERS),
    "res.location": (lambda ex: _or_missing(_res_first(ex, "location")), _RES_HEADERS),
    "res.content_type": (
        lambda ex: content_type(_res_first(ex, "content-type")),
        _RES_HEADERS,
    ),
    "res.content_encoding": (lambda ex: content_encoding(_res_values(ex, "content-encoding")), _RES_HEADERS),
    "res.content_length": (lambda ex: content_length(_res_values(ex, "content-length")), _RES_HEADERS),
    "conn.client_ip": _leaf("conn.client_ip"),
    "conn.client_port": _leaf("conn.client_port"),
    "conn.server_ip": _leaf("conn.server_ip"),
    "conn.server_port": _leaf("conn.server_port"),
    "conn.ts": (lambda ex: {"start": rfc3339(ex.conn.ts_start)}, _CONST),
    "conn.tls": (_tls, _CONST),
    "endpoint.id": _leaf("endpoint.id"),
    "endpoint.url": _leaf("endpoint.url"),
    "endpoint.host": _leaf("endpoint.host"),
    "endpoint.port": _leaf("endpoint.port"),
    "endpoint.protocol": _leaf("endpoint.protocol"),
    "time.now": (lambda ex: rfc3339(ex.wall), _CONST),
}

# vars and actions are whole maps owned by the exchange (no fields of our own).
WHOLE: Final[dict[str, Callable[[Exchange], Any]]] = {
    "vars": lambda ex: ex.vars,
    "actions": lambda ex: {"ngrok": ex.results},
}

# Leaves whose value is a str whatever the exchange holds (the model's fields are typed): cel specialises
# string methods and comparisons on them without a type check.
STR_LEAVES: Final = frozenset(
    {
        "req.method",
        "req.version",
        "req.host",
        "req.url.scheme",
        "req.url.host",
        "req.url.authority",
        "req.url.path",
        "req.url.raw_path",
        "req.url.query",
        "req.url.uri",
        "req.url.raw",
        "req.url.user_password",
        "req.user_agent.raw",
        "conn.client_ip",
        "conn.server_ip",
        "endpoint.id",
        "endpoint.url",
        "endpoint.host",
        "endpoint.protocol",
    }
)

_URL_LEAVES: Final = tuple((k[8:], fn) for k, fn in LEAVES.items() if k.startswith("req.url."))

GROUPS: Final[dict[str, tuple[str, ...]]] = {
    root: tuple(k for k in FIELDS if k.startswith(root + ".") and k.count(".") == 1)
    for root in ("req", "res", "conn", "endpoint", "time", "vars", "actions")
}

_URL_KEYS = frozenset({"req.url", "req.url.query_params"})
# Headers that values other than the name -> values map are derived from.
_DERIVED_FROM = frozenset(
    {"cookie", "set-cookie", "content-type", "content-length", "content-encoding", "user-agent", "location"}
)
_REQ_HEADER_KEYS = frozenset(k for k, (_, kind) in FIELDS.items() if kind == _REQ_HEADERS)
_RES_HEADER_KEYS = frozenset(k for k, (_, kind) in FIELDS.items() if kind == _RES_HEADERS)
