"""ACME without a CA: the form's checks, the snapshot's challenges, renewal scheduling with backoff,
expiry flags and banner, and webhook events delivered to a real local receiver."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.urls import reverse
from django.utils import timezone

from certificates import acme, alerts, renewal
from certificates.acme_models import (
    AcmeAttempt,
    AcmeChallenge,
    AcmeIssuance,
    CertificateAlert,
)
from certificates.acme_views import clean_domain_names
from certificates.models import Certificate
from certificates.tasks import certificate_upkeep, deliver_alert
from certificates.validation import validate_server_certificate
from console.audit import SECRET_FIELDS
from console.models import AuditRecord
from console.snapshot import build_snapshot
from dataplane.config import Snapshot
from listeners.models import Listener
from tests.factories.certs import make_server_cert
from tests.fixtures.listeners import make_listener
from tests.fixtures.nodes import register_node

KEY_AUTHORIZATION = "tok3nTOKENtok3nTOKENxx." + "B" * 43


def stored_certificate(days_left: float, name: str = "site") -> Certificate:
    now = datetime.now(UTC)
    material = make_server_cert(
        not_before=now - timedelta(days=60), not_after=now + timedelta(days=days_left)
    )
    validated = validate_server_certificate(material.cert_pem, material.key_pem, now=now)
    certificate = Certificate(name=name, kind=Certificate.Kind.SERVER)
    certificate.apply_validated(validated)
    certificate.save()
    return certificate


@pytest.fixture
def issuance(db, instance) -> AcmeIssuance:
    return AcmeIssuance.objects.create(
        name="site",
        domains=["www.example.test"],
        directory_url="https://acme.example.test/dir",
        email="ops@example.org",
        challenge=AcmeIssuance.Challenge.HTTP_01,
        instance=instance,
        certificate=stored_certificate(50),
        renew_at=timezone.now() - timedelta(minutes=1),
    )


# -- the form ------------------------------------------------------------------------------------


def test_domain_names_are_normalized_and_deduplicated():
    assert clean_domain_names("WWW.Example.test.\nshop.example.test, www.example.test") == [
        "www.example.test",
        "shop.example.test",
    ]
    assert clean_domain_names("bücher.example.test") == ["xn--bcher-kva.example.test"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("*.example.test", "wildcard names need the DNS-01 challenge"),
        ("192.0.2.1", "an IP address is not a domain name"),
        ("localhost", "not a fully qualified domain name"),
        ("bad_name.example.test", "not a fully qualified domain name"),
        ("-x.example.test", "not a fully qualified domain name"),
        ("a" * 64 + ".example.test", "not a valid domain name"),
        (" \n ,", "Enter at least one domain name"),
        ("\n".join(f"n{i}.example.test" for i in range(101)), "At most 100 names"),
    ],
)
def test_bad_domain_names_say_which_and_why(text, message):
    from django import forms

    with pytest.raises(forms.ValidationError) as refused:
        clean_domain_names(text)
    assert message in refused.value.messages[0]


def test_issue_form_errors_are_next_to_their_fields(admin_client, instance):
    response = admin_client.post(
        "/certificates/acme/",
        {
            "name": "site",
            "domains": "*.example.test",
            "directory": "custom",
            "directory_url": "http://acme.example.test/dir",
            "email": "ops@example.org",
            "challenge": "tls-alpn-01",
            "instance": instance.pk,
            "key_algorithm": "ec-p256",
        },
    )
    assert response.status_code == 422
    text = response.content.decode()
    for field in ("domains", "directory_url", "challenge", "agree"):
        assert f'id="id_{field}_error"' in text, field
    assert "needs an HTTPS or TCP SSL listener on port 443" in text
    assert not AcmeIssuance.objects.exists()


def test_a_viewer_cannot_issue_or_renew(viewer_client, issuance):
    assert viewer_client.post("/certificates/acme/", {}).status_code == 403
    assert viewer_client.post(f"/certificates/acme/{issuance.pk}/renew/").status_code == 403
    assert not issuance.attempts.exists()


def test_request_issuance_is_audited_and_queued_on_commit(
    instance, server_group, django_capture_on_commit_callbacks
):
    make_listener(instance, server_group, port=80)
    register_node(instance, "http://127.0.0.1:1")
    with django_capture_on_commit_callbacks() as callbacks:
        issuance = renewal.request_issuance(
            name="site",
            domains=["www.example.test"],
            directory_url="https://acme.example.test/dir",
            email="ops@example.org",
            challenge="http-01",
            instance=instance,
            key_algorithm="ec-p256",
        )
    assert [a.state for a in issuance.attempts.all()] == [AcmeAttempt.State.QUEUED]
    assert len(callbacks) == 1
    record = AuditRecord.objects.get(action="certificate.acme_request")
    assert record.object_id == issuance.pk


def test_account_key_is_encrypted_and_redacted(db):
    from certificates.renewal import _save_account

    key = acme.new_account_key()
    account = _save_account("https://acme.example.test/dir", "ops@example.org", key, "https://x/1")
    assert "PRIVATE KEY" not in account.private_key_token
    assert account.private_key_pem() == key
    assert "private_key_token" in SECRET_FIELDS


# -- the snapshot --------------------------------------------------------------------------------


def test_challenges_travel_in_the_snapshot_and_only_where_they_belong(
    instance, server_group, settings
):
    settings.ACME_HTTP01_PORT = 80
    port_80 = make_listener(instance, server_group, port=80)
    make_listener(instance, server_group, port=8080)
    attempt = AcmeIssuance.objects.create(
        name="s", domains=["www.example.test"], directory_url="https://a/dir", email="a@b.test",
        challenge="http-01", instance=instance,
    ).attempts.create(kind="issue")  # fmt: skip
    AcmeChallenge.objects.create(
        attempt=attempt, instance=instance, type="http-01", domain="www.example.test",
        token="tok3nTOKENtok3nTOKENxx", key_authorization=KEY_AUTHORIZATION,
    )  # fmt: skip
    AcmeChallenge.objects.create(
        attempt=attempt, instance=instance, type="tls-alpn-01", domain="www.example.test",
        token="tok3nTOKENtok3nTOKENxx", key_authorization=KEY_AUTHORIZATION,
    )  # fmt: skip

    snapshot = build_snapshot(instance)

    # What the node would accept: the snapshot round-trips through its strict decoder.
    assert Snapshot.from_json(snapshot.to_json()) == snapshot
    by_port = {listener.port: listener for listener in snapshot.listeners}
    rule = by_port[80].forwarding_rules[0]
    assert by_port[80].id == port_80.id
    assert rule.action.type == "fixed_response" and rule.action.body == KEY_AUTHORIZATION
    assert rule.conditions[1].values == ("/.well-known/acme-challenge/tok3nTOKENtok3nTOKENxx",)
    assert by_port[8080].forwarding_rules == ()
    assert [(c.domain, c.key_authorization) for c in snapshot.acme_tls_alpn_challenges] == [
        ("www.example.test", KEY_AUTHORIZATION)
    ]


def test_no_listener_for_the_challenge_is_named(instance, server_group, settings):
    settings.ACME_HTTP01_PORT = 80
    with pytest.raises(renewal.IssuanceRefused, match="HTTP-01 needs an HTTP listener on port 80"):
        renewal.challenge_listener(instance, "http-01")
    make_listener(instance, server_group, port=80, desired_state=Listener.DesiredState.STOPPED)
    with pytest.raises(renewal.IssuanceRefused, match="is stopped"):
        renewal.challenge_listener(instance, "http-01")


# -- renewal scheduling --------------------------------------------------------------------------


def test_due_renewals_are_queued_once(issuance, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        first = renewal.queue_due_renewals()
        second = renewal.queue_due_renewals()
    assert len(first) == 1 and second == []
    assert AcmeAttempt.objects.get(pk=first[0]).kind == AcmeAttempt.Kind.RENEW
    assert len(callbacks) == 1


def test_not_due_is_left_alone(issuance):
    issuance.renew_at = timezone.now() + timedelta(days=1)
    issuance.save()
    assert renewal.queue_due_renewals() == []


def test_failures_back_off_and_are_capped(issuance, settings):
    settings.ACME_RETRY_BASE = 600
    settings.ACME_RETRY_MAX = 3600
    delays = []
    for _ in range(4):
        attempt = issuance.attempts.create(kind="renew", state="running")
        before = timezone.now()
        renewal.record_attempt_result(
            issuance_id=issuance.pk, attempt_id=attempt.pk, problem="unauthorized: nope"
        )
        issuance.refresh_from_db()
        delays.append(round((issuance.retry_at - before).total_seconds() / 60))
    assert delays == [10, 20, 40, 60]
    assert issuance.consecutive_failures == 4
    # A retry waits for its time, then is queued.
    assert renewal.queue_due_renewals() == []
    assert len(renewal.queue_due_renewals(now=issuance.retry_at + timedelta(seconds=1))) == 1


def test_a_lost_worker_does_not_leave_an_attempt_running(issuance):
    attempt = issuance.attempts.create(kind="renew", state="running")
    AcmeAttempt.objects.filter(pk=attempt.pk).update(started_at=timezone.now() - timedelta(hours=1))
    renewal.queue_due_renewals()
    attempt.refresh_from_db()
    assert attempt.state == AcmeAttempt.State.FAILED
    assert "stopped before it finished" in attempt.message


def test_success_replaces_the_certificate_and_clears_the_backoff(issuance):
    issuance.consecutive_failures = 2
    issuance.retry_at = timezone.now()
    issuance.save()
    material = make_server_cert(sans=("www.example.test",))
    attempt = issuance.attempts.create(kind="renew", state="running")
    renewal.record_attempt_result(
        issuance_id=issuance.pk,
        attempt_id=attempt.pk,
        issued=acme.Issued(material.cert_pem, "", material.key_pem, None),
    )
    issuance.refresh_from_db()
    certificate = issuance.certificate
    assert certificate.fingerprint_sha256 and certificate.not_after > timezone.now()
    assert issuance.retry_at is None and issuance.consecutive_failures == 0
    lifetime = certificate.not_after - certificate.not_before
    assert issuance.renew_at == certificate.not_before + lifetime * 2 / 3
    assert AuditRecord.objects.filter(action="certificate.replace").exists()


# -- alerts --------------------------------------------------------------------------------------


@pytest.fixture
def receiver():
    """A real HTTP server recording the webhook's POSTs; `status` is what it answers."""
    received: list[dict] = []
    state = {"status": 204}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(state["status"])
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received, state
    server.shutdown()


