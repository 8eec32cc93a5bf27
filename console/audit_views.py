"""The Audit Log page: every recorded change, filtered by user, object, action and time.

Read only: no view (and no API endpoint) edits or deletes a record.
"""

from __future__ import annotations

import datetime

from django import forms
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from console.models import AuditRecord

PAGE_SIZE = 200


class AuditFilterForm(forms.Form):
    user = forms.CharField(label="User", required=False)
    object = forms.CharField(label="Object", required=False, help_text="ID or name.")
    action = forms.ChoiceField(label="Action", required=False)
    since = forms.DateField(
        label="From", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    until = forms.DateField(
        label="To", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        actions = AuditRecord.objects.order_by("action").values_list("action", flat=True)
        self.fields["action"].choices = [("", "Any")] + [(a, a) for a in actions.distinct()]


def filtered(
    records: QuerySet[AuditRecord],
    *,
    user: str = "",
    object: str = "",
    action: str = "",
    since: datetime.date | None = None,
    until: datetime.date | None = None,
) -> QuerySet[AuditRecord]:
    if user:
        records = records.filter(actor__icontains=user)
    if object:
        records = records.filter(Q(object_id__icontains=object) | Q(object_name__icontains=object))
    if action:
        records = records.filter(action=action)
    if since:
        records = records.filter(at__date__gte=since)
    if until:
        records = records.filter(at__date__lte=until)
    return records


@require_GET
def audit_log(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET or None)
    records = AuditRecord.objects.all()
    if form.is_valid():
        records = filtered(records, **form.cleaned_data)
    return render(
        request,
        "console/audit_log.html",
        {"form": form, "records": records[:PAGE_SIZE], "title": "Audit Log"},
    )
