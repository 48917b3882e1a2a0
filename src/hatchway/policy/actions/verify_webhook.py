"""The ``verify-webhook`` action (on_http_request): check a provider's signature on the buffered request.

Config: ``provider`` (required, an id of ``hatchway.policy.webhooks.PROVIDERS``), ``secret`` (required; a
``${cel}`` template rendered per request), ``enforce`` (default true). The edge buffers the body first
(``needs_body``). Outcomes:

- a provider's endpoint-verification request (Zoom URL validation, Twitter CRC, Worldline GET, Xero
  intent-to-receive) is answered by the edge itself, whatever ``enforce`` says;
- verified: the request goes on; ``actions.ngrok.verify_webhook.verified`` is true;
- failed: ``verified`` is false and, when enforcing, the edge answers 403 ``ERR_NGROK_3204`` (401 for Xero,
  whose handshake wants it) with the reason. The reason never holds the secret or an expected signature.

This module only decides; the schemes are in ``hatchway.policy.webhooks``. No I/O, no clock: time is
``ex.wall``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hatchway.policy.config import ConfigReader
from hatchway.policy.model import CompileEnv, Exchange, PolicyError, Problem, Reply, Template
from hatchway.policy.webhooks import PROVIDERS, Provider, Verdict, verify

ERROR_CODE = "ERR_NGROK_3204"


class VerifyWebhook:
    needs_body = True

    def __init__(self, provider: Provider, secret: Template, enforce: bool) -> None:
        self.provider = provider
        self.secret = secret
        self.enforce = enforce

    def run(self, ex: Exchange) -> Reply | None:
        verdict = self._check(ex)
        ex.results["verify_webhook"] = {"verified": verdict.ok}
        if verdict.challenge is not None:
            return verdict.challenge
        if verdict.ok or not self.enforce:
            return None
        message = f"{self.provider.name} webhook verification failed: {verdict.reason}"
        return Reply(self.provider.reject_status, error_code=ERROR_CODE, message=message)

    def _check(self, ex: Exchange) -> Verdict:
        try:
            secret = self.secret.render(ex)
        except Exception:  # a failing ${...} must fail closed, never let an unverified request through
            return Verdict(False, "the secret could not be evaluated")
        return verify(self.provider.id, secret, ex.req, ex.wall)


def compile(config: Mapping[str, Any] | None, path: str, env: CompileEnv, phase: str) -> VerifyWebhook:
    r = ConfigReader(config, path)
    provider_id = r.text("provider", required=True)
    secret_text = r.text("secret", required=True)
    enforce = r.flag("enforce", True)

    provider = PROVIDERS.get(provider_id)
    if provider is None and isinstance(r.config.get("provider"), str):
        known = ", ".join(sorted(PROVIDERS))
        r.problem("provider", f"unknown webhook provider {provider_id!r}; known providers: {known}")

    secret: Template | None = None
    if secret_text:
        try:
            secret = env.template(secret_text, r.at("secret"))
        except PolicyError as e:
            r.problems.extend(e.problems)
    elif r.config.get("secret") == "":
        r.problem("secret", "must not be empty")  # ngrok: "Webhook verification for T requires a secret"
    # A literal secret can be checked now (a SendGrid key that does not parse, a Svix secret that is not
    # base64); one with ${...} is only known per request.
    literal = secret is not None and secret.constant and "$" not in secret_text
    if provider is not None and literal and (problem := provider.secret_problem(secret_text)) is not None:
        r.problem("secret", problem)

    r.done()
    if provider is None or secret is None:  # not reached: each way here recorded a problem above
        raise PolicyError([Problem(r.path, "provider and secret are required")])
    return VerifyWebhook(provider, secret, enforce)
