"""Server and CA certificates: upload, replace and delete with the upload dialog's validation
and per-field messages (certificates/forms.py, certificates/validation.py). Private keys are
accepted, stored encrypted and never returned."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router, Schema, Status

from certificates import revocation
from certificates.forms import CrlUploadForm, form_class_for
from certificates.models import Certificate, CertificateRevocationList
from console.api.common import ObjectId, Strict, call_service, validated
from console.api.problems import Problem, invalid
from listeners import services

router = Router(tags=["Certificates"])
ERRORS = {400: Problem, 403: Problem, 404: Problem, 409: Problem, 422: Problem}
SERVER_ONLY = ("private_key", "chain", "passphrase")


class CertificatePem(Strict):
    certificate: str
    private_key: str | None = None
    chain: str | None = None
    passphrase: str | None = None


class CertificateUpload(CertificatePem):
    name: str
    kind: Certificate.Kind


class CertificateOut(Schema):
    id: str
    name: str
    kind: str
    common_name: str
    primary_domain: str
    sans: list[str]
    issuer: str
    subject: str
    serial: str
    fingerprint_sha256: str
    key_algorithm: str
    key_size: int
    not_before: str
    not_after: str
    certificate_pem: str
    chain_pem: str
    listeners: list[str]


def certificate_out(certificate: Certificate) -> dict[str, Any]:
    return {
        **{
            name: getattr(certificate, name)
            for name in (
                "id",
                "name",
                "kind",
                "common_name",
                "primary_domain",
                "sans",
                "issuer",
                "subject",
                "serial",
                "fingerprint_sha256",
                "key_algorithm",
                "key_size",
                "certificate_pem",
                "chain_pem",
            )
        },
        "not_before": certificate.not_before.isoformat(),
        "not_after": certificate.not_after.isoformat(),
        "listeners": sorted(
            services.listeners_using_certificate(certificate).values_list("pk", flat=True)
        ),
    }


def _form(kind: str, pem: CertificatePem, **options: Any):
    sent = pem.model_dump(exclude_none=True)
    if kind == Certificate.Kind.CA:
        extra = [name for name in SERVER_ONLY if name in sent]
        if extra:
            raise invalid(
                [{"field": name, "message": "A CA certificate has no " + name} for name in extra]
            )
    sent.pop("kind", None)
    return validated(form_class_for(kind)(sent, **options))


@router.get("/certificates", response=list[CertificateOut])
def list_certificates(request: HttpRequest, kind: Certificate.Kind | None = None):
    certificates = Certificate.objects.all()
    if kind:
        certificates = certificates.filter(kind=kind)
    return [certificate_out(certificate) for certificate in certificates]


@router.get("/certificates/{certificate_id}", response={200: CertificateOut, 404: Problem})
def get_certificate(request: HttpRequest, certificate_id: ObjectId):
    return certificate_out(get_object_or_404(Certificate, pk=certificate_id))


@router.post("/certificates", response={201: CertificateOut, **ERRORS})
def upload_certificate(request: HttpRequest, payload: CertificateUpload):
    form = _form(payload.kind, payload)
    certificate = call_service(
        services.upload_certificate,
        name=form.cleaned_data["name"],
        kind=payload.kind,
        validated=form.validated,
    )
    return Status(201, certificate_out(certificate))


@router.put("/certificates/{certificate_id}", response={200: CertificateOut, **ERRORS})
def replace_certificate(request: HttpRequest, certificate_id: ObjectId, payload: CertificatePem):
    """Replace the certificate (and key); listeners that use it get it on the next push."""
    certificate = get_object_or_404(Certificate, pk=certificate_id)
    form = _form(certificate.kind, payload, require_name=False)
    certificate = call_service(
        services.replace_certificate, certificate_id=certificate.pk, validated=form.validated
    )
    return certificate_out(certificate)


@router.delete("/certificates/{certificate_id}", response={204: None, **ERRORS})
def delete_certificate(request: HttpRequest, certificate_id: ObjectId):
    certificate = get_object_or_404(Certificate, pk=certificate_id)
    call_service(services.delete_certificate, certificate_id=certificate.pk)
    return Status(204, None)


# -- revocation lists of a CA certificate ------------------------------------------------------


class CrlUpload(Strict):
    crl: str = ""  # PEM (BEGIN X509 CRL), at most revocation.MAX_CRL_BYTES; or only a url
    issuer_chain: str | None = None  # for an intermediate's CRL: its certificate(s), PEM
    url: str | None = None  # a distribution point URL the console fetches it from on a schedule


class CrlOut(Schema):
    id: int
    issuer: str
    issuer_chain_subjects: list[str]
    crl_number: str
    this_update: str
    next_update: str
    revoked_count: int
    source: str
    url: str
    fetched_at: str | None
    last_fetch_error: str
    fingerprint_sha256: str
    crl_pem: str


def crl_out(crl: CertificateRevocationList) -> dict[str, Any]:
    return {
        "id": crl.pk,
        "issuer": crl.issuer,
        "issuer_chain_subjects": list(crl.issuer_chain_subjects),
        "crl_number": crl.crl_number,
        "this_update": crl.this_update.isoformat(),
        "next_update": crl.next_update.isoformat(),
        "revoked_count": crl.revoked_count,
        "source": crl.source,
        "url": crl.url,
        "fetched_at": crl.fetched_at.isoformat() if crl.fetched_at else None,
        "last_fetch_error": crl.last_fetch_error,
        "fingerprint_sha256": crl.fingerprint_sha256,
        "crl_pem": revocation.crl_pem(crl.der),
    }


def _ca_or_404(certificate_id: str) -> Certificate:
    return get_object_or_404(Certificate, pk=certificate_id, kind=Certificate.Kind.CA)


@router.get("/certificates/{certificate_id}/crls", response={200: list[CrlOut], 404: Problem})
def list_crls(request: HttpRequest, certificate_id: ObjectId):
    return [crl_out(crl) for crl in _ca_or_404(certificate_id).revocation_lists.all()]


@router.post("/certificates/{certificate_id}/crls", response={201: CrlOut, **ERRORS})
def upload_crl(request: HttpRequest, certificate_id: ObjectId, payload: CrlUpload):
    """Add a CA's CRL, or replace the stored CRL of the same issuer with a newer one."""
    ca = _ca_or_404(certificate_id)
    form = validated(CrlUploadForm(payload.model_dump(exclude_none=True), ca_certificate=ca))
    crl = call_service(
        revocation.upload_crl,
        certificate_id=ca.pk,
        validated=form.validated,
        url=form.cleaned_data["url"],
    )
    return Status(201, crl_out(crl))


@router.delete("/certificates/{certificate_id}/crls/{crl_id}", response={204: None, **ERRORS})
def delete_crl(request: HttpRequest, certificate_id: ObjectId, crl_id: int):
    ca = _ca_or_404(certificate_id)
    crl = get_object_or_404(CertificateRevocationList, pk=crl_id, ca_certificate=ca)
    call_service(revocation.delete_crl, certificate_id=ca.pk, crl_id=crl.pk)
    return Status(204, None)
