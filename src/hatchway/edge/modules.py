"""The seed's endpoint modules, as Bind sends them, compiled into Traffic Policy rules.

Every module an official SDK or our agent sets in ``HttpEndpoint`` becomes rules that run before the
user's own policy, in this documented order:

``on_http_request``: restrict-ips (``IPRestriction``), user-agent-filter (``UserAgentFilter``),
verify-webhook (``WebhookVerification``), basic-auth (``BasicAuth``), circuit-breaker
(``CircuitBreaker``); then the user's rules.
``on_http_response``: compress-response (``Compression``); then the user's rules.
``on_tcp_connect``: terminate-tls with the client CAs (``MutualTLSCA``), applied at the TLS handshake.

Request and response header additions/removals and the Host rewrite are applied by the proxy itself
(``edge/proxy.py``) on every request, after the request phase and before the response phase: the same
effect as add-headers/remove-headers rules at those places, without the cost of a policy on endpoints
that only change headers. The WebSocket-TCP converter is not a rule either: the HTTP/1.1 listener does the
conversion (``Endpoint.ws_tcp``). Modules this edge cannot enforce (OAuth, OIDC) are refused at
Bind rather than ignored, since ignoring an auth module would publish an endpoint its owner believes is
protected. Pure functions: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

from hatchway.policy.model import PolicyError, Problem
from hatchway.wire import messages as m

if TYPE_CHECKING:
    from hatchway.policy.engine import CompiledPolicy

POLICY_INVALID = "ERR_NGROK_9026"
POLICY_UNPARSABLE = "ERR_NGROK_2236"
BOTH_POLICIES = "ERR_NGROK_9025"
MODULE_UNSUPPORTED = "ERR_NGROK_9027"  # ours: ngrok has no code for "this edge lacks the module"


class ModuleError(ValueError):
    """A Bind asked for something the edge refuses; ``code`` is the ngrok-style error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def module_rules(opts: m.HttpEndpoint) -> dict[str, list[dict[str, Any]]]:
    """The rules the endpoint's module options stand for, as a policy document."""
    request: list[dict[str, Any]] = []
    response: list[dict[str, Any]] = []
    tcp: list[dict[str, Any]] = []

    def rule(phase: list[dict[str, Any]], name: str, action: str, config: dict[str, Any]) -> None:
        phase.append({"name": name, "actions": [{"type": action, "config": config}]})

    if opts.ip_restriction is not None and (
        opts.ip_restriction.allow_cidrs or opts.ip_restriction.deny_cidrs
    ):
        config: dict[str, Any] = {}
        if opts.ip_restriction.allow_cidrs:
            config["allow"] = list(opts.ip_restriction.allow_cidrs)
        if opts.ip_restriction.deny_cidrs:
            config["deny"] = list(opts.ip_restriction.deny_cidrs)
        rule(request, "module: IP restrictions", "restrict-ips", config)
    if opts.user_agent_filter is not None and (opts.user_agent_filter.allow or opts.user_agent_filter.deny):
        config = {}
        if opts.user_agent_filter.allow:
            config["allow"] = list(opts.user_agent_filter.allow)
        if opts.user_agent_filter.deny:
            config["deny"] = list(opts.user_agent_filter.deny)
        rule(request, "module: user agent filter", "user-agent-filter", config)
    if opts.webhook_verification is not None and opts.webhook_verification.provider:
        wv = opts.webhook_verification
        if not wv.secret and wv.sealed_secret:
            raise ModuleError(
                MODULE_UNSUPPORTED, "webhook verification with a sealed secret is not supported"
            )
        rule(
            request,
            "module: webhook verification",
            "verify-webhook",
            {"provider": wv.provider, "secret": _literal(wv.secret)},
        )
    if opts.basic_auth is not None and opts.basic_auth.credentials:
        creds = []
        for c in opts.basic_auth.credentials:
            if not c.cleartext_password:
                raise ModuleError(
                    MODULE_UNSUPPORTED,
                    f"basic auth for {c.username!r}: only cleartext passwords are supported",
                )
            creds.append(f"{c.username}:{c.cleartext_password}")
        rule(request, "module: basic auth", "basic-auth", {"credentials": creds})
    if opts.circuit_breaker is not None and opts.circuit_breaker.error_threshold:
        rule(
            request,
            "module: circuit breaker",
            "circuit-breaker",
            {"error_threshold": opts.circuit_breaker.error_threshold},
        )
    if opts.compression is not None:
        rule(response, "module: compression", "compress-response", {})
    if opts.mutual_tls_ca is not None and opts.mutual_tls_ca.mutual_tls_ca:
        try:
            pem = base64.b64decode(opts.mutual_tls_ca.mutual_tls_ca, validate=True).decode("ascii")
        except (binascii.Error, ValueError) as exc:
            raise ModuleError(POLICY_INVALID, "mutual TLS: the CA bundle is not base64 of PEM text") from exc
        config = {"mutual_tls_certificate_authorities": [pem]}
        rule(tcp, "module: mutual TLS", "terminate-tls", config)
    for name, value in (
        ("OAuth", opts.oauth),
        ("OIDC", opts.oidc),
    ):
        if value is not None:
            raise ModuleError(MODULE_UNSUPPORTED, f"the {name} module is not supported by this edge")
    doc: dict[str, list[dict[str, Any]]] = {}
    if tcp:
        doc["on_tcp_connect"] = tcp
    if request:
        doc["on_http_request"] = request
    if response:
        doc["on_http_response"] = response
    return doc


