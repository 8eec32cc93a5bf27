"""``{% audit_history object_id %}``: the recorded changes of one object, for its details page."""

from __future__ import annotations

from django import template

from console.models import AuditRecord

register = template.Library()
HISTORY_SIZE = 20


@register.inclusion_tag("console/_audit_history.html")
def audit_history(object_id: str) -> dict:
    return {
        "records": AuditRecord.objects.filter(object_id=object_id)[:HISTORY_SIZE],
        "object_id": object_id,
    }
