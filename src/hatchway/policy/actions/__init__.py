"""The action catalogue: each Traffic Policy action type and the module (one per action) compiling it.

Modules are imported on first use so that an edge with no policy pays nothing for them.
"""

from __future__ import annotations

import importlib

from hatchway.policy.model import ActionCompiler

# type -> (module under hatchway.policy.actions, phases it may appear in)
CATALOGUE: dict[str, tuple[str, frozenset[str]]] = {
    "deny": ("deny", frozenset({"on_tcp_connect", "on_http_request"})),
    "custom-response": ("custom_response", frozenset({"on_http_request", "on_http_response"})),
    "redirect": ("redirect", frozenset({"on_http_request"})),
    "url-rewrite": ("url_rewrite", frozenset({"on_http_request"})),
    "add-headers": ("add_headers", frozenset({"on_http_request", "on_http_response"})),
    "remove-headers": ("remove_headers", frozenset({"on_http_request", "on_http_response"})),
    "rate-limit": ("rate_limit", frozenset({"on_http_request"})),
    "restrict-ips": ("restrict_ips", frozenset({"on_tcp_connect", "on_http_request", "on_http_response"})),
    "basic-auth": ("basic_auth", frozenset({"on_http_request"})),
    "compress-response": ("compress_response", frozenset({"on_http_response"})),
    "circuit-breaker": ("circuit_breaker", frozenset({"on_http_request"})),
    "verify-webhook": ("verify_webhook", frozenset({"on_http_request"})),
    "log": ("log", frozenset({"on_tcp_connect", "on_http_request", "on_http_response"})),
    # The seed's User Agent Filter module (allow/deny regex lists, 403 ERR_NGROK_3211); not an ngrok action.
    "user-agent-filter": ("user_agent_filter", frozenset({"on_http_request"})),
    "set-vars": ("set_vars", frozenset({"on_tcp_connect", "on_http_request", "on_http_response"})),
    # Applied at the TLS handshake (``CompiledPolicy.tls``), not per connection.
    "terminate-tls": ("terminate_tls", frozenset({"on_tcp_connect"})),
}


def compiler(action_type: str) -> ActionCompiler:
    """The ``compile`` function of ``action_type`` (which must be in ``CATALOGUE``)."""
    module = importlib.import_module(f"hatchway.policy.actions.{CATALOGUE[action_type][0]}")
    fn: ActionCompiler = module.compile
    return fn
