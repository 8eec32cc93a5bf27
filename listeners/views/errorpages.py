"""The Error Pages section of an HTTP, HTTPS or QUIC listener's details page (issue 20): set,
edit and remove the page for 502, 503, 504 and Maintenance. The pages hold HTML the operator
wrote; the console shows them escaped as text and never renders them."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from console.htmx import redirect_after_change
from listeners import services
from listeners.errorpages import PURPOSES
from listeners.forms.errorpages import ErrorPageForm
from listeners.models import ErrorPage, Listener
from listeners.views.listeners import _dialog, _listener, _refusal, _refused


def _page_listener(instance_id: str, listener_id: str, status: str) -> Listener:
    listener = _listener(instance_id, listener_id)
    if listener.protocol not in Listener.LAYER7_PROTOCOLS:
        raise Http404("Error pages exist only on HTTP, HTTPS and QUIC listeners")
    if status not in ErrorPage.Status.values:
        raise Http404("No such error page")
    return listener


@require_http_methods(["GET", "POST"])
def error_page_edit(
    request: HttpRequest, instance_id: str, listener_id: str, status: str
) -> HttpResponse:
    listener = _page_listener(instance_id, listener_id, status)
    refused = _refused(request, listener, "changing its error pages")
    if refused:
        return refused
    label = ErrorPage.Status(status).label
    current = listener.error_pages.filter(status=status).first()
    initial = {"content_type": current.content_type, "body": current.body} if current else {}
    form = ErrorPageForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            services.set_error_page(
                listener_id=listener.pk,
                status=status,
                content_type=form.cleaned_data["content_type"],
                body=form.cleaned_data["body"],
            )
        except services.ListenerConfiguring as refusal:
            return _refusal(request, listener, str(refusal))
        except services.RuleViolation as problem:
            form.add_error(None, str(problem))
        else:
            messages.success(request, f"{label} page saved.")
            return redirect_after_change(request, listener.get_absolute_url())
    return _dialog(
        request,
        listener,
        "listeners/_error_page_form.html",
        f"{'Edit' if current else 'Set'} {label} Page",
        form,
        status=422 if form.errors else 200,
        action=reverse("listener-error-page", args=[listener.instance_id, listener.id, status]),
        purpose=PURPOSES[ErrorPage.Status(status)],
    )


@require_http_methods(["POST"])
def error_page_remove(
    request: HttpRequest, instance_id: str, listener_id: str, status: str
) -> HttpResponse:
    listener = _page_listener(instance_id, listener_id, status)
    refused = _refused(request, listener, "changing its error pages")
    if refused:
        return refused
    try:
        services.remove_error_page(listener_id=listener.pk, status=status)
    except services.RuleViolation as refusal:
        return _refusal(request, listener, str(refusal))
    messages.success(request, f"{ErrorPage.Status(status).label} page removed.")
    return redirect_after_change(request, listener.get_absolute_url())
