"""Certificate pages: upload through the form, storage at rest, details, replace, delete."""

from __future__ import annotations

import io
import logging

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import connection
from django.test import Client, override_settings
from django.urls import reverse

from certificates import keystore
from certificates.acme import new_account_key
from certificates.acme_models import AcmeAccount
from certificates.models import Certificate
from tests.certificates.test_validation import BAD_CA_UPLOADS, BAD_SERVER_UPLOADS, BadUpload
from tests.factories.certs import (
    ALLOWED_KEY_TYPES,
    PASSPHRASE,
    make_ca,
    make_server_cert,
    with_crlf,
)

pytestmark = pytest.mark.django_db
UPLOAD_SERVER = reverse("certificate-upload", args=["server"])
UPLOAD_CA = reverse("certificate-upload", args=["ca"])


def form_data(fields: dict, name: str = "www") -> tuple[dict, dict]:
    """Text goes in the textarea; bytes (DER, PKCS#12, UTF-16, blobs) go in as a file."""
    data: dict = {"name": name}
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, bytes):
            data[f"{key}_file"] = SimpleUploadedFile(f"{key}.bin", value)
        else:
            data[key] = value
    return data, {}


@pytest.mark.parametrize("case", BAD_SERVER_UPLOADS, ids=lambda case: case.name)
def test_bad_upload_is_explained_on_its_field_and_saves_nothing(
    admin_client: Client, case: BadUpload
) -> None:
    data, _ = form_data(case.build())

    response = admin_client.post(UPLOAD_SERVER, data)

    assert response.status_code == 422
    errors = response.context["form"].errors
    assert case.field in errors, errors
    assert any(case.message in message for message in errors[case.field])
    assert Certificate.objects.count() == 0


@pytest.mark.parametrize("case", BAD_CA_UPLOADS, ids=lambda case: case.name)
def test_bad_ca_upload_is_explained_and_saves_nothing(admin_client: Client, case) -> None:
    data, _ = form_data(case.build())

    response = admin_client.post(UPLOAD_CA, data)

    assert response.status_code == 422
    assert any(case.message in m for m in response.context["form"].errors["certificate"])
    assert Certificate.objects.count() == 0


@pytest.mark.parametrize("key_type", sorted(ALLOWED_KEY_TYPES))
def test_every_allowed_key_type_uploads_and_shows_its_details(
    admin_client: Client, key_type: str
) -> None:
    material = make_server_cert(
        key_type, chain_depth=1, sans=["www.example.test", "api.example.test"]
    )

    response = admin_client.post(
        UPLOAD_SERVER,
        {
            "name": "site",
            "certificate": material.cert_pem,
            "private_key": material.key_pem,
            "chain": material.chain_pem,
        },
    )

    assert response.status_code == 302
    stored = Certificate.objects.get()
    assert stored.key_type == ALLOWED_KEY_TYPES[key_type]
    assert stored.fingerprint_sha256 == material.fingerprint_sha256
    assert stored.primary_domain == "www.example.test"
    detail = admin_client.get(stored.get_absolute_url())
    assert material.fingerprint_sha256.encode() in detail.content
    assert b"api.example.test" in detail.content
    assert len(stored.chain_summary) == 1
    listing = admin_client.get(reverse("certificate-list"))
    assert b"+1 more" in listing.content


def test_files_and_crlf_text_are_accepted(admin_client: Client) -> None:
    material = make_server_cert("rsa-2048", chain_depth=2)
    response = admin_client.post(
        UPLOAD_SERVER,
        {
            "name": "from-files",
            "certificate_file": SimpleUploadedFile("cert.pem", material.cert_pem.encode()),
            "private_key_file": SimpleUploadedFile("key.pem", material.key_pem.encode()),
            "chain": with_crlf(material.chain_pem),
        },
    )
    assert response.status_code == 302
    stored = Certificate.objects.get()
    assert "\r" not in stored.chain_pem
    assert len(stored.chain_summary) == 2


def test_encrypted_key_with_passphrase_is_stored_decrypted_then_encrypted_at_rest(
    admin_client: Client,
) -> None:
    material = make_server_cert("ec-p384")
    response = admin_client.post(
        UPLOAD_SERVER,
        {
            "name": "enc",
            "certificate": material.cert_pem,
            "private_key": material.key_pem_as("pkcs8", PASSPHRASE),
            "passphrase": PASSPHRASE,
        },
    )
    assert response.status_code == 302
    stored = Certificate.objects.get()
    assert "ENCRYPTED" not in stored.private_key_pem()
    assert stored.private_key_pem().startswith("-----BEGIN PRIVATE KEY-----")


def _all_text_in_database() -> str:
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')  # table names come from introspection
            for row in cursor.fetchall():
                chunks.extend(str(value) for value in row)
    return "\n".join(chunks)