def test_expiry_warnings_once_per_threshold(
    db, settings, receiver, eager_celery, django_capture_on_commit_callbacks
):
    url, received, _ = receiver
    settings.CERTIFICATE_WEBHOOK_URL = url
    soon = stored_certificate(5, name="soon")
    stored_certificate(20, name="month")
    stored_certificate(200, name="fine")

    with django_capture_on_commit_callbacks(execute=True):
        first = certificate_upkeep()
    with django_capture_on_commit_callbacks(execute=True):
        again = certificate_upkeep()

    assert len(first["expiry_warnings"]) == 2 and again["expiry_warnings"] == []
    events = sorted(received, key=lambda e: e["within_days"])
    assert [e["within_days"] for e in events] == [7, 30]
    assert events[0]["event"] == "certificate.expires_soon"
    assert events[0]["certificate"]["id"] == soon.id
    assert all(a.delivery == "delivered" for a in CertificateAlert.objects.all())


def test_failed_renewal_event_and_bounded_retries(
    issuance, settings, receiver, django_capture_on_commit_callbacks
):
    url, received, state = receiver
    settings.CERTIFICATE_WEBHOOK_URL = url
    state["status"] = 500
    attempt = issuance.attempts.create(kind="renew", state="running")

    with django_capture_on_commit_callbacks() as queued:
        renewal.record_attempt_result(
            issuance_id=issuance.pk, attempt_id=attempt.pk, problem="validation failed: x"
        )

    assert len(queued) == 1
    alert = CertificateAlert.objects.get(event="certificate.renewal_failed")
    # The task as a worker runs it (apply: retries run in place of their countdown): the first
    # delivery and five retries with backoff, then it gives up.
    outcome = deliver_alert.apply(kwargs={"alert_id": alert.pk})
    assert outcome.get().startswith("gave up")
    alert.refresh_from_db()
    assert alert.delivery == CertificateAlert.Delivery.FAILED
    assert alert.delivery_attempts == len(received) == 6
    assert "Internal Server Error" in alert.last_error
    assert received[0]["attempt"]["message"] == "validation failed: x"
    # A receiver that is back takes the next event.
    state["status"] = 204
    assert alerts.deliver(alert.pk) == "delivered (204)"


