"""Expiry alerts: certificates expiring within 30 and 7 days, CRLs whose next update is within 7
days or past, the banner, and the webhook.

The webhook is one URL for the whole console (CERTIFICATE_WEBHOOK_URL), not one per instance:
certificates are shared by every instance, so an expiry belongs to no single instance, and the
team that renews certificates is the same whichever load balancer serves them. It is deployment
configuration, like the broker's URL, so it is set in the environment rather than in a form.

Each event is a `CertificateAlert` row before it is sent, so a delivery that fails is retried a
bounded number of times with backoff (certificates/tasks.py) and the outcome stays visible.
Expiry warnings are sent once per certificate, threshold and expiry date, and once per CRL and
next update: a CRL past its next update makes the node refuse every client certificate it covers,
so it is as urgent as an expiring certificate.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone

from certificates.acme_models import AcmeAttempt, AcmeIssuance, CertificateAlert
from certificates.models import Certificate, CertificateRevocationList
from certificates.revocation import crl_alert_payload, expiring_crls

log = logging.getLogger(__name__)

THRESHOLDS = (7, 30)
WEBHOOK_TIMEOUT = 10


def expiry_level(certificate: Certificate) -> int | None:
    """0 when expired, 7 or 30 when it expires within that many days, else None."""
    left = certificate.not_after - timezone.now()
    if left <= timedelta(0):
        return 0
    for days in THRESHOLDS:
        if left <= timedelta(days=days):
            return days
    return None


def expiring(days: int = 30):
    return Certificate.objects.filter(not_after__lte=timezone.now() + timedelta(days=days))


def banner(request: HttpRequest) -> dict[str, object]:
    """Context processor: the certificates an operator must act on, for the page banner."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    soon = list(expiring(30).order_by("not_after").only("id", "name", "not_after")[:6])
    failing = list(
        AcmeIssuance.objects.filter(consecutive_failures__gt=0, certificate__isnull=False)
        .select_related("certificate")
        .order_by("certificate__not_after")[:6]
    )
    listener = _listener_certificates(request)
    crls = list(expiring_crls()[:6])
    if not soon and not failing and not listener and not crls:
        return {}
    now = timezone.now()
    return {
        "certificate_alerts": {
            "expired": [c for c in soon if c.not_after <= now],
            "week": [c for c in soon if now < c.not_after <= now + timedelta(days=7)],
            "month": [c for c in soon if c.not_after > now + timedelta(days=7)],
            "failing": failing,
            "listener": listener,
            "crl_expired": [crl for crl in crls if crl.next_update <= now],
            "crl_soon": [crl for crl in crls if crl.next_update > now],
        }
    }


def _listener_certificates(request: HttpRequest) -> list[tuple[Certificate, int]]:
    """On a listener's pages: its own certificates that expire within 30 days, with the level,
    so the flag is on the listener that will fail, not only in the inventory."""
    match = getattr(request, "resolver_match", None)
    listener_id = match.kwargs.get("listener_id") if match is not None else None
    if not listener_id:
        return []
    from listeners.models import Listener

    certificates = (
        expiring(30)
        .filter(
            Q(default_for_listeners__pk=listener_id)
            | Q(additional_for_listeners__pk=listener_id)
            | Q(ca_for_listeners__pk=listener_id)
        )
        .distinct()
        .order_by("not_after")
    )
    if not Listener.objects.filter(pk=listener_id).exists():
        return []
    return [(c, expiry_level(c)) for c in certificates]


# -- events --------------------------------------------------------------------------------------


def _certificate_payload(certificate: Certificate) -> dict[str, object]:
    return {
        "id": certificate.id,
        "name": certificate.name,
        "domains": list(certificate.sans) or [certificate.common_name],
        "not_after": certificate.not_after.isoformat(),
        "listeners": [
            {"id": listener.id, "name": listener.name, "instance": listener.instance_id}
            for listener in certificate.listeners_using()
        ],
    }


def _queue(alert: CertificateAlert) -> None:
    from certificates.tasks import deliver_alert

    if not settings.CERTIFICATE_WEBHOOK_URL:
        CertificateAlert.objects.filter(pk=alert.pk).update(
            delivery=CertificateAlert.Delivery.NOT_CONFIGURED
        )
        return
    transaction.on_commit(
        lambda: deliver_alert.apply_async(kwargs={"alert_id": alert.pk}), robust=True
    )


