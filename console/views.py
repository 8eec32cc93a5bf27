"""Pages of the console shell: instances and their Listener tab."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from console import pipeline, services
from console.forms import DataplaneNodeForm, InstanceForm
from console.htmx import redirect_after_change, render_dialog
from console.models import DataplaneNode, Instance
from listeners.services import InUse, RuleViolation


def home(request: HttpRequest) -> HttpResponse:
    return redirect("instance-list")


def instance_list(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "").strip()
    instances = Instance.objects.all()
    if query:
        instances = instances.filter(name__icontains=query) | instances.filter(id__icontains=query)
    return render(request, "console/instance_list.html", {"instances": instances, "q": query})


@require_http_methods(["GET", "POST"])
def instance_create(request: HttpRequest) -> HttpResponse:
    form = InstanceForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        instance = services.create_instance(
            **{name: form.cleaned_data[name] for name in InstanceForm.Meta.fields}
        )
        messages.success(request, f"Instance {instance.name} ({instance.id}) created.")
        return redirect_after_change(request, reverse("instance-list"))
    return render_dialog(
        request,
        "console/_instance_form.html",
        {"form": form, "title": "Create Instance", "breadcrumbs": [("Instances", "instance-list")]},
        status=422 if form.errors else 200,
    )


@require_http_methods(["GET", "POST"])
def instance_delete(request: HttpRequest, instance_id: str) -> HttpResponse:
    instance = get_object_or_404(Instance, pk=instance_id)
    blockers = list(instance.listeners.all()[:20]) if hasattr(instance, "listeners") else []
    if request.method == "POST" and not blockers:
        try:
            services.delete_instance(instance_id=instance.pk)
        except InUse as in_use:
            # A listener was created since the check above.
            blockers = in_use.blockers
        else:
            messages.success(request, f"Instance {instance.name} ({instance.id}) deleted.")
            return redirect_after_change(request, reverse("instance-list"))
    return render_dialog(
        request,
        "console/_instance_delete.html",
        {
            "instance": instance,
            "blockers": blockers,
            "title": "Delete Instance",
            "breadcrumbs": [("Instances", "instance-list")],
        },
        status=409 if request.method == "POST" else 200,
    )


def instance_detail(request: HttpRequest, instance_id: str) -> HttpResponse:
    return redirect("instance-listeners", instance_id=instance_id)


def node_list(request: HttpRequest, instance_id: str) -> HttpResponse:
    instance = get_object_or_404(Instance, pk=instance_id)
    return render(
        request,
        "console/node_list.html",
        {
            "instance": instance,
            "nodes": instance.nodes.all(),
            "attempts": pipeline.recent_attempts(instance, limit=20),
            "title": instance.name,
            "breadcrumbs": [("Instances", "instance-list")],
        },
    )


@sensitive_post_parameters("token")
@require_http_methods(["GET", "POST"])
def node_create(request: HttpRequest, instance_id: str) -> HttpResponse:
    instance = get_object_or_404(Instance, pk=instance_id)
    form = DataplaneNodeForm(request.POST or None, instance_obj=instance)
    if request.method == "POST" and form.is_valid():
        try:
            # A new node has nothing yet: the instance's configuration is pushed to it.
            node = services.add_node(
                instance_id=instance.pk,
                name=form.cleaned_data["name"],
                control_url=form.cleaned_data["control_url"],
                token=form.cleaned_data["token"],
            )
        except RuleViolation as problem:
            form.add_error(problem.field if problem.field in form.fields else None, str(problem))
        else:
            messages.success(request, f"Node {node.name} added; its configuration is being pushed.")
            return redirect_after_change(request, reverse("instance-nodes", args=[instance.pk]))
    return render_dialog(
        request,
        "console/_node_form.html",
        {
            "form": form,
            "instance": instance,
            "title": "Add Dataplane Node",
            "breadcrumbs": [("Instances", "instance-list")],
        },
        status=422 if form.errors else 200,
    )


@require_http_methods(["GET", "POST"])
def node_delete(request: HttpRequest, instance_id: str, node_id: int) -> HttpResponse:
    node = get_object_or_404(DataplaneNode, pk=node_id, instance_id=instance_id)
    if request.method == "POST":
        try:
            services.remove_node(instance_id=instance_id, node_id=node.pk)
        except RuleViolation as problem:
            messages.error(request, str(problem))
            return redirect_after_change(request, reverse("instance-nodes", args=[instance_id]))
        messages.success(request, f"Node {node.name} removed from the instance.")
        return redirect_after_change(request, reverse("instance-nodes", args=[instance_id]))
    return render_dialog(
        request,
        "console/_node_delete.html",
        {
            "node": node,
            "title": "Remove Dataplane Node",
            "breadcrumbs": [("Instances", "instance-list")],
        },
    )