def test_no_webhook_configured_is_recorded(issuance, settings):
    settings.CERTIFICATE_WEBHOOK_URL = ""
    attempt = issuance.attempts.create(kind="renew", state="running")
    renewal.record_attempt_result(issuance_id=issuance.pk, attempt_id=attempt.pk, problem="x")
    assert CertificateAlert.objects.get().delivery == CertificateAlert.Delivery.NOT_CONFIGURED
    assert deliver_alert.run(alert_id=CertificateAlert.objects.get().pk) == "no webhook configured"


def test_flags_in_the_list_and_the_banner(admin_client, db):
    stored_certificate(3, name="urgent")
    stored_certificate(20, name="later")

    page = admin_client.get("/certificates/").content.decode()

    assert page.count('data-expiry="7"') == 1
    banner = page[page.index('id="certificate-alerts"') :]
    banner = banner[: banner.index("</div>")]
    assert "Expiring within 7 days" in banner and "urgent" in banner
    assert "Expiring within 30 days" in banner and "later" in banner


def test_status_poll_stops_when_done(admin_client, issuance):
    attempt = issuance.attempts.create(kind="renew", state="running", step="The CA is validating")
    url = f"/certificates/acme/{issuance.pk}/status/"
    running = admin_client.get(url, headers={"HX-Request": "true"})
    assert running.status_code == 200 and "The CA is validating" in running.content.decode()
    AcmeAttempt.objects.filter(pk=attempt.pk).update(state="failed", message="unauthorized: no")
    done = admin_client.get(url, headers={"HX-Request": "true"})
    assert done.status_code == 286 and "unauthorized: no" in done.content.decode()


