"""Revocation lists on a CA certificate's page: upload, refusal, flags, removal and the push.

Given a CA certificate (and, where the push matters, an instance whose mutual-TLS listener uses
it), when an operator uploads or removes a CRL from the certificate's page, then a good CRL is
stored, audited and pushed with the CA, a bad one is explained next to its field and changes
nothing, and the page shows the next update with the same flags as a certificate's expiry. The
last test runs the whole way: the page, a real Celery worker, a real node, and real handshakes.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.test import Client
from django.urls import reverse

from certificates.models import Certificate, CertificateRevocationList
from certificates.revocation import crl_alert_payload, expiring_crls, refresh_crls
from certificates.validation import validate_ca_certificate, validate_server_certificate
from console import tokens
from console.models import AuditRecord, Instance
from listeners.models import Listener
from listeners.services import create_listener, upload_certificate
from tests.api.conftest import TokenClient
from tests.factories.certs import CaMaterial, make_ca, make_server_cert
from tests.factories.crls import crl_der, crl_pem, make_client_cert, make_crl
from tests.fixtures.listeners import make_listener
from tests.fixtures.nodes import register_node
from tests.fixtures.processes import free_port, wait_until
from tests.fixtures.single_node import Stack

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def root() -> CaMaterial:
    return make_ca("Pages Client Root CA")


@pytest.fixture
def ca_row(db, root) -> Certificate:
    return upload_certificate(
        name="clients", kind="ca", validated=validate_ca_certificate(root.cert_pem)
    )


def upload_url(ca: Certificate) -> str:
    return reverse("crl-upload", args=[ca.id])


def mutual_listener(instance: Instance, server_group, ca: Certificate, **fields) -> Listener:
    material = make_server_cert("ec-p256")
    server = upload_certificate(
        name="www",
        kind="server",
        validated=validate_server_certificate(material.cert_pem, material.key_pem),
    )
    fields.setdefault("status", Listener.Status.RUNNING)
    return make_listener(
        instance,
        server_group,
        port=443,
        protocol=Listener.Protocol.HTTPS,
        default_certificate=server,
        mutual_authentication=True,
        ca_certificate=ca,
        **fields,
    )


def test_pem_upload_is_stored_summarized_and_audited(admin_client: Client, ca_row, root) -> None:
    revoked = make_client_cert(root, "mallory").cert
    crl = make_crl(root, revoked=[revoked], number=7)

    response = admin_client.post(upload_url(ca_row), {"crl": crl_pem(crl)})

    assert response.status_code == 302
    stored = CertificateRevocationList.objects.get()
    assert bytes(stored.der) == crl_der(crl)
    assert (stored.issuer, stored.crl_number, stored.revoked_count) == (root.subject, "7", 1)
    assert stored.source == CertificateRevocationList.Source.UPLOAD
    record = AuditRecord.objects.get(action="certificate.upload_crl")
    assert record.object_id == ca_row.id
    assert record.changes["crl_summary"]["before"] == []
    assert record.changes["crl_summary"]["after"][0]["crl_number"] == "7"


def test_der_file_upload_is_stored(admin_client: Client, ca_row, root) -> None:
    crl = make_crl(root)
    upload = SimpleUploadedFile("clients.crl", crl_der(crl), "application/pkix-crl")
    response = admin_client.post(upload_url(ca_row), {"crl_file": upload})
    assert response.status_code == 302
    assert bytes(CertificateRevocationList.objects.get().der) == crl_der(crl)


def test_expired_crl_is_refused_on_its_field_and_nothing_is_stored(
    admin_client: Client, ca_row, root
) -> None:
    crl = make_crl(root, this_update=NOW - timedelta(days=9), next_update=NOW - timedelta(days=2))
    response = admin_client.post(upload_url(ca_row), {"crl": crl_pem(crl)})
    assert response.status_code == 422
    [message] = response.context["form"].errors["crl"]
    assert message.startswith("CRL expired on ")
    assert message.encode() in response.content.replace(b"&#x27;", b"'")
    assert not CertificateRevocationList.objects.exists()


def test_foreign_crl_file_is_refused_naming_the_file(admin_client: Client, ca_row) -> None:
    stranger = make_ca("Pages Stranger CA")
    upload = SimpleUploadedFile("other.crl", crl_der(make_crl(stranger)))
    response = admin_client.post(upload_url(ca_row), {"crl_file": upload})
    assert response.status_code == 422
    [message] = response.context["form"].errors["crl"]
    assert message.startswith(f"In the chosen file other.crl: CRL is issued by {stranger.subject}")
    assert not CertificateRevocationList.objects.exists()


def test_oversized_file_is_refused_without_reading_it(admin_client: Client, ca_row) -> None:
    upload = SimpleUploadedFile("huge.crl", b"\x30" + b"\x00" * (1024 * 1024 + 10))
    response = admin_client.post(upload_url(ca_row), {"crl_file": upload})
    assert response.status_code == 422
    assert response.context["form"].errors["crl"] == [
        "The CRL file huge.crl is 1.0 MiB; the limit is 1 MiB."
    ]


def test_bad_issuer_certificates_are_explained_on_their_field(admin_client: Client, ca_row) -> None:
    stray = make_ca("Pages Stray Issuing CA", issuer=make_ca("Pages Stray Root"))
    response = admin_client.post(
        upload_url(ca_row), {"crl": crl_pem(make_crl(stray)), "issuer_chain": stray.cert_pem}
    )
    assert response.status_code == 422
    [message] = response.context["form"].errors["issuer_chain"]
    assert "is not signed by this CA" in message


def test_an_intermediate_crl_is_stored_with_its_issuer(admin_client: Client, ca_row, root):
    issuing = make_ca("Pages Issuing CA", issuer=root)
    response = admin_client.post(
        upload_url(ca_row), {"crl": crl_pem(make_crl(issuing)), "issuer_chain": issuing.cert_pem}
    )
    assert response.status_code == 302
    stored = CertificateRevocationList.objects.get()
    assert stored.issuer == issuing.subject
    assert stored.issuer_chain_subjects == [issuing.subject]


def test_a_newer_crl_replaces_the_stored_one_and_an_older_is_refused(
    admin_client: Client, ca_row, root
) -> None:
    admin_client.post(upload_url(ca_row), {"crl": crl_pem(make_crl(root, number=5))})
    older = admin_client.post(upload_url(ca_row), {"crl": crl_pem(make_crl(root, number=4))})
    assert older.status_code == 422
    assert older.context["form"].errors["crl"] == [
        f"CRL number 4 is older than the stored CRL of {root.subject} (number 5); upload a "
        "newer one."
    ]
    newer = admin_client.post(upload_url(ca_row), {"crl": crl_pem(make_crl(root, number=6))})
    assert newer.status_code == 302
    assert list(CertificateRevocationList.objects.values_list("crl_number", flat=True)) == ["6"]


def test_server_certificates_have_no_crl_page(admin_client: Client) -> None:
    material = make_server_cert("ec-p256")
    server = upload_certificate(
        name="www",
        kind="server",
        validated=validate_server_certificate(material.cert_pem, material.key_pem),
    )
    assert admin_client.get(upload_url(server)).status_code == 404
    assert (
        b"Certificate Revocation Lists" not in admin_client.get(server.get_absolute_url()).content
    )


def test_page_shows_next_update_with_expiry_flags(admin_client: Client, ca_row, root) -> None:
    crl = make_crl(root, next_update=NOW + timedelta(days=3))
    admin_client.post(upload_url(ca_row), {"crl": crl_pem(crl)})

    page = admin_client.get(ca_row.get_absolute_url()).content.decode()
    assert crl.next_update_utc.strftime("%Y-%m-%d %H:%M") + " UTC" in page
    assert "Expires in 2\xa0days" in page or "Expires in 3\xa0days" in page

    # Days later, the list is past its next update (the clock moved, not the row's meaning).
    CertificateRevocationList.objects.update(next_update=NOW - timedelta(hours=1))
    page = admin_client.get(ca_row.get_absolute_url()).content.decode()
    assert '<span class="badge badge-failed">Expired</span>' in page


def test_crls_due_within_a_week_are_listed_for_alerts(
    admin_client: Client, ca_row, root, instance, server_group
) -> None:
    issuing = make_ca("Pages Issuing CA", issuer=root)
    admin_client.post(
        upload_url(ca_row), {"crl": crl_pem(make_crl(root, next_update=NOW + timedelta(days=3)))}
    )
    admin_client.post(
        upload_url(ca_row),
        {
            "crl": crl_pem(make_crl(issuing, next_update=NOW + timedelta(days=30))),
            "issuer_chain": issuing.cert_pem,
        },
    )
    listener = mutual_listener(instance, server_group, ca_row)

    [due] = expiring_crls()

    assert due.issuer == root.subject
    payload = crl_alert_payload(due)
    assert payload["crl"]["expired"] is False
    assert payload["ca_certificate"] == {"id": ca_row.id, "name": "clients"}
    assert payload["listeners"] == [
        {"id": listener.id, "name": listener.name, "instance": instance.id}
    ]


def test_dialogs_open_and_answer_htmx(admin_client: Client, ca_row, root) -> None:
    htmx = {"HTTP_HX_REQUEST": "true"}
    dialog = admin_client.get(upload_url(ca_row), **htmx).content.decode()
    assert '<dialog class="modal"' in dialog
    assert 'hx-post="' + upload_url(ca_row) + '"' in dialog
    for label in ("CRL", "Issuer Certificates", "Distribution Point URL"):
        assert f">{label}</label>" in dialog

    saved = admin_client.post(upload_url(ca_row), {"crl": crl_pem(make_crl(root))}, **htmx)
    assert saved.status_code == 200
    assert saved["HX-Redirect"] == ca_row.get_absolute_url()

    crl = CertificateRevocationList.objects.get()
    delete_url = reverse("crl-delete", args=[ca_row.id, crl.pk])
    assert delete_url in admin_client.get(ca_row.get_absolute_url()).content.decode()
    confirm = admin_client.get(delete_url, **htmx).content.decode()
    assert f"Remove the revocation list of <strong>{root.subject}</strong>" in confirm
    removed = admin_client.post(delete_url, **htmx)
    assert removed["HX-Redirect"] == ca_row.get_absolute_url()
    assert not CertificateRevocationList.objects.exists()


def test_pages_need_a_sign_in(client: Client, ca_row, root) -> None:
    for response in (
        client.get(upload_url(ca_row)),
        client.post(upload_url(ca_row), {"crl": crl_pem(make_crl(root))}),
    ):
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))
    assert not CertificateRevocationList.objects.exists()


def test_viewer_sees_the_lists_but_cannot_upload(viewer_client: Client, ca_row, root) -> None:
    page = viewer_client.get(ca_row.get_absolute_url())
    assert b"Certificate Revocation Lists" in page.content
    assert b"Upload CRL" not in page.content
    response = viewer_client.post(upload_url(ca_row), {"crl": crl_pem(make_crl(root))})
    assert response.status_code == 403
    assert not CertificateRevocationList.objects.exists()


def test_upload_reconfigures_listeners_and_pushes_the_crl_with_the_ca(
    admin_client: Client,
    ca_row,
    root,
    instance,
    server_group,
    fake_node,
    eager_celery,
    django_capture_on_commit_callbacks,
) -> None:
    register_node(instance, fake_node.url)
    listener = mutual_listener(instance, server_group, ca_row)
    generation = Instance.objects.get(pk=instance.pk).generation
    crl = make_crl(root, revoked=[make_client_cert(root, "mallory").cert])

    # The push is queued on commit, and Celery runs it eagerly to the fake node.
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(upload_url(ca_row), {"crl": crl_pem(crl)})

    assert response.status_code == 302
    assert Instance.objects.get(pk=instance.pk).generation == generation + 1
    [pushed] = fake_node.puts
    [ca] = pushed["ca_certificates"]
    assert ca["id"] == ca_row.id
    assert ca["crls"] == [crl_pem(crl)]
    assert ca["crl_check"] == "chain"  # the CA's own list, and no intermediates
    listener.refresh_from_db()
    assert listener.status == Listener.Status.RUNNING  # the fake node acknowledged it


def test_upload_is_refused_while_a_listener_is_configuring(
    admin_client: Client, ca_row, root, instance, server_group
) -> None:
    mutual_listener(instance, server_group, ca_row, status=Listener.Status.CONFIGURING)
    response = admin_client.post(upload_url(ca_row), {"crl": crl_pem(make_crl(root))})
    assert response.status_code == 409
    [message] = response.context["form"].non_field_errors()
    assert message.startswith("Listener listener-443 is Configuring; changing its CA's")
    assert not CertificateRevocationList.objects.exists()


def test_remove_pushes_the_ca_without_the_list(
    admin_client: Client,
    ca_row,
    root,
    instance,
    server_group,
    fake_node,
    eager_celery,
    django_capture_on_commit_callbacks,
) -> None:
    register_node(instance, fake_node.url)
    admin_client.post(upload_url(ca_row), {"crl": crl_pem(make_crl(root))})
    mutual_listener(instance, server_group, ca_row)
    crl = CertificateRevocationList.objects.get()

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("crl-delete", args=[ca_row.id, crl.pk]))

    assert response.status_code == 302
    assert not CertificateRevocationList.objects.exists()
    assert fake_node.puts[-1]["ca_certificates"][0]["crls"] == []
    assert AuditRecord.objects.filter(action="certificate.delete_crl").count() == 1


# -- fetching from a distribution point URL --------------------------------------------------


class CrlServer:
    """A real HTTP server on 127.0.0.1 answering each path as `routes` says."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                status, headers, body = server.routes.get(self.path, (404, {}, b"not here"))
                self.send_response(status)
                # "omit": no Content-Length, the body ends when the connection closes (HTTP/1.0).
                for name, value in headers.items():
                    if value != "omit":
                        self.send_header(name, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                pass  # the console hangs up on an oversized answer, as it should

        self.http = Server(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}{path}"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def crl_server() -> Iterator[CrlServer]:
    server = CrlServer()
    yield server
    server.close()


def test_a_url_alone_is_fetched_and_stored(admin_client: Client, ca_row, root, crl_server):
    crl = make_crl(root, number=11)
    crl_server.routes["/root.crl"] = (200, {"Content-Type": "application/pkix-crl"}, crl_der(crl))

    response = admin_client.post(upload_url(ca_row), {"url": crl_server.url("/root.crl")})

    assert response.status_code == 302
    stored = CertificateRevocationList.objects.get()
    assert bytes(stored.der) == crl_der(crl)
    assert stored.source == CertificateRevocationList.Source.URL
    assert stored.url == crl_server.url("/root.crl")
    assert stored.fetched_at is not None
    page = admin_client.get(ca_row.get_absolute_url()).content.decode()
    assert crl_server.url("/root.crl") in page


@pytest.mark.parametrize(
    ("route", "message"),
    [
        pytest.param((404, {}, b"gone"), "Distribution Point URL answered HTTP 404.", id="404"),
        pytest.param(
            (200, {"Content-Length": "omit"}, b"\x30" * (1024 * 1024 + 1)),
            "Distribution Point URL serves more than 1 MiB; the limit is 1 MiB.",
            id="oversized-undeclared",
        ),
        pytest.param(
            (302, {"Location": "/x.crl"}, b""),
            "Distribution Point URL redirects to /x.crl, which is refused",
            id="redirect-loop",
        ),
        pytest.param(
            (200, {}, b"\x30" * (1024 * 1024 + 1)),
            "Distribution Point URL serves 1.0 MiB; the limit is 1 MiB.",
            id="oversized-declared",
        ),
        pytest.param(
            (302, {"Location": "file:///etc/passwd"}, b""),
            "Distribution Point URL redirects to file:///etc/passwd, which is refused: only 3 "
            "redirects to http or https URLs are followed.",
            id="redirect-to-file",
        ),
        pytest.param(
            (200, {}, b"<html>login</html>"),
            "The CRL this URL serves is refused: CRL must be PEM text",
            id="html",
        ),
    ],
)
def test_a_bad_url_answer_is_explained_on_the_url_field(
    admin_client: Client, ca_row, crl_server, route, message
) -> None:
    crl_server.routes["/x.crl"] = route
    response = admin_client.post(upload_url(ca_row), {"url": crl_server.url("/x.crl")})
    assert response.status_code == 422
    [error] = response.context["form"].errors["url"]
    assert error.startswith(message)
    assert not CertificateRevocationList.objects.exists()


def test_a_foreign_crl_at_the_url_is_refused(admin_client: Client, ca_row, crl_server) -> None:
    crl_server.routes["/other.crl"] = (200, {}, crl_der(make_crl(make_ca("Url Stranger CA"))))
    response = admin_client.post(upload_url(ca_row), {"url": crl_server.url("/other.crl")})
    assert response.status_code == 422
    [error] = response.context["form"].errors["url"]
    assert error.startswith("The CRL this URL serves is refused: CRL is issued by ")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://127.0.0.1/root.crl", "must be an http:// or https:// URL"),
        ("http://user:secret@127.0.0.1/root.crl", "must not carry a user name or password"),
    ],
)
def test_only_plain_http_urls_are_accepted(admin_client: Client, ca_row, url, message) -> None:
    response = admin_client.post(upload_url(ca_row), {"url": url})
    assert response.status_code == 422
    [error] = response.context["form"].errors["url"]
    assert message in error


