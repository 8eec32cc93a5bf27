"""The Listener tab, the listener details page and its lifecycle actions (seed 003)."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import messages
from django.forms import Form
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from console import pipeline
from console.htmx import redirect_after_change, render_dialog
from console.metrics import listener_metrics
from console.models import Instance
from listeners import rules, services
from listeners.errorpages import error_page_rows
from listeners.forms.lifecycle import ChangeServerGroupForm, ManageCertificatesForm, TlsPolicyForm
from listeners.forms.listener import HealthCheckForm, ListenerSettingsForm
from listeners.forms.rules import ForwardingRuleForm
from listeners.models import ForwardingRule, Listener


def _listener(instance_id: str, listener_id: str) -> Listener:
    return get_object_or_404(
        Listener.objects.select_related(
            "instance", "server_group", "default_certificate", "tls_policy", "ca_certificate", "acl"
        ),
        pk=listener_id,
        instance_id=instance_id,
    )


def _crumbs(instance: Instance | None = None) -> list[tuple[str, str]]:
    crumbs = [("Instances", "instance-list")]
    if instance is not None:
        crumbs.append((instance.name, reverse("instance-listeners", args=[instance.pk])))
    return crumbs


def _tag_filter(listeners, tag: str):
    key, _, value = tag.partition("=")
    matching = []
    for listener in listeners:
        for item in listener.tags:
            if item["key"] == key and (not value or item["value"] == value):
                matching.append(listener)
                break
    return matching


@require_GET
def listener_tab(request: HttpRequest, instance_id: str) -> HttpResponse:
    instance = get_object_or_404(Instance, pk=instance_id)
    listeners = list(instance.listeners.select_related("server_group", "default_certificate").all())
    tag = request.GET.get("tag", "").strip()
    if tag:
        listeners = _tag_filter(listeners, tag)
    all_tags = sorted(
        {f"{t['key']}={t['value']}" for listener in instance.listeners.all() for t in listener.tags}
    )
    return render(
        request,
        "listeners/listener_tab.html",
        {
            "instance": instance,
            "listeners": listeners,
            "tag": tag,
            "all_tags": all_tags,
            "configuring": any(listener.is_configuring for listener in listeners),
            "title": instance.name,
            "breadcrumbs": _crumbs(),
        },
    )


@require_GET
def listener_detail(request: HttpRequest, instance_id: str, listener_id: str) -> HttpResponse:
    listener = _listener(instance_id, listener_id)
    group = listener.server_group
    nodes = list(listener.instance.nodes.all())
    return render(
        request,
        "listeners/listener_detail.html",
        {
            "listener": listener,
            "instance": listener.instance,
            "group": group,
            "servers": group.servers.all(),
            "health_check": getattr(group, "health_check", None),
            "additional": listener.additional_certificates.all(),
            "rules": listener.rules.select_related("server_group"),
            "error_pages": error_page_rows(listener),
            "metrics": listener_metrics(listener.id, nodes),
            "attempts": pipeline.recent_attempts(listener.instance, limit=10),
            "title": listener.name,
            "breadcrumbs": _crumbs(listener.instance),
        },
    )


@require_GET
def listener_status(request: HttpRequest, instance_id: str, listener_id: str) -> HttpResponse:
    """htmx polling target: the badge with its next poll, fast while Configuring, slow after."""
    listener = _listener(instance_id, listener_id)
    return render(request, "listeners/_status_poll.html", {"listener": listener})


def _refused(request: HttpRequest, listener: Listener, action: str) -> HttpResponse | None:
    """Shown before a form is filled in for nothing; the service enforces the refusal again under
    the listener's row lock when the change is saved (``services.ListenerConfiguring``)."""
    problem = rules.configuring_refusal(listener, action)
    if problem is None:
        return None
    return _refusal(request, listener, problem)


def _refusal(request: HttpRequest, listener: Listener, problem: str) -> HttpResponse:
    if request.htmx:
        return render_dialog(
            request,
            "listeners/_refusal.html",
            {"listener": listener, "problem": problem, "title": "Not possible now"},
            status=409,
        )
    messages.error(request, problem)
    return redirect_after_change(request, listener.get_absolute_url())


