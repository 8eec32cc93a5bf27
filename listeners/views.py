"""Pages under an instance's Listener tab."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from console.models import Instance


def listener_tab(request: HttpRequest, instance_id: str) -> HttpResponse:
    instance = get_object_or_404(Instance, pk=instance_id)
    return render(
        request,
        "listeners/listener_tab.html",
        {
            "instance": instance,
            "listeners": instance.listeners.all(),
            "title": instance.name,
            "breadcrumbs": [("Instances", "instance-list")],
        },
    )