def user_policy(opts: m.HttpEndpoint) -> str | dict[str, Any] | None:
    """The user's own policy from Bind: ``TrafficPolicy`` text, or the legacy ``Policy`` object."""
    if opts.traffic_policy and opts.policy is not None:
        raise ModuleError(BOTH_POLICIES, 'You cannot specify both "Policy" and "TrafficPolicy".')
    if opts.traffic_policy:
        return opts.traffic_policy
    if opts.policy is not None:
        legacy: dict[str, Any] = {}
        for phase, rules in (
            ("on_http_request", opts.policy.inbound),
            ("on_http_response", opts.policy.outbound),
        ):
            if rules:
                legacy[phase] = [
                    {
                        "name": r.name,
                        "expressions": list(r.expressions),
                        "actions": [{"type": a.type, "config": _config(a.config)} for a in r.actions],
                    }
                    for r in rules
                ]
        return legacy or None
    return None


def _literal(text: str) -> str:
    """``text`` as a config string that interpolation leaves alone: a module's secret is a value, not a
    template, so a ``${`` in it becomes part of a CEL string literal instead of an expression."""
    if "${" not in text:
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '${"' + escaped + '"}'


def _config(config: object) -> object:
    """Legacy actions may carry their config as a JSON string."""
    if isinstance(config, str):
        try:
            return json.loads(config)
        except ValueError:
            return config
    return config


def wants_policy(opts: m.HttpEndpoint) -> bool:
    """Whether Bind asked for any module or policy (cheap: decides whether the engine is loaded)."""
    return any(
        v is not None
        for v in (
            opts.ip_restriction,
            opts.user_agent_filter,
            opts.webhook_verification,
            opts.basic_auth,
            opts.circuit_breaker,
            opts.compression,
            opts.oauth,
            opts.oidc,
            opts.mutual_tls_ca,
            opts.policy,
        )
    ) or bool(opts.traffic_policy)


def endpoint_policy(opts: m.HttpEndpoint) -> CompiledPolicy | None:
    """The compiled policy of an endpoint (modules first, then the user's), or None when it has none.

    Raises ``ModuleError`` with ngrok's code and every problem, each with its path."""
    before = module_rules(opts)
    user = user_policy(opts)
    if not before and not user:
        return None
    # Imported here: the CEL engine is large and an edge whose endpoints have no policy never loads it.
    from hatchway.policy.engine import compile_policy

    try:
        policy = compile_policy(user, before=before or None)
    except PolicyError as exc:
        parse = any(p.path in ("policy", "modules") for p in exc.problems)
        code = POLICY_UNPARSABLE if parse else POLICY_INVALID
        raise ModuleError(code, f"The traffic policy is invalid: {exc}") from exc
    # A policy with only terminate-tls runs nothing per request: the handshake applies it.
    return None if policy.empty and policy.tls is None else policy


__all__ = ["ModuleError", "Problem", "endpoint_policy", "module_rules", "user_policy"]
