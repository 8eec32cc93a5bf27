"""Access Control pages: IP address groups (ACLs) and their CIDR entries."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from console.htmx import redirect_after_change, render_dialog
from listeners import services
from listeners.forms.acls import AccessControlListForm
from listeners.models import AccessControlList

CRUMBS = [("Access Control", "acl-list")]


def acl_list(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "").strip()
    acls = AccessControlList.objects.annotate(
        entry_count=Count("entries", distinct=True),
        listener_count=Count("listeners", distinct=True),
    )
    if query:
        acls = acls.filter(
            Q(name__icontains=query)
            | Q(id__icontains=query)
            | Q(description__icontains=query)
            | Q(entries__cidr__icontains=query)
            | Q(entries__description__icontains=query)
        ).distinct()
    return render(
        request,
        "listeners/acls/acl_list.html",
        {"acls": acls, "q": query, "title": "Access Control"},
    )


def acl_detail(request: HttpRequest, acl_id: str) -> HttpResponse:
    acl = get_object_or_404(AccessControlList, pk=acl_id)
    return render(
        request,
        "listeners/acls/acl_detail.html",
        {
            "acl": acl,
            "entries": acl.entries.all(),
            "listeners": acl.listeners.select_related("instance"),
            "title": acl.name,
            "breadcrumbs": CRUMBS,
        },
    )


def _values(form: AccessControlListForm) -> dict:
    return {
        "name": form.cleaned_data["name"],
        "description": form.cleaned_data["description"],
        "entries": {entry.cidr: entry.description for entry in form.parsed_entries},
    }


def _show_problem(form: AccessControlListForm, problem: services.RuleViolation) -> int:
    form.add_error(problem.field if problem.field in form.fields else None, str(problem))
    return 409 if isinstance(problem, services.ListenerConfiguring) else 422


def _form_dialog(
    request: HttpRequest, form: AccessControlListForm, *, title: str, action: str, status: int
) -> HttpResponse:
    return render_dialog(
        request,
        "listeners/acls/_acl_form.html",
        {
            "form": form,
            "acl": form.instance if form.instance.pk else None,
            "title": title,
            "action": action,
            "breadcrumbs": CRUMBS,
        },
        status=status,
    )


@require_http_methods(["GET", "POST"])
def acl_create(request: HttpRequest) -> HttpResponse:
    form = AccessControlListForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            acl = services.create_acl(**_values(form))
        except services.RuleViolation as problem:
            status = _show_problem(form, problem)
        else:
            messages.success(request, f"IP address group {acl.name} ({acl.id}) created.")
            return redirect_after_change(request, acl.get_absolute_url())
    return _form_dialog(
        request,
        form,
        title="Create IP Address Group",
        action=reverse("acl-create"),
        status=422 if form.errors and status == 200 else status,
    )


@require_http_methods(["GET", "POST"])
def acl_edit(request: HttpRequest, acl_id: str) -> HttpResponse:
    acl = get_object_or_404(AccessControlList, pk=acl_id)
    form = AccessControlListForm(request.POST or None, instance=acl)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            acl = services.update_acl(acl_id=acl.pk, **_values(form))
        except services.RuleViolation as problem:
            status = _show_problem(form, problem)
        else:
            messages.success(request, f"IP address group {acl.name} ({acl.id}) saved.")
            return redirect_after_change(request, acl.get_absolute_url())
    return _form_dialog(
        request,
        form,
        title=f"Edit {acl.name}",
        action=reverse("acl-edit", args=[acl.id]),
        status=422 if form.errors and status == 200 else status,
    )


@require_http_methods(["GET", "POST"])
def acl_delete(request: HttpRequest, acl_id: str) -> HttpResponse:
    acl = get_object_or_404(AccessControlList, pk=acl_id)
    blockers = list(acl.listeners.select_related("instance")[:50])
    if request.method == "POST" and not blockers:
        try:
            services.delete_acl(acl_id=acl.pk)
        except services.InUse as in_use:
            blockers = in_use.blockers
        else:
            messages.success(request, f"IP address group {acl.name} ({acl.id}) deleted.")
            return redirect_after_change(request, reverse("acl-list"))
    return render_dialog(
        request,
        "listeners/acls/_acl_delete.html",
        {
            "acl": acl,
            "blockers": blockers,
            "title": "Delete IP Address Group",
            "breadcrumbs": CRUMBS,
        },
        status=409 if request.method == "POST" else 200,
    )