def _dialog(request, listener, partial, title, form, *, status=200, **extra) -> HttpResponse:
    return render_dialog(
        request,
        partial,
        {
            "listener": listener,
            "form": form,
            "title": title,
            "breadcrumbs": _crumbs(listener.instance),
            **extra,
        },
        status=status,
    )


@require_http_methods(["GET", "POST"])
def listener_modify(request: HttpRequest, instance_id: str, listener_id: str) -> HttpResponse:
    listener = _listener(instance_id, listener_id)
    refused = _refused(request, listener, "modifying it")
    if refused:
        return refused
    form = ListenerSettingsForm(
        request.POST or None,
        instance=listener.instance,
        protocol=listener.protocol,
        listener=listener,
        initial=ListenerSettingsForm.initial_from(listener),
    )
    if request.method == "POST" and form.is_valid():
        try:
            listener = services.modify_listener(
                listener_id=listener.pk,
                name=form.cleaned_data["name"],
                settings=form.settings_values(),
            )
        except services.ListenerConfiguring as refusal:
            return _refusal(request, listener, str(refusal))
        except services.RuleViolation as problem:
            form.add_error(problem.field, str(problem))
        else:
            messages.success(request, f"Listener {listener.name} modified.")
            warning = form.bandwidth_warning()
            if warning:
                messages.warning(request, warning)
            return redirect_after_change(request, listener.get_absolute_url())
    return _dialog(
        request,
        listener,
        "listeners/_modify.html",
        "Modify Listener",
        form,
        status=422 if form.errors else 200,
        applies=form.applies(listener.protocol),
    )


def _set_state(
    request: HttpRequest, instance_id: str, listener_id: str, state: str
) -> HttpResponse:
    listener = _listener(instance_id, listener_id)
    verb = "starting" if state == Listener.DesiredState.RUNNING else "stopping"
    refused = _refused(request, listener, f"{verb} it")
    if refused:
        return refused
    if request.method == "POST":
        try:
            listener = services.set_desired_state(listener_id=listener.pk, desired_state=state)
        except services.RuleViolation as refusal:
            return _refusal(request, listener, str(refusal))
        label = "started" if state == Listener.DesiredState.RUNNING else "stopped"
        messages.success(request, f"Listener {listener.name} is being {label}.")
        return redirect_after_change(request, listener.get_absolute_url())
    return _dialog(
        request,
        listener,
        "listeners/_start_stop.html",
        "Start Listener" if state == Listener.DesiredState.RUNNING else "Stop Listener",
        None,
        state=state,
    )


@require_http_methods(["GET", "POST"])
def listener_start(request: HttpRequest, instance_id: str, listener_id: str) -> HttpResponse:
    return _set_state(request, instance_id, listener_id, Listener.DesiredState.RUNNING)


@require_http_methods(["GET", "POST"])
def listener_stop(request: HttpRequest, instance_id: str, listener_id: str) -> HttpResponse:
    return _set_state(request, instance_id, listener_id, Listener.DesiredState.STOPPED)


@require_http_methods(["GET", "POST"])
def listener_delete(request: HttpRequest, instance_id: str, listener_id: str) -> HttpResponse:
    listener = _listener(instance_id, listener_id)
    refused = _refused(request, listener, "deleting it")
    if refused:
        return refused
    if request.method == "POST":
        instance = listener.instance
        try:
            services.delete_listener(listener_id=listener.pk)
        except services.RuleViolation as refusal:
            return _refusal(request, listener, str(refusal))
        messages.success(request, f"Listener {listener.name} ({listener_id}) deleted.")
        return redirect_after_change(request, _tab_url(instance))
    return _dialog(request, listener, "listeners/_delete.html", "Delete Listener", None)


def _tab_url(instance: Instance) -> str:
    return reverse("instance-listeners", args=[instance.pk])


