"""A real browser uses Quick Create, the details page, Modify Listener, Stop and Delete (seed 003).

Listeners are Configuring after every change, and lifecycle actions are refused while they are.
Where a test needs a settled listener it sets ``status="running"`` on the row, standing in for
the dataplane nodes' acknowledgement.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from certificates.models import Certificate
from certificates.validation import validate_server_certificate
from console.models import Instance
from listeners.models import Listener, ServerGroup
from tests.factories.certs import make_server_cert
from tests.fixtures.listeners import make_listener

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

SHOTS = Path("/tmp/shots")


@pytest.fixture(autouse=True)
def no_push(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the console: the push to dataplane nodes is not started."""
    monkeypatch.setattr("listeners.services.queue_push", lambda ids: None, raising=False)


@pytest.fixture
def running_listener(instance: Instance, server_group: ServerGroup) -> Listener:
    return make_listener(instance, server_group, port=80, name="web", status="running")


def shot(page: Page, name: str) -> None:
    """The whole page at once: a full-page capture would paint the sticky top bar mid-page."""
    SHOTS.mkdir(exist_ok=True)
    viewport = page.viewport_size
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": viewport["width"], "height": max(height, viewport["height"])})
    page.screenshot(path=SHOTS / f"{name}.png")
    page.set_viewport_size(viewport)


def generation(instance: Instance) -> int:
    instance.refresh_from_db()
    return instance.generation


def test_quick_create_shows_the_error_in_the_dialog_then_creates(
    signed_in_page: Page, live_server, instance: Instance, server_group: ServerGroup
) -> None:
    page = signed_in_page
    material = make_server_cert("ec-p256", sans=["quick.example.test"])
    certificate = Certificate(name="quick", kind=Certificate.Kind.SERVER)
    certificate.apply_validated(validate_server_certificate(material.cert_pem, material.key_pem))
    certificate.save()
    page.goto(f"{live_server.url}/instances/{instance.id}/listeners/")

    page.get_by_role("link", name="Quick Create Listener").click()
    dialog = page.get_by_role("dialog", name="Quick Create Listener")
    # The certificate is asked for only when the protocol needs one.
    expect(dialog.get_by_label("Server Certificate", exact=True)).to_be_hidden()
    dialog.get_by_label("Listener Protocol", exact=True).select_option("HTTPS")
    expect(dialog.get_by_label("Server Certificate", exact=True)).to_be_visible()
    dialog.get_by_label("Listener Port", exact=True).fill("443")
    dialog.get_by_label("Server Group", exact=True).select_option(label=str(server_group))
    dialog.get_by_role("button", name="OK").click()

    # HTTPS without a certificate: the dialog stays, with the message on the field.
    certificate_field = dialog.locator(".field").filter(
        has=page.get_by_label("Server Certificate", exact=True)
    )
    expect(certificate_field.get_by_role("alert")).to_have_text(
        "HTTPS, TCP SSL and QUIC listeners need a server certificate."
    )
    expect(dialog.get_by_label("Listener Port", exact=True)).to_have_value("443")
    shot(page, "quick-create-error")
    assert not Listener.objects.exists()

    dialog.get_by_label("Server Certificate", exact=True).select_option(certificate.id)
    dialog.get_by_role("button", name="OK").click()

    expect(page.get_by_role("heading", name="HTTPS_443", exact=True)).to_be_visible()
    expect(dialog).to_have_count(0)
    listener = Listener.objects.get(instance=instance)
    expect(page).to_have_url(live_server.url + listener.get_absolute_url())
    assert (listener.protocol, listener.port, listener.name) == ("https", 443, "HTTPS_443")
    assert listener.default_certificate == certificate
    assert listener.tls_policy_id == "tls_cipher_policy_1_0"
    assert listener.server_group == server_group
    # Everything else takes its default.
    assert (listener.idle_timeout, listener.request_timeout, listener.x_forwarded_for) == (
        15,
        60,
        "add",
    )
    assert listener.desired_state == Listener.DesiredState.RUNNING


