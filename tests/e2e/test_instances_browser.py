"""A real browser signs in, opens Instances, creates one and sees it listed."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from console.models import Instance
from tests.fixtures.users import PASSWORD

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_sign_in_and_create_an_instance(page: Page, live_server, admin_user) -> None:
    page.set_default_timeout(10_000)
    page.goto(live_server.url + "/instances/")
    expect(page).to_have_url(f"{live_server.url}/accounts/login/?next=/instances/")

    page.get_by_label("Username").fill(admin_user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    expect(page.get_by_role("heading", name="Instances")).to_be_visible()
    page.get_by_role("link", name="Create Instance").click()
    dialog = page.get_by_role("dialog", name="Create Instance")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Instance Name").fill("browser-made")
    dialog.get_by_label("Edition").select_option("Basic")
    dialog.get_by_role("button", name="OK").click()

    expect(page.get_by_role("status").filter(has_text="browser-made")).to_be_visible()
    row = page.get_by_role("row").filter(has_text="browser-made")
    expect(row).to_contain_text("Basic")
    stored = Instance.objects.get(name="browser-made")
    expect(row).to_contain_text(stored.id)
    assert stored.edition == "basic"