def renewal_failed(issuance: AcmeIssuance, attempt: AcmeAttempt) -> CertificateAlert | None:
    """Called in the transaction that records the failed attempt."""
    certificate = issuance.certificate
    if certificate is None:
        return None
    alert = CertificateAlert.objects.create(
        event=CertificateAlert.Event.RENEWAL_FAILED,
        certificate=certificate,
        payload={
            "event": CertificateAlert.Event.RENEWAL_FAILED.value,
            "certificate": _certificate_payload(certificate),
            "attempt": {
                "id": attempt.pk,
                "message": attempt.message,
                "consecutive_failures": issuance.consecutive_failures,
                "next_retry": issuance.retry_at.isoformat() if issuance.retry_at else None,
            },
            "at": timezone.now().isoformat(),
        },
    )
    _queue(alert)
    return alert


def queue_expiry_warnings() -> list[int]:
    """One event per certificate entering the 30-day and the 7-day window, and one per CRL
    whose next update is within 7 days or past (beat)."""
    created = []
    for certificate in expiring(30):
        level = expiry_level(certificate)
        if level is None:
            continue
        key = f"{certificate.id}:{level}:{certificate.not_after.isoformat()}"
        with transaction.atomic():
            alert, new = CertificateAlert.objects.get_or_create(
                dedupe_key=key,
                defaults={
                    "event": CertificateAlert.Event.EXPIRES_SOON,
                    "certificate": certificate,
                    "payload": {
                        "event": CertificateAlert.Event.EXPIRES_SOON.value,
                        "within_days": level,
                        "expired": level == 0,
                        "certificate": _certificate_payload(certificate),
                        "at": timezone.now().isoformat(),
                    },
                },
            )
            if new:
                _queue(alert)
                created.append(alert.pk)
    for crl in expiring_crls():
        alert = _crl_warning(crl)
        if alert is not None:
            created.append(alert.pk)
    return created


def _crl_warning(crl: CertificateRevocationList) -> CertificateAlert | None:
    """The CRL's event for its current next update, unless already made."""
    with transaction.atomic():
        alert, new = CertificateAlert.objects.get_or_create(
            dedupe_key=f"crl:{crl.pk}:{crl.next_update.isoformat()}",
            defaults={
                "event": CertificateAlert.Event.CRL_EXPIRES_SOON,
                "certificate": crl.ca_certificate,
                "payload": {
                    "event": CertificateAlert.Event.CRL_EXPIRES_SOON.value,
                    **crl_alert_payload(crl),
                    "at": timezone.now().isoformat(),
                },
            },
        )
        if not new:
            return None
        _queue(alert)
        return alert


class DeliveryFailed(Exception):
    pass


def deliver(alert_id: int) -> str:
    """POST the event as JSON; raises DeliveryFailed when the receiver did not take it."""
    alert = CertificateAlert.objects.filter(pk=alert_id).first()
    if alert is None or alert.delivery == CertificateAlert.Delivery.DELIVERED:
        return "nothing to deliver"
    url = settings.CERTIFICATE_WEBHOOK_URL
    if not url:
        alert.delivery = CertificateAlert.Delivery.NOT_CONFIGURED
        alert.save(update_fields=["delivery"])
        return "no webhook configured"
    CertificateAlert.objects.filter(pk=alert_id).update(
        delivery_attempts=alert.delivery_attempts + 1
    )
    request = urllib.request.Request(
        url,
        data=json.dumps(alert.payload).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "ferry-lb"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as response:
            status = response.status
    except (urllib.error.URLError, OSError, ValueError) as error:
        problem = str(getattr(error, "reason", error))
        CertificateAlert.objects.filter(pk=alert_id).update(last_error=problem[:500])
        raise DeliveryFailed(problem) from error
    CertificateAlert.objects.filter(pk=alert_id).update(
        delivery=CertificateAlert.Delivery.DELIVERED, delivered_at=timezone.now(), last_error=""
    )
    return f"delivered ({status})"


def give_up(alert_id: int) -> None:
    CertificateAlert.objects.filter(pk=alert_id).update(delivery=CertificateAlert.Delivery.FAILED)
