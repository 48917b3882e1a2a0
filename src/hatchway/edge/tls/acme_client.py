"""One ACME order, end to end, with certbot's ``acme`` library: account, order, challenges, certificate.

``AcmeIssuer.issue(name, publisher)`` registers (or reuses) the ACME account kept in the store for the
directory, orders a certificate for one name with a fresh P-256 key, has ``publisher`` put up the
HTTP-01 token or DNS-01 TXT record (wildcards get DNS-01, other names HTTP-01), waits for the CA to
validate, finalizes and returns ``(chain_pem, key_pem)``. The library is synchronous (requests): every
call to it runs in a thread through ``asyncio.to_thread``, in short steps (one request, or one bounded
poll) so a cancelled order stops within seconds, and waiting between polls happens on the loop.

Must not: decide which names to order or when (``acme.py`` does), retry (the caller backs off), write
certificates to the store, or call the library on the event loop thread.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from hatchway.store.base import Store

logger = logging.getLogger(__name__)

ORDER_TIMEOUT = 180.0  # seconds an order may take from newOrder to the certificate
POLL_EVERY = 0.5
NETWORK_TIMEOUT = 15  # per HTTP request to the CA (also bounds how long a cancelled step lingers)


class AcmeError(Exception):
    """The CA refused or failed the order (the message says why, the CA's detail included)."""


@dataclass(frozen=True)
class Challenge:
    """What must be published for one authorization: an HTTP-01 token or a DNS-01 TXT record."""

    kind: str  # "http-01" or "dns-01"
    name: str  # the token (http-01) or the TXT record's FQDN with a trailing dot (dns-01)
    value: str  # the key authorization (http-01) or the TXT value (dns-01)


class Publisher(Protocol):
    async def publish(self, challenge: Challenge) -> None: ...

    async def withdraw(self, challenge: Challenge) -> None: ...


def new_key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _jwk(key_pem: bytes) -> JWKEC:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AcmeError("the stored ACME account key is not an EC key")
    return JWKEC(key=key)


def _problem(authz: messages.AuthorizationResource) -> str:
    for chall in authz.body.challenges:
        if chall.error is not None:
            return str(chall.error)
    return f"authorization is {authz.body.status}"


class AcmeIssuer:
    """Orders certificates from one ACME directory; the account is kept in ``store``."""

    def __init__(
        self,
        directory: str,
        store: Store,
        email: str = "",
        root_cas: Path | None = None,
        order_timeout: float = ORDER_TIMEOUT,
    ) -> None:
        self.directory = directory
        self.store = store
        self.email = email
        self.verify: str | bool = str(root_cas) if root_cas is not None else True
        self.order_timeout = order_timeout
        self._account: tuple[JWKEC, messages.RegistrationResource] | None = None
        self._account_lock = asyncio.Lock()

    # ---- account ----------------------------------------------------------------------------------------
    def _client(self, key: JWKEC, regr: messages.RegistrationResource | None) -> client.ClientV2:
        net = client.ClientNetwork(key, account=regr, alg=ES256, timeout=NETWORK_TIMEOUT)
        # requests takes a CA bundle path where the library's annotation says bool.
        net.verify_ssl = self.verify  # type: ignore[assignment]
        return client.ClientV2(client.ClientV2.get_directory(self.directory, net), net)

    def _load_or_register(self) -> tuple[JWKEC, messages.RegistrationResource]:
        kept = self.store.acme_account(self.directory)
        if kept is not None:
            key_pem, account_json = kept
            logger.info("acme: using the stored account for %s", self.directory)
            return _jwk(key_pem), messages.RegistrationResource.json_loads(account_json)
        key_pem = new_key_pem()
        key = _jwk(key_pem)
        acme = self._client(key, None)
        reg = messages.NewRegistration.from_data(email=self.email or None, terms_of_service_agreed=True)
        regr = acme.new_account(reg)
        self.store.put_acme_account(self.directory, key_pem, regr.json_dumps())
        logger.info("acme: registered account %s at %s", regr.uri, self.directory)
        return key, regr

    async def account(self) -> tuple[JWKEC, messages.RegistrationResource]:
        async with self._account_lock:  # concurrent first orders must not register two accounts
            if self._account is None:
                self._account = await asyncio.to_thread(self._load_or_register)
            return self._account

    def forget_account(self) -> None:
        self._account = None

    # ---- one order -------------------------------------------------------------------------------------
    async def issue(self, name: str, publisher: Publisher) -> tuple[bytes, bytes]:
        try:
            return await self._issue(name, publisher)
        except messages.Error as exc:
            if exc.code in ("accountDoesNotExist", "unauthorized") and "account" in str(exc).lower():
                self.forget_account()  # a CA that lost our account: register again next time
            raise AcmeError(f"the CA refused: {exc}") from exc
        except errors.Error as exc:
            raise AcmeError(f"ACME error: {exc}") from exc

    async def _issue(self, name: str, publisher: Publisher) -> tuple[bytes, bytes]:
        deadline = time.monotonic() + self.order_timeout
        key, regr = await self.account()
        acme = await asyncio.to_thread(self._client, key, regr)
        key_pem = new_key_pem()
        csr = crypto_util.make_csr(key_pem, [name])
        order = await asyncio.to_thread(acme.new_order, csr)
        published: list[Challenge] = []
        try:
            waiting: list[messages.AuthorizationResource] = []
            answers: list[tuple[messages.ChallengeBody, Any]] = []
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # the CA reused an earlier validation
                challb, challenge, response = self._pick(authz, key)
                await publisher.publish(challenge)
                published.append(challenge)
                answers.append((challb, response))
                waiting.append(authz)
            for challb, response in answers:
                await asyncio.to_thread(acme.answer_challenge, challb, response)
            for authz in waiting:
                await self._wait_valid(acme, authz, deadline)
        finally:
            for challenge in published:
                try:
                    await publisher.withdraw(challenge)
                except Exception as exc:
                    logger.warning("acme: could not remove %s %s: %s", challenge.kind, challenge.name, exc)
        order = await asyncio.to_thread(self._begin_finalization, acme, order)
        while True:
            if time.monotonic() > deadline:
                raise AcmeError(f"the order for {name} was not finalized within {self.order_timeout:.0f}s")
            try:
                step = datetime.datetime.now() + datetime.timedelta(seconds=2)
                order = await asyncio.to_thread(acme.poll_finalization, order, step)
                break
            except errors.TimeoutError:
                continue
        if not order.fullchain_pem:
            raise AcmeError(f"the CA returned no certificate for {name}")
        return order.fullchain_pem.encode(), key_pem

    @staticmethod
    def _begin_finalization(acme: client.ClientV2, order: messages.OrderResource) -> messages.OrderResource:
        try:
            return acme.begin_finalization(order)
        except messages.Error as exc:
            if exc.code != "orderNotReady":
                raise
            return order  # poll_finalization finalizes once the order is ready

    @staticmethod
    def _pick(
        authz: messages.AuthorizationResource, key: JWKEC
    ) -> tuple[messages.ChallengeBody, Challenge, Any]:
        ident = authz.body.identifier.value
        wildcard = bool(authz.body.wildcard)
        want = challenges.DNS01 if wildcard else challenges.HTTP01
        for challb in authz.body.challenges:
            chall = challb.chall
            if isinstance(chall, challenges.DNS01) and want is challenges.DNS01:
                response, validation = chall.response_and_validation(key)
                fqdn = chall.validation_domain_name(ident) + "."
                return challb, Challenge("dns-01", fqdn, str(validation)), response
            if isinstance(chall, challenges.HTTP01) and want is challenges.HTTP01:
                response, validation = chall.response_and_validation(key)
                return challb, Challenge("http-01", chall.encode("token"), str(validation)), response
        offered = ", ".join(str(c.chall.typ) for c in authz.body.challenges)
        raise AcmeError(f"the CA offers no {want.typ} challenge for {ident} (offered: {offered})")

    async def _wait_valid(
        self, acme: client.ClientV2, authz: messages.AuthorizationResource, deadline: float
    ) -> None:
        ident = authz.body.identifier.value
        while True:
            authz, _ = await asyncio.to_thread(acme.poll, authz)
            status = authz.body.status
            if status == messages.STATUS_VALID:
                return
            if status not in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                raise AcmeError(f"validation of {ident} failed: {_problem(authz)}")
            if time.monotonic() > deadline:
                raise AcmeError(f"validation of {ident} did not finish within {self.order_timeout:.0f}s")
            await asyncio.sleep(POLL_EVERY)
