"""Access control lists (IP address groups) that listeners whitelist or blacklist."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema, Status

from console.api.common import ObjectId, Strict, call_service, validated
from console.api.problems import Problem
from listeners import services
from listeners.forms.acls import MAX_ENTRIES, AccessControlListForm
from listeners.models import AccessControlList

router = Router(tags=["Access control lists"])
ERRORS = {400: Problem, 403: Problem, 404: Problem, 409: Problem, 422: Problem}


class AclEntryIn(Strict):
    cidr: str = Field(description="An IPv4/IPv6 address or CIDR block.")
    description: str = ""


class AclIn(Strict):
    name: str
    description: str = ""
    entries: list[AclEntryIn] = Field([], max_length=MAX_ENTRIES)


class AclOut(Schema):
    id: str
    name: str
    description: str
    entries: list[dict[str, str]]
    listeners: list[str]


def acl_out(acl: AccessControlList) -> dict[str, Any]:
    return {
        "id": acl.id,
        "name": acl.name,
        "description": acl.description,
        "entries": [
            {"cidr": entry.cidr, "description": entry.description} for entry in acl.entries.all()
        ],
        "listeners": sorted(acl.listeners.values_list("pk", flat=True)),
    }


def _form(payload: AclIn, acl: AccessControlList | None = None) -> AccessControlListForm:
    # The form reads the page's text area: one entry per line, address then description.
    lines = "\n".join(f"{e.cidr} {e.description}".strip() for e in payload.entries)
    data = {"name": payload.name, "description": payload.description, "entries": lines}
    return validated(AccessControlListForm(data, instance=acl))


def _values(form: AccessControlListForm) -> dict[str, Any]:
    return {
        "name": form.cleaned_data["name"],
        "description": form.cleaned_data["description"],
        "entries": {entry.cidr: entry.description for entry in form.parsed_entries},
    }


@router.get("/acls", response=list[AclOut])
def list_acls(request: HttpRequest):
    return [acl_out(acl) for acl in AccessControlList.objects.all()]


@router.get("/acls/{acl_id}", response={200: AclOut, 404: Problem})
def get_acl(request: HttpRequest, acl_id: ObjectId):
    return acl_out(get_object_or_404(AccessControlList, pk=acl_id))


@router.post("/acls", response={201: AclOut, **ERRORS})
def create_acl(request: HttpRequest, payload: AclIn):
    acl = call_service(services.create_acl, **_values(_form(payload)))
    return Status(201, acl_out(acl))


@router.put("/acls/{acl_id}", response={200: AclOut, **ERRORS})
def replace_acl(request: HttpRequest, acl_id: ObjectId, payload: AclIn):
    acl = get_object_or_404(AccessControlList, pk=acl_id)
    acl = call_service(services.update_acl, acl_id=acl.pk, **_values(_form(payload, acl)))
    return acl_out(acl)


@router.delete("/acls/{acl_id}", response={204: None, **ERRORS})
def delete_acl(request: HttpRequest, acl_id: ObjectId):
    acl = get_object_or_404(AccessControlList, pk=acl_id)
    call_service(services.delete_acl, acl_id=acl.pk)
    return Status(204, None)
