"""A real browser uploads a CRL file on a CA certificate's page, reads it back, and removes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from certificates.models import CertificateRevocationList
from certificates.validation import validate_ca_certificate
from listeners.services import upload_certificate
from tests.factories.certs import make_ca
from tests.factories.crls import crl_der, crl_pem, make_client_cert, make_crl

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_upload_a_der_crl_file_then_remove_it(
    signed_in_page: Page, live_server, tmp_path: Path
) -> None:
    page = signed_in_page
    root = make_ca("Browser Client Root CA")
    ca = upload_certificate(
        name="clients", kind="ca", validated=validate_ca_certificate(root.cert_pem)
    )
    crl = make_crl(
        root,
        revoked=[make_client_cert(root, "mallory").cert],
        number=9,
        next_update=datetime.now(UTC) + timedelta(days=3),
    )
    path = tmp_path / "clients.crl"
    path.write_bytes(crl_der(crl))

    page.goto(live_server.url + ca.get_absolute_url())
    panel = page.get_by_role("region", name="Certificate Revocation Lists")
    expect(panel).to_contain_text("No revocation lists")
    panel.get_by_role("link", name="Upload CRL").click()
    dialog = page.get_by_role("dialog", name="Upload Revocation List")
    dialog.get_by_label("CRL file").set_input_files(path)
    dialog.get_by_role("button", name="Upload", exact=True).click()

    row = panel.get_by_role("row").filter(has_text=root.subject)
    expect(row).to_contain_text("9")
    expect(row).to_contain_text(crl.next_update_utc.strftime("%Y-%m-%d %H:%M") + " UTC")
    expect(row).to_contain_text("Expires in")
    assert bytes(CertificateRevocationList.objects.get().der) == crl_der(crl)

    row.get_by_role("link", name="Remove").click()
    page.get_by_role("dialog", name="Remove Revocation List").get_by_role(
        "button", name="Remove"
    ).click()
    expect(panel).to_contain_text("No revocation lists")
    assert not CertificateRevocationList.objects.exists()


def test_an_expired_crl_is_explained_next_to_the_field(signed_in_page: Page, live_server):
    page = signed_in_page
    root = make_ca("Browser Client Root CA")
    ca = upload_certificate(
        name="clients", kind="ca", validated=validate_ca_certificate(root.cert_pem)
    )
    now = datetime.now(UTC)
    stale = make_crl(root, this_update=now - timedelta(days=9), next_update=now - timedelta(days=2))

    page.goto(live_server.url + f"/certificates/{ca.id}/crls/upload/")
    page.get_by_label("CRL", exact=True).fill(crl_pem(stale))
    page.get_by_role("button", name="Upload", exact=True).click()

    field = page.locator(".field").filter(has=page.get_by_label("CRL", exact=True))
    expect(field.get_by_role("alert")).to_contain_text("CRL expired on")
    assert not CertificateRevocationList.objects.exists()