def test_the_wizard_gets_its_draft_back(admin_client, instance, server_group, settings):
    settings.ACME_HTTP01_PORT = 80
    make_listener(instance, server_group, port=80)
    register_node(instance, "http://127.0.0.1:1")
    wizard = f"/instances/{instance.pk}/listeners/new/certificate/"
    url = f"/certificates/acme/?instance={instance.pk}&next={wizard}"

    dialog = admin_client.get(url).content.decode()
    assert f'<option value="{instance.pk}" selected>' in dialog

    response = admin_client.post(
        url,
        {
            "name": "site",
            "domains": "www.example.test",
            "directory": "letsencrypt-staging",
            "email": "ops@example.org",
            "challenge": "http-01",
            "instance": instance.pk,
            "key_algorithm": "rsa-2048",
            "agree": "on",
        },
    )
    issuance = AcmeIssuance.objects.get()
    assert response.status_code == 302 and response["Location"] == f"{wizard}?acme={issuance.pk}"
    assert issuance.directory_url == "https://acme-staging-v02.api.letsencrypt.org/directory"
    # An off-site next is ignored.
    off_site = admin_client.get("/certificates/acme/?next=https://evil.example/").content.decode()
    assert "evil.example" not in off_site


def test_a_listener_page_flags_its_expiring_certificate(admin_client, instance, server_group):
    urgent = stored_certificate(4, name="urgent")
    fine = stored_certificate(200, name="fine")
    https = make_listener(
        instance, server_group, port=443, protocol="https", default_certificate=urgent
    )
    other = make_listener(
        instance, server_group, port=8443, protocol="https", default_certificate=fine
    )

    page = admin_client.get(https.get_absolute_url()).content.decode()
    calm = admin_client.get(other.get_absolute_url()).content.decode()

    assert "This listener's certificate" in page and "expires within 7 days" in page
    assert "This listener's certificate" not in calm


def test_an_order_that_never_issued_can_be_deleted(admin_client, instance):
    pending = AcmeIssuance.objects.create(
        name="typo", domains=["ww.example.test"], directory_url="https://a/dir",
        email="a@b.test", challenge="http-01", instance=instance,
    )  # fmt: skip
    pending.attempts.create(kind="issue", state="failed", message="unauthorized: 404")

    response = admin_client.post(f"/certificates/acme/{pending.pk}/delete/")

    assert response.status_code == 302 and response["Location"] == "/certificates/"
    assert not AcmeIssuance.objects.exists() and not AcmeAttempt.objects.exists()
    assert AuditRecord.objects.filter(action="certificate.acme_delete").exists()


