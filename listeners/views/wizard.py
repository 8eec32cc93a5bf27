"""Create Listener (the five-step wizard) and Quick Create Listener."""

from __future__ import annotations

from django.contrib import messages
from django.db import IntegrityError
from django.forms import BooleanField
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from certificates.models import Certificate
from console.htmx import redirect_after_change, render_dialog
from console.models import Instance
from listeners import services
from listeners.bandwidth import no_share_warning
from listeners.forms.listener import (
    SUGGESTED_PORT,
    ProtocolListenerForm,
    QuickCreateForm,
    default_listener_name,
)
from listeners.forms.servergroups import add_row, server_rows
from listeners.models import Listener, ServerGroup
from listeners.wizard import STEP_NAMES, Draft, summary


def _crumbs(instance: Instance) -> list[tuple[str, str]]:
    return [
        ("Instances", "instance-list"),
        (instance.name, reverse("instance-listeners", args=[instance.pk])),
    ]


def start(request: HttpRequest, instance_id: str) -> HttpResponse:
    instance = get_object_or_404(Instance, pk=instance_id)
    if request.GET.get("reset"):
        Draft(request, instance).reset()
    return redirect("listener-create-step", instance_id=instance.id, step="protocol")


@require_http_methods(["GET", "POST"])
def step(request: HttpRequest, instance_id: str, step: str) -> HttpResponse:
    instance = get_object_or_404(Instance, pk=instance_id)
    if step not in STEP_NAMES:
        raise Http404("No such wizard step")
    draft = Draft(request, instance)
    active = [s.name for s in draft.active_steps()]
    if step not in active:
        # e.g. SSL Certificate after the protocol changed to HTTP.
        return redirect("listener-create-step", instance_id=instance.id, step=active[0])
    if step == "confirm":
        return _confirm(request, instance, draft)

    action = request.POST.get("action", "next") if request.method == "POST" else None
    if request.method == "POST" and "add_server" in request.POST:
        action = "add_server"
    data = None
    uploaded = request.GET.get("certificate")
    if step == "certificate" and uploaded and request.method == "GET":
        _select_uploaded_certificate(draft, uploaded)
    if request.method == "POST":
        data = request.POST.copy()
        if action == "add_server":
            data = _as_query_dict(add_row(data, prefix="servers"))
        draft.save(step, data)
        if action == "previous":
            previous = draft.neighbour(step, -1) or step
            return redirect("listener-create-step", instance_id=instance.id, step=previous)
    forms = draft.forms_for(step, data)
    status = 200
    if request.method == "POST" and action == "next":
        if draft.step_valid(step, forms):
            following = draft.neighbour(step, +1)
            return redirect("listener-create-step", instance_id=instance.id, step=following)
        status = 422
    if action == "add_server":
        forms["hide_row_errors"] = True
    return _render_step(request, instance, draft, step, forms, status=status)


def _as_query_dict(values: dict) -> QueryDict:
    query = QueryDict(mutable=True)
    for key, value in values.items():
        query.setlist(key, value if isinstance(value, list) else [value])
    return query


def _select_uploaded_certificate(draft: Draft, certificate_id: str) -> None:
    """Back from the upload dialog: select the new certificate in the draft."""
    certificate = Certificate.objects.filter(pk=certificate_id).first()
    if certificate is None:
        return
    data = draft.data("certificate") or QueryDict(mutable=True)
    data = data.copy()
    if certificate.kind == Certificate.Kind.CA:
        data["ca_certificate"] = certificate.id
        data["mutual_authentication"] = "on"
    else:
        data["default_certificate"] = certificate.id
        data.setdefault("tls_policy", "tls_cipher_policy_1_0")
    draft.save("certificate", data)


def _render_step(
    request: HttpRequest,
    instance: Instance,
    draft: Draft,
    step: str,
    step_forms: dict,
    *,
    status: int = 200,
) -> HttpResponse:
    context = {
        "instance": instance,
        "step": step,
        "steps": draft.active_steps(),
        "completed": draft.completed(),
        "protocol": draft.protocol(),
        "title": "Create Listener",
        "breadcrumbs": _crumbs(instance),
        **step_forms,
    }
    if step == "protocol":
        form = step_forms["form"]
        context["applies"] = form.applies(form.protocol_value())
    if step == "servergroup":
        context["existing_rows"] = draft.server_rows_for_existing()
    return render(request, f"listeners/wizard/{step}.html", context, status=status)


def _confirm(request: HttpRequest, instance: Instance, draft: Draft) -> HttpResponse:
    if request.method == "POST":
        token = request.POST.get("token", "")
        created = draft.created_for(token)
        if created:
            # The same Submit again (double click, resend): show what it already created.
            messages.info(request, "This listener was already created.")
            return redirect("listener-detail", instance_id=instance.id, listener_id=created)
        if token != draft.token:
            messages.error(request, "This wizard was restarted elsewhere; check and submit again.")
            return redirect("listener-create-step", instance_id=instance.id, step="confirm")
    forms, invalid_step = draft.validate_all()
    if invalid_step:
        if request.method == "POST" or draft.data(invalid_step) is not None:
            messages.error(request, "Some settings need attention before you can submit.")
        return redirect("listener-create-step", instance_id=instance.id, step=invalid_step)
    # Computed before the listener exists, so it is not counted among the others.
    bandwidth_warning = forms["protocol"]["form"].bandwidth_warning()
    if request.method == "POST":
        try:
            listener = _create_from(instance, forms)
        except services.ListenerConfiguring as refusal:
            # Editing an existing group's health check reconfigures the listeners using it.
            messages.error(request, str(refusal))
            return redirect("listener-create-step", instance_id=instance.id, step="healthcheck")
        except (services.RuleViolation, IntegrityError) as error:
            message = (
                str(error)
                if isinstance(error, services.RuleViolation)
                else ("Another listener took this protocol and port a moment ago.")
            )
            messages.error(request, message)
            return redirect("listener-create-step", instance_id=instance.id, step="protocol")
        draft.finish(listener.id)
        messages.success(request, f"Listener {listener.name} ({listener.id}) created.")
        if bandwidth_warning:
            messages.warning(request, bandwidth_warning)
        return redirect(listener.get_absolute_url())
    return render(
        request,
        "listeners/wizard/confirm.html",
        {
            "instance": instance,
            "step": "confirm",
            "steps": draft.active_steps(),
            "completed": draft.completed(),
            "protocol": draft.protocol(),
            "summary": summary(forms),
            "bandwidth_warning": bandwidth_warning,
            "token": draft.token,
            "title": "Create Listener",
            "breadcrumbs": _crumbs(instance),
        },
    )


