"""ACME by API: an order answers at once with its queued attempt and the work runs in Celery;
orders and attempts are read back; renew now; an order that never issued is deleted; each
refusal is a problem document naming the field; viewer tokens change nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from certificates.acme_models import AcmeAttempt, AcmeIssuance
from console.models import AuditRecord
from tests.certificates.test_acme_renewal import stored_certificate
from tests.fixtures.listeners import make_listener
from tests.fixtures.nodes import register_node
from tests.fixtures.ports import free_port as closed_port

pytestmark = pytest.mark.django_db
ORDERS = "/api/v1/acme/orders"


@pytest.fixture
def answering_instance(instance, server_group):
    """An instance that can answer HTTP-01: a running HTTP listener on port 80 and a node."""
    make_listener(instance, server_group, port=80, desired_state="running")
    register_node(instance, "http://127.0.0.1:1")
    return instance


def order_body(target, /, **changes) -> dict:
    body = {
        "name": "site",
        "domains": ["www.example.test", "shop.example.test"],
        "directory": "custom",
        "directory_url": f"https://127.0.0.1:{closed_port()}/directory",
        "email": "ops@example.org",
        "challenge": "http-01",
        "instance": target.pk,
        "key_algorithm": "ec-p256",
        "agree": True,
    }
    body.update(changes)
    return {key: value for key, value in body.items() if value is not None}


@pytest.fixture
def pending(instance) -> AcmeIssuance:
    """An order whose first attempt failed, so it never issued."""
    issuance = AcmeIssuance.objects.create(
        name="typo", domains=["ww.example.test"], directory_url="https://acme.example.test/dir",
        email="ops@example.org", challenge="http-01", instance=instance,
    )  # fmt: skip
    issuance.attempts.create(kind="issue", state="failed", message="unauthorized: 404")
    return issuance


@pytest.fixture
def issued(instance) -> AcmeIssuance:
    return AcmeIssuance.objects.create(
        name="site", domains=["www.example.test"], directory_url="https://acme.example.test/dir",
        email="ops@example.org", challenge="http-01", instance=instance,
        certificate=stored_certificate(50), renew_at=timezone.now() + timedelta(days=10),
    )  # fmt: skip


def test_an_order_answers_at_once_and_its_attempt_runs_in_celery(
    api, answering_instance, eager_celery, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as queued:
        response = api.send("post", ORDERS, order_body(answering_instance))

    assert response.status_code == 202
    order = response.json()
    assert order["domains"] == ["www.example.test", "shop.example.test"]
    assert order["instance"] == answering_instance.pk and order["certificate"] is None
    assert order["in_progress"] is True
    assert [(a["kind"], a["state"]) for a in order["attempts"]] == [("issue", "queued")]
    assert AuditRecord.objects.filter(
        action="certificate.acme_request", object_id=order["id"]
    ).exists()
    assert len(queued) == 1

    # The Celery task (eager here) talks to the CA: its directory refuses the connection.
    queued[0]()

    attempt = api.get(f"{ORDERS}/{order['id']}/attempts/{order['attempts'][0]['id']}").json()
    assert attempt["state"] == "failed" and attempt["finished_at"]
    assert attempt["message"]
    assert api.get(f"{ORDERS}/{order['id']}").json()["in_progress"] is False


def test_orders_and_attempts_are_read_back(api, viewer_api, pending, issued):
    listed = api.get(ORDERS).json()
    assert {o["id"]: o["certificate"] for o in listed} == {
        pending.pk: None,
        issued.pk: issued.certificate_id,
    }
    one = viewer_api.get(f"{ORDERS}/{pending.pk}")
    assert one.status_code == 200
    assert one.json()["attempts"][0]["message"] == "unauthorized: 404"
    attempts = viewer_api.get(f"{ORDERS}/{pending.pk}/attempts").json()
    assert [a["state"] for a in attempts] == ["failed"]
    # An attempt is only found under its own order.
    other = api.get(f"{ORDERS}/{issued.pk}/attempts/{attempts[0]['id']}")
    assert other.status_code == 404
    assert other["Content-Type"] == "application/problem+json"
    assert api.get(f"{ORDERS}/acme-missing").status_code == 404
    assert api.get(f"{ORDERS}/{pending.pk}/attempts/{2**63}").status_code == 422


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"domains": ["*.example.test"]}, "domains", "wildcard names need the DNS-01"),
        ({"domains": ["192.0.2.1"]}, "domains", "an IP address is not a domain name"),
        ({"domains": ["a.example.test,b.example.test"]}, "domains[0]", "pattern"),
        ({"domains": []}, "domains", "at least 1"),
        ({"domains": ["x.example.test"] * 101}, "domains", "at most 100"),
        ({"directory_url": None}, "directory_url", "Enter the ACME directory URL"),
        ({"directory_url": "http://acme.example.test/dir"}, "directory_url", "over HTTPS"),
        ({"directory": "nowhere"}, "directory", "letsencrypt"),
        ({"email": "not-an-address"}, "email", "valid email"),
        ({"challenge": "tls-alpn-01"}, "challenge", "TLS-ALPN-01 needs an HTTPS"),
        ({"instance": "lb-missing"}, "instance", "valid choice"),
        ({"agree": False}, "agree", "required"),
        ({"name": ""}, "name", "required"),
        ({"surprise": 1}, "surprise", "Unknown field"),
    ],
)
def test_a_refused_order_names_its_field(api, answering_instance, changes, field, message):
    response = api.send("post", ORDERS, order_body(answering_instance, **changes))

    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert any(
        e["field"] == field and message.lower() in e["message"].lower() for e in problem["errors"]
    ), problem
    assert not AcmeIssuance.objects.exists()


def test_an_instance_without_a_node_is_refused_by_the_service(api, instance, server_group):
    make_listener(instance, server_group, port=80, desired_state="running")

    response = api.send("post", ORDERS, order_body(instance))

    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"field": "instance", "message": f"Instance {instance.name} has no dataplane node to "
         "answer the challenge."}
    ]  # fmt: skip


@pytest.mark.parametrize("body", ["[", '{"name": "\\ud800"}', "null", '"x"' * 10])
def test_malformed_bodies_are_refused(api, answering_instance, body):
    response = api.post(ORDERS, body, content_type="application/json")
    assert response.status_code in (400, 422)
    assert response["Content-Type"] == "application/problem+json"
    assert not AcmeIssuance.objects.exists()


def test_renew_now_queues_one_attempt_at_a_time(api, issued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as queued:
        response = api.post(f"{ORDERS}/{issued.pk}/renew")

    assert response.status_code == 202
    assert response.json()["kind"] == "renew" and response.json()["state"] == "queued"
    assert response.json()["order"] == issued.pk
    assert len(queued) == 1
    again = api.post(f"{ORDERS}/{issued.pk}/renew")
    assert again.status_code == 422
    assert "already in progress" in again.json()["detail"]
    assert issued.attempts.count() == 1
    [record] = AuditRecord.objects.filter(action="certificate.acme_renew")
    assert record.object_id == str(response.json()["id"])
    assert record.changes["issuance"]["after"] == issued.pk
    assert api.post(f"{ORDERS}/acme-missing/renew").status_code == 404


def test_only_an_order_that_never_issued_is_deleted(api, pending, issued):
    refused = api.delete(f"{ORDERS}/{issued.pk}")
    assert refused.status_code == 422
    assert "delete the certificate instead" in refused.json()["detail"]

    assert api.delete(f"{ORDERS}/{pending.pk}").status_code == 204

    assert list(AcmeIssuance.objects.values_list("pk", flat=True)) == [issued.pk]
    assert not AcmeAttempt.objects.filter(issuance_id=pending.pk).exists()
    assert AuditRecord.objects.filter(action="certificate.acme_delete").count() == 1
    assert api.delete(f"{ORDERS}/{pending.pk}").status_code == 404


def test_a_viewer_token_changes_nothing(viewer_api, answering_instance, pending, issued):
    writes = [
        viewer_api.send("post", ORDERS, order_body(answering_instance)),
        viewer_api.post(f"{ORDERS}/{issued.pk}/renew"),
        viewer_api.delete(f"{ORDERS}/{pending.pk}"),
    ]
    for response in writes:
        assert response.status_code == 403
        assert response["Content-Type"] == "application/problem+json"
    assert AcmeIssuance.objects.count() == 2
    assert AcmeAttempt.objects.count() == 1
    assert viewer_api.get(ORDERS).status_code == 200
