"""A backend server's state, changed from the server group page or a listener's details page."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods

from console.htmx import redirect_after_change, render_dialog
from listeners import services
from listeners.forms.serverstates import ServerStateForm
from listeners.models import BackendServer

CRUMBS = [("Server Groups", "servergroup-list")]


def _back(request: HttpRequest, server: BackendServer) -> str:
    """Where to go after the change: the page the dialog was opened from, if it is ours."""
    back = request.POST.get("next") or request.GET.get("next") or ""
    if back and url_has_allowed_host_and_scheme(
        back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return back
    return server.group.get_absolute_url()


@require_http_methods(["GET", "POST"])
def server_state(request: HttpRequest, group_id: str, server_pk: int) -> HttpResponse:
    server = get_object_or_404(
        BackendServer.objects.select_related("group"), pk=server_pk, group_id=group_id
    )
    back = _back(request, server)
    status = 200
    if request.method == "POST":
        form = ServerStateForm(request.POST, instance=BackendServer.objects.get(pk=server.pk))
        status = 422
        if form.is_valid():
            try:
                changed = services.set_server_state(
                    server_pk=server.pk,
                    state=form.cleaned_data["state"],
                    deregistration_delay=form.cleaned_data["deregistration_delay"],
                )
            except services.RuleViolation as problem:
                field = problem.field if problem.field in form.fields else None
                form.add_error(field, str(problem))
                status = 409 if isinstance(problem, services.ListenerConfiguring) else 422
            else:
                messages.success(request, f"Server {changed.name}: {changed.state_text}.")
                return redirect_after_change(request, back)
    else:
        form = ServerStateForm(instance=server)
    return render_dialog(
        request,
        "listeners/servergroups/_server_state.html",
        {
            "form": form,
            "server": server,
            "group": server.group,
            "next": back,
            "action": reverse("servergroup-server-state", args=[server.group_id, server.pk]),
            "title": f"Change State of {server.name}",
            "breadcrumbs": CRUMBS,
        },
        status=status,
    )
