"""The JSON messages of ngrok's agent protocol (protocol.md §5, §6) as msgspec structs.

Encoding writes the exact key spelling the Rust SDKs require (serde is case-sensitive: ``ClientId``,
``URL``, ``PassthroughTLS``). Decoding is forgiving, because SDK versions differ: keys match
case-insensitively (``AuthToken`` from Rust, ``Authtoken`` from Go), ``null`` means "use the default",
unknown keys are ignored, and ``Hostname``/``Domain`` are both read. This module holds data and pure
functions only: no I/O, no stream handling (see ``rpc.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
from msgspec import field

from hatchway.errors import RemoteProtocolError
from hatchway.wire.frames import ErrorCode

T = TypeVar("T", bound=msgspec.Struct)


class _Msg(msgspec.Struct, rename="pascal", omit_defaults=False):
    """Base: PascalCase keys (the agent protocol's outer convention)."""


class _Mw(msgspec.Struct, omit_defaults=True):
    """Base for endpoint middleware objects: snake_case keys, empty values left out (as the SDKs do)."""


# ---- Auth (stream type 0) --------
class AuthExtra(_Msg):
    os: str = field(default="", name="OS")
    arch: str = ""
    # Rust sends "AuthToken", Go "Authtoken": both land here through case-insensitive decoding.
    auth_token: str = ""
    version: str = ""
    hostname: str = ""
    user_agent: str = ""
    metadata: str = ""
    cookie: str = ""
    heartbeat_interval: int = 0  # nanoseconds (protocol.md pitfall 17)
    heartbeat_tolerance: int = 0  # nanoseconds
    update_unsupported_error: str | None = None
    stop_unsupported_error: str | None = None
    restart_unsupported_error: str | None = None
    proxy_type: str = ""
    mutual_tls: bool = field(default=False, name="MutualTLS")
    service_run: bool = False
    config_version: str = ""
    custom_interface: bool = False
    custom_cas: bool = field(default=False, name="CustomCAs")
    client_type: str = ""
    leg_number: int = 0


class Auth(_Msg):
    version: list[str] = msgspec.field(default_factory=lambda: ["3", "2"])
    client_id: str = ""
    extra: AuthExtra = msgspec.field(default_factory=AuthExtra)


class AuthRespExtra(_Msg):
    version: str = ""
    region: str = ""
    cookie: str = ""
    account_name: str = ""
    session_duration: int = 0
    plan_name: str = ""
    banner: str = ""


class AuthResp(_Msg):
    version: str = "3"
    client_id: str = ""
    error: str = ""
    extra: AuthRespExtra = msgspec.field(default_factory=AuthRespExtra)


# ---- endpoint middleware (inner keys are snake_case) --------
class Compression(_Mw):
    pass


class CircuitBreaker(_Mw):
    error_threshold: float = 0.0


class IPRestriction(_Mw):
    allow_cidrs: list[str] = msgspec.field(default_factory=list)
    deny_cidrs: list[str] = msgspec.field(default_factory=list)


class BasicAuthCredential(_Mw):
    username: str = ""
    cleartext_password: str = ""
    hashed_password: str = ""  # base64


class BasicAuth(_Mw):
    credentials: list[BasicAuthCredential] = msgspec.field(default_factory=list)


class OAuth(_Mw):
    provider: str = ""
    client_id: str = ""
    client_secret: str = ""
    sealed_client_secret: str = ""
    allow_emails: list[str] = msgspec.field(default_factory=list)
    allow_domains: list[str] = msgspec.field(default_factory=list)
    scopes: list[str] = msgspec.field(default_factory=list)


class OIDC(_Mw):
    issuer_url: str = ""
    client_id: str = ""
    client_secret: str = ""
    sealed_client_secret: str = ""
    allow_emails: list[str] = msgspec.field(default_factory=list)
    allow_domains: list[str] = msgspec.field(default_factory=list)
    scopes: list[str] = msgspec.field(default_factory=list)


class WebhookVerification(_Mw):
    provider: str = ""
    secret: str = ""
    sealed_secret: str = ""


class MutualTLS(_Mw):
    mutual_tls_ca: str = ""  # base64 of the concatenated CA PEMs


class Headers(_Mw):
    add: list[str] = msgspec.field(default_factory=list)  # "name:value"
    remove: list[str] = msgspec.field(default_factory=list)
    add_parsed: dict[str, str] = field(default_factory=dict, name="addParsed")


class WebsocketTCPConverter(_Mw):
    pass


class UserAgentFilter(_Mw):
    allow: list[str] = msgspec.field(default_factory=list)
    deny: list[str] = msgspec.field(default_factory=list)


class TLSTermination(_Mw):
    cert: str = ""  # base64
    key: str = ""
    sealed_key: str = ""


class PolicyAction(_Msg):
    type: str = ""
    config: object = None


class PolicyRule(_Msg):
    name: str = ""
    expressions: list[str] = msgspec.field(default_factory=list)
    actions: list[PolicyAction] = msgspec.field(default_factory=list)


class LegacyPolicy(_Msg):
    """``Policy {Inbound, Outbound}`` from SDKs older than 0.14.0-pre.14."""

    inbound: list[PolicyRule] = msgspec.field(default_factory=list)
    outbound: list[PolicyRule] = msgspec.field(default_factory=list)


# ---- endpoint options (Bind.Opts) --------
class HttpEndpoint(_Msg):
    hostname: str = ""  # 0.14: filled by domain=
    domain: str = ""  # 0.18: filled by domain= (Hostname then "")
    auth: str = ""
    subdomain: str = ""
    host_header_rewrite: bool = False
    local_url_scheme: str | None = None
    proxy_proto: int = 0
    url: str = field(default="", name="URL")  # Go
    compression: Compression | None = None
    circuit_breaker: CircuitBreaker | None = None
    ip_restriction: IPRestriction | None = field(default=None, name="IPRestriction")
    basic_auth: BasicAuth | None = None
    oauth: OAuth | None = field(default=None, name="OAuth")
    oidc: OIDC | None = field(default=None, name="OIDC")
    webhook_verification: WebhookVerification | None = None
    mutual_tls_ca: MutualTLS | None = field(default=None, name="MutualTLSCA")
    request_headers: Headers | None = None
    response_headers: Headers | None = None
    websocket_tcp_converter: WebsocketTCPConverter | None = field(default=None, name="WebsocketTCPConverter")
    user_agent_filter: UserAgentFilter | None = None
    traffic_policy: str | None = None
    policy: LegacyPolicy | None = None

    @property
    def requested_domain(self) -> str:
        """The domain the agent asked for, whichever key its SDK version used."""
        return self.domain or self.hostname


class TcpEndpoint(_Msg):
    addr: str = ""
    proxy_proto: int = 0
    url: str = field(default="", name="URL")
    ip_restriction: IPRestriction | None = field(default=None, name="IPRestriction")
    traffic_policy: str | None = None
    policy: LegacyPolicy | None = None


class TlsEndpoint(_Msg):
    hostname: str = ""
    subdomain: str = ""
    domain: str = ""
    proxy_proto: int = 0
    mutual_tls_at_agent: bool = field(default=False, name="MutualTLSAtAgent")
    mutual_tls_at_edge: MutualTLS | None = field(default=None, name="MutualTLSAtEdge")
    tls_termination: TLSTermination | None = field(default=None, name="TLSTermination")
    ip_restriction: IPRestriction | None = field(default=None, name="IPRestriction")
    traffic_policy: str | None = None
    policy: LegacyPolicy | None = None

    @property
    def requested_domain(self) -> str:
        return self.domain or self.hostname


# ---- Bind / Unbind / StartTunnelWithLabel --------
class BindExtra(_Msg):
    token: str = ""
    ip_policy_ref: str = field(default="", name="IPPolicyRef")
    metadata: str = ""
    bindings: list[str] = msgspec.field(default_factory=list)
    pooling_enabled: bool = False
    name: str = ""
    description: str = ""


class Bind(_Msg):
    id: str = ""  # empty on first bind; the old tunnel id when re-binding after a reconnect
    proto: str = ""  # http | https | tcp | tls
    forwards_to: str = ""
    forwards_proto: str = ""
    # Kept raw so the edge can echo it byte-for-byte in BindResp (Rust re-parses it, protocol.md §5.2).
    opts: dict[str, Any] = msgspec.field(default_factory=dict)
    extra: BindExtra = msgspec.field(default_factory=BindExtra)

    def http_opts(self) -> HttpEndpoint:
        return decode_obj(self.opts, HttpEndpoint)

    def tcp_opts(self) -> TcpEndpoint:
        return decode_obj(self.opts, TcpEndpoint)

    def tls_opts(self) -> TlsEndpoint:
        return decode_obj(self.opts, TlsEndpoint)


class BindRespExtra(_Msg):
    token: str = ""


class BindResp(_Msg):
    id: str = ""
    url: str = field(default="", name="URL")
    proto: str = ""
    opts: dict[str, Any] = msgspec.field(default_factory=dict)
    error: str = ""
    extra: BindRespExtra = msgspec.field(default_factory=BindRespExtra)


class Unbind(_Msg):
    id: str = ""


class UnbindResp(_Msg):
    error: str = ""


class StartTunnelWithLabel(_Msg):
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    forwards_to: str = ""
    forwards_proto: str = ""
    metadata: str = ""


class StartTunnelWithLabelResp(_Msg):
    id: str = ""
    error: str = ""


class SrvInfo(_Msg):
    pass


class SrvInfoResp(_Msg):
    region: str = ""


# ---- server-opened streams --------------------------------------------------------------------------------
class ProxyHeader(_Msg):
    """Written by the edge at the start of each Proxy stream. Rust requires all five keys."""

    id: str = ""
    client_addr: str = ""
    proto: str = ""
    edge_type: str = ""  # a *string* "0".."3" or "" (protocol.md pitfall 11)
    passthrough_tls: bool = field(default=False, name="PassthroughTLS")


class Restart(_Msg):
    pass


class Stop(_Msg):
    pass


class Update(_Msg):
    version: str = ""
    permit_major_version: bool = False


class CommandResp(_Msg):
    error: str = ""


class StopTunnel(_Msg):
    id: str = ""
    message: str = ""
    error_code: str = ""


# ---- codec --------
_encoder = msgspec.json.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


@functools.cache
def _field_map(struct_type: type[msgspec.Struct]) -> dict[str, tuple[str, Any]]:
    """lower-case key -> (exact key, msgspec.inspect type of the field), for one struct type."""
    info = msgspec.inspect.type_info(struct_type)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.encode_name.lower(): (f.encode_name, f.type) for f in info.fields}


