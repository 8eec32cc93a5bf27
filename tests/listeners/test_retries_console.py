"""Retries and the Retry Budget in the console: offered on HTTP, HTTPS and QUIC listeners in the
wizard and Modify Listener, validated next to the field with the same message in the API, saved
through the service (audited, generation bumped), in the snapshot, shown on the details page and
kept by a backup."""

from __future__ import annotations

import html

import pytest
from django.urls import reverse

from console import backup, tokens
from console.models import AuditRecord, Instance
from console.snapshot import build_snapshot
from listeners.models import Listener
from tests.api.conftest import TokenClient
from tests.fixtures.listeners import make_listener
from tests.listeners.test_wizard import ADVANCED_DEFAULTS, step_url, walk_http_wizard

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(admin_user) -> TokenClient:
    return TokenClient(tokens.issue_token(user=admin_user, name="ci", role="admin", days=30).secret)


def settled(listener: Listener) -> Listener:
    """As after every node applied it: Running, edits allowed."""
    Listener.objects.filter(pk=listener.pk).update(status="running", configuring_since=None)
    return Listener.objects.get(pk=listener.pk)


def modify(client, listener: Listener, **fields):
    return client.post(
        reverse("listener-modify", args=[listener.instance_id, listener.id]),
        {**ADVANCED_DEFAULTS, "name": listener.name, **fields},
    )


@pytest.mark.parametrize("protocol", ["http", "https", "quic"])
def test_modify_offers_retries_on_layer7_listeners_with_what_they_do(
    admin_client, instance, server_group, protocol
) -> None:
    listener = settled(make_listener(instance, server_group, protocol=protocol, port=443))
    page = admin_client.get(reverse("listener-modify", args=[instance.id, listener.id]))
    text = html.unescape(page.content.decode())
    assert 'name="retries"' in text and 'name="retry_budget_percent"' in text
    assert "Retry Budget (%)" in text
    assert "502 or 503 to a GET, HEAD, OPTIONS, TRACE, PUT or DELETE without a request body" in (
        text
    )
    assert "at most this share of the listener's requests over the last 10 seconds" in text


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_layer4_listeners_neither_offer_nor_keep_retries(
    admin_client, instance, server_group, protocol
) -> None:
    listener = settled(make_listener(instance, server_group, protocol=protocol, port=5300))
    page = admin_client.get(reverse("listener-modify", args=[instance.id, listener.id]))
    assert 'name="retries"' not in page.content.decode()

    # A crafted POST cannot set them: they stay at their defaults.
    response = modify(admin_client, listener, retries="3", retry_budget_percent="90")
    assert response.status_code == 302, response.context and response.context["form"].errors
    listener.refresh_from_db()
    assert (listener.retries, listener.retry_budget_percent) == (1, 20)


def test_modify_saves_through_the_service_into_the_snapshot(
    admin_client, instance, server_group
) -> None:
    listener = settled(make_listener(instance, server_group))
    before = Instance.objects.get(pk=instance.pk).generation

    response = modify(admin_client, listener, retries="3", retry_budget_percent="50")

    assert response.status_code == 302, response.context and response.context["form"].errors
    listener.refresh_from_db()
    assert (listener.retries, listener.retry_budget_percent) == (3, 50)
    assert listener.status == "configuring"
    assert Instance.objects.get(pk=instance.pk).generation == before + 1
    assert AuditRecord.objects.filter(action="listener.modify", object_id=listener.id).exists()
    [compiled] = build_snapshot(Instance.objects.get(pk=instance.pk)).listeners
    assert (compiled.retries, compiled.retry_budget_percent) == (3, 50)

    settled(listener)
    detail = admin_client.get(listener.get_absolute_url()).content.decode()
    assert "Up to 3 on another server; Retry Budget 50% of requests" in detail


