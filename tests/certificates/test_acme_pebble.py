"""ACME against a real CA (pebble) through a real dataplane node process.

The operator's path: the "Issue with ACME" form, the attempt (Celery eager: it runs on commit in
this thread), the challenge pushed to the node, pebble validating it against the node, the
certificate stored, then served by a listener and checked with a real TLS handshake against
pebble's root. A forced renewal swaps the certificate under steady load without a failed request.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from datetime import timedelta

import pytest
import trustme
from cryptography import x509
from django.db import transaction
from django.utils import timezone

from certificates import validation
from certificates.acme_models import AcmeAttempt, AcmeChallenge, AcmeIssuance
from certificates.models import Certificate
from certificates.tasks import certificate_upkeep
from console import tokens
from console.snapshot import build_snapshot
from listeners import services
from listeners.models import Listener
from tests.api.conftest import TokenClient
from tests.fixtures.load import SteadyClient
from tests.fixtures.ports import free_port
from tests.fixtures.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def issue(stack, pebble, domains: str, challenge: str, name: str = "site"):
    return stack.client.post(
        "/certificates/acme/",
        {
            "name": name,
            "domains": domains,
            "directory": "custom",
            "directory_url": pebble.directory_url,
            "email": "ops@example.org",
            "challenge": challenge,
            "instance": stack.instance.pk,
            "key_algorithm": "ec-p256",
            "agree": "on",
        },
    )


def last_attempt(name: str) -> AcmeAttempt:
    return AcmeIssuance.objects.get(name=name).attempts.order_by("-pk").first()


def pebble_client(pebble, server_name: str) -> ssl.SSLContext:
    """A client that trusts only pebble's root and checks the name: a served chain must lead
    there."""
    context = ssl.create_default_context(cadata=pebble.root_pem())
    context.check_hostname = True
    return context


def served_serial(port: int, context: ssl.SSLContext, name: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def https_listener(stack, port: int, certificate: Certificate, name: str) -> Listener:
    with transaction.atomic():
        return services.create_listener(
            stack.instance,
            protocol=Listener.Protocol.HTTPS,
            port=port,
            name=name,
            settings={},
            server_group=stack.group,
            certificates={"default_certificate": certificate},
        )


@pytest.fixture
def acme_stack(stack, pebble, eager_celery):
    return stack


def test_http01_issuance_through_the_node_then_served(acme_stack, pebble):
    stack = acme_stack
    stack.add_listener(pebble.http_port, "web-80")

    response = issue(stack, pebble, "www.example.test\nshop.example.test", "http-01")

    assert response.status_code == 302, response.content.decode()[:2000]
    attempt = last_attempt("site")
    assert attempt.state == AcmeAttempt.State.SUCCEEDED, attempt.message
    issuance = attempt.issuance
    certificate = issuance.certificate
    assert certificate.sans == ["www.example.test", "shop.example.test"]
    assert "Pebble Intermediate" in certificate.issuer
    assert issuance.renew_at > certificate.not_before
    # The challenge rules left the snapshot again.
    assert not AcmeChallenge.objects.exists()
    assert all(
        not rule.id.startswith("acme-")
        for listener in build_snapshot(stack.instance).listeners
        for rule in listener.forwarding_rules
    )
    # The page shows the outcome.
    page = stack.client.get(response["Location"]).content.decode()
    assert "Succeeded" in page and certificate.serial in page.replace(":", "")

    # Served by an HTTPS listener: the handshake verifies the chain up to pebble's root.
    port = pebble.tls_port
    https_listener(stack, port, certificate, "web-443")
    context = pebble_client(pebble, "shop.example.test")
    wait_until(lambda: served_serial(port, context, "shop.example.test"), timeout=15)
    assert served_serial(port, context, "shop.example.test") == int(
        certificate.serial.replace(":", ""), 16
    )


def test_tls_alpn01_issuance_and_renewal_under_load(acme_stack, pebble):
    stack = acme_stack
    port = pebble.tls_port
    # A listener exists before its real certificate does: it starts on a stand-in.
    stand_in = trustme.CA().issue_cert("secure.example.test")
    validated = validation.validate_server_certificate(
        stand_in.cert_chain_pems[0].bytes(), stand_in.private_key_pem.bytes()
    )
    with transaction.atomic():
        placeholder = services.upload_certificate(
            name="stand-in", kind=Certificate.Kind.SERVER, validated=validated
        )
    listener = https_listener(stack, port, placeholder, "secure")
    wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1), timeout=15)

    response = issue(stack, pebble, "secure.example.test", "tls-alpn-01", name="secure")

    assert response.status_code == 302, response.content.decode()[:2000]
    attempt = last_attempt("secure")
    assert attempt.state == AcmeAttempt.State.SUCCEEDED, attempt.message
    certificate = attempt.issuance.certificate
    with transaction.atomic():
        services.update_listener_certificates(
            listener_id=listener.id, default_certificate=certificate
        )
    context = pebble_client(pebble, "secure.example.test")
    first = int(certificate.serial.replace(":", ""), 16)
    wait_until(lambda: served_serial(port, context, "secure.example.test") == first, timeout=15)

    # Renew now, under steady load: new connections and one kept-alive connection.
    def fresh_request() -> str | None:
        connection = http.client.HTTPSConnection(
            "secure.example.test", port, timeout=5, context=context
        )
        connection.sock = context.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=5),
            server_hostname="secure.example.test",
        )
        try:
            connection.request("GET", "/")
            answer = connection.getresponse()
            body = answer.read()
        finally:
            connection.close()
        return None if answer.status == 200 and body == stack.backend.name.encode() else repr(body)

    kept = http.client.HTTPSConnection("secure.example.test", port, timeout=5, context=context)
    kept.sock = context.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=5),
        server_hostname="secure.example.test",
    )

    def kept_alive_request() -> str | None:
        kept.request("GET", "/")
        answer = kept.getresponse()
        body = answer.read()
        return None if answer.status == 200 else f"{answer.status} {body!r}"

    with SteadyClient(fresh_request) as load, SteadyClient(kept_alive_request) as steady:
        response = stack.client.post(f"/certificates/acme/{attempt.issuance_id}/renew/")
        assert response.status_code == 302
        renewed = last_attempt("secure")
        assert renewed.kind == AcmeAttempt.Kind.RENEW
        assert renewed.state == AcmeAttempt.State.SUCCEEDED, renewed.message
        certificate.refresh_from_db()
        second = int(certificate.serial.replace(":", ""), 16)
        assert second != first
        wait_until(
            lambda: served_serial(port, context, "secure.example.test") == second, timeout=15
        )
    kept.close()
    assert load.failures == [] and steady.failures == []
    assert load.ok > 0 and steady.ok > 0
    # Every attempt is on the certificate's page.
    page = stack.client.get(certificate.get_absolute_url()).content.decode()
    assert page.count('data-attempt-state="succeeded"') == 2


def test_no_http_listener_on_the_port_is_refused_next_to_the_field(acme_stack, pebble):
    response = issue(acme_stack, pebble, "www.example.test", "http-01")

    assert response.status_code == 422
    text = response.content.decode()
    assert f"HTTP-01 needs an HTTP listener on port {pebble.http_port}" in text
    assert 'id="id_challenge_error"' in text
    assert not AcmeIssuance.objects.exists()


@pytest.mark.parametrize(
    ("dns", "expected"),
    [
        # The name points elsewhere: pebble cannot connect to the challenge port there.
        (("add-a", {"host": "elsewhere.example.test", "addresses": ["127.0.0.9"]}), "refused"),
        # The name's DNS is broken.
        (("set-servfail", {"host": "elsewhere.example.test"}), "could not resolve"),
    ],
)
def test_failed_validation_names_the_name_and_the_ca_problem(acme_stack, pebble, dns, expected):
    stack = acme_stack
    stack.add_listener(pebble.http_port, "web-80")
    command, body = dns
    pebble.dns(command, **body)

    response = issue(stack, pebble, "elsewhere.example.test", "http-01", name="elsewhere")

    assert response.status_code == 302
    attempt = last_attempt("elsewhere")
    assert attempt.state == AcmeAttempt.State.FAILED
    assert attempt.message.startswith("validation failed: elsewhere.example.test: ")
    assert expected in attempt.message
    assert not AcmeChallenge.objects.exists()
    page = stack.client.get(response["Location"]).content.decode()
    assert "elsewhere.example.test: " in page and 'data-attempt-state="failed"' in page


def test_unreachable_directory_is_named(acme_stack, pebble):
    stack = acme_stack
    stack.add_listener(pebble.http_port, "web-80")
    pebble.directory_url = pebble.directory_url.replace("/dir", "/no-such-directory")

    issue(stack, pebble, "www.example.test", "http-01")

    attempt = last_attempt("site")
    assert attempt.state == AcmeAttempt.State.FAILED
    assert "no-such-directory" in attempt.message


def test_issuance_by_the_worker_polls_progress_until_done(stack, pebble, monkeypatch):
    """No eager mode: the real worker runs the attempt (and beat its schedule); the page's poll
    shows the attempt in progress, then its outcome, then stops (286)."""
    monkeypatch.setenv("ACME_CA_BUNDLE", str(pebble.ca_bundle))
    monkeypatch.setenv("ACME_HTTP01_PORT", str(pebble.http_port))
    monkeypatch.setenv("ACME_TLS_ALPN01_PORT", str(pebble.tls_port))
    stack.start_pipeline()
    stack.add_listener(pebble.http_port, "web-80")

    response = issue(stack, pebble, "www.example.test", "http-01")

    assert response.status_code == 302
    issuance = AcmeIssuance.objects.get(name="site")
    status = f"/certificates/acme/{issuance.pk}/status/"
    seen = []

    def finished() -> bool:
        answer = stack.client.get(status, headers={"HX-Request": "true"})
        seen.append(answer.status_code)
        return answer.status_code == 286

    wait_until(finished, timeout=90, interval=0.2)
    attempt = last_attempt("site")
    assert attempt.state == AcmeAttempt.State.SUCCEEDED, attempt.message
    assert seen[-1] == 286 and set(seen) <= {200, 286}
    issuance.refresh_from_db()
    assert issuance.certificate is not None
    assert not AcmeChallenge.objects.exists()


def test_ca_refusal_quotes_the_problem_document(pebble):
    """The CA refuses the order itself: its problem type and detail are the message."""
    from certificates import acme

    session = acme.Session(
        pebble.directory_url, acme.new_account_key(), verify=str(pebble.ca_bundle)
    )
    session.register("ops@example.org")
    key = acme.new_certificate_key("rsa-2048")

    with pytest.raises(acme.AcmeProblem) as refused:
        session.new_order(key, ["192.0.2.7"], "http-01")

    assert str(refused.value).startswith("the CA refused the order: malformed: ")
    assert "IP address" in str(refused.value)
    # And a directory whose TLS certificate is not trusted is named as such.
    with pytest.raises(acme.AcmeProblem, match="the CA's TLS certificate is not trusted"):
        acme.Session(pebble.directory_url, acme.new_account_key(), verify=True)


def test_issue_and_renew_by_api_swaps_every_listener(acme_stack, pebble, admin_user):
    """The API's path: an order answered 202 and issued by the CA through the node, then a
    renewal asked for by the API reaching both HTTPS listeners that use the certificate."""
    stack = acme_stack
    stack.add_listener(pebble.http_port, "web-80")
    api = TokenClient(tokens.issue_token(user=admin_user, name="ci", role="admin", days=1).secret)

    response = api.send(
        "post",
        "/api/v1/acme/orders",
        {
            "name": "api-site",
            "domains": ["api.example.test"],
            "directory": "custom",
            "directory_url": pebble.directory_url,
            "email": "ops@example.org",
            "challenge": "http-01",
            "instance": stack.instance.pk,
            "agree": True,
        },
    )

    assert response.status_code == 202, response.content.decode()[:2000]
    order = api.get(f"/api/v1/acme/orders/{response.json()['id']}").json()
    [first_attempt] = order["attempts"]
    assert first_attempt["state"] == "succeeded", first_attempt["message"]
    assert order["certificate"] and order["renew_at"] and not order["in_progress"]
    certificate = Certificate.objects.get(pk=order["certificate"])
    assert certificate.sans == ["api.example.test"]
    ports = [free_port(), free_port()]
    for index, port in enumerate(ports):
        https_listener(stack, port, certificate, f"api-{index}")
    context = pebble_client(pebble, "api.example.test")
    first = int(certificate.serial.replace(":", ""), 16)
    for port in ports:
        wait_until(
            lambda p=port: served_serial(p, context, "api.example.test") == first, timeout=15
        )

    renewed = api.send("post", f"/api/v1/acme/orders/{order['id']}/renew")

    assert renewed.status_code == 202, renewed.content.decode()[:2000]
    attempt = api.get(f"/api/v1/acme/orders/{order['id']}/attempts/{renewed.json()['id']}").json()
    assert attempt["kind"] == "renew" and attempt["state"] == "succeeded", attempt["message"]
    certificate.refresh_from_db()
    second = int(certificate.serial.replace(":", ""), 16)
    assert second != first
    # The same certificate row, so every listener using it gets the new one without an edit.
    assert api.get(f"/api/v1/acme/orders/{order['id']}").json()["certificate"] == certificate.pk
    for port in ports:
        wait_until(
            lambda p=port: served_serial(p, context, "api.example.test") == second, timeout=15
        )
    kinds = [a["kind"] for a in api.get(f"/api/v1/acme/orders/{order['id']}/attempts").json()]
    assert kinds == ["renew", "issue"]


def test_beat_renews_a_due_certificate_by_itself(acme_stack, pebble):
    """No operator: beat's upkeep finds the certificate due and the renewal runs to the CA."""
    stack = acme_stack
    stack.add_listener(pebble.http_port, "web-80")
    issue(stack, pebble, "auto.example.test", "http-01", name="auto")
    issuance = AcmeIssuance.objects.get(name="auto")
    first = issuance.certificate.serial
    # Not due yet: upkeep leaves it alone.
    assert certificate_upkeep()["renewals"] == []
    AcmeIssuance.objects.filter(pk=issuance.pk).update(
        renew_at=timezone.now() - timedelta(minutes=1)
    )

    queued = certificate_upkeep()["renewals"]

    [attempt] = AcmeAttempt.objects.filter(pk__in=queued)
    assert attempt.kind == AcmeAttempt.Kind.RENEW
    assert attempt.state == AcmeAttempt.State.SUCCEEDED, attempt.message
    issuance.refresh_from_db()
    certificate = issuance.certificate
    assert certificate.serial != first
    lifetime = certificate.not_after - certificate.not_before
    assert issuance.renew_at == certificate.not_before + lifetime * 2 / 3
    assert certificate_upkeep()["renewals"] == []


def test_a_failed_challenge_listener_is_named_before_the_ca_is_asked(acme_stack, pebble):
    """Another program holds port 80: the node cannot serve the HTTP listener, and the form
    says so with the node's reason instead of leaving the CA to time out on that program."""
    stack = acme_stack
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", pebble.http_port))
    squatter.listen()
    try:
        listener = stack.add_listener(pebble.http_port, "web-80")
        wait_until(
            lambda: Listener.objects.get(pk=listener.pk).status == Listener.Status.FAILED,
            timeout=30,
        )
        response = issue(stack, pebble, "www.example.test", "http-01")
    finally:
        squatter.close()

    assert response.status_code == 422
    text = response.content.decode()
    assert f"Listener web-80 on port {pebble.http_port} has failed on the dataplane (" in text
    assert Listener.objects.get(pk=listener.pk).last_error.splitlines()[0][:40] in text
    assert 'id="id_challenge_error"' in text
    assert not AcmeIssuance.objects.exists()
