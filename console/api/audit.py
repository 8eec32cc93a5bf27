"""The audit log, read only: no operation edits or deletes a record."""

from __future__ import annotations

import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema

from console.audit_views import filtered
from console.models import AuditRecord

router = Router(tags=["Audit log"])


class AuditRecordOut(Schema):
    id: int
    at: str
    actor: str
    via: str
    action: str
    object_type: str
    object_id: str
    object_name: str
    changes: dict[str, Any]


class AuditFilters(Schema):
    user: str = ""
    object: str = ""
    action: str = ""
    since: datetime.date | None = None
    until: datetime.date | None = None
    limit: int = Field(200, ge=1, le=1000)


@router.get("/audit-log", response=list[AuditRecordOut])
def audit_log(request: HttpRequest, filters: Query[AuditFilters]):
    """The recorded changes, newest first; the same filters as the Audit Log page."""
    records = filtered(
        AuditRecord.objects.all(),
        **{
            name: value.replace("\x00", "") if isinstance(value, str) else value
            for name, value in filters.model_dump(exclude={"limit"}).items()
        },
    )[: filters.limit]
    return [
        {
            "id": r.pk,
            "at": r.at.isoformat(),
            "actor": r.actor,
            "via": r.via,
            "action": r.action,
            "object_type": r.object_type,
            "object_id": r.object_id,
            "object_name": r.object_name,
            "changes": r.changes,
        }
        for r in records
    ]
