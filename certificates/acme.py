"""The ACME client (RFC 8555) on top of the `acme` library certbot is built on.

Only network and cryptography here, no database: certificates/renewal.py calls these between its
short transactions, so no row stays locked while a CA answers. Every failure is an `AcmeProblem`
whose message names what failed: the directory that cannot be reached, the CA's problem document
(type and detail), or the validation of one name.
"""

from __future__ import annotations

import datetime
import logging
import re
from dataclasses import dataclass

import josepy as jose
import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

log = logging.getLogger(__name__)

USER_AGENT = "ferry-lb"
NETWORK_TIMEOUT = 30
# base64url, as RFC 8555 8.1 requires of a token; anything else from a CA is refused before it
# reaches a URL path or a certificate.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,256}")
SUPPORTED_CHALLENGES = ("http-01", "tls-alpn-01")


class AcmeProblem(Exception):
    """An ACME step failed; the message is what the certificate's page shows."""


@dataclass(frozen=True, slots=True)
class Challenge:
    type: str
    domain: str
    token: str
    key_authorization: str


@dataclass(frozen=True, slots=True)
class Issued:
    certificate_pem: str
    chain_pem: str
    private_key_pem: str
    # The CA's ARI suggestion, when its directory offers renewalInfo.
    renew_at: datetime.datetime | None


class _Ready(challenges.ChallengeResponse):
    """The empty JSON object that tells the CA a challenge can be validated (RFC 8555 7.5.1).

    Not registered as a type: the acme library knows no TLS-ALPN-01 response any more, and for
    HTTP-01 the body is the same `{}`.
    """

    typ = "ready"

    def __bool__(self) -> bool:
        # A field-less object is an empty mapping, which the JWS wrapper would send as an empty
        # payload: a POST-as-GET, which reads the challenge instead of answering it.
        return True


def new_account_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def new_certificate_key(algorithm: str) -> str:
    """A private key for the certificate: "ec-p256" or "rsa-2048"."""
    if algorithm == "rsa-2048":
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = rsa.generate_private_key(
            public_exponent=65537, key_size=2048
        )
    elif algorithm == "ec-p256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"unknown key algorithm {algorithm!r}")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


def problem_text(error: BaseException) -> str:
    """What a CA or the network said, in one line."""
    if isinstance(error, messages.Error):
        kind = (error.typ or "").rsplit(":", 1)[-1]
        detail = error.detail or error.description or ""
        text = f"{kind}: {detail}" if kind else detail
        for sub in error.subproblems or ():
            identifier = getattr(sub.identifier, "value", "")
            text += f"; {identifier}: {sub.detail}"
        return text
    if isinstance(error, requests.exceptions.SSLError):
        return f"the CA's TLS certificate is not trusted ({error})"
    if isinstance(error, requests.exceptions.RequestException):
        return f"cannot reach the CA: {error}"
    if isinstance(error, errors.TimeoutError):
        return "the CA did not finish in time"
    return str(error) or type(error).__name__