def _struct_of(tinfo: Any) -> type[msgspec.Struct] | None:
    """The struct class inside a field type (``X``, ``X | None``), if there is one."""
    if isinstance(tinfo, msgspec.inspect.StructType):
        cls: type[msgspec.Struct] = tinfo.cls
        return cls
    if isinstance(tinfo, msgspec.inspect.UnionType):
        for t in tinfo.types:
            if isinstance(t, msgspec.inspect.StructType):
                inner: type[msgspec.Struct] = t.cls
                return inner
    return None


def _normalize(obj: Mapping[str, Any], struct_type: type[msgspec.Struct]) -> dict[str, Any]:
    fields = _field_map(struct_type)
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if value is None or not isinstance(key, str):
            continue  # null means "use the default" for every field we know
        hit = fields.get(key.lower())
        if hit is None:
            continue  # unknown keys are ignored, never fatal
        name, tinfo = hit
        inner = _struct_of(tinfo)
        if inner is not None and isinstance(value, Mapping):
            value = _normalize(value, inner)
        elif isinstance(tinfo, msgspec.inspect.ListType) and isinstance(value, list):
            item_struct = _struct_of(tinfo.item_type)
            if item_struct is not None:
                value = [_normalize(v, item_struct) if isinstance(v, Mapping) else v for v in value]
        out[name] = value
    return out