def test_refresh_stores_a_newer_crl_audits_and_pushes_it(
    admin_client: Client,
    ca_row,
    root,
    crl_server,
    instance,
    server_group,
    fake_node,
    eager_celery,
    django_capture_on_commit_callbacks,
) -> None:
    register_node(instance, fake_node.url)
    crl_server.routes["/root.crl"] = (200, {}, crl_der(make_crl(root, number=1)))
    admin_client.post(upload_url(ca_row), {"url": crl_server.url("/root.crl")})
    mutual_listener(instance, server_group, ca_row)
    mallory = make_client_cert(root, "mallory").cert
    newer = make_crl(root, revoked=[mallory], number=2)
    crl_server.routes["/root.crl"] = (200, {}, crl_pem(newer).encode())

    with django_capture_on_commit_callbacks(execute=True):
        assert refresh_crls() == {CertificateRevocationList.objects.get().pk: "fetched"}

    stored = CertificateRevocationList.objects.get()
    assert (stored.crl_number, stored.revoked_count, stored.last_fetch_error) == ("2", 1, "")
    assert fake_node.puts[-1]["ca_certificates"][0]["crls"] == [crl_pem(newer)]
    record = AuditRecord.objects.filter(action="certificate.upload_crl").latest("pk")
    assert record.actor == "system"