def _settings_dialog(
    request: HttpRequest,
    instance_id: str,
    listener_id: str,
    *,
    doing: str,
    title: str,
    url_name: str,
    make_form: Callable[[Listener, QueryDict | None], Form],
    apply: Callable[[Listener, dict], str],
    note: str = "",
    form_class: str = "",
) -> HttpResponse:
    """One of the details page's dialogs: refused while Configuring, else form and apply.

    ``apply`` calls the use case's service function with the cleaned data and returns the
    success message; ``form_class`` is the <form>'s class (console.css keys rules on it).
    """
    listener = _listener(instance_id, listener_id)
    refused = _refused(request, listener, doing)
    if refused:
        return refused
    form = make_form(listener, request.POST.copy() if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            message = apply(listener, form.cleaned_data)
        except services.ListenerConfiguring as refusal:
            return _refusal(request, refusal.listener, str(refusal))
        except services.RuleViolation as problem:
            form.add_error(problem.field if problem.field in form.fields else None, str(problem))
        else:
            messages.success(request, message)
            return redirect_after_change(request, listener.get_absolute_url())
    return _dialog(
        request,
        listener,
        "listeners/_simple_form.html",
        title,
        form,
        status=422 if form.errors else 200,
        action_name=url_name,
        note=note,
        form_class=form_class,
    )


@require_http_methods(["GET", "POST"])
def listener_server_group(request: HttpRequest, instance_id: str, listener_id: str) -> HttpResponse:
    def apply(listener: Listener, data: dict) -> str:
        listener = services.change_server_group(
            listener_id=listener.pk, server_group=data["server_group"]
        )
        return f"Listener {listener.name} now uses {listener.server_group}."

    return _settings_dialog(
        request,
        instance_id,
        listener_id,
        doing="changing its server group",
        title="Change Server Group",
        url_name="listener-server-group",
        make_form=lambda listener, data: ChangeServerGroupForm(data, listener=listener),
        apply=apply,
    )


def _certificates_form(listener: Listener, data: QueryDict | None) -> ManageCertificatesForm:
    if data is not None:
        # The TLS policy has its own dialog; the form checks the certificates against it.
        data["tls_policy"] = listener.tls_policy_id or "tls_cipher_policy_1_0"
    initial = {
        "default_certificate": listener.default_certificate_id,
        "additional_certificates": list(listener.additional_certificates.all()),
        "mutual_authentication": listener.mutual_authentication,
        "ca_certificate": listener.ca_certificate_id,
        "tls_policy": listener.tls_policy_id,
    }
    return ManageCertificatesForm(data, listener=listener, initial=initial)


@require_http_methods(["GET", "POST"])
def listener_certificates(request: HttpRequest, instance_id: str, listener_id: str) -> HttpResponse:
    def apply(listener: Listener, data: dict) -> str:
        services.update_listener_certificates(
            listener_id=listener.pk,
            default_certificate=data["default_certificate"],
            additional_certificates=data.get("additional_certificates") or [],
            mutual_authentication=bool(data.get("mutual_authentication")),
            ca_certificate=data.get("ca_certificate"),
        )
        return f"Certificates of {listener.name} updated."

    return _settings_dialog(
        request,
        instance_id,
        listener_id,
        doing="changing its certificates",
        title="Manage Certificates",
        url_name="listener-certificates",
        make_form=_certificates_form,
        apply=apply,
    )


@require_http_methods(["GET", "POST"])
def listener_tls_policy(request: HttpRequest, instance_id: str, listener_id: str) -> HttpResponse:
    def apply(listener: Listener, data: dict) -> str:
        services.change_tls_policy(listener_id=listener.pk, tls_policy=data["tls_policy"])
        return f"TLS security policy of {listener.name} changed."

    return _settings_dialog(
        request,
        instance_id,
        listener_id,
        doing="changing its TLS policy",
        title="Modify TLS Security Policy",
        url_name="listener-tls-policy",
        make_form=lambda listener, data: TlsPolicyForm(data, listener=listener),
        apply=apply,
    )


@require_http_methods(["GET", "POST"])
def listener_health_check(request: HttpRequest, instance_id: str, listener_id: str) -> HttpResponse:
    def apply(listener: Listener, data: dict) -> str:
        services.update_health_check(group=listener.server_group, values=data)
        return f"Health check of {listener.server_group.name} modified."

    group = get_object_or_404(Listener, pk=listener_id, instance_id=instance_id).server_group
    return _settings_dialog(
        request,
        instance_id,
        listener_id,
        doing="modifying its health check",
        title="Modify Health Check",
        url_name="listener-health-check",
        make_form=lambda listener, data: HealthCheckForm(
            data,
            instance=getattr(listener.server_group, "health_check", None),
            backend_protocol=listener.server_group.backend_protocol,
        ),
        apply=apply,
        note=f"The health check belongs to server group {group.name}; listeners sharing the "
        "group share it.",
        # console.css hides Enable Health Check's fields while it is off, on this form only.
        form_class="health-check-form",
    )


def _rule_dialog(
    request: HttpRequest, listener: Listener, rule: ForwardingRule | None
) -> HttpResponse:
    refused = _refused(request, listener, "changing its forwarding rules")
    if refused:
        return refused
    initial = ForwardingRuleForm.initial_from(rule) if rule else {}
    form = ForwardingRuleForm(request.POST or None, listener=listener, initial=initial)
    if request.method == "POST" and form.is_valid():
        # The form turns its fields into rule fields on a scratch rule; the service saves them.
        scratch = ForwardingRule(listener=listener)
        form.apply_to(scratch)
        try:
            saved = services.save_forwarding_rule(
                listener_id=listener.pk,
                rule_id=rule.pk if rule else None,
                values={name: getattr(scratch, name) for name in services.RULE_FIELDS},
            )
        except services.ListenerConfiguring as refusal:
            return _refusal(request, listener, str(refusal))
        except services.RuleViolation as problem:
            form.add_error(None, str(problem))
        else:
            messages.success(request, f"Forwarding rule {saved} saved.")
            return redirect_after_change(request, listener.get_absolute_url())
    action = (
        reverse("listener-rule-edit", args=[listener.instance_id, listener.id, rule.pk])
        if rule
        else reverse("listener-rule-create", args=[listener.instance_id, listener.id])
    )
    return render_dialog(
        request,
        "listeners/_rule_form.html",
        {
            "listener": listener,
            "form": form,
            "action": action,
            "title": "Edit Forwarding Rule" if rule else "Add Forwarding Rule",
            "breadcrumbs": _crumbs(listener.instance),
        },
        status=422 if form.errors else 200,
    )


@require_http_methods(["GET", "POST"])
def rule_create(request: HttpRequest, instance_id: str, listener_id: str) -> HttpResponse:
    return _rule_dialog(request, _http_listener(instance_id, listener_id), None)


@require_http_methods(["GET", "POST"])
def rule_edit(
    request: HttpRequest, instance_id: str, listener_id: str, rule_id: int
) -> HttpResponse:
    listener = _http_listener(instance_id, listener_id)
    return _rule_dialog(request, listener, get_object_or_404(listener.rules, pk=rule_id))


@require_http_methods(["POST"])
def rule_delete(
    request: HttpRequest, instance_id: str, listener_id: str, rule_id: int
) -> HttpResponse:
    listener = _http_listener(instance_id, listener_id)
    refused = _refused(request, listener, "changing its forwarding rules")
    if refused:
        return refused
    get_object_or_404(listener.rules, pk=rule_id)
    try:
        rule = services.delete_forwarding_rule(listener_id=listener.pk, rule_id=rule_id)
    except services.RuleViolation as refusal:
        return _refusal(request, listener, str(refusal))
    messages.success(request, f"Forwarding rule {rule} deleted.")
    return redirect_after_change(request, listener.get_absolute_url())


@require_http_methods(["POST"])
def rule_move(
    request: HttpRequest, instance_id: str, listener_id: str, rule_id: int, direction: str
) -> HttpResponse:
    """Swap a rule with its neighbour: rules are tried in order, the first match wins."""
    listener = _http_listener(instance_id, listener_id)
    refused = _refused(request, listener, "reordering its forwarding rules")
    if refused:
        return refused
    get_object_or_404(listener.rules, pk=rule_id)
    try:
        services.move_forwarding_rule(listener_id=listener.pk, rule_id=rule_id, direction=direction)
    except services.RuleViolation as refusal:
        return _refusal(request, listener, str(refusal))
    return redirect_after_change(request, listener.get_absolute_url())


def _http_listener(instance_id: str, listener_id: str) -> Listener:
    listener = _listener(instance_id, listener_id)
    if listener.protocol not in Listener.LAYER7_PROTOCOLS:
        raise Http404("Forwarding rules exist only on HTTP, HTTPS and QUIC listeners")
    return listener
