"""CRL expiry in the alerts: given CA certificates whose revocation lists are past their next
update, due within 7 days, or due later, the beat's upkeep sends one webhook event per CRL and
next update (a real local receiver records them), every page's banner names the first two, and
the certificate inventory flags their CA certificates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction

from certificates import alerts
from certificates.acme_models import CertificateAlert
from certificates.models import Certificate, CertificateRevocationList
from certificates.revocation import upload_crl, validate_crl
from certificates.tasks import certificate_upkeep
from certificates.validation import validate_ca_certificate
from listeners.services import upload_certificate
from tests.certificates import test_acme_renewal
from tests.certificates.test_crl_pages import mutual_listener
from tests.factories.certs import CaMaterial, make_ca
from tests.factories.crls import crl_der, make_crl

pytestmark = pytest.mark.django_db
NOW = datetime.now(UTC)
# The webhook receiver: a real local HTTP server recording the POSTs.
receiver = test_acme_renewal.receiver


@pytest.fixture(scope="module")
def roots() -> dict[str, CaMaterial]:
    return {name: make_ca(f"Alerts {name} Root CA") for name in ("expired", "soon", "fine")}


def ca_row(root: CaMaterial, name: str) -> Certificate:
    return upload_certificate(
        name=name, kind="ca", validated=validate_ca_certificate(root.cert_pem)
    )


def add_crl(ca: Certificate, root: CaMaterial, next_update: datetime) -> CertificateRevocationList:
    """Through the upload use case when the CRL is current; a CRL past its next update is
    refused there, so that one is stored as an upload a week ago left it."""
    issued = min(NOW - timedelta(hours=1), next_update - timedelta(days=8))
    crl = make_crl(root, this_update=issued, next_update=next_update)
    if next_update > NOW:
        with transaction.atomic():
            return upload_crl(
                certificate_id=ca.pk, validated=validate_crl(crl_der(crl), ca.certificate_pem)
            )
    checked = validate_crl(crl_der(crl), ca.certificate_pem, now=next_update - timedelta(days=7))
    return CertificateRevocationList.objects.create(
        ca_certificate=ca,
        issuer=checked.issuer,
        der=checked.der,
        fingerprint_sha256=checked.fingerprint_sha256,
        crl_number=str(checked.crl_number),
        this_update=checked.this_update,
        next_update=checked.next_update,
        revoked_count=checked.revoked_count,
    )


@pytest.fixture
def crls(roots) -> dict[str, CertificateRevocationList]:
    # The CA's name is operator text: it must reach the banner escaped.
    names = {"expired": "clients <b>old</b>", "soon": "clients-soon", "fine": "clients-fine"}
    due = {
        "expired": NOW - timedelta(hours=2),
        "soon": NOW + timedelta(days=3),
        "fine": NOW + timedelta(days=30),
    }
    return {key: add_crl(ca_row(roots[key], names[key]), roots[key], due[key]) for key in names}


def test_one_event_per_crl_and_next_update(
    crls,
    settings,
    receiver,
    eager_celery,
    instance,
    server_group,
    django_capture_on_commit_callbacks,
):
    url, received, _ = receiver
    settings.CERTIFICATE_WEBHOOK_URL = url
    listener = mutual_listener(instance, server_group, crls["soon"].ca_certificate)

    with django_capture_on_commit_callbacks(execute=True):
        first = certificate_upkeep()
    with django_capture_on_commit_callbacks(execute=True):
        again = certificate_upkeep()

    assert len(first["expiry_warnings"]) == 2 and again["expiry_warnings"] == []
    stored = CertificateAlert.objects.filter(event="crl.expires_soon")
    assert {a.dedupe_key for a in stored} == {
        f"crl:{crls[k].pk}:{crls[k].next_update.isoformat()}" for k in ("expired", "soon")
    }
    assert {a.certificate_id for a in stored} == {
        crls["expired"].ca_certificate_id,
        crls["soon"].ca_certificate_id,
    }
    assert all(a.delivery == CertificateAlert.Delivery.DELIVERED for a in stored)
    events = {event["crl"]["id"]: event for event in received}
    assert set(events) == {crls["expired"].pk, crls["soon"].pk}
    soon = events[crls["soon"].pk]
    assert soon["event"] == "crl.expires_soon"
    assert soon["crl"]["expired"] is False
    assert soon["crl"]["next_update"] == crls["soon"].next_update.isoformat()
    assert soon["ca_certificate"]["name"] == "clients-soon"
    assert soon["listeners"] == [
        {"id": listener.id, "name": listener.name, "instance": instance.id}
    ]
    assert events[crls["expired"].pk]["crl"]["expired"] is True


def test_a_newer_crl_still_due_soon_gets_its_own_event(crls, roots, settings):
    settings.CERTIFICATE_WEBHOOK_URL = ""
    alerts.queue_expiry_warnings()
    ca = crls["soon"].ca_certificate
    newer = make_crl(roots["soon"], next_update=NOW + timedelta(days=5), number=2)
    with transaction.atomic():
        upload_crl(certificate_id=ca.pk, validated=validate_crl(crl_der(newer), ca.certificate_pem))

    created = alerts.queue_expiry_warnings()

    assert len(created) == 1
    alert = CertificateAlert.objects.get(pk=created[0])
    assert (
        alert.payload["crl"]["next_update"]
        == (NOW + timedelta(days=5)).replace(microsecond=0).isoformat()
    )
    # No webhook configured: recorded as such, not silently dropped.
    assert alert.delivery == CertificateAlert.Delivery.NOT_CONFIGURED


def test_the_banner_names_expired_and_expiring_crls(admin_client, viewer_client, crls):
    for client in (admin_client, viewer_client):
        page = client.get("/certificates/").content.decode()
        banner = page[page.index('id="certificate-alerts"') :]
        banner = banner[: banner.index("</div>")]
        expired = banner[banner.index('id="crl-expired"') :]
        assert "clients &lt;b&gt;old&lt;/b&gt;" in expired and "<b>old" not in banner
        assert crls["expired"].ca_certificate.get_absolute_url() in expired
        soon = banner[banner.index('id="crl-expiring"') :]
        assert "clients-soon" in soon
        assert crls["soon"].next_update.strftime("%Y-%m-%d") in soon
        assert "clients-fine" not in banner
    assert 'class="flash flash-error"' in page


def test_no_crl_due_no_banner(admin_client, roots):
    add_crl(ca_row(roots["fine"], "clients-fine"), roots["fine"], NOW + timedelta(days=30))
    page = admin_client.get("/certificates/").content.decode()
    assert 'id="certificate-alerts"' not in page


def test_the_inventory_flags_the_ca_certificates(admin_client, crls):
    page = admin_client.get("/certificates/?kind=ca").content.decode()

    def row(crl: CertificateRevocationList) -> str:
        start = page.index(f'<div class="muted mono resource-id">{crl.ca_certificate_id}</div>')
        return page[start : page.index("</tr>", start)]

    assert 'data-crl-expiry="expired"' in row(crls["expired"])
    assert "CRL expired" in row(crls["expired"])
    assert 'data-crl-expiry="soon"' in row(crls["soon"])
    assert f"CRL due {crls['soon'].next_update:%Y-%m-%d}" in row(crls["soon"])
    assert "data-crl-expiry" not in row(crls["fine"])
