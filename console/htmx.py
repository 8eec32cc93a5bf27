"""One view serves the full page and the htmx partial; these helpers make that choice."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django_htmx.http import HttpResponseClientRedirect


def render_dialog(
    request: HttpRequest, partial: str, context: dict[str, Any], *, status: int = 200
) -> HttpResponse:
    """Render ``partial`` inside a modal for htmx, or inside a full page without JavaScript."""
    context = {**context, "partial_template": partial}
    if request.htmx:
        return render(request, "dialog.html", context, status=status)
    return render(request, "dialog_page.html", context, status=status)


def redirect_after_change(request: HttpRequest, url: str) -> HttpResponse:
    """After a successful POST: a client redirect for htmx, a 302 otherwise."""
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return HttpResponseRedirect(url)
