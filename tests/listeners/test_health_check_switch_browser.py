"""Enable Health Check's fields follow their switch, as the Passive Health Check numbers do.

While "Enable Health Check" is off, the wizard's Health Check step and the details page's Modify
Health Check dialog hide the active check's fields (console.css, on the health check form only),
the wizard's Confirm summary leaves them out, and a save succeeds. The Passive Health Check
switch stays in sight: passive checks do not need active ones (dataplane.node judges them apart).
Server-side validation is unchanged: a field with an error stays in sight whatever the switch.
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from console.models import Instance
from listeners.forms.listener import ACTIVE_FIELDS, HealthCheckForm
from listeners.models import BackendServer, HealthCheck, Listener, ServerGroup
from listeners.wizard import summary
from tests.fixtures.listeners import make_listener
from tests.listeners.test_wizard import ADVANCED_DEFAULTS, post_step, servers_data, step_url

pytestmark = pytest.mark.django_db

HEALTH_CHECK = {
    "protocol": "http",
    "path": "/healthz",
    "interval": "5",
    "timeout": "2",
    "healthy_threshold": "3",
    "unhealthy_threshold": "3",
    "expected_codes": ["http_2xx"],
}
ACTIVE_LABELS = {
    "Health Check Protocol",
    "Domain Name",
    "Health Check Port",
    "Health Check Path",
    "Health Check Interval (s)",
    "Response Timeout (s)",
    "Healthy Threshold",
    "Unhealthy Threshold",
    "Health Check Status Codes",
}
UDP_LABELS = {"Health Check Request", "Health Check Response"}


# -- the Confirm summary -------------------------------------------------------------------------


def confirm_rows(client: Client, instance: Instance, switch: str) -> list[tuple[str, str]]:
    """The Confirm step's Health Check rows after walking the wizard with the switch as given."""
    response = post_step(
        client,
        instance,
        "protocol",
        {"protocol": "http", "port": "80", "name": "web", **ADVANCED_DEFAULTS},
    )
    assert response.status_code == 302, response.context["form"].errors
    response = post_step(
        client,
        instance,
        "servergroup",
        {"group_mode": "new", "new_group_name": "web-pool", "new_backend_protocol": "http"}
        | servers_data([("127.0.0.1", 8081, 1)]),
    )
    assert response.status_code == 302
    data = {**HEALTH_CHECK, "enabled": switch} if switch else dict(HEALTH_CHECK)
    response = post_step(client, instance, "healthcheck", data)
    assert response.status_code == 302, response.context["form"].errors
    assert response["Location"] == step_url(instance, "confirm")
    confirm = client.get(step_url(instance, "confirm"))
    assert confirm.status_code == 200
    [rows] = [rows for name, _, rows in confirm.context["summary"] if name == "healthcheck"]
    return [(str(label), str(value)) for label, value in rows]


@pytest.mark.parametrize("switch", ["on", ""])
def test_confirm_lists_the_active_fields_only_while_the_switch_is_on(
    admin_client: Client, instance: Instance, switch: str
) -> None:
    rows = confirm_rows(admin_client, instance, switch)
    labels = {label for label, _ in rows}
    assert "Enable Health Check" in labels
    # Passive checks are independent of active ones: the switch is listed either way.
    assert "Passive Health Check" in labels
    if switch:
        assert ACTIVE_LABELS <= labels
    else:
        assert not ACTIVE_LABELS & labels, labels
    page = admin_client.get(step_url(instance, "confirm")).content.decode()
    assert ("/healthz" in page) is bool(switch)


def test_confirm_of_a_udp_group_omits_its_request_and_response_while_off() -> None:
    data = {"protocol": "udp", "interval": "5", "timeout": "2", "healthy_threshold": "3"}
    data |= {"unhealthy_threshold": "3", "udp_request": "ping", "udp_expected": "pong"}
    for switch, shown in (("on", True), ("", False)):
        form = HealthCheckForm(data={**data, "enabled": switch}, backend_protocol="udp")
        assert form.is_valid(), form.errors
        [(_, _, rows)] = summary({"healthcheck": {"form": form}})
        labels = {str(label) for label, _ in rows}
        assert "Enable Health Check" in labels
        assert (UDP_LABELS <= labels) is shown
        assert bool({"Health Check Protocol", "Health Check Interval (s)"} & labels) is shown


def test_the_switch_governs_every_field_but_itself_and_the_passive_ones() -> None:
    form = HealthCheckForm(data={**HEALTH_CHECK})
    assert form.is_valid(), form.errors
    assert form.not_applicable() >= set(ACTIVE_FIELDS) & set(form.fields)
    assert "enabled" not in form.not_applicable()
    assert "passive_health_check" not in form.not_applicable()


def test_validation_is_unchanged_while_the_switch_is_off() -> None:
    # A value out of range is still refused with the switch off (and shown: console.css keeps a
    # field with an error in sight).
    form = HealthCheckForm(data={**HEALTH_CHECK, "interval": "5", "timeout": "9"})
    assert not form.is_valid()
    assert "timeout" in form.errors


