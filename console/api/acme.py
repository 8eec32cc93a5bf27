"""Certificates issued through ACME: request an order, follow its attempts, renew now, and delete an
order that never issued. Each write calls the same use case as the console's pages
(certificates/renewal.py) after the same form's checks (certificates/acme_views.py); the CA is
talked to by a Celery task, so a request or renewal answers at once with the queued attempt."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router, Schema, Status
from pydantic import Field, StringConstraints

from certificates import renewal
from certificates.acme_models import AcmeAttempt, AcmeIssuance
from certificates.acme_views import MAX_DOMAINS, AcmeIssueForm
from console.api.common import ObjectId, RowId, Strict, call_service, validated
from console.api.problems import Problem

router = Router(tags=["ACME certificates"])
ERRORS = {400: Problem, 403: Problem, 404: Problem, 409: Problem, 422: Problem}

# One name per item: a separator inside an item would smuggle in a second name.
DomainName = Annotated[str, StringConstraints(pattern=r"^[^\s,]+$", max_length=253)]


class AcmeOrderIn(Strict):
    name: str = Field(max_length=128, description="The certificate's name in the console.")
    domains: list[DomainName] = Field(
        min_length=1,
        max_length=MAX_DOMAINS,
        description="Host names; the first becomes the primary domain. No wildcards or IPs.",
    )
    directory: Literal["letsencrypt", "letsencrypt-staging", "custom"] = Field(
        description="The CA; custom takes directory_url."
    )
    directory_url: str | None = Field(
        default=None, max_length=500, description="https:// ACME directory, only for custom."
    )
    email: str = Field(max_length=254, description="The CA's expiry notices go here.")
    challenge: AcmeIssuance.Challenge
    instance: ObjectId = Field(description="The instance whose dataplane answers the challenge.")
    key_algorithm: AcmeIssuance.KeyAlgorithm = AcmeIssuance.KeyAlgorithm.ECDSA_P256
    agree: bool = Field(description="Agreement to the CA's terms of service; must be true.")


class AcmeAttemptOut(Schema):
    id: int
    order: str
    kind: str
    state: str = Field(description="queued, running, succeeded or failed.")
    step: str = Field(description="What a running attempt is doing.")
    message: str = Field(description="The outcome: the new serial, or what failed and why.")
    created_at: str
    started_at: str | None
    finished_at: str | None


class AcmeOrderOut(Schema):
    id: str
    name: str
    domains: list[str]
    directory_url: str
    email: str
    challenge: str
    instance: str | None
    key_algorithm: str
    auto_renew: bool
    certificate: str | None = Field(description="The issued certificate, once there is one.")
    renew_at: str | None
    retry_at: str | None
    consecutive_failures: int
    in_progress: bool
    created_at: str
    attempts: list[AcmeAttemptOut] = Field(description="The latest 20, newest first.")


def _when(value: Any) -> str | None:
    return value.isoformat() if value else None


def attempt_out(attempt: AcmeAttempt) -> dict[str, Any]:
    return {
        "id": attempt.pk,
        "order": attempt.issuance_id,
        "kind": attempt.kind,
        "state": attempt.state,
        "step": attempt.step,
        "message": attempt.message,
        "created_at": attempt.created_at.isoformat(),
        "started_at": _when(attempt.started_at),
        "finished_at": _when(attempt.finished_at),
    }


def order_out(issuance: AcmeIssuance) -> dict[str, Any]:
    return {
        "id": issuance.pk,
        "name": issuance.name,
        "domains": list(issuance.domains),
        "directory_url": issuance.directory_url,
        "email": issuance.email,
        "challenge": issuance.challenge,
        "instance": issuance.instance_id,
        "key_algorithm": issuance.key_algorithm,
        "auto_renew": issuance.auto_renew,
        "certificate": issuance.certificate_id,
        "renew_at": _when(issuance.renew_at),
        "retry_at": _when(issuance.retry_at),
        "consecutive_failures": issuance.consecutive_failures,
        "in_progress": issuance.in_progress,
        "created_at": issuance.created_at.isoformat(),
        "attempts": [attempt_out(attempt) for attempt in issuance.recent_attempts],
    }


def _order_or_404(order_id: str) -> AcmeIssuance:
    return get_object_or_404(AcmeIssuance, pk=order_id)


@router.get("/acme/orders", response=list[AcmeOrderOut])
def list_orders(request: HttpRequest):
    return [order_out(issuance) for issuance in AcmeIssuance.objects.all()]


@router.post("/acme/orders", response={202: AcmeOrderOut, **ERRORS})
def request_order(request: HttpRequest, payload: AcmeOrderIn):
    """Ask the CA for a certificate. Answers 202 with the order and its queued attempt; poll
    GET /acme/orders/{order_id} until the attempt succeeded (then `certificate` is set) or
    failed (`message` says why)."""
    sent = payload.model_dump(exclude_none=True)
    sent["domains"] = "\n".join(payload.domains)
    if not payload.agree:
        sent.pop("agree")  # the form's BooleanField reads any value present as agreement
    form = validated(AcmeIssueForm(sent))
    data = form.cleaned_data
    issuance = call_service(
        renewal.request_issuance,
        name=data["name"],
        domains=data["domains"],
        directory_url=data["resolved_directory"],
        email=data["email"],
        challenge=data["challenge"],
        instance=data["instance"],
        key_algorithm=data["key_algorithm"],
    )
    return Status(202, order_out(_order_or_404(issuance.pk)))


@router.get("/acme/orders/{order_id}", response={200: AcmeOrderOut, 404: Problem})
def get_order(request: HttpRequest, order_id: ObjectId):
    return order_out(_order_or_404(order_id))


@router.delete("/acme/orders/{order_id}", response={204: None, **ERRORS})
def delete_order(request: HttpRequest, order_id: ObjectId):
    """Only an order that never issued; an issued one goes with DELETE /certificates/{id}."""
    issuance = _order_or_404(order_id)
    call_service(renewal.delete_issuance, issuance_id=issuance.pk)
    return Status(204, None)


@router.post("/acme/orders/{order_id}/renew", response={202: AcmeAttemptOut, **ERRORS})
def renew_order(request: HttpRequest, order_id: ObjectId):
    """Renew now (or retry a failed first issuance): answers 202 with the queued attempt; one
    attempt at a time per order."""
    issuance = _order_or_404(order_id)
    attempt = call_service(renewal.request_renewal, issuance_id=issuance.pk)
    return Status(202, attempt_out(attempt))


@router.get(
    "/acme/orders/{order_id}/attempts",
    response={200: list[AcmeAttemptOut], 404: Problem},
)
def list_attempts(request: HttpRequest, order_id: ObjectId):
    return [attempt_out(attempt) for attempt in _order_or_404(order_id).attempts.all()]


@router.get(
    "/acme/orders/{order_id}/attempts/{attempt_id}",
    response={200: AcmeAttemptOut, 404: Problem},
)
def get_attempt(request: HttpRequest, order_id: ObjectId, attempt_id: RowId):
    return attempt_out(get_object_or_404(AcmeAttempt, pk=attempt_id, issuance_id=order_id))
