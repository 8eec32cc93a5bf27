"""In a real Chromium: the API Tokens page (a token shown once) and the browsable API reference,
served from the console itself (no CDN) within the console's Content-Security-Policy."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from console.models import ApiToken
from tests.security.test_console_csp_browser import Violations

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_tokens_page_creates_a_token_shown_once_and_revokes_it(
    signed_in_page: Page, live_server
) -> None:
    page = signed_in_page
    violations = Violations()
    violations.watch(page)
    page.goto(f"{live_server.url}/instances/")
    page.get_by_label("User menu").click()
    page.get_by_role("link", name="API Tokens").click()

    page.get_by_label("Token Name").fill("terraform")
    page.get_by_label("Role").select_option("admin")
    page.get_by_role("button", name="Create Token").click()

    secret = page.locator("#new-token").inner_text()
    assert secret.startswith(ApiToken.objects.get(name="terraform").prefix)
    page.goto(f"{live_server.url}/tokens/")
    expect(page.locator("#new-token")).to_have_count(0)
    expect(page.get_by_role("cell", name="Active")).to_be_visible()
    page.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("cell", name="Revoked", exact=False)).to_be_visible()

    # The Audit Log has both changes, by this user, without the secret.
    page.get_by_label("User menu").click()
    page.get_by_role("link", name="Audit Log").click()
    expect(page.get_by_role("cell", name="token.create")).to_be_visible()
    expect(page.get_by_role("cell", name="token.revoke")).to_be_visible()
    page.get_by_label("Action").select_option("token.revoke")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("cell", name="token.create")).to_have_count(0)
    assert secret not in page.content()
    assert violations == []


def test_the_api_reference_renders_offline_within_the_policy(
    signed_in_page: Page, live_server
) -> None:
    page = signed_in_page
    violations = Violations()
    violations.watch(page)
    outside: list[str] = []
    page.on(
        "request",
        lambda request: (
            outside.append(request.url) if not request.url.startswith(live_server.url) else None
        ),
    )

    page.goto(f"{live_server.url}/api/v1/docs")

    expect(page.get_by_role("heading", name="Ferry Load Balancer API")).to_be_visible()
    expect(page.get_by_text("/api/v1/instances/{instance_id}/listeners").first).to_be_visible()
    assert outside == [] or all(url.startswith("data:") for url in outside)
    assert violations == []
