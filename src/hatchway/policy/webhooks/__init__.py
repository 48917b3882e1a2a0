"""Webhook signature schemes by provider id, for the ``verify-webhook`` action.

``PROVIDERS`` maps ngrok's provider ids (plus ``standard_webhooks``) to a ``Provider``; ``verify()`` checks
one request and returns a ``Verdict`` (ok, or failed with a reason; maybe a challenge answer for the edge).
The schemes live in three modules by family: ``hmac_body`` (HMAC of the body alone), ``timestamped`` (HMAC
over a timestamp and the body) and ``others``. Sans-IO: no sockets, clocks or threads; the caller supplies
the buffered body and the wall-clock time.
"""

from __future__ import annotations

from hatchway.policy.model import HttpRequest
from hatchway.policy.webhooks import hmac_body, others, timestamped
from hatchway.policy.webhooks.base import DEFAULT_WINDOW, Provider, Verdict, fail

__all__ = ["DEFAULT_WINDOW", "PROVIDERS", "Provider", "Verdict", "verify"]

PROVIDERS: dict[str, Provider] = {
    p.id: p for p in (*hmac_body.PROVIDERS, *timestamped.PROVIDERS, *others.PROVIDERS)
}


def verify(provider_id: str, secret: str, req: HttpRequest, wall: float) -> Verdict:
    """Check ``req`` against ``provider_id``'s scheme with ``secret`` at unix time ``wall``.

    Fails closed: an unknown provider, an empty secret or a body the edge did not buffer is a failure.
    """
    provider = PROVIDERS.get(provider_id)
    if provider is None:
        return fail(f"unknown webhook provider {provider_id!r}")
    if req.body is None:
        return fail("the request body was not buffered, so the signature cannot be checked")
    if not secret:
        return fail("the secret is empty")
    return provider.verify(secret, req, wall)
