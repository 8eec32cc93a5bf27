"""TLS security policies: the predefined ones read-only, custom ones created and edited."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router, Schema, Status

from console.api.common import ObjectId, Strict, call_service, set_fields, validated
from console.api.problems import Problem
from listeners import services
from listeners.forms.tlspolicies import TlsPolicyForm
from listeners.models import TlsPolicy

router = Router(tags=["TLS security policies"])
ERRORS = {400: Problem, 403: Problem, 404: Problem, 409: Problem, 422: Problem}
FIELDS = TlsPolicyForm.Meta.fields


class TlsPolicyIn(Strict):
    name: str
    min_version: str
    max_version: str
    ciphers: list[str] = []
    tls13_ciphersuites: list[str] = []
    description: str = ""


class TlsPolicyChange(Strict):
    name: str | None = None
    min_version: str | None = None
    max_version: str | None = None
    ciphers: list[str] | None = None
    tls13_ciphersuites: list[str] | None = None
    description: str | None = None


class TlsPolicyOut(Schema):
    id: str
    predefined: bool
    name: str
    min_version: str
    max_version: str
    ciphers: list[str]
    tls13_ciphersuites: list[str]
    description: str
    listeners: list[str]


def policy_out(policy: TlsPolicy) -> dict[str, Any]:
    return {
        "id": policy.id,
        "predefined": policy.predefined,
        **{name: getattr(policy, name) for name in FIELDS},
        "listeners": sorted(policy.listeners.values_list("pk", flat=True)),
    }


@router.get("/tls-policies", response=list[TlsPolicyOut])
def list_policies(request: HttpRequest):
    return [policy_out(policy) for policy in TlsPolicy.objects.all()]


@router.get("/tls-policies/{policy_id}", response={200: TlsPolicyOut, 404: Problem})
def get_policy(request: HttpRequest, policy_id: ObjectId):
    return policy_out(get_object_or_404(TlsPolicy, pk=policy_id))


@router.post("/tls-policies", response={201: TlsPolicyOut, **ERRORS})
def create_policy(request: HttpRequest, payload: TlsPolicyIn):
    form = validated(TlsPolicyForm(payload.model_dump()))
    policy = call_service(
        services.create_tls_policy, values={name: form.cleaned_data[name] for name in FIELDS}
    )
    return Status(201, policy_out(policy))


@router.patch("/tls-policies/{policy_id}", response={200: TlsPolicyOut, **ERRORS})
def modify_policy(request: HttpRequest, policy_id: ObjectId, payload: TlsPolicyChange):
    policy = get_object_or_404(TlsPolicy, pk=policy_id)
    if policy.predefined:
        # The same refusal the service gives, before the form complains about the name.
        call_service(services.update_tls_policy, policy_id=policy.pk, values={})
    data = {name: getattr(policy, name) for name in FIELDS} | set_fields(payload)
    form = validated(TlsPolicyForm(data, instance=policy))
    policy = call_service(
        services.update_tls_policy,
        policy_id=policy.pk,
        values={name: form.cleaned_data[name] for name in FIELDS},
    )
    return policy_out(policy)


@router.delete("/tls-policies/{policy_id}", response={204: None, **ERRORS})
def delete_policy(request: HttpRequest, policy_id: ObjectId):
    policy = get_object_or_404(TlsPolicy, pk=policy_id)
    call_service(services.delete_tls_policy, policy_id=policy.pk)
    return Status(204, None)
