"""The upload form with files: the whole file's size, which file a problem is in, and what a
failed upload keeps (a browser cannot fill a file input again)."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from certificates.models import Certificate
from tests.factories.certs import make_expired_server_cert, make_server_cert, one_mib_blob

pytestmark = pytest.mark.django_db
UPLOAD_SERVER = reverse("certificate-upload", args=["server"])
UPLOAD_CA = reverse("certificate-upload", args=["ca"])


def a_file(name: str, content: str | bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content.encode() if isinstance(content, str) else content)


def test_a_1_mib_certificate_file_is_reported_at_its_real_size(admin_client: Client) -> None:
    material = make_server_cert("ec-p256")
    blob = one_mib_blob()

    response = admin_client.post(
        UPLOAD_SERVER,
        {
            "name": "big",
            "certificate_file": a_file("big.pem", blob),
            "private_key": material.key_pem,
        },
    )

    assert response.status_code == 422
    assert response.context["form"].errors["certificate"] == [
        f"The Certificate file big.pem is {len(blob) // 1024} KiB; the limit is 64 KiB."
    ]
    assert Certificate.objects.count() == 0


def test_a_pasted_field_over_the_limit_is_reported_at_its_size(admin_client: Client) -> None:
    material = make_server_cert("ec-p256")

    response = admin_client.post(
        UPLOAD_SERVER,
        {"name": "big", "certificate": "A" * (100 * 1024), "private_key": material.key_pem},
    )

    assert response.status_code == 422
    assert response.context["form"].errors["certificate"] == [
        "Certificate is 100 KiB; the limit is 64 KiB."
    ]


def test_a_file_that_is_not_pem_is_named_and_not_told_to_paste(admin_client: Client) -> None:
    material = make_server_cert("ec-p256")

    response = admin_client.post(
        UPLOAD_SERVER,
        {
            "name": "notes",
            "certificate_file": a_file("notes.txt", "my certificate\n" + material.cert_pem),
            "private_key": material.key_pem,
        },
    )

    assert response.status_code == 422
    (message,) = response.context["form"].errors["certificate"]
    assert message == (
        "In the chosen file notes.txt: Certificate must be PEM text: line 1 is outside any "
        "BEGIN/END block; keep only the blocks."
    )
    assert "paste" not in message.lower()


def test_after_an_error_the_certificate_and_chain_files_are_kept_as_text(
    admin_client: Client,
) -> None:
    # Given a certificate and chain chosen as files, and a key that does not match
    material = make_server_cert("ec-p256", chain_depth=1)
    other = make_server_cert("rsa-2048")

    response = admin_client.post(
        UPLOAD_SERVER,
        {
            "name": "shop",
            "certificate_file": a_file("shop.pem", material.cert_pem),
            "chain_file": a_file("chain.pem", material.chain_pem),
            "private_key_file": a_file("shop.key", other.key_pem),
        },
    )

    # Then the form comes back with the files' text in the textareas, the key not echoed,
    # and a line under each field saying what happened to its file
    assert response.status_code == 422
    page = response.content.decode()
    assert material.cert_pem.strip() in page
    assert material.chain_pem.strip() in page
    assert other.key_pem.strip().splitlines()[1] not in page
    assert "The text of shop.pem is kept in the field above." in page
    assert "The text of chain.pem is kept in the field above." in page
    assert "Choose shop.key again, or another file." in page

    # When the operator chooses only the right key file and submits the kept text
    form = response.context["form"]
    response = admin_client.post(
        UPLOAD_SERVER,
        {
            "name": "shop",
            "certificate": form["certificate"].value(),
            "chain": form["chain"].value(),
            "private_key_file": a_file("shop.key", material.key_pem),
        },
    )

    # Then the upload succeeds with the certificate from the first attempt
    assert response.status_code == 302
    stored = Certificate.objects.get(name="shop")
    assert stored.fingerprint_sha256 == material.fingerprint_sha256


def test_pasted_text_is_kept_after_an_error_and_a_pasted_key_is_asked_for_again(
    admin_client: Client,
) -> None:
    material = make_expired_server_cert("ec-p256")

    response = admin_client.post(
        UPLOAD_SERVER,
        {"name": "old", "certificate": material.cert_pem, "private_key": material.key_pem},
    )

    assert response.status_code == 422
    page = response.content.decode()
    assert material.cert_pem.strip() in page
    assert material.key_pem.strip().splitlines()[1] not in page
    assert "Paste the Private Key again: it is never sent back." in page


def test_a_binary_file_is_not_carried_into_the_textarea(admin_client: Client) -> None:
    material = make_server_cert("ec-p256")
    der = material.cert_der

    response = admin_client.post(
        UPLOAD_SERVER,
        {
            "name": "der",
            "certificate_file": a_file("cert.der", der),
            "private_key": material.key_pem,
        },
    )

    assert response.status_code == 422
    (message,) = response.context["form"].errors["certificate"]
    assert message.startswith("In the chosen file cert.der: Certificate must be PEM text")
    assert response.context["form"]["certificate"].value() in (None, "")
    assert "Choose cert.der again, or another file." in response.content.decode()


def test_certificate_and_private_key_are_marked_required(admin_client: Client) -> None:
    response = admin_client.get(UPLOAD_SERVER)
    form = response.context["form"]

    assert form.fields["certificate"].marked_required
    assert form.fields["private_key"].marked_required
    assert not getattr(form.fields["chain"], "marked_required", False)
    page = response.content.decode()
    assert page.count('class="field required"') == 3  # name, certificate, private key
    ca_page = admin_client.get(UPLOAD_CA).content.decode()
    assert ca_page.count('class="field required"') == 2  # name, CA certificate