def test_private_key_never_appears_in_pages_logs_or_database(
    admin_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = make_server_cert("ec-p256")
    other = make_server_cert("ec-p256", slot=2)
    responses = [
        admin_client.post(
            UPLOAD_SERVER,
            {"name": "good", "certificate": good.cert_pem, "private_key": good.key_pem},
            follow=True,
        ),
        # A failed upload (wrong key) must not echo the pasted key back into the form.
        admin_client.post(
            UPLOAD_SERVER,
            {"name": "bad", "certificate": good.cert_pem, "private_key": other.key_pem},
        ),
    ]
    stored = Certificate.objects.get()
    responses += [
        admin_client.get(reverse("certificate-list")),
        admin_client.get(stored.get_absolute_url()),
        admin_client.get(reverse("certificate-replace", args=[stored.id])),
    ]
    assert responses[1].status_code == 422
    for response in responses:
        assert b"PRIVATE KEY" not in response.content
    assert "PRIVATE KEY" not in caplog.text
    assert "PRIVATE KEY" not in _all_text_in_database()
    assert keystore.decrypt_private_key(stored.private_key_token) == good.key_pem


def test_rotating_encryption_keys_keeps_every_key_readable(admin_client: Client) -> None:
    from cryptography.fernet import Fernet

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    materials = [make_server_cert(k) for k in ("ec-p256", "rsa-2048")]
    with override_settings(CERT_ENCRYPTION_KEYS=[old]):
        for index, material in enumerate(materials):
            admin_client.post(
                UPLOAD_SERVER,
                {
                    "name": f"c{index}",
                    "certificate": material.cert_pem,
                    "private_key": material.key_pem,
                },
            )
        account_key = new_account_key()
        account = AcmeAccount.objects.create(
            directory_url="https://acme.test/directory",
            email="ops@example.com",
            private_key_token=keystore.encrypt_private_key(account_key),
        )
    assert Certificate.objects.count() == 2
    output = io.StringIO()
    with override_settings(CERT_ENCRYPTION_KEYS=[new, old]):
        call_command("rotate_certificate_keys", stdout=output)
    assert "Rotated 2 private keys and 1 ACME account keys" in output.getvalue()
    with override_settings(CERT_ENCRYPTION_KEYS=[new]):
        readable = {c.name: c.private_key_pem() for c in Certificate.objects.all()}
        account.refresh_from_db()
        assert account.private_key_pem() == account_key
    assert readable == {"c0": materials[0].key_pem, "c1": materials[1].key_pem}
    # Under the old key alone the account key no longer opens: it really was re-encrypted.
    with override_settings(CERT_ENCRYPTION_KEYS=[old]), pytest.raises(keystore.KeystoreError):
        account.private_key_pem()


def test_ca_certificate_upload(admin_client: Client) -> None:
    ca = make_ca("Client Root CA")
    response = admin_client.post(UPLOAD_CA, {"name": "clients", "certificate": ca.cert_pem})
    assert response.status_code == 302
    stored = Certificate.objects.get()
    assert stored.kind == Certificate.Kind.CA
    assert stored.private_key_token == ""


def test_replace_keeps_the_id_and_changes_the_certificate(admin_client: Client) -> None:
    first, second = make_server_cert("ec-p256"), make_server_cert("rsa-2048")
    admin_client.post(
        UPLOAD_SERVER, {"name": "site", "certificate": first.cert_pem, "private_key": first.key_pem}
    )
    stored = Certificate.objects.get()
    response = admin_client.post(
        reverse("certificate-replace", args=[stored.id]),
        {"certificate": second.cert_pem, "private_key": second.key_pem},
    )
    assert response.status_code == 302
    stored.refresh_from_db()
    assert stored.fingerprint_sha256 == second.fingerprint_sha256
    assert stored.name == "site"


def test_replace_with_bad_input_changes_nothing(admin_client: Client) -> None:
    first, other = make_server_cert("ec-p256"), make_server_cert("ec-p256", slot=3)
    admin_client.post(
        UPLOAD_SERVER, {"name": "site", "certificate": first.cert_pem, "private_key": first.key_pem}
    )
    stored = Certificate.objects.get()
    response = admin_client.post(
        reverse("certificate-replace", args=[stored.id]),
        {"certificate": first.cert_pem, "private_key": other.key_pem},
    )
    assert response.status_code == 422
    assert "private_key" in response.context["form"].errors
    stored.refresh_from_db()
    assert stored.private_key_pem() == first.key_pem


def test_delete_certificate(admin_client: Client) -> None:
    material = make_server_cert("ec-p256")
    admin_client.post(
        UPLOAD_SERVER,
        {"name": "x", "certificate": material.cert_pem, "private_key": material.key_pem},
    )
    stored = Certificate.objects.get()
    assert admin_client.post(reverse("certificate-delete", args=[stored.id])).status_code == 302
    assert not Certificate.objects.exists()


def test_viewer_can_read_but_not_upload(viewer_client: Client) -> None:
    material = make_server_cert("ec-p256")
    assert viewer_client.get(reverse("certificate-list")).status_code == 200
    response = viewer_client.post(
        UPLOAD_SERVER,
        {"name": "x", "certificate": material.cert_pem, "private_key": material.key_pem},
    )
    assert response.status_code == 403
    assert not Certificate.objects.exists()


def test_expiry_flags_in_the_list(admin_client: Client) -> None:
    from datetime import UTC, datetime, timedelta

    soon = make_server_cert("ec-p256", not_after=datetime.now(UTC) + timedelta(days=10))
    admin_client.post(
        UPLOAD_SERVER, {"name": "soon", "certificate": soon.cert_pem, "private_key": soon.key_pem}
    )
    listing = admin_client.get(reverse("certificate-list"))
    assert b"Expires in" in listing.content
    search = admin_client.get(reverse("certificate-list"), {"q": "nothing-matches"})
    assert b"soon" not in search.content.split(b"<tbody>")[1]