def test_refresh_keeps_the_stored_crl_and_shows_why_a_fetch_failed(
    admin_client: Client, ca_row, root, crl_server
) -> None:
    crl_server.routes["/root.crl"] = (200, {}, crl_der(make_crl(root, number=5)))
    admin_client.post(upload_url(ca_row), {"url": crl_server.url("/root.crl")})
    crl_server.routes["/root.crl"] = (200, {}, crl_der(make_crl(root, number=4)))

    assert list(refresh_crls().values()) == ["failed"]

    stored = CertificateRevocationList.objects.get()
    assert stored.crl_number == "5"
    assert stored.last_fetch_error.startswith("CRL number 4 is older than the stored CRL")
    page = admin_client.get(ca_row.get_absolute_url()).content.decode()
    assert "Last fetch failed: CRL number 4 is older" in page

    crl_server.routes["/root.crl"] = (500, {}, b"")
    assert list(refresh_crls().values()) == ["failed"]
    assert CertificateRevocationList.objects.get().last_fetch_error == (
        "Distribution Point URL answered HTTP 500."
    )


def test_page_flags_a_crl_that_no_longer_matches_a_replaced_ca(
    admin_client: Client, ca_row, root
) -> None:
    admin_client.post(upload_url(ca_row), {"crl": crl_pem(make_crl(root))})
    other = make_ca("Pages Client Root CA", slot="rekeyed")  # same name, another key
    response = admin_client.post(
        reverse("certificate-replace", args=[ca_row.id]), {"certificate": other.cert_pem}
    )
    assert response.status_code == 302
    page = admin_client.get(ca_row.get_absolute_url()).content.decode()
    assert "No longer matches this CA certificate: CRL names" in page