def test_zero_retries_is_kept_and_shown_as_off(admin_client, instance, server_group) -> None:
    listener = settled(make_listener(instance, server_group))
    response = modify(admin_client, listener, retries="0")
    assert response.status_code == 302
    listener.refresh_from_db()
    assert listener.retries == 0
    settled(listener)
    detail = admin_client.get(listener.get_absolute_url()).content.decode()
    assert '<dd id="retries">Off</dd>' in detail


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("retries", "4", "Retries must be 0-3."),
        ("retries", "-1", "Retries must be 0-3."),
        ("retry_budget_percent", "0", "Retry Budget must be 1-100 %."),
        ("retry_budget_percent", "101", "Retry Budget must be 1-100 %."),
    ],
)
def test_out_of_range_values_are_refused_next_to_the_field_page_and_api_alike(
    admin_client, api, instance, server_group, field, value, message
) -> None:
    listener = settled(make_listener(instance, server_group))

    page = modify(admin_client, listener, **{field: value})
    refused = api.send(
        "patch",
        f"/api/v1/instances/{instance.id}/listeners/{listener.id}",
        {field: int(value)},
    )

    assert page.status_code == 422
    assert page.context["form"].errors[field] == [message]
    assert refused.status_code == 422
    [error] = refused.json()["errors"]
    assert (error["field"], error["message"]) == (field, message)
    listener.refresh_from_db()
    assert (listener.retries, listener.retry_budget_percent) == (1, 20)


def test_the_api_sets_and_reports_them(api, instance, server_group) -> None:
    listener = settled(make_listener(instance, server_group))
    response = api.send(
        "patch",
        f"/api/v1/instances/{instance.id}/listeners/{listener.id}",
        {"retries": 2, "retry_budget_percent": 35},
    )
    assert response.status_code == 200, response.content
    settings = response.json()["settings"]
    assert (settings["retries"], settings["retry_budget_percent"]) == (2, 35)
    # Fields not sent keep their value.
    settled(listener)
    response = api.send(
        "patch",
        f"/api/v1/instances/{instance.id}/listeners/{listener.id}",
        {"idle_timeout": 30},
    )
    assert response.status_code == 200, response.content
    assert response.json()["settings"]["retries"] == 2


def test_the_wizard_takes_them_in_advanced_settings(admin_client, instance) -> None:
    options = admin_client.get(
        reverse("listener-wizard-options", args=[instance.id]), {"protocol": "quic"}
    )
    assert 'name="retries"' in options.content.decode()

    confirm = walk_http_wizard(admin_client, instance, retries="2", retry_budget_percent="30")
    rows = dict(row for _, _, rows in confirm.context["summary"] for row in rows)
    assert (rows["Retries"], rows["Retry Budget (%)"]) == ("2", "30")
    created = admin_client.post(
        step_url(instance, "confirm"), {"token": confirm.context["token"], "action": "submit"}
    )
    assert created.status_code == 302
    listener = Listener.objects.get()
    assert (listener.retries, listener.retry_budget_percent) == (2, 30)
    assert build_snapshot(instance).listeners[0].retries == 2


def test_a_backup_keeps_them(instance, server_group) -> None:
    make_listener(instance, server_group, retries=3, retry_budget_percent=55)
    make_listener(instance, server_group, port=81, retries=0)
    document = backup.export_instance(instance, "a passphrase of length")

    imported = backup.import_instance(
        document=document, passphrase="a passphrase of length", name="copy"
    )

    kept = {listener.port: listener for listener in imported.listeners}
    assert (kept[80].retries, kept[80].retry_budget_percent) == (3, 55)
    assert (kept[81].retries, kept[81].retry_budget_percent) == (0, 20)


# -- in the browser --------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_browser_sets_retries_from_the_listener_page(signed_in_page, live_server) -> None:
    from playwright.sync_api import expect

    from listeners.models import ServerGroup

    instance = Instance.objects.create(name="shop")
    group = ServerGroup.objects.create(name="web")
    listener = settled(make_listener(instance, group))
    page = signed_in_page
    page.goto(live_server.url + listener.get_absolute_url())

    page.get_by_role("link", name="Modify Listener").click()
    dialog = page.get_by_role("dialog")
    retries = dialog.get_by_label("Retries", exact=True)
    expect(retries).to_have_value("1")
    expect(retries).to_have_attribute("max", "3")
    # The server's own message, next to the field, for what the browser's range would stop.
    retries.evaluate("field => field.removeAttribute('max')")
    retries.fill("5")
    dialog.get_by_role("button", name="Save").click()
    expect(page.get_by_role("dialog")).to_contain_text("Retries must be 0-3.")

    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Retries", exact=True).fill("2")
    dialog.get_by_label("Retry Budget (%)").fill("40")
    dialog.get_by_role("button", name="Save").click()
    expect(page.locator("#retries")).to_have_text(
        "Up to 2 on another server; Retry Budget 40% of requests"
    )
    listener.refresh_from_db()
    assert (listener.retries, listener.retry_budget_percent) == (2, 40)