def test_an_issued_or_running_one_is_not_deleted_here(admin_client, issuance):
    admin_client.post(f"/certificates/acme/{issuance.pk}/delete/")
    assert AcmeIssuance.objects.filter(pk=issuance.pk).exists()
    with pytest.raises(renewal.services.RuleViolation, match="delete the certificate instead"):
        renewal.delete_issuance(issuance_id=issuance.pk)


# The protocol step's Advanced Settings as the wizard's form starts them.
WIZARD_DEFAULTS = {
    "scheduler": "weighted_round_robin",
    "persistence": "none",
    "acl_mode": "off",
    "idle_timeout": "15",
    "request_timeout": "60",
    "response_timeout": "60",
    "x_forwarded_for": "add",
    "auto_enable": "on",
}


def test_the_wizard_step_follows_its_order_until_it_can_be_selected(
    admin_client, instance, server_group
):
    """Back in the wizard's SSL Certificate step: the order's progress polls itself; once
    issued, one link selects the certificate in the draft; a failure says why."""
    wizard = reverse("listener-create-step", args=[instance.pk, "certificate"])
    admin_client.post(
        reverse("listener-create-step", args=[instance.pk, "protocol"]),
        {"protocol": "https", "port": "8443", "action": "next", **WIZARD_DEFAULTS},
    )
    order = AcmeIssuance.objects.create(
        name="shop", domains=["shop.example.test"], directory_url="https://a.test/dir",
        email="ops@example.org", challenge="http-01", instance=instance,
    )  # fmt: skip
    attempt = order.attempts.create(kind="issue", state="running", step="The CA is validating")

    step = admin_client.get(f"{wizard}?acme={order.pk}").content.decode()
    assert 'id="acme-wizard"' in step and "The CA is validating" in step
    status = f"/certificates/acme/{order.pk}/status/?next={wizard}"
    assert f'hx-get="{status}"' in step
    assert admin_client.get(status, headers={"HX-Request": "true"}).status_code == 200

    # The CA refused: the step says why and where to try again, and the poll stops.
    AcmeAttempt.objects.filter(pk=attempt.pk).update(
        state="failed", message="unauthorized: 404 on the challenge"
    )
    failed = admin_client.get(status, headers={"HX-Request": "true"})
    assert failed.status_code == 286
    assert "was not issued: " in failed.content.decode()
    assert "unauthorized: 404 on the challenge" in failed.content.decode()

    # A later attempt issued it: the link puts it in the draft as the Server Certificate.
    certificate = stored_certificate(90, name="shop")
    order.certificate = certificate
    order.save()
    order.attempts.create(kind="issue", state="succeeded", message="Issued")
    done = admin_client.get(status, headers={"HX-Request": "true"}).content.decode()
    assert f'href="{wizard}?certificate={certificate.pk}"' in done
    chosen = admin_client.get(f"{wizard}?certificate={certificate.pk}").content.decode()
    assert f'<option value="{certificate.pk}" selected>' in chosen
    # An off-site next gets the ordinary panel, never a link elsewhere.
    elsewhere = admin_client.get(f"/certificates/acme/{order.pk}/status/?next=https://evil.test/")
    assert "evil.test" not in elsewhere.content.decode()


def test_beat_runs_the_upkeep_and_the_crl_refresh_on_their_intervals(settings):
    from console.celery import app

    upkeep = app.conf.beat_schedule["certificate upkeep"]
    refresh = app.conf.beat_schedule["refresh revocation lists"]

    assert upkeep["task"] == "certificates.tasks.certificate_upkeep"
    assert upkeep["schedule"] == settings.CERTIFICATE_UPKEEP_INTERVAL
    assert refresh["task"] == "certificates.revocation.refresh_crls"
    assert refresh["schedule"] == settings.CRL_REFRESH_INTERVAL
    assert {upkeep["task"], refresh["task"]} <= set(app.tasks)