def test_the_dialog_saves_with_the_switch_off(admin_client: Client, server_group) -> None:
    instance = Instance.objects.create(name="shop")
    listener = make_listener(instance, server_group, status=Listener.Status.RUNNING)
    url = reverse("listener-health-check", args=[instance.id, listener.pk])
    page = admin_client.get(url).content.decode()
    assert 'class="health-check-form"' in page
    response = admin_client.post(url, HEALTH_CHECK)
    assert response.status_code in (200, 302, 204), response.content[:2000]
    if response.status_code == 200:
        assert "has-error" not in response.content.decode()
    server_group.health_check.refresh_from_db()
    assert server_group.health_check.enabled is False


# -- in the browser ------------------------------------------------------------------------------


SHOWN_ACTIVE = (
    "protocol",
    "domain",
    "port",
    "path",
    "interval",
    "timeout",
    "healthy_threshold",
    "unhealthy_threshold",
    "expected_codes",
)


def active_fields(scope):
    """Each active field's .field block (an HTTP group's), by the name of its input."""
    return [
        scope.locator(".field").filter(has=scope.page.locator(f"[name={name}]"))
        for name in SHOWN_ACTIVE
    ]


def expect_active(scope, *, visible: bool) -> None:
    from playwright.sync_api import expect

    for field in active_fields(scope):
        expect(field).to_have_count(1)
        if visible:
            expect(field).to_be_visible()
        else:
            expect(field).to_be_hidden()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_browser_shows_the_active_fields_only_while_the_switch_is_on(
    signed_in_page, live_server
) -> None:
    from playwright.sync_api import expect

    instance = Instance.objects.create(name="shop")
    group = ServerGroup.objects.create(name="web")
    BackendServer.objects.create(group=group, address="10.0.0.7", port=8080)
    HealthCheck.objects.create(group=group)
    listener = make_listener(instance, group, status=Listener.Status.RUNNING)
    page = signed_in_page

    # The wizard's Health Check step.
    page.goto(live_server.url + reverse("listener-create-step", args=[instance.id, "healthcheck"]))
    form = page.locator("#wizard-form")
    switch = form.get_by_label("Enable Health Check", exact=True)
    expect(switch).to_be_checked()
    expect_active(form, visible=True)
    switch.uncheck()
    expect_active(form, visible=False)
    # The passive switch stays, and its numbers still follow it alone.
    passive = form.get_by_label("Passive Health Check")
    expect(passive).to_be_visible()
    passive.check()
    expect(form.get_by_label("Consecutive Failures")).to_be_visible()
    expect_active(form, visible=False)
    switch.check()
    expect_active(form, visible=True)

    # The Modify Health Check dialog.
    page.goto(live_server.url + listener.get_absolute_url())
    page.get_by_role("heading", name="Health Check").get_by_role("link", name="Modify").click()
    dialog = page.get_by_role("dialog")
    switch = dialog.get_by_label("Enable Health Check", exact=True)
    expect(switch).to_be_checked()
    expect_active(dialog, visible=True)
    switch.uncheck()
    expect_active(dialog, visible=False)
    expect(dialog.get_by_label("Passive Health Check")).to_be_visible()
    switch.check()
    expect_active(dialog, visible=True)

    # Saved with the switch off: no field errors, the dialog closes.
    switch.uncheck()
    dialog.get_by_role("button", name="Save").click()
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(page.get_by_text("Health check of web modified.")).to_be_visible()
    expect(page.locator(".field.has-error")).to_have_count(0)
    group.health_check.refresh_from_db()
    assert group.health_check.enabled is False

    # Opened again (once the change is applied), the dialog starts with the fields hidden.
    Listener.objects.filter(pk=listener.pk).update(status=Listener.Status.RUNNING)
    page.reload()
    page.get_by_role("heading", name="Health Check").get_by_role("link", name="Modify").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_label("Enable Health Check", exact=True)).not_to_be_checked()
    expect_active(dialog, visible=False)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_browser_keeps_a_field_with_an_error_in_sight_while_off(
    signed_in_page, live_server
) -> None:
    from playwright.sync_api import expect

    instance = Instance.objects.create(name="shop")
    group = ServerGroup.objects.create(name="web")
    BackendServer.objects.create(group=group, address="10.0.0.7", port=8080)
    HealthCheck.objects.create(group=group)
    listener = make_listener(instance, group, status=Listener.Status.RUNNING)
    page = signed_in_page
    page.goto(live_server.url + listener.get_absolute_url())
    page.get_by_role("heading", name="Health Check").get_by_role("link", name="Modify").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Health Check Interval (s)").fill("5")
    dialog.get_by_label("Response Timeout (s)").fill("9")
    dialog.get_by_label("Enable Health Check", exact=True).uncheck()
    dialog.get_by_role("button", name="Save").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("The response timeout may not exceed the interval.")
    expect(dialog.get_by_label("Response Timeout (s)")).to_be_visible()
    expect(dialog.get_by_label("Health Check Path")).to_be_hidden()
