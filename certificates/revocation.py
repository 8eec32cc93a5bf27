"""Certificate revocation lists (CRLs) for mutual TLS: validation and the console's use cases.

A CA certificate used for mutual authentication carries CRLs: its own, and one from each
intermediate CA below it that issues client certificates. The node refuses a client certificate
one of them lists (dataplane/tls.py).

Validation (the first half) needs cryptography only. A CRL is accepted when
- it is one CRL, PEM ("BEGIN X509 CRL") or DER, at most MAX_CRL_BYTES;
- it is signed by the CA itself or by an intermediate whose certificates (Issuer Certificates)
  lead up to the CA, each signed by the next, and that signer may sign CRLs (cRLSign);
- it is current: issued before now, next update after now, and is a complete CRL (not a delta
  or an indirect CRL, which OpenSSL does not use without extra flags).
Every failure is a `CrlError` naming its form field ("crl" or "issuer_chain"), with the sentence
shown next to it, in the style of certificates/validation.py.

The use cases (the second half) follow listeners/services.py: one transaction, the CA row
locked, the Configuring refusal, the generation bump of every instance whose mutual-TLS listeners
use the CA, the audit record and the push on commit.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.client import HTTPException
from urllib.parse import urlsplit

from celery import shared_task
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from django.db import transaction
from django.db.models import QuerySet

from certificates.models import CRL_WARNING, Certificate, CertificateRevocationList
from certificates.pem import PemBlock, PemSyntaxError, decode_text, describe_binary, split_blocks
from certificates.validation import CertificateError
from console.audit import audited
from listeners.models import Listener
from listeners.services import NotFound, RuleViolation, _locked, _reconfigure

# A private CA's CRL for client certificates is a few KiB; 1 MiB holds about 30,000 revoked
# serial numbers. Every CRL travels to every node in each snapshot of the instances using it.
MAX_CRL_BYTES = 1024 * 1024
MAX_ISSUER_CERTIFICATES = 10

# Fetching from a distribution point URL: the whole download must finish within this many
# seconds (each read waits at most FETCH_TIMEOUT), and follows at most a few http(s) redirects.
FETCH_TIMEOUT = 10.0
FETCH_REDIRECTS = 3

CRL = "crl"
ISSUER_CHAIN = "issuer_chain"
URL = "url"

log = logging.getLogger(__name__)
_CRL_LABEL = "X509 CRL"
_BLOCK_NAMES = {
    "CERTIFICATE": "a certificate",
    "PRIVATE KEY": "a private key",
    "RSA PRIVATE KEY": "a private key",
    "EC PRIVATE KEY": "a private key",
    "ENCRYPTED PRIVATE KEY": "a private key",
    "CERTIFICATE REQUEST": "a certificate signing request (CSR)",
    "PKCS7": "a PKCS#7 bundle",
}


class CrlError(CertificateError):
    default_field = CRL


class CrlTooLarge(CrlError):
    pass


class UnreadableCrl(CrlError):
    pass


class ForeignCrl(CrlError):
    pass


class BadCrlSignature(CrlError):
    pass


class CrlExpired(CrlError):
    pass


class CrlNotYetValid(CrlError):
    pass


class UnsupportedCrl(CrlError):
    pass


class IssuerChainError(CrlError):
    default_field = ISSUER_CHAIN


class CrlFetchError(CrlError):
    default_field = URL


@dataclass(frozen=True)
class ValidatedCrl:
    der: bytes
    issuer: str  # RFC 4514
    # The intermediates from the CRL's signer up to the CA, PEM; "" when the CA signed it.
    issuer_chain_pem: str
    issuer_chain_subjects: tuple[str, ...]
    this_update: datetime  # UTC aware
    next_update: datetime  # UTC aware
    revoked_count: int
    crl_number: int | None
    fingerprint_sha256: str


def validate_crl(
    data: str | bytes,
    ca_certificate_pem: str,
    issuer_chain: str | bytes | None = None,
    *,
    now: datetime | None = None,
) -> ValidatedCrl:
    """Check an uploaded CRL against the CA certificate it is for; raise CrlError if unfit."""
    current = _utc(now)
    crl = read_crl(data)
    ca = x509.load_pem_x509_certificate(ca_certificate_pem.encode())
    intermediates = _read_issuer_chain(issuer_chain)
    try:
        issuer = crl.issuer
        issuer_text = issuer.rfc4514_string()
        extensions = crl.extensions
    except ValueError:
        raise UnreadableCrl(
            "CRL has a malformed issuer or extension and cannot be read.", field=CRL
        ) from None
    signer = _signer(crl, issuer_text, ca, intermediates)
    _check_signature(crl, signer, issuer_text)
    _check_complete(extensions)
    this_update, next_update = _check_current(crl, current)
    try:
        revoked_count = len(crl)
    except ValueError:
        raise UnreadableCrl("CRL has a malformed revoked-certificate entry.", field=CRL) from None
    der = crl.public_bytes(serialization.Encoding.DER)
    return ValidatedCrl(
        der=der,
        issuer=issuer_text,
        issuer_chain_pem="".join(_pem(cert) for cert in intermediates),
        issuer_chain_subjects=tuple(cert.subject.rfc4514_string() for cert in intermediates),
        this_update=this_update,
        next_update=next_update,
        revoked_count=revoked_count,
        crl_number=_crl_number(extensions),
        fingerprint_sha256=hashlib.sha256(der).digest().hex(":").upper(),
    )


def read_crl(data: str | bytes) -> x509.CertificateRevocationList:
    """One CRL from PEM text or DER bytes; raise CrlError with the reason otherwise."""
    size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
    if size > MAX_CRL_BYTES:
        raise CrlTooLarge(
            f"CRL is {_size(size)}; the limit is {MAX_CRL_BYTES // (1024 * 1024)} MiB.", field=CRL
        )
    if not data.strip():
        raise CrlError("CRL is required.", field=CRL)
    if isinstance(data, bytes) and data[:1] == b"\x30":
        return _load_der(data)
    try:
        blocks = split_blocks(decode_text(data))
    except PemSyntaxError as error:
        raise UnreadableCrl(
            f"CRL must be PEM text (BEGIN X509 CRL) or DER: {error.reason}.", field=CRL
        ) from None
    for block in blocks:
        if block.label != _CRL_LABEL:
            name = _BLOCK_NAMES.get(block.label, f"a {block.label} block")
            raise UnreadableCrl(
                f"CRL must hold only an X509 CRL block; the block on line {block.line} is {name}.",
                field=CRL,
            )
    if len(blocks) > 1:
        raise UnreadableCrl(
            f"CRL must hold one revocation list, found {len(blocks)}; upload each separately.",
            field=CRL,
        )
    return _load_der(blocks[0].der)


def _load_der(der: bytes) -> x509.CertificateRevocationList:
    try:
        return x509.load_der_x509_crl(der)
    except ValueError:
        what = describe_binary(der)
        detail = "" if what == "it is binary DER data" else f" ({what})"
        raise UnreadableCrl(
            f"CRL is not a readable certificate revocation list{detail}: the data is damaged "
            "or is another kind of file.",
            field=CRL,
        ) from None


def _read_issuer_chain(data: str | bytes | None) -> list[x509.Certificate]:
    if data is None or not data.strip():
        return []
    if len(data) > 64 * 1024:
        raise IssuerChainError("Issuer Certificates is larger than 64 KiB.")
    try:
        blocks = split_blocks(decode_text(data))
    except PemSyntaxError as error:
        raise IssuerChainError(f"Issuer Certificates must be PEM text: {error.reason}.") from None
    if len(blocks) > MAX_ISSUER_CERTIFICATES:
        raise IssuerChainError(
            f"Issuer Certificates holds {len(blocks)} certificates; the limit is "
            f"{MAX_ISSUER_CERTIFICATES}."
        )
    certificates = []
    for position, block in enumerate(blocks, start=1):
        if block.label != "CERTIFICATE":
            raise IssuerChainError(
                f"Issuer Certificates must hold only CERTIFICATE blocks; the block on line "
                f"{block.line} is {_BLOCK_NAMES.get(block.label, f'a {block.label} block')}."
            )
        try:
            certificates.append(x509.load_der_x509_certificate(block.der))
        except ValueError:
            raise IssuerChainError(
                f"Issuer Certificates position {position} is not a readable X.509 certificate."
            ) from None
    return certificates


def _signer(
    crl: x509.CertificateRevocationList,
    issuer: str,
    ca: x509.Certificate,
    intermediates: list[x509.Certificate],
) -> x509.Certificate:
    """The certificate whose key must have signed the CRL, after checking the path to the CA."""
    ca_subject = ca.subject.rfc4514_string()
    if not intermediates:
        if crl.issuer != ca.subject:
            raise ForeignCrl(
                f"CRL is issued by {issuer}, not by this CA ({ca_subject}). Upload this CA's "
                "CRL, or for an intermediate CA below it, paste that intermediate's certificate "
                "in Issuer Certificates.",
                field=CRL,
            )
        return ca
    if crl.issuer == ca.subject:
        raise IssuerChainError("Issuer Certificates must be empty: this CA issued the CRL itself.")
    if intermediates[0].subject != crl.issuer:
        raise ForeignCrl(
            f"CRL is issued by {issuer}, but Issuer Certificates position 1 is "
            f"{intermediates[0].subject.rfc4514_string()}; put the CRL issuer's certificate "
            "first.",
            field=CRL,
        )
    path = [*intermediates, ca]
    for position, (child, parent) in enumerate(itertools.pairwise(path), start=1):
        if not _is_ca(child):
            raise IssuerChainError(
                f"Issuer Certificates position {position} ({child.subject.rfc4514_string()}) "
                "is not a CA certificate (basicConstraints CA:TRUE)."
            )
        if not _issued_by(child, parent):
            above = "this CA" if parent is ca else f"position {position + 1}"
            raise IssuerChainError(
                f"Issuer Certificates position {position} ({child.subject.rfc4514_string()}) "
                f"is not signed by {above} ({parent.subject.rfc4514_string()}): each certificate "
                "must be signed by the next, and the last by this CA."
            )
    return intermediates[0]


def _check_signature(
    crl: x509.CertificateRevocationList, signer: x509.Certificate, issuer: str
) -> None:
    try:
        valid = crl.is_signature_valid(signer.public_key())
    except (TypeError, ValueError, UnsupportedAlgorithm, InvalidSignature):
        valid = False
    if not valid:
        raise BadCrlSignature(
            f"CRL names {issuer} as its issuer, but its signature does not verify with that "
            "CA's key: it was signed by another CA of the same name, or the file is damaged.",
            field=CRL,
        )
    try:
        usage = signer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    except ValueError:
        raise UnreadableCrl(f"The certificate of {issuer} has a malformed Key Usage.") from None
    if not usage.crl_sign:
        raise BadCrlSignature(
            f"{issuer} may not sign CRLs: its certificate's Key Usage lacks cRLSign, so the node "
            "would refuse this CRL.",
            field=CRL,
        )


def _check_complete(extensions: x509.Extensions) -> None:
    for extension in extensions:
        if isinstance(extension.value, x509.DeltaCRLIndicator):
            raise UnsupportedCrl("CRL is a delta CRL; upload the complete (base) CRL.", field=CRL)
        if isinstance(extension.value, x509.IssuingDistributionPoint) and (
            extension.value.indirect_crl
        ):
            raise UnsupportedCrl(
                "CRL is an indirect CRL (it lists certificates of other CAs); upload the CRL "
                "this CA issues for its own certificates.",
                field=CRL,
            )
        if extension.critical and isinstance(extension.value, x509.UnrecognizedExtension):
            raise UnsupportedCrl(
                f"CRL has a critical extension ({extension.oid.dotted_string}) the node does "
                "not understand, so it would refuse the CRL.",
                field=CRL,
            )


def _check_current(crl: x509.CertificateRevocationList, now: datetime) -> tuple[datetime, datetime]:
    this_update, next_update = crl.last_update_utc, crl.next_update_utc
    if next_update is None:
        raise UnsupportedCrl(
            "CRL has no next-update date, so there is no telling when it goes stale; ask the "
            "CA for a CRL with one.",
            field=CRL,
        )
    if next_update <= now:
        raise CrlExpired(
            f"CRL expired on {_when(next_update)} (its next update was due then); download a "
            "current CRL from the CA.",
            field=CRL,
        )
    if this_update > now:
        raise CrlNotYetValid(
            f"CRL is not valid until {_when(this_update)}; check the CA's clock or this server's.",
            field=CRL,
        )
    return this_update, next_update


def _crl_number(extensions: x509.Extensions) -> int | None:
    try:
        return extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, ValueError):
        return False


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def crl_pem(der: bytes | memoryview) -> str:
    """The PEM text of a stored CRL, as the node loads it."""
    return PemBlock(_CRL_LABEL, (), bytes(der), 0).to_pem()


def signature_problem(crl: CertificateRevocationList, ca_certificate_pem: str) -> str | None:
    """Why a stored CRL no longer verifies against its CA (the CA certificate was replaced by
    one with another key or name), or None when it still does. Expiry is not checked here."""
    try:
        parsed = read_crl(bytes(crl.der))
        ca = x509.load_pem_x509_certificate(ca_certificate_pem.encode())
        signer = _signer(parsed, crl.issuer, ca, _read_issuer_chain(crl.issuer_chain_pem))
        _check_signature(parsed, signer, crl.issuer)
    except CrlError as error:
        return error.message
    return None


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follow a few redirects, and only to http or https URLs (urllib also allows ftp)."""

    max_redirections = FETCH_REDIRECTS

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: PLR0917
        if urlsplit(newurl).scheme not in ("http", "https"):
            raise CrlFetchError(
                f"Distribution Point URL redirects to {newurl[:200]}, which is not an http or "
                "https URL."
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def check_fetch_url(url: str) -> None:
    """Only plain http(s) URLs without credentials are fetched (see docs: SSRF)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CrlFetchError("Distribution Point URL must be an http:// or https:// URL.")
    if parts.username or parts.password:
        raise CrlFetchError("Distribution Point URL must not carry a user name or password.")


def fetch_crl(url: str, *, timeout: float = FETCH_TIMEOUT) -> bytes:
    """Download a CRL: http(s) only, at most MAX_CRL_BYTES, within `timeout` seconds overall.

    Raises CrlFetchError with a sentence for the Distribution Point URL field."""
    check_fetch_url(url)
    opener = urllib.request.build_opener(_HttpRedirectsOnly)
    request = urllib.request.Request(
        url,
        headers={
            "User-Agent": "Ferry CRL fetch",
            "Accept": "application/pkix-crl, application/x-pem-file, */*",
        },
    )
    deadline = time.monotonic() + timeout
    limit = MAX_CRL_BYTES // (1024 * 1024)
    try:
        with opener.open(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > MAX_CRL_BYTES:
                raise CrlFetchError(
                    f"Distribution Point URL serves {_size(int(declared))}; the limit is "
                    f"{limit} MiB."
                )
            chunks: list[bytes] = []
            received = 0
            while chunk := response.read(64 * 1024):
                received += len(chunk)
                if received > MAX_CRL_BYTES:
                    raise CrlFetchError(
                        f"Distribution Point URL serves more than {limit} MiB; the limit is "
                        f"{limit} MiB."
                    )
                if time.monotonic() > deadline:
                    raise CrlFetchError(
                        f"Distribution Point URL took longer than {timeout:g} s to send the CRL."
                    )
                chunks.append(chunk)
    except CrlFetchError:
        raise
    except urllib.error.HTTPError as error:
        if 300 <= error.code < 400:
            location = (error.headers.get("Location") or "")[:200]
            raise CrlFetchError(
                f"Distribution Point URL redirects to {location}, which is refused: only "
                f"{FETCH_REDIRECTS} redirects to http or https URLs are followed."
            ) from None
        raise CrlFetchError(f"Distribution Point URL answered HTTP {error.code}.") from None
    except urllib.error.URLError as error:
        raise CrlFetchError(
            f"Distribution Point URL could not be fetched: {error.reason}."
        ) from None
    except (OSError, ValueError, HTTPException) as error:
        raise CrlFetchError(f"Distribution Point URL could not be fetched: {error}.") from None
    return b"".join(chunks)


def crl_check(ca_subject: str, crls: list[CertificateRevocationList]) -> str:
    """How much of a client's chain the node checks: "chain" when the CA itself and every
    intermediate named in an issuer chain have a CRL here, else "leaf" (the client's own
    certificate only). OpenSSL's chain check refuses any chain with a CA that has no CRL."""
    issuers = {crl.issuer for crl in crls}
    needed = {ca_subject}
    for crl in crls:
        needed.update(crl.issuer_chain_subjects)
    return "chain" if needed <= issuers else "leaf"


def expiring_crls(within: timedelta = CRL_WARNING) -> QuerySet[CertificateRevocationList]:
    """CRLs whose next update is due within `within` (or past): once it passes, the node refuses
    every client certificate they cover, so they are flagged like an expiring certificate."""
    return (
        CertificateRevocationList.objects.filter(next_update__lte=datetime.now(UTC) + within)
        .select_related("ca_certificate")
        .order_by("next_update")
    )


def crl_alert_payload(crl: CertificateRevocationList) -> dict[str, object]:
    """What an expiry event says about a CRL (certificates/alerts.py can send it as JSON)."""
    ca = crl.ca_certificate
    return {
        "crl": {
            "id": crl.pk,
            "issuer": crl.issuer,
            "crl_number": crl.crl_number,
            "next_update": crl.next_update.isoformat(),
            "expired": crl.is_expired,
            "url": crl.url,
        },
        "ca_certificate": {"id": ca.id, "name": ca.name},
        "listeners": [
            {"id": listener.id, "name": listener.name, "instance": listener.instance_id}
            for listener in listeners_checking_clients_with(ca)
        ],
    }


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _size(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MiB"
    return f"{size / 1024:.0f} KiB"


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise TypeError("now must be timezone-aware")
    return now.astimezone(UTC)


# -- use cases: the console's write path -------------------------------------------------------


def listeners_checking_clients_with(certificate: Certificate) -> QuerySet[Listener]:
    """Mutual-TLS listeners that verify client certificates with this CA, and so its CRLs.

    A CA that only verifies HTTPS backends takes no CRLs into that check."""
    return Listener.objects.filter(ca_certificate=certificate, mutual_authentication=True)


@transaction.atomic
@audited("certificate.upload_crl", Certificate, key="certificate_id")
def upload_crl(
    *, certificate_id: str, validated: ValidatedCrl, url: str = ""
) -> CertificateRevocationList:
    """Add a CA's CRL, or replace the stored CRL of the same issuer with this newer one."""
    ca = _locked(Certificate, certificate_id, "Certificate")
    if ca.kind != Certificate.Kind.CA:
        raise RuleViolation("Only CA certificates carry revocation lists.", field=CRL)
    # The CA certificate may have been replaced since the form checked the CRL against it.
    try:
        validated = validate_crl(
            validated.der, ca.certificate_pem, validated.issuer_chain_pem or None
        )
    except CrlError as error:
        raise RuleViolation(error.message, field=error.field) from None
    stored = ca.revocation_lists.filter(issuer=validated.issuer).first()
    if stored is not None:
        if stored.fingerprint_sha256 == validated.fingerprint_sha256 and stored.url == url:
            # The same CRL again: nothing to push; a fetch still shows when it last succeeded.
            if url:
                stored.fetched_at = datetime.now(UTC)
                stored.last_fetch_error = ""
                stored.save(update_fields=["fetched_at", "last_fetch_error", "updated_at"])
            return stored
        _refuse_older(stored, validated)
    _reconfigure(listeners_checking_clients_with(ca), doing="changing its CA's revocation lists")
    crl = stored or CertificateRevocationList(ca_certificate=ca, issuer=validated.issuer)
    crl.issuer_chain_pem = validated.issuer_chain_pem
    crl.issuer_chain_subjects = list(validated.issuer_chain_subjects)
    crl.der = validated.der
    crl.fingerprint_sha256 = validated.fingerprint_sha256
    crl.crl_number = "" if validated.crl_number is None else str(validated.crl_number)
    crl.this_update = validated.this_update
    crl.next_update = validated.next_update
    crl.revoked_count = validated.revoked_count
    crl.source = (
        CertificateRevocationList.Source.URL if url else CertificateRevocationList.Source.UPLOAD
    )
    crl.url = url
    crl.fetched_at = datetime.now(UTC) if url else None
    crl.last_fetch_error = ""
    crl.save()
    _summarize(ca)
    return crl


@transaction.atomic
@audited("certificate.delete_crl", Certificate, key="certificate_id")
def delete_crl(*, certificate_id: str, crl_id: int) -> CertificateRevocationList:
    ca = _locked(Certificate, certificate_id, "Certificate")
    crl = ca.revocation_lists.filter(pk=crl_id).first()
    if crl is None:
        raise NotFound(f"That revocation list of {ca.name} no longer exists.", field=CRL)
    _reconfigure(listeners_checking_clients_with(ca), doing="changing its CA's revocation lists")
    crl.delete()
    _summarize(ca)
    return crl


def _refuse_older(stored: CertificateRevocationList, new: ValidatedCrl) -> None:
    if stored.crl_number and new.crl_number is not None and new.crl_number < int(stored.crl_number):
        raise RuleViolation(
            f"CRL number {new.crl_number} is older than the stored CRL of {stored.issuer} "
            f"(number {stored.crl_number}); upload a newer one.",
            field=CRL,
        )
    if new.this_update < stored.this_update:
        raise RuleViolation(
            f"CRL was issued on {_when(new.this_update)}, before the stored CRL of "
            f"{stored.issuer} ({_when(stored.this_update)}); upload a newer one.",
            field=CRL,
        )


def _summarize(ca: Certificate) -> None:
    ca.crl_summary = [crl.summary() for crl in ca.revocation_lists.order_by("issuer")]
    ca.save(update_fields=["crl_summary", "updated_at"])


def refresh_crl(*, crl_id: int) -> str:
    """Fetch a CRL again from its distribution point URL and store it if it is newer.

    The download runs outside any transaction; storing goes through `upload_crl`, so a changed
    CRL is audited (as the system) and pushed like an upload. A failure is kept on the row and
    shown on the CA certificate's page; the stored CRL stays in force until its next update."""
    crl = (
        CertificateRevocationList.objects.select_related("ca_certificate")
        .filter(pk=crl_id)
        .exclude(url="")
        .first()
    )
    if crl is None:
        return "gone"
    try:
        validated = validate_crl(
            fetch_crl(crl.url), crl.ca_certificate.certificate_pem, crl.issuer_chain_pem or None
        )
        if validated.issuer != crl.issuer:
            raise CrlFetchError(
                f"Distribution Point URL serves the CRL of {validated.issuer}, not of {crl.issuer}."
            )
        upload_crl(certificate_id=crl.ca_certificate_id, validated=validated, url=crl.url)
    except (CrlError, RuleViolation) as error:
        message = error.message if isinstance(error, CrlError) else str(error)
        CertificateRevocationList.objects.filter(pk=crl_id).update(last_fetch_error=message)
        log.warning("CRL fetch failed: %s", message, extra={"crl_id": crl_id, "url": crl.url})
        return "failed"
    return "fetched"


@shared_task(acks_late=True, ignore_result=True)
def refresh_crls() -> dict[int, str]:
    """Celery beat: fetch every CRL that has a distribution point URL (console/celery.py)."""
    urls = CertificateRevocationList.objects.exclude(url="").values_list("pk", flat=True)
    return {crl_id: refresh_crl(crl_id=crl_id) for crl_id in urls}
