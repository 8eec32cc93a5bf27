"""A real browser uploads a server certificate through the file inputs and reads its details."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from certificates.models import Certificate
from tests.factories.certs import make_server_cert

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_upload_server_certificate_with_files(
    signed_in_page: Page, live_server, tmp_path: Path
) -> None:
    page = signed_in_page
    material = make_server_cert("ec-p256", chain_depth=1, sans=["shop.example.test"])
    files = {}
    for name, text in {
        "cert.pem": material.cert_pem,
        "key.pem": material.key_pem,
        "chain.pem": material.chain_pem,
    }.items():
        files[name] = tmp_path / name
        files[name].write_text(text)

    page.goto(live_server.url + "/certificates/")
    page.get_by_role("link", name="Upload Server Certificate").click()
    dialog = page.get_by_role("dialog", name="Upload Server Certificate")
    dialog.get_by_label("Certificate Name").fill("shop")
    dialog.get_by_label("Certificate file").set_input_files(files["cert.pem"])
    dialog.get_by_label("Private Key file").set_input_files(files["key.pem"])
    dialog.get_by_label("Certificate Chain file").set_input_files(files["chain.pem"])
    dialog.get_by_role("button", name="Upload", exact=True).click()

    expect(page.get_by_role("heading", name="shop", exact=True)).to_be_visible()
    expect(page.get_by_text(material.fingerprint_sha256)).to_be_visible()
    stored = Certificate.objects.get(name="shop")
    assert stored.fingerprint_sha256 == material.fingerprint_sha256

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Certificates").click()
    row = page.get_by_role("row").filter(has_text="shop")
    expect(row).to_contain_text(f"{stored.primary_domain} +1 more")
    expect(row).to_contain_text("ECDSA P-256")
    row.get_by_role("link", name="Details").click()
    expect(page.get_by_role("heading", name="Certificate Chain")).to_be_visible()


def test_bad_upload_shows_the_error_next_to_the_field(signed_in_page: Page, live_server) -> None:
    page = signed_in_page
    good, other = make_server_cert("ec-p256"), make_server_cert("ec-p256", slot=5)
    page.goto(live_server.url + "/certificates/upload/server/")
    page.get_by_label("Certificate Name").fill("mismatch")
    page.get_by_label("Certificate", exact=True).fill(good.cert_pem)
    page.get_by_label("Private Key", exact=True).fill(other.key_pem)
    page.get_by_role("button", name="Upload", exact=True).click()

    key_field = page.locator(".field").filter(has=page.get_by_label("Private Key", exact=True))
    expect(key_field.get_by_role("alert")).to_contain_text("does not match")
    # The rejected key is not echoed back into the page.
    expect(page.get_by_label("Private Key", exact=True)).to_have_value("")
    assert not Certificate.objects.exists()
