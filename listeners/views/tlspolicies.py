"""TLS Security Policies pages: predefined policies are read-only, custom ones are editable."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from console.htmx import redirect_after_change, render_dialog
from listeners import services
from listeners.forms.tlspolicies import TlsPolicyForm
from listeners.models import TlsPolicy

CRUMBS = [("TLS Security Policies", "tlspolicy-list")]
READ_ONLY = (
    "Predefined TLS security policies are read-only. Copy one into a custom policy to change it."
)


def _read_only(request: HttpRequest, policy: TlsPolicy) -> HttpResponse:
    return render(
        request,
        "403.html",
        {"reason": f"{policy.name}: {READ_ONLY}", "title": policy.name, "breadcrumbs": CRUMBS},
        status=403,
    )


def policy_list(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "").strip()
    kind = request.GET.get("kind", "")
    # Creation order keeps the predefined policies in their documented order (1.0 to strict
    # with 1.3), which a collation-dependent sort by name would not.
    policies = TlsPolicy.objects.annotate(listener_count=Count("listeners")).order_by(
        "-predefined", "created_at", "id"
    )
    if kind == "predefined":
        policies = policies.filter(predefined=True)
    elif kind == "custom":
        policies = policies.filter(predefined=False)
    if query:
        policies = policies.filter(
            Q(name__icontains=query) | Q(id__icontains=query) | Q(description__icontains=query)
        )
    return render(
        request,
        "listeners/tlspolicies/policy_list.html",
        {"policies": policies, "q": query, "kind": kind, "title": "TLS Security Policies"},
    )


def policy_detail(request: HttpRequest, policy_id: str) -> HttpResponse:
    policy = get_object_or_404(TlsPolicy, pk=policy_id)
    return render(
        request,
        "listeners/tlspolicies/policy_detail.html",
        {
            "policy": policy,
            "listeners": policy.listeners.select_related("instance"),
            "title": policy.name,
            "breadcrumbs": CRUMBS,
        },
    )


def _values(form: TlsPolicyForm) -> dict:
    return {name: form.cleaned_data[name] for name in TlsPolicyForm.Meta.fields}


def _show_problem(form: TlsPolicyForm, problem: services.RuleViolation) -> int:
    form.add_error(problem.field if problem.field in form.fields else None, str(problem))
    return 409 if isinstance(problem, services.ListenerConfiguring) else 422


def _form_page(
    request: HttpRequest, form: TlsPolicyForm, *, title: str, action: str, status: int = 200
) -> HttpResponse:
    return render_dialog(
        request,
        "listeners/tlspolicies/_policy_form.html",
        {
            "form": form,
            "policy": form.instance if form.instance.pk else None,
            "title": title,
            "action": action,
            "breadcrumbs": CRUMBS,
        },
        status=status,
    )


@require_http_methods(["GET", "POST"])
def policy_create(request: HttpRequest) -> HttpResponse:
    initial = {}
    source = TlsPolicy.objects.filter(pk=request.GET.get("from", "")).first()
    if source is not None:
        # "Copy to Custom Policy": start from an existing policy's versions and suites.
        initial = {
            "name": f"{source.name}-custom"[:64],
            "min_version": source.min_version,
            "max_version": source.max_version,
            "ciphers": source.ciphers,
            "tls13_ciphersuites": source.tls13_ciphersuites,
        }
    form = TlsPolicyForm(request.POST or None, initial=initial)
    action = reverse("tlspolicy-create")
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            policy = services.create_tls_policy(values=_values(form))
        except services.RuleViolation as problem:
            status = _show_problem(form, problem)
        else:
            messages.success(request, f"TLS security policy {policy.name} ({policy.id}) created.")
            return redirect_after_change(request, policy.get_absolute_url())
    return _form_page(
        request,
        form,
        title="Create Custom TLS Security Policy",
        action=action,
        status=422 if form.errors and status == 200 else status,
    )


@require_http_methods(["GET", "POST"])
def policy_edit(request: HttpRequest, policy_id: str) -> HttpResponse:
    policy = get_object_or_404(TlsPolicy, pk=policy_id)
    if policy.predefined:
        return _read_only(request, policy)
    form = TlsPolicyForm(request.POST or None, instance=policy)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            policy = services.update_tls_policy(policy_id=policy.pk, values=_values(form))
        except services.RuleViolation as problem:
            status = _show_problem(form, problem)
        else:
            messages.success(request, f"TLS security policy {policy.name} saved.")
            return redirect_after_change(request, policy.get_absolute_url())
    return _form_page(
        request,
        form,
        title=f"Edit {policy.name}",
        action=reverse("tlspolicy-edit", args=[policy.id]),
        status=422 if form.errors and status == 200 else status,
    )


@require_http_methods(["GET", "POST"])
def policy_delete(request: HttpRequest, policy_id: str) -> HttpResponse:
    policy = get_object_or_404(TlsPolicy, pk=policy_id)
    if policy.predefined:
        return _read_only(request, policy)
    blockers = list(policy.listeners.select_related("instance")[:50])
    if request.method == "POST" and not blockers:
        try:
            services.delete_tls_policy(policy_id=policy.pk)
        except services.InUse as in_use:
            blockers = in_use.blockers
        else:
            messages.success(request, f"TLS security policy {policy.name} deleted.")
            return redirect_after_change(request, reverse("tlspolicy-list"))
    return render_dialog(
        request,
        "listeners/tlspolicies/_policy_delete.html",
        {
            "policy": policy,
            "blockers": blockers,
            "title": "Delete TLS Security Policy",
            "breadcrumbs": CRUMBS,
        },
        status=409 if request.method == "POST" else 200,
    )
