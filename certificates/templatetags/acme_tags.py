"""Template helpers for certificate expiry flags and ACME orders in progress."""

from __future__ import annotations

from django import template

from certificates import alerts
from certificates.acme_models import AcmeIssuance

register = template.Library()


@register.filter
def expiry_level(certificate) -> int | None:
    """0 (expired), 7, 30, or None: see certificates.alerts.expiry_level."""
    return alerts.expiry_level(certificate)


@register.simple_tag
def pending_acme_issuances() -> list[AcmeIssuance]:
    """ACME certificates not issued yet (first order queued, running or failed)."""
    return list(
        AcmeIssuance.objects.filter(certificate__isnull=True)
        .select_related("instance")
        .order_by("-created_at")[:50]
    )


@register.simple_tag(takes_context=True)
def wizard_acme_issuance(context: template.Context) -> AcmeIssuance | None:
    """The ACME order the wizard's SSL Certificate step just requested (its `?acme=` query), so
    the step can follow it until the certificate can be selected."""
    request = context.get("request")
    issuance_id = request.GET.get("acme", "") if request is not None else ""
    if not issuance_id:
        return None
    return AcmeIssuance.objects.filter(pk=issuance_id[:16]).select_related("certificate").first()
