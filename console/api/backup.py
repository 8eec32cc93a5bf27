"""Backup and restore: export an instance as one JSON document, import one into a new or empty
instance (console/backup.py has the document's format and the rules).

Both are POST: the passphrase travels in the body, never in a URL (and so in no access log).
Exporting is for administrators only, as importing is: the document carries every private key
of the instance, encrypted with a passphrase the caller chooses, so an export hands out what a
viewer may never read. An export is at most ``backup.MAX_DOCUMENT_BYTES`` (it refuses to write a
larger one), and an import body may carry one (``API_MAX_IMPORT_BYTES``, 413 beyond).
"""

from __future__ import annotations

import re
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema, Status

from console import backup
from console.api.common import ObjectId, Strict, call_service
from console.api.problems import ApiError, Problem
from console.models import Instance

router = Router(tags=["Backup and restore"])
ERRORS = {400: Problem, 403: Problem, 404: Problem, 409: Problem, 422: Problem}


class ExportIn(Strict):
    passphrase: str = Field(
        ...,
        max_length=backup.MAX_PASSPHRASE,
        description=f"At least {backup.MIN_PASSPHRASE} characters; encrypts the private keys "
        "(scrypt, AES-256-GCM). It is needed to import the document.",
    )


class ImportIn(Strict):
    passphrase: str = Field(..., max_length=backup.MAX_PASSPHRASE)
    document: dict[str, Any] = Field(..., description="A document from the export.")
    name: str | None = Field(
        None, max_length=128, description="New instance only: overrides the document's name."
    )
    bind_address: str | None = Field(
        None, max_length=64, description="New instance only: overrides the document's address."
    )


class ImportOut(Schema):
    instance: str
    name: str
    generation: int
    listeners: list[str]
    server_groups: list[str]
    certificates: list[str]
    tls_policies: list[str]
    acls: list[str]


def _filename(instance: Instance) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", instance.name).strip("-") or "instance"
    return f"{stem}-{instance.pk}.json"


@router.post(
    "/instances/{instance_id}/export",
    response={200: dict[str, Any], **ERRORS},
    summary="ExportInstance",
)
def export_instance(request: HttpRequest, instance_id: ObjectId, payload: ExportIn):
    """The instance as one JSON document: its settings, listeners, server groups with servers
    and health checks, certificates (private keys encrypted with the passphrase), custom TLS
    policies, ACLs, forwarding rules and error pages. Dataplane nodes are not part of it.
    A document over the import's limit (32 MiB) is refused with 422: it could not be restored."""
    instance = get_object_or_404(Instance, pk=instance_id)
    document = call_service(
        backup.export_instance, instance=instance, passphrase=payload.passphrase
    )
    response = HttpResponse(backup.serialize(document), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{_filename(instance)}"'
    response["Cache-Control"] = "no-store"
    return response


def _import(**arguments: Any) -> dict[str, Any]:
    try:
        imported = call_service(backup.import_instance, **arguments)
    except backup.BackupInvalid as invalid:
        errors = [
            {
                "field": problem["field"]
                if problem["field"] == "passphrase"
                else f"document.{problem['field']}"
                if problem["field"]
                else "document",
                "message": problem["message"],
            }
            for problem in invalid.problems
        ]
        raise ApiError(422, str(invalid), errors=errors) from invalid
    return {
        "instance": imported.instance.pk,
        "name": imported.instance.name,
        "generation": imported.instance.generation,
        "listeners": [row.pk for row in imported.listeners],
        "server_groups": [row.pk for row in imported.server_groups],
        "certificates": [row.pk for row in imported.certificates],
        "tls_policies": [row.pk for row in imported.tls_policies],
        "acls": [row.pk for row in imported.acls],
    }


@router.post("/instances/import", response={201: ImportOut, **ERRORS}, summary="ImportInstance")
def import_new_instance(request: HttpRequest, payload: ImportIn):
    """Create an instance from an exported document. The whole document is checked first and
    applied in one transaction: if anything is wrong, nothing is created and ``errors`` lists
    every problem with its path in the document (``document.listeners[2].port``). The body may
    be up to 32 MiB and 64 KiB (413 beyond): any document an export writes, with the passphrase."""
    return Status(
        201,
        _import(
            document=payload.document,
            passphrase=payload.passphrase,
            name=payload.name or "",
            bind_address=payload.bind_address or "",
        ),
    )


@router.post(
    "/instances/{instance_id}/import",
    response={200: ImportOut, **ERRORS},
    summary="ImportIntoInstance",
)
def import_into_instance(request: HttpRequest, instance_id: ObjectId, payload: ImportIn):
    """Import a document into an existing instance that has no listeners (409 otherwise). The
    instance keeps its name, bind address and nodes, and takes the document's other settings."""
    instance = get_object_or_404(Instance, pk=instance_id)
    if payload.name is not None or payload.bind_address is not None:
        raise ApiError(
            422,
            "An existing instance keeps its name and bind address.",
            errors=[
                {"field": name, "message": "Only for an import into a new instance."}
                for name in ("name", "bind_address")
                if getattr(payload, name) is not None
            ],
        )
    return _import(
        document=payload.document, passphrase=payload.passphrase, instance_id=instance.pk
    )