def test_details_page_and_modify_listener_dialog(
    signed_in_page: Page, live_server, instance: Instance, running_listener: Listener
) -> None:
    page = signed_in_page
    before = generation(instance)
    page.goto(live_server.url + running_listener.get_absolute_url())
    basic = page.get_by_role("region", name="Basic Information")
    expect(basic).to_contain_text(running_listener.id)
    expect(page.get_by_role("region", name="Server Group")).to_contain_text("127.0.0.1")
    expect(page.get_by_role("region", name="Health Check")).to_contain_text("Enabled")
    shot(page, "listener-detail")

    page.get_by_role("link", name="Modify Listener").click()
    dialog = page.get_by_role("dialog", name="Modify Listener")
    # Protocol and port are shown, not offered for change (seed 003).
    expect(dialog).to_contain_text("Listener Protocol")
    expect(dialog.get_by_label("Listener Port", exact=True)).to_have_count(0)
    expect(dialog.get_by_label("Listener Protocol", exact=True)).to_have_count(0)
    shot(page, "listener-modify-dialog")
    dialog.get_by_label("Listener Name", exact=True).fill("web-renamed")
    dialog.get_by_label("Idle Connection Timeout Period (s)", exact=True).fill("45")
    dialog.get_by_role("button", name="Save").click()

    expect(page.get_by_role("heading", name="web-renamed", exact=True)).to_be_visible()
    expect(dialog).to_have_count(0)
    expect(basic).to_contain_text("45 s")
    running_listener.refresh_from_db()
    assert (running_listener.name, running_listener.idle_timeout) == ("web-renamed", 45)
    assert (running_listener.protocol, running_listener.port) == ("http", 80)
    assert running_listener.status == Listener.Status.CONFIGURING
    assert generation(instance) > before


def test_modify_listener_dialog_of_a_tcp_listener(
    signed_in_page: Page, live_server, instance: Instance
) -> None:
    page = signed_in_page
    group = ServerGroup.objects.create(name="tcp-pool", backend_protocol="tcp")
    listener = make_listener(
        instance, group, port=5432, name="db", protocol=Listener.Protocol.TCP, status="running"
    )
    page.goto(live_server.url + listener.get_absolute_url())
    page.get_by_role("link", name="Modify Listener").click()
    dialog = page.get_by_role("dialog", name="Modify Listener")
    expect(dialog.get_by_label("X-Forwarded-For", exact=True)).to_have_count(0)
    dialog.get_by_label("Idle Connection Timeout Period (s)", exact=True).fill("300")
    dialog.get_by_role("button", name="Save").click()

    expect(dialog).to_have_count(0)
    listener.refresh_from_db()
    assert listener.idle_timeout == 300


def test_stop_warns_about_active_connections(
    signed_in_page: Page, live_server, instance: Instance, server_group: ServerGroup
) -> None:
    page = signed_in_page
    listener = make_listener(instance, server_group, port=8080, name="api")
    page.goto(live_server.url + listener.get_absolute_url())

    # While Configuring the action is refused, and the dialog closes again.
    page.get_by_role("link", name="Stop").click()
    refusal = page.get_by_role("dialog", name="Not possible now")
    expect(refusal.get_by_role("alert")).to_contain_text("api is Configuring")
    refusal.get_by_role("button", name="OK").click()
    expect(refusal).to_have_count(0)

    Listener.objects.filter(pk=listener.pk).update(status="running")
    page.reload()
    page.get_by_role("link", name="Stop").click()
    dialog = page.get_by_role("dialog", name="Stop Listener")
    expect(dialog.get_by_role("alert")).to_contain_text("interrupts all active connections")
    shot(page, "listener-stop-dialog")
    dialog.get_by_role("button", name="OK").click()

    expect(page.get_by_role("link", name="Start")).to_be_visible()
    expect(dialog).to_have_count(0)
    listener.refresh_from_db()
    assert listener.desired_state == Listener.DesiredState.STOPPED
    assert listener.status == Listener.Status.CONFIGURING


def test_delete_with_its_confirmation(
    signed_in_page: Page, live_server, instance: Instance, running_listener: Listener
) -> None:
    page = signed_in_page
    other = make_listener(
        instance, running_listener.server_group, port=81, name="keep", status="running"
    )
    before = generation(instance)
    page.goto(f"{live_server.url}/instances/{instance.id}/listeners/")
    row = page.get_by_role("row").filter(has_text=running_listener.id)

    # Cancel closes the dialog and deletes nothing.
    row.get_by_role("link", name="Delete").click()
    dialog = page.get_by_role("dialog", name="Delete Listener")
    expect(dialog).to_contain_text(f"Delete listener {running_listener.name}")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    assert Listener.objects.filter(pk=running_listener.pk).exists()

    row.get_by_role("link", name="Delete").click()
    shot(page, "listener-delete-dialog")
    dialog.get_by_role("button", name="OK").click()

    expect(page.get_by_role("status").filter(has_text="deleted")).to_be_visible()
    expect(page.get_by_role("row").filter(has_text=running_listener.id)).to_have_count(0)
    expect(page.get_by_role("row").filter(has_text=other.id)).to_be_visible()
    assert list(Listener.objects.values_list("pk", flat=True)) == [other.pk]
    # The server group is kept.
    assert ServerGroup.objects.filter(pk=running_listener.server_group_id).exists()
    assert generation(instance) > before