class Session:
    """One account at one CA directory, for one order at a time."""

    def __init__(
        self, directory_url: str, account_key_pem: str, *, verify: bool | str = True
    ) -> None:
        private = serialization.load_pem_private_key(account_key_pem.encode(), None)
        if not isinstance(private, rsa.RSAPrivateKey):
            raise TypeError("ACME account keys are RSA here")
        self.key = jose.JWKRSA(key=private)
        self.directory_url = directory_url
        self.net = client.ClientNetwork(
            self.key, user_agent=USER_AGENT, verify_ssl=verify, timeout=NETWORK_TIMEOUT
        )
        try:
            directory = client.ClientV2.get_directory(directory_url, self.net)
        except (requests.exceptions.RequestException, messages.Error) as error:
            raise AcmeProblem(f"ACME directory {directory_url}: {problem_text(error)}") from error
        except (ValueError, jose.DeserializationError, errors.ClientError) as error:
            raise AcmeProblem(
                f"{directory_url} does not answer as an ACME directory ({error})"
            ) from error
        self.client = client.ClientV2(directory, self.net)
        self.order: messages.OrderResource | None = None
        self._challenges: list[tuple[messages.ChallengeBody, Challenge]] = []

    # -- account ---------------------------------------------------------------------------------

    def register(self, email: str, account_uri: str = "") -> str:
        """Log in to the account at `account_uri`, or create one for `email` (agreeing to the CA's
        terms, which the operator accepted in the form); returns the account URL."""
        if account_uri:
            self.net.account = messages.RegistrationResource(
                uri=account_uri, body=messages.Registration()
            )
            return account_uri
        registration = messages.NewRegistration.from_data(email=email, terms_of_service_agreed=True)
        try:
            account = self.client.new_account(registration)
        except errors.ConflictError as existing:
            # The key already has an account (a row lost after the CA answered): use it.
            account = messages.RegistrationResource(
                uri=existing.location, body=messages.Registration()
            )
            self.net.account = account
        except (messages.Error, requests.exceptions.RequestException) as error:
            raise AcmeProblem(f"the CA refused the account: {problem_text(error)}") from error
        return account.uri

    # -- order -----------------------------------------------------------------------------------

    def new_order(self, certificate_key_pem: str, domains: list[str], kind: str) -> list[Challenge]:
        """Place the order and return the `kind` challenge of every name not yet authorized."""
        csr = crypto_util.make_csr(certificate_key_pem.encode(), domains)
        try:
            self.order = self.client.new_order(csr)
        except (messages.Error, requests.exceptions.RequestException) as error:
            raise AcmeProblem(f"the CA refused the order: {problem_text(error)}") from error
        self._challenges = []
        for authorization in self.order.authorizations:
            body = authorization.body
            domain = body.identifier.value
            if body.status == messages.STATUS_VALID:
                continue  # authorized recently: nothing to answer
            offered = {
                challenge.to_partial_json().get("type", ""): challenge
                for challenge in body.challenges
            }
            chosen = offered.get(kind)
            if chosen is None:
                types = ", ".join(sorted(t for t in offered if t)) or "none"
                raise AcmeProblem(
                    f"the CA offers no {kind} challenge for {domain} (it offers {types})"
                )
            token = chosen.to_partial_json().get("token", "")
            if not isinstance(token, str) or not _TOKEN.fullmatch(token):
                raise AcmeProblem(f"the CA sent an invalid {kind} token for {domain}")
            thumbprint = jose.b64encode(self.key.thumbprint(hash_function=hashes.SHA256)).decode()
            self._challenges.append(
                (chosen, Challenge(kind, domain, token, f"{token}.{thumbprint}"))
            )
        return [challenge for _, challenge in self._challenges]

    def answer(self) -> None:
        """Tell the CA every challenge is ready to be validated."""
        for body, challenge in self._challenges:
            try:
                # ClientV2.answer_challenge also insists on an "up" Link header, which RFC 8555
                # does not require of this answer (Pebble sends none); the POST is all it takes.
                self.net.post(body.uri, _Ready(), new_nonce_url=self.client.directory["newNonce"])
            except (messages.Error, requests.exceptions.RequestException) as error:
                raise AcmeProblem(
                    f"{challenge.type} for {challenge.domain}: {problem_text(error)}"
                ) from error

    def finish(self, certificate_key_pem: str, *, timeout: float) -> Issued:
        """Wait for the validations and the certificate; raises AcmeProblem naming what failed."""
        assert self.order is not None
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
        try:
            order = self.client.poll_and_finalize(self.order, deadline)
        except errors.ValidationError as error:
            raise AcmeProblem(_validation_failures(error)) from error
        except errors.TimeoutError as error:
            raise AcmeProblem(f"the CA did not validate and issue within {timeout:g} s") from error
        except (messages.Error, requests.exceptions.RequestException, errors.Error) as error:
            raise AcmeProblem(f"the CA refused to issue: {problem_text(error)}") from error
        certificate_pem, chain_pem = split_chain(order.fullchain_pem)
        return Issued(certificate_pem, chain_pem, certificate_key_pem, self._renewal_info(order))

    def _renewal_info(self, order: messages.OrderResource) -> datetime.datetime | None:
        """ARI (RFC 9773): the CA's suggested renewal time, if its directory offers one."""
        try:
            suggested, _ = self.client.renewal_time(order.fullchain_pem.encode())
        except errors.ARIError as error:
            log.warning("ARI not available: %s", error)
            return None
        if suggested is None:
            return None
        if suggested.tzinfo is None:
            suggested = suggested.replace(tzinfo=datetime.UTC)
        return suggested


def _validation_failures(error: errors.ValidationError) -> str:
    failures = []
    for authorization in error.failed_authzrs:
        domain = authorization.body.identifier.value
        for challenge in authorization.body.challenges:
            if challenge.error is not None:
                failures.append(f"{domain}: {problem_text(challenge.error)}")
        if not failures:
            failures.append(f"{domain}: the CA marked the authorization invalid")
    return "validation failed: " + "; ".join(failures)


def split_chain(fullchain_pem: str) -> tuple[str, str]:
    """The leaf certificate and the rest of a full chain, as PEM."""
    certificates = x509.load_pem_x509_certificates(fullchain_pem.encode())
    if not certificates:
        raise AcmeProblem("the CA sent no certificate")
    pems = [c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates]
    return pems[0], "".join(pems[1:])