def _create_from(instance: Instance, forms: dict) -> Listener:
    listener_form = forms["protocol"]["form"]
    group_form = forms["servergroup"]["form"]
    existing_group, new_group = None, None
    if group_form.cleaned_data["group_mode"] == "existing":
        existing_group = group_form.cleaned_data["server_group"]
    else:
        formset = forms["servergroup"]["formset"]
        new_group = {
            "name": group_form.cleaned_data["new_group_name"],
            "backend_protocol": group_form.cleaned_data["new_backend_protocol"],
            "slow_start": bool(group_form.cleaned_data["new_slow_start"]),
            "slow_start_duration": group_form.cleaned_data["new_slow_start_duration"] or 30,
            "servers": [row for row in formset.cleaned_data if row and not row.get("DELETE")],
        }
    certificates = None
    if "certificate" in forms:
        certificates = forms["certificate"]["form"].certificate_values()
    cleaned = listener_form.cleaned_data
    return services.create_listener_with_group(
        instance,
        server_group=existing_group,
        new_server_group=new_group,
        health_check=forms["healthcheck"]["form"].cleaned_data,
        protocol=cleaned["protocol"],
        port=cleaned["port"],
        name=cleaned["name"],
        settings=listener_form.settings_values(),
        certificates=certificates,
        enabled=cleaned["auto_enable"],
    )


@require_GET
def protocol_options(request: HttpRequest, instance_id: str) -> HttpResponse:
    """htmx: re-render step 1's fields for the chosen protocol, keeping what was typed."""
    instance = get_object_or_404(Instance, pk=instance_id)
    data = request.GET
    protocol = data.get("protocol", "http")
    initial: dict[str, object] = {}
    # Checkboxes the previous protocol showed; one it did not (Enable HTTP/2 when switching from
    # HTTP to HTTPS) starts at its default rather than unticked.
    offered = set(data.getlist("offered"))
    for name, field in ProtocolListenerForm.base_fields.items():
        if isinstance(field, BooleanField):
            initial[name] = name in data if field.initial is not True or name in offered else True
        elif name in data:
            initial[name] = data[name]
    for name in data:
        if name.startswith("header_"):
            initial[name] = True
    # Typing 80 or 443 is suggested by the protocol unless the operator chose another port.
    if str(initial.get("port", "")) in {"", *map(str, SUGGESTED_PORT.values())}:
        initial["port"] = SUGGESTED_PORT.get(protocol, 80)
    form = ProtocolListenerForm(initial=initial, instance=instance)
    return render(
        request,
        "listeners/wizard/_protocol_fields.html",
        {"form": form, "instance": instance, "applies": form.applies(form.protocol_value())},
    )


@require_http_methods(["GET", "POST"])
def quick_create(request: HttpRequest, instance_id: str) -> HttpResponse:
    instance = get_object_or_404(Instance, pk=instance_id)
    form = QuickCreateForm(request.POST or None, instance=instance)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        certificates = None
        if data["default_certificate"]:
            certificates = {
                "default_certificate": data["default_certificate"],
                "tls_policy": data["tls_policy"],
            }
        defaults = ProtocolListenerForm.base_fields
        settings = {
            name: field.initial
            for name, field in defaults.items()
            if name in ("idle_timeout", "request_timeout", "x_forwarded_for", "acl_mode")
        }
        try:
            listener = services.create_listener(
                instance,
                protocol=data["protocol"],
                port=data["port"],
                name=default_listener_name(data["protocol"], data["port"]),
                settings=settings,
                server_group=data["server_group"],
                certificates=certificates,
            )
        except (services.RuleViolation, IntegrityError) as error:
            form.add_error(
                "port",
                str(error)
                if isinstance(error, services.RuleViolation)
                else "Another listener took this protocol and port a moment ago.",
            )
        else:
            messages.success(request, f"Listener {listener.name} ({listener.id}) created.")
            warning = no_share_warning(
                instance,
                listener=listener,
                limit=None,
                name=f"{listener.name} ({listener.protocol.upper()}:{listener.port})",
            )
            if warning:
                messages.warning(request, warning)
            return redirect_after_change(request, listener.get_absolute_url())
    return render_dialog(
        request,
        "listeners/_quick_create.html",
        {
            "form": form,
            "instance": instance,
            "title": "Quick Create Listener",
            "breadcrumbs": _crumbs(instance),
            "action": reverse("listener-quick-create", args=[instance.id]),
        },
        status=422 if form.errors else 200,
    )


@require_GET
def server_group_preview(request: HttpRequest) -> HttpResponse:
    """htmx: the servers of the group chosen in the Server Group step."""
    group = ServerGroup.objects.filter(pk=request.GET.get("server_group", "")).first()
    return render(
        request,
        "listeners/wizard/_group_servers.html",
        {"existing_rows": server_rows(group) if group else []},
    )
