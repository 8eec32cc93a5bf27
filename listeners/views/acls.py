"""Access Control pages: IP address groups (ACLs) and their CIDR entries."""

from __future__ import annotations

from django.contrib import messages
from django.db import transaction
from django.db.models import Count, ProtectedError, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from console.htmx import redirect_after_change, render_dialog
from listeners.forms.acls import AccessControlListForm, save_entries
from listeners.models import AccessControlList
from listeners.services import listeners_changed

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
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            acl = form.save()
            save_entries(acl, form.parsed_entries)
        messages.success(request, f"IP address group {acl.name} ({acl.id}) created.")
        return redirect_after_change(request, acl.get_absolute_url())
    return _form_dialog(
        request,
        form,
        title="Create IP Address Group",
        action=reverse("acl-create"),
        status=422 if form.errors else 200,
    )


@require_http_methods(["GET", "POST"])
def acl_edit(request: HttpRequest, acl_id: str) -> HttpResponse:
    acl = get_object_or_404(AccessControlList, pk=acl_id)
    form = AccessControlListForm(request.POST or None, instance=acl)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            form.save()
            save_entries(acl, form.parsed_entries)
            # Whitelists and blacklists are enforced by the dataplane from the snapshot.
            listeners_changed(acl.listeners.all())
        messages.success(request, f"IP address group {acl.name} ({acl.id}) saved.")
        return redirect_after_change(request, acl.get_absolute_url())
    return _form_dialog(
        request,
        form,
        title=f"Edit {acl.name}",
        action=reverse("acl-edit", args=[acl.id]),
        status=422 if form.errors else 200,
    )


@require_http_methods(["GET", "POST"])
def acl_delete(request: HttpRequest, acl_id: str) -> HttpResponse:
    acl = get_object_or_404(AccessControlList, pk=acl_id)
    blockers = list(acl.listeners.select_related("instance")[:50])
    if request.method == "POST" and not blockers:
        try:
            acl.delete()
        except ProtectedError:
            blockers = list(acl.listeners.select_related("instance")[:50])
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
