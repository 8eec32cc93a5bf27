"""An operator issues a certificate with ACME in Chromium: the dialog, then the issuance's page
polling until the real worker, the real node and pebble are done."""

from __future__ import annotations

import re
import socket
import ssl

import pytest
from cryptography import x509
from playwright.sync_api import Page, expect

from certificates.models import Certificate
from tests.fixtures.ports import free_port
from tests.fixtures.processes import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.timeout(240),
]


def test_issue_with_acme_in_the_browser(
    signed_in_page: Page, live_server, stack, pebble, monkeypatch
):
    monkeypatch.setenv("ACME_CA_BUNDLE", str(pebble.ca_bundle))
    monkeypatch.setenv("ACME_HTTP01_PORT", str(pebble.http_port))
    monkeypatch.setenv("ACME_TLS_ALPN01_PORT", str(pebble.tls_port))
    stack.start_pipeline()
    stack.add_listener(pebble.http_port, "web-80")
    page = signed_in_page

    page.goto(f"{live_server.url}/certificates/")
    page.get_by_role("link", name="Issue with ACME").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Certificate Name", exact=True).fill("shop")
    dialog.get_by_label("Domain Names", exact=True).fill("shop.example.test")
    dialog.get_by_label("Certificate Authority", exact=True).select_option("custom")
    dialog.get_by_label("ACME Directory URL", exact=True).fill(pebble.directory_url)
    dialog.get_by_label("Contact Email", exact=True).fill("ops@example.org")
    dialog.get_by_label("Challenge", exact=True).select_option("http-01")
    dialog.get_by_label("Answered by Instance", exact=True).select_option(stack.instance.pk)
    dialog.get_by_label("I agree").check()
    dialog.get_by_role("button", name="Issue").click()

    expect(page).to_have_url(re.compile(r"/certificates/acme/acme-[a-z0-9]+/$"))
    # The panel polls itself: the attempt goes from queued/running to its outcome.
    expect(page.locator('[data-attempt-state="succeeded"]')).to_be_visible(timeout=90_000)
    page.locator("#acme-panel").get_by_role("link", name=re.compile(r"^cert-")).click()
    expect(page.get_by_role("heading", name="Automatic Certificate (ACME)")).to_be_visible()
    expect(page.get_by_text("shop.example.test").first).to_be_visible()


def test_issue_with_acme_from_the_wizards_ssl_step(
    signed_in_page: Page, live_server, stack, pebble, monkeypatch
):
    """The wizard's SSL Certificate step: Issue with ACME in a dialog, the step follows the
    order until the CA has issued, one click selects the certificate, and the listener the
    wizard creates serves it."""
    monkeypatch.setenv("ACME_CA_BUNDLE", str(pebble.ca_bundle))
    monkeypatch.setenv("ACME_HTTP01_PORT", str(pebble.http_port))
    monkeypatch.setenv("ACME_TLS_ALPN01_PORT", str(pebble.tls_port))
    stack.start_pipeline()
    stack.add_listener(pebble.http_port, "web-80")
    port = free_port()
    page = signed_in_page

    page.goto(f"{live_server.url}/instances/{stack.instance.id}/listeners/")
    page.get_by_role("link", name="Create Listener", exact=True).click()
    page.get_by_label("Listener Protocol", exact=True).select_option("HTTPS")
    # The protocol re-renders the step: wait for it before typing into it.
    expect(page.get_by_label("Listener Port", exact=True)).to_have_value("443")
    page.get_by_label("Listener Port", exact=True).fill(str(port))
    page.get_by_label("Listener Name", exact=True).fill("shop-https")
    page.get_by_role("button", name="Next", exact=True).click()
    page.get_by_role("link", name="Issue with ACME").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Certificate Name", exact=True).fill("shop")
    dialog.get_by_label("Domain Names", exact=True).fill("shop.example.test")
    dialog.get_by_label("Certificate Authority", exact=True).select_option("custom")
    dialog.get_by_label("ACME Directory URL", exact=True).fill(pebble.directory_url)
    dialog.get_by_label("Contact Email", exact=True).fill("ops@example.org")
    # The wizard's instance is already chosen: it answers the challenge.
    expect(dialog.get_by_label("Answered by Instance", exact=True)).to_have_value(stack.instance.pk)
    dialog.get_by_label("Challenge", exact=True).select_option("http-01")
    dialog.get_by_label("I agree").check()
    dialog.get_by_role("button", name="Issue").click()

    # Back in the same step, which follows the order until the CA has issued.
    expect(page).to_have_url(re.compile(r"/listeners/create/certificate/\?acme=acme-"))
    use = page.locator("#acme-wizard").get_by_role(
        "link", name="Use shop as the Server Certificate"
    )
    expect(use).to_be_visible(timeout=90_000)
    use.click()
    certificate = Certificate.objects.get(name="shop")
    expect(page.get_by_label("Server Certificate", exact=True)).to_have_value(certificate.pk)
    page.get_by_role("button", name="Next", exact=True).click()
    page.get_by_role("radio", name="Select Existing Server Group").check()
    page.get_by_label("Select Server Group", exact=True).select_option(label=str(stack.group))
    page.get_by_role("button", name="Next", exact=True).click()
    page.get_by_role("button", name="Next", exact=True).click()
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", name="shop-https", exact=True)).to_be_visible()

    # The listener serves the issued certificate, whose chain leads to pebble's root.
    context = ssl.create_default_context(cadata=pebble.root_pem())
    serial = int(certificate.serial.replace(":", ""), 16)

    def served() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="shop.example.test") as tls:
                der = tls.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number == serial

    wait_until(served, timeout=30)
