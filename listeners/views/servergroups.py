"""Server Groups pages: list, create, details, edit servers and weights, delete."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from console.htmx import redirect_after_change, render_dialog
from console.server_health import group_health
from listeners import services
from listeners.forms.servergroups import (
    BackendServerFormSet,
    ServerGroupForm,
    add_row,
    blank_rows,
    server_rows,
)
from listeners.models import ServerGroup

CRUMBS = [("Server Groups", "servergroup-list")]


def group_list(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "").strip()
    groups = ServerGroup.objects.annotate(
        server_count=Count("servers", distinct=True),
        listener_count=Count("listeners", distinct=True),
    ).prefetch_related("listeners")
    if query:
        groups = groups.filter(
            Q(name__icontains=query)
            | Q(id__icontains=query)
            | Q(description__icontains=query)
            | Q(servers__address__icontains=query)
        ).distinct()
    return render(
        request,
        "listeners/servergroups/group_list.html",
        {"groups": groups, "q": query, "title": "Server Groups"},
    )


def group_detail(request: HttpRequest, group_id: str) -> HttpResponse:
    group = get_object_or_404(ServerGroup.objects.select_related("health_check"), pk=group_id)
    return render(
        request,
        "listeners/servergroups/group_detail.html",
        {
            "group": group,
            "health_check": getattr(group, "health_check", None),
            "servers": group.servers.all(),
            "listeners": group.listeners.select_related("instance"),
            "server_health": group_health(group),
            "title": group.name,
            "breadcrumbs": CRUMBS,
        },
    )


def _group_values(form: ServerGroupForm) -> dict:
    return {name: form.cleaned_data[name] for name in ServerGroupForm.Meta.fields}


def _show_problem(form: ServerGroupForm, problem: services.RuleViolation) -> int:
    """Put a service's refusal next to its field; the status code to answer with."""
    form.add_error(problem.field if problem.field in form.fields else None, str(problem))
    return 409 if isinstance(problem, services.ListenerConfiguring) else 422


def _edit_page(
    request: HttpRequest,
    *,
    form: ServerGroupForm,
    formset,
    title: str,
    action: str,
    group: ServerGroup | None = None,
    hide_row_errors: bool = False,
    status: int = 200,
) -> HttpResponse:
    return render_dialog(
        request,
        "listeners/servergroups/_group_form.html",
        {
            "form": form,
            "formset": formset,
            "group": group,
            "title": title,
            "action": action,
            "hide_row_errors": hide_row_errors,
            "breadcrumbs": CRUMBS,
        },
        status=status,
    )


@require_http_methods(["GET", "POST"])
def group_create(request: HttpRequest) -> HttpResponse:
    action = reverse("servergroup-create")
    if request.method == "GET":
        return _edit_page(
            request,
            form=ServerGroupForm(),
            formset=BackendServerFormSet(initial=blank_rows()),
            title="Create Server Group",
            action=action,
        )
    if "add_server" in request.POST:
        data = add_row(request.POST)
        return _edit_page(
            request,
            form=ServerGroupForm(data),
            formset=BackendServerFormSet(data),
            title="Create Server Group",
            action=action,
            hide_row_errors=True,
        )
    form = ServerGroupForm(request.POST)
    formset = BackendServerFormSet(request.POST)
    status = 422
    if form.is_valid() and formset.is_valid():
        try:
            # The group starts with the health check of its backend protocol, as in the wizard.
            group = services.create_server_group(**_group_values(form), servers=formset.rows())
        except services.RuleViolation as problem:
            status = _show_problem(form, problem)
        else:
            messages.success(request, f"Server group {group.name} ({group.id}) created.")
            return redirect_after_change(request, group.get_absolute_url())
    return _edit_page(
        request,
        form=form,
        formset=formset,
        title="Create Server Group",
        action=action,
        status=status,
    )


@require_http_methods(["GET", "POST"])
def group_edit(request: HttpRequest, group_id: str) -> HttpResponse:
    group = get_object_or_404(ServerGroup, pk=group_id)
    action = reverse("servergroup-edit", args=[group.id])
    title = f"Edit {group.name}"
    if request.method == "GET":
        return _edit_page(
            request,
            form=ServerGroupForm(instance=group),
            formset=BackendServerFormSet(initial=server_rows(group)),
            title=title,
            action=action,
            group=group,
        )
    if "add_server" in request.POST:
        data = add_row(request.POST)
        return _edit_page(
            request,
            form=ServerGroupForm(data, instance=group),
            formset=BackendServerFormSet(data),
            title=title,
            action=action,
            group=group,
            hide_row_errors=True,
        )
    form = ServerGroupForm(request.POST, instance=group)
    formset = BackendServerFormSet(request.POST)
    status = 422
    if form.is_valid() and formset.is_valid():
        try:
            # Listeners forwarding to this group get the new servers on their next push.
            group = services.update_server_group(
                group_id=group.pk, values=_group_values(form), servers=formset.rows()
            )
        except services.RuleViolation as problem:
            status = _show_problem(form, problem)
        else:
            messages.success(request, f"Server group {group.name} ({group.id}) saved.")
            return redirect_after_change(request, group.get_absolute_url())
    return _edit_page(
        request, form=form, formset=formset, title=title, action=action, group=group, status=status
    )


@require_http_methods(["GET", "POST"])
def group_delete(request: HttpRequest, group_id: str) -> HttpResponse:
    group = get_object_or_404(ServerGroup, pk=group_id)
    blockers = list(services.listeners_of_group(group).distinct().select_related("instance")[:50])
    if request.method == "POST" and not blockers:
        try:
            services.delete_server_group(group_id=group.pk)
        except services.InUse as in_use:
            # A listener started using the group since the check above.
            blockers = in_use.blockers
        else:
            messages.success(request, f"Server group {group.name} ({group.id}) deleted.")
            return redirect_after_change(request, reverse("servergroup-list"))
    return render_dialog(
        request,
        "listeners/servergroups/_group_delete.html",
        {
            "group": group,
            "blockers": blockers,
            "title": "Delete Server Group",
            "breadcrumbs": CRUMBS,
        },
        status=409 if request.method == "POST" else 200,
    )
