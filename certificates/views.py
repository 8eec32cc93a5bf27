"""Certificate pages: list, upload, details, replace and delete."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from certificates import revocation
from certificates.forms import CrlUploadForm, form_class_for
from certificates.models import Certificate, CertificateRevocationList
from console.htmx import redirect_after_change, render_dialog
from listeners import services

CRUMBS = [("Certificates", "certificate-list")]
SECRET_FIELDS = ("private_key", "passphrase")


def _with_usage(queryset):
    # A GROUP BY query leaves Meta.ordering out, so the list's order is restated here.
    return queryset.annotate(
        usage=Count("default_for_listeners", distinct=True)
        + Count("additional_for_listeners", distinct=True)
        + Count("ca_for_listeners", distinct=True)
    ).order_by(*Certificate._meta.ordering, "id")


def certificate_list(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "").strip()
    kind = request.GET.get("kind", "")
    # A CA's revocation lists are flagged on its row: read them with the list, not per row.
    certificates = _with_usage(Certificate.objects.prefetch_related("revocation_lists"))
    if kind in Certificate.Kind.values:
        certificates = certificates.filter(kind=kind)
    if query:
        certificates = certificates.filter(
            Q(name__icontains=query)
            | Q(id__icontains=query)
            | Q(primary_domain__icontains=query)
            | Q(issuer__icontains=query)
        )
    return render(
        request,
        "certificates/certificate_list.html",
        {"certificates": certificates, "q": query, "kind": kind, "kinds": Certificate.Kind},
    )


def _kind_or_404(kind: str) -> str:
    if kind not in Certificate.Kind.values:
        raise Http404("Unknown certificate type")
    return kind


@sensitive_post_parameters(*SECRET_FIELDS)
@require_http_methods(["GET", "POST"])
def certificate_upload(request: HttpRequest, kind: str) -> HttpResponse:
    kind = _kind_or_404(kind)
    form = form_class_for(kind)(request.POST or None, request.FILES or None)
    # The listener wizard opens this dialog and wants to come back with the new certificate
    # selected, without losing its draft.
    next_url = request.GET.get("next", "")
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        next_url = ""
    if request.method == "POST" and form.is_valid():
        certificate = services.upload_certificate(
            name=form.cleaned_data["name"], kind=kind, validated=form.validated
        )
        messages.success(request, f"Certificate {certificate.name} ({certificate.id}) uploaded.")
        if next_url:
            return redirect_after_change(
                request, f"{next_url}?{urlencode({'certificate': certificate.id})}"
            )
        return redirect_after_change(request, certificate.get_absolute_url())
    label = Certificate.Kind(kind).label
    action = reverse("certificate-upload", args=[kind])
    if next_url:
        action += "?" + urlencode({"next": next_url})
    return render_dialog(
        request,
        "certificates/_certificate_form.html",
        {
            "form": form,
            "kind": kind,
            "title": f"Upload {label}",
            "action": action,
            "breadcrumbs": CRUMBS,
        },
        status=422 if form.errors else 200,
    )


def certificate_detail(request: HttpRequest, certificate_id: str) -> HttpResponse:
    certificate = get_object_or_404(Certificate, pk=certificate_id)
    return render(
        request,
        "certificates/certificate_detail.html",
        {
            "certificate": certificate,
            "listeners": certificate.listeners_using().select_related("instance"),
            "title": certificate.name,
            "breadcrumbs": CRUMBS,
            **_revocation_context(certificate),
        },
    )


@sensitive_post_parameters(*SECRET_FIELDS)
@require_http_methods(["GET", "POST"])
def certificate_replace(request: HttpRequest, certificate_id: str) -> HttpResponse:
    certificate = get_object_or_404(Certificate, pk=certificate_id)
    form = form_class_for(certificate.kind)(
        request.POST or None, request.FILES or None, require_name=False
    )
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            certificate = services.replace_certificate(
                certificate_id=certificate.pk, validated=form.validated
            )
        except services.RuleViolation as problem:
            form.add_error(None, str(problem))
            status = 409 if isinstance(problem, services.ListenerConfiguring) else 422
        else:
            messages.success(request, f"Certificate {certificate.name} replaced.")
            return redirect_after_change(request, certificate.get_absolute_url())
    return render_dialog(
        request,
        "certificates/_certificate_form.html",
        {
            "form": form,
            "kind": certificate.kind,
            "certificate": certificate,
            "title": f"Replace {certificate.name}",
            "action": reverse("certificate-replace", args=[certificate.id]),
            "breadcrumbs": CRUMBS,
        },
        status=422 if form.errors and status == 200 else status,
    )


@require_http_methods(["GET", "POST"])
def certificate_delete(request: HttpRequest, certificate_id: str) -> HttpResponse:
    certificate = get_object_or_404(Certificate, pk=certificate_id)
    blockers = list(
        services.listeners_using_certificate(certificate).select_related("instance")[:50]
    )
    if request.method == "POST" and not blockers:
        try:
            services.delete_certificate(certificate_id=certificate.pk)
        except services.InUse as in_use:
            blockers = in_use.blockers
            if not blockers:
                messages.error(request, str(in_use))
        else:
            messages.success(request, f"Certificate {certificate.name} ({certificate.id}) deleted.")
            return redirect_after_change(request, reverse("certificate-list"))
    return render_dialog(
        request,
        "certificates/_certificate_delete.html",
        {
            "certificate": certificate,
            "blockers": blockers,
            "title": "Delete Certificate",
            "breadcrumbs": CRUMBS,
        },
        status=409 if request.method == "POST" else 200,
    )


# -- revocation lists of a CA certificate ------------------------------------------------------


def _revocation_context(certificate: Certificate) -> dict:
    if certificate.is_server:
        return {}
    crls = list(certificate.revocation_lists.all())
    for crl in crls:
        # The CA certificate may have been replaced by one with another key or name since.
        crl.signature_problem = revocation.signature_problem(crl, certificate.certificate_pem)
    return {
        "revocation_lists": crls,
        "crl_check": revocation.crl_check(certificate.subject, crls) if crls else "",
    }


@require_http_methods(["GET", "POST"])
def crl_upload(request: HttpRequest, certificate_id: str) -> HttpResponse:
    certificate = get_object_or_404(Certificate, pk=certificate_id, kind=Certificate.Kind.CA)
    form = CrlUploadForm(request.POST or None, request.FILES or None, ca_certificate=certificate)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            crl = revocation.upload_crl(
                certificate_id=certificate.pk,
                validated=form.validated,
                url=form.cleaned_data["url"],
            )
        except services.RuleViolation as problem:
            form.add_error(problem.field if problem.field in form.fields else None, str(problem))
            status = 409 if isinstance(problem, services.ListenerConfiguring) else 422
        else:
            messages.success(
                request,
                f"Revocation list of {crl.issuer} saved on {certificate.name}; listeners that "
                "verify clients with it get it on their next configuration push.",
            )
            return redirect_after_change(request, certificate.get_absolute_url())
    return render_dialog(
        request,
        "certificates/_crl_upload.html",
        {
            "form": form,
            "certificate": certificate,
            "title": "Upload Revocation List",
            "breadcrumbs": CRUMBS,
        },
        status=422 if form.errors and status == 200 else status,
    )


@require_http_methods(["GET", "POST"])
def crl_delete(request: HttpRequest, certificate_id: str, crl_id: int) -> HttpResponse:
    certificate = get_object_or_404(Certificate, pk=certificate_id, kind=Certificate.Kind.CA)
    crl = get_object_or_404(CertificateRevocationList, pk=crl_id, ca_certificate=certificate)
    problem = ""
    status = 200
    if request.method == "POST":
        try:
            revocation.delete_crl(certificate_id=certificate.pk, crl_id=crl.pk)
        except services.RuleViolation as refused:
            problem = str(refused)
            status = 409
        else:
            messages.success(request, f"Revocation list of {crl.issuer} removed.")
            return redirect_after_change(request, certificate.get_absolute_url())
    return render_dialog(
        request,
        "certificates/_crl_delete.html",
        {
            "certificate": certificate,
            "crl": crl,
            "problem": problem,
            "title": "Remove Revocation List",
            "breadcrumbs": CRUMBS,
        },
        status=status,
    )