def decode_obj(obj: object, struct_type: type[T]) -> T:
    """Convert a decoded JSON object into ``struct_type`` with the forgiving rules of this module."""
    if not isinstance(obj, Mapping):
        raise RemoteProtocolError(f"{struct_type.__name__}: expected a JSON object", ErrorCode.PROTOCOL)
    try:
        return msgspec.convert(_normalize(obj, struct_type), struct_type, strict=False)
    except msgspec.ValidationError as exc:
        raise RemoteProtocolError(f"{struct_type.__name__}: {exc}", ErrorCode.PROTOCOL) from exc


def decode(data: bytes | bytearray | memoryview, struct_type: type[T]) -> T:
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise RemoteProtocolError(f"{struct_type.__name__}: invalid JSON: {exc}", ErrorCode.PROTOCOL) from exc
    return decode_obj(obj, struct_type)


def split_error(error: str) -> tuple[str, str]:
    """Split an RPC ``Error`` into (message, ERR_NGROK code) the way the Rust SDK does (§5)."""
    code = ""
    lines = []
    for line in error.splitlines():
        if line.strip().startswith("ERR_NGROK_") and not code:
            code = line.strip()
        else:
            lines.append(line)
    return "\n".join(lines).strip(), code


def join_error(message: str, code: str = "") -> str:
    """Build an RPC ``Error`` string: the message, a blank line, then the code line."""
    return f"{message}\n\n{code}\n" if code else message