# -- the API ------------------------------------------------------------------------------------


@pytest.fixture
def api(admin_user) -> TokenClient:
    return TokenClient(tokens.issue_token(user=admin_user, name="ci", role="admin", days=1).secret)


@pytest.fixture
def viewer_api(admin_user) -> TokenClient:
    return TokenClient(tokens.issue_token(user=admin_user, name="ro", role="viewer", days=1).secret)


def test_api_uploads_lists_and_deletes_a_crl(api, ca_row, root) -> None:
    base = f"/api/v1/certificates/{ca_row.id}/crls"
    crl = make_crl(root, revoked=[make_client_cert(root, "mallory").cert], number=3)

    created = api.send("post", base, {"crl": crl_pem(crl)})

    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["issuer"], body["crl_number"], body["revoked_count"]) == (root.subject, "3", 1)
    assert body["crl_pem"] == crl_pem(crl)
    assert [item["id"] for item in api.get(base).json()] == [body["id"]]
    assert api.delete(f"{base}/{body['id']}").status_code == 204
    assert api.get(base).json() == []


def test_api_refuses_a_foreign_crl_with_a_problem_naming_the_field(api, ca_row) -> None:
    stranger = make_ca("Api Stranger CA")
    response = api.send(
        "post", f"/api/v1/certificates/{ca_row.id}/crls", {"crl": crl_pem(make_crl(stranger))}
    )
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["field"] == "crl"
    assert error["message"].startswith(f"CRL is issued by {stranger.subject}, not by this CA")
    assert not CertificateRevocationList.objects.exists()


