"""An operator issues a certificate with ACME in Chromium: the dialog, then the issuance's page
polling until the real worker, the real node and pebble are done."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

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