def test_api_viewer_cannot_upload(viewer_api, ca_row, root) -> None:
    response = viewer_api.send(
        "post", f"/api/v1/certificates/{ca_row.id}/crls", {"crl": crl_pem(make_crl(root))}
    )
    assert response.status_code == 403
    assert not CertificateRevocationList.objects.exists()


# -- the whole way: page, worker, node, handshake -------------------------------------------


def handshake_answer(port: int, context: ssl.SSLContext) -> bytes | str:
    """What a client gets: the response bytes, or the TLS alert it was refused with."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="www.example.test") as tls:
                tls.sendall(
                    b"GET /crl HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n"
                )
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
                return answer
    except ssl.SSLError as error:
        return error.reason or str(error)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_an_uploaded_crl_reaches_the_node_and_refuses_the_revoked_client(
    stack: Stack, tmp_path: Path
) -> None:
    root = make_ca("Pipeline Client Root CA")
    material = make_server_cert("ec-p256", sans=["www.example.test"])
    with transaction.atomic():
        server = upload_certificate(
            name="www",
            kind="server",
            validated=validate_server_certificate(material.cert_pem, material.key_pem),
        )
        ca = upload_certificate(
            name="clients", kind="ca", validated=validate_ca_certificate(root.cert_pem)
        )
    stack.start_pipeline()
    port = free_port()
    with transaction.atomic():
        listener = create_listener(
            stack.instance,
            protocol=Listener.Protocol.HTTPS,
            port=port,
            name="mtls",
            settings={"mutual_authentication": True},
            server_group=stack.group,
            certificates={"default_certificate": server, "ca_certificate": ca},
        )
    wait_until(
        lambda: Listener.objects.get(pk=listener.pk).status == Listener.Status.RUNNING,
        timeout=30,
    )

    def client(name: str) -> tuple[ssl.SSLContext, object]:
        material_ = make_client_cert(root, name)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=material.root.cert_pem)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        bundle = tmp_path / f"{name}.pem"
        bundle.write_text(material_.bundle_pem())
        context.load_cert_chain(bundle)
        return context, material_.cert

    alice, _ = client("alice")
    mallory, mallory_cert = client("mallory")
    assert handshake_answer(port, mallory).startswith(b"HTTP/1.1 200")

    # When: the CRL revoking mallory is uploaded on the CA certificate's page.
    response = stack.client.post(
        reverse("crl-upload", args=[ca.id]),
        {"crl": crl_pem(make_crl(root, revoked=[mallory_cert]))},
    )
    assert response.status_code == 302

    # Then: the worker pushes it, the node refuses mallory at the handshake, and serves alice.
    wait_until(
        lambda: handshake_answer(port, mallory) == "SSLV3_ALERT_CERTIFICATE_REVOKED", timeout=30
    )
    served = len(stack.backend.requests)
    answer = handshake_answer(port, alice)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(stack.backend.name.encode())
    assert len(stack.backend.requests) == served + 1
    wait_until(
        lambda: Listener.objects.get(pk=listener.pk).status == Listener.Status.RUNNING,
        timeout=30,
    )
