"""A real browser clicks through the Create Listener wizard (seeds 000-004).

Each test ends by reading what was stored. Screenshots of every step go to /tmp/shots/ so a
person can look at the pages; they are not compared by the tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from certificates.models import Certificate
from certificates.validation import validate_server_certificate
from console.models import Instance
from listeners.models import Listener, Scheduler, ServerGroup
from tests.factories.certs import CertMaterial, make_ca, make_server_cert

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

SHOTS = Path("/tmp/shots")


@pytest.fixture(autouse=True)
def no_push(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the console: the push to dataplane nodes is not started."""
    monkeypatch.setattr("listeners.services.queue_push", lambda ids: None, raising=False)


def shot(page: Page, name: str) -> None:
    """The whole page at once: a full-page capture would paint the sticky top bar mid-page."""
    SHOTS.mkdir(exist_ok=True)
    viewport = page.viewport_size
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": viewport["width"], "height": max(height, viewport["height"])})
    page.screenshot(path=SHOTS / f"{name}.png")
    page.set_viewport_size(viewport)


def write_files(directory: Path, **texts: str) -> dict[str, Path]:
    paths = {}
    for name, text in texts.items():
        paths[name] = directory / f"{name}.pem"
        paths[name].write_text(text)
    return paths


def store_server_certificate(name: str, material: CertMaterial) -> Certificate:
    """A certificate as the Certificates pages store it, for tests that do not upload one."""
    certificate = Certificate(name=name, kind=Certificate.Kind.SERVER)
    certificate.apply_validated(
        validate_server_certificate(material.cert_pem, material.key_pem, material.chain_pem)
    )
    certificate.save()
    return certificate


def open_wizard(page: Page, base_url: str, instance: Instance) -> None:
    page.goto(f"{base_url}/instances/{instance.id}/listeners/")
    page.get_by_role("link", name="Create Listener", exact=True).click()
    expect(page.get_by_role("heading", name="Create Listener", exact=True)).to_be_visible()


def current_step(page: Page):
    return page.get_by_role("list", name="Wizard steps").locator("[aria-current=step]")


def open_advanced_settings(page: Page) -> None:
    advanced = page.locator("details.advanced")
    if not advanced.evaluate("details => details.open"):
        advanced.get_by_text("Advanced Settings").click()
    expect(page.get_by_label("Idle Connection Timeout Period (s)", exact=True)).to_be_visible()


def next_step(page: Page, expected: str) -> None:
    page.get_by_role("button", name="Next", exact=True).click()
    expect(current_step(page)).to_have_text(expected)


def test_http_wizard_end_to_end(signed_in_page: Page, live_server, instance: Instance) -> None:
    page = signed_in_page
    open_wizard(page, live_server.url, instance)

    # Step 1: Protocol & Listener, with one Advanced Setting changed.
    expect(current_step(page)).to_have_text("Protocol & Listener")
    # The wizard opens on HTTP with its port suggested.
    expect(page.get_by_label("Listener Protocol", exact=True)).to_have_value("http")
    expect(page.get_by_label("Listener Port", exact=True)).to_have_value("80")
    page.get_by_label("Listener Name", exact=True).fill("web-http")
    open_advanced_settings(page)
    page.get_by_label("Idle Connection Timeout Period (s)", exact=True).fill("30")
    shot(page, "wizard-1-protocol-http")
    next_step(page, "Server Group")

    # Step 2: a new group with two servers, the second row added with "Add More".
    page.get_by_role("radio", name="Create Server Group").check()
    page.get_by_label("Server Group Name", exact=True).fill("web-pool")
    page.get_by_label("Backend Protocol", exact=True).select_option("HTTP")
    page.get_by_label("Server Address, row 1", exact=True).fill("10.0.0.11")
    page.get_by_label("Port, row 1", exact=True).fill("8080")
    page.get_by_label("Weight, row 1", exact=True).fill("40")
    page.get_by_role("button", name="Reset weight of row 1 to 100").click()
    expect(page.get_by_label("Weight, row 1", exact=True)).to_have_value("100")
    page.get_by_role("button", name="Add More").click()
    expect(page.get_by_label("Weight, row 2", exact=True)).to_have_value("100")
    expect(page.get_by_label("Server Address, row 1", exact=True)).to_have_value("10.0.0.11")
    page.get_by_label("Server Address, row 2", exact=True).fill("10.0.0.12")
    page.get_by_label("Port, row 2", exact=True).fill("8080")
    page.get_by_label("Weight, row 2", exact=True).fill("50")
    shot(page, "wizard-2-servergroup")
    next_step(page, "Health Check")

    # Step 3: Health Check, enabled by default.
    expect(page.get_by_label("Enable Health Check", exact=True)).to_be_checked()
    page.get_by_label("Health Check Path", exact=True).fill("/healthz")
    shot(page, "wizard-3-healthcheck")
    next_step(page, "Confirm")

    # Step 4: Confirm shows every setting grouped by step.
    listener_group = page.get_by_role("region", name="Protocol & Listener")
    expect(listener_group).to_contain_text("web-http")
    expect(listener_group).to_contain_text("30")
    server_group = page.get_by_role("region", name="Server Group")
    expect(server_group).to_contain_text("10.0.0.11:8080 weight 100")
    expect(server_group).to_contain_text("10.0.0.12:8080 weight 50")
    expect(page.get_by_role("region", name="Health Check")).to_contain_text("/healthz")
    shot(page, "wizard-4-confirm")
    page.get_by_role("button", name="Submit").click()

    expect(page.get_by_role("heading", name="web-http", exact=True)).to_be_visible()
    listener = Listener.objects.get(instance=instance)
    expect(page).to_have_url(live_server.url + listener.get_absolute_url())
    shot(page, "listener-detail-http")
    assert (listener.protocol, listener.port, listener.name) == ("http", 80, "web-http")
    assert (listener.idle_timeout, listener.request_timeout) == (30, 60)
    assert listener.desired_state == Listener.DesiredState.RUNNING
    assert listener.status == Listener.Status.CONFIGURING
    group = listener.server_group
    assert (group.name, group.backend_protocol) == ("web-pool", "http")
    assert sorted(group.servers.values_list("address", "port", "weight")) == [
        ("10.0.0.11", 8080, 100),
        ("10.0.0.12", 8080, 50),
    ]
    assert group.health_check.enabled
    assert group.health_check.path == "/healthz"
    instance.refresh_from_db()
    assert instance.generation > 1


def test_https_wizard_uploads_certificates_and_turns_on_mutual_authentication(
    signed_in_page: Page, live_server, instance: Instance, server_group: ServerGroup, tmp_path
) -> None:
    page = signed_in_page
    server = make_server_cert("ec-p256", chain_depth=1, sans=["shop.example.test"])
    client_ca = make_ca("Shop Client CA")
    files = write_files(
        tmp_path,
        cert=server.cert_pem,
        key=server.key_pem,
        chain=server.chain_pem,
        ca=client_ca.cert_pem,
    )
    open_wizard(page, live_server.url, instance)

    page.get_by_label("Listener Protocol", exact=True).select_option("HTTPS")
    expect(page.get_by_label("Listener Port", exact=True)).to_have_value("443")
    page.get_by_label("Listener Name", exact=True).fill("shop-https")
    next_step(page, "SSL Certificate")

    # The server certificate is uploaded in a dialog without leaving the wizard.
    page.get_by_role("link", name="Upload Server Certificate").click()
    dialog = page.get_by_role("dialog", name="Upload Server Certificate")
    dialog.get_by_label("Certificate Name", exact=True).fill("shop")
    dialog.get_by_label("Certificate file").set_input_files(files["cert"])
    dialog.get_by_label("Private Key file").set_input_files(files["key"])
    dialog.get_by_label("Certificate Chain file").set_input_files(files["chain"])
    shot(page, "wizard-2-certificate-upload-dialog")
    dialog.get_by_role("button", name="Upload", exact=True).click()
    expect(dialog).to_be_hidden()
    expect(current_step(page)).to_have_text("SSL Certificate")
    shop = Certificate.objects.get(name="shop")
    expect(page.get_by_label("Server Certificate", exact=True)).to_have_value(shop.id)

    # So is the CA that signs the client certificates; mutual authentication comes on with it.
    page.get_by_role("link", name="Upload CA Certificate").click()
    dialog = page.get_by_role("dialog", name="Upload CA Certificate")
    dialog.get_by_label("Certificate Name", exact=True).fill("shop-clients")
    dialog.get_by_label("CA Certificate file").set_input_files(files["ca"])
    dialog.get_by_role("button", name="Upload", exact=True).click()
    expect(dialog).to_be_hidden()
    ca = Certificate.objects.get(name="shop-clients")
    expect(page.get_by_label("Server Certificate", exact=True)).to_have_value(shop.id)
    expect(page.get_by_label("CA Certificate", exact=True)).to_have_value(ca.id)
    expect(page.get_by_label("Mutual Authentication", exact=True)).to_be_checked()
    shot(page, "wizard-2-certificate")
    next_step(page, "Server Group")

    page.get_by_role("radio", name="Select Existing Server Group").check()
    page.get_by_label("Select Server Group", exact=True).select_option(label=str(server_group))
    next_step(page, "Health Check")
    next_step(page, "Confirm")
    certificate_group = page.get_by_role("region", name="SSL Certificate")
    expect(certificate_group).to_contain_text("shop")
    expect(certificate_group).to_contain_text("shop-clients")
    page.get_by_role("button", name="Submit").click()

    expect(page.get_by_role("heading", name="shop-https", exact=True)).to_be_visible()
    shot(page, "listener-detail-https")
    listener = Listener.objects.get(instance=instance)
    assert (listener.protocol, listener.port) == ("https", 443)
    assert listener.default_certificate == shop
    assert listener.tls_policy_id == "tls_cipher_policy_1_0"
    assert listener.mutual_authentication
    assert listener.ca_certificate == ca
    assert listener.server_group == server_group


def test_tcp_ssl_listener_offers_wrr_and_wlc_only(
    signed_in_page: Page, live_server, instance: Instance
) -> None:
    page = signed_in_page
    certificate = store_server_certificate("tcp-cert", make_server_cert("rsa-2048"))
    tcp_group = ServerGroup.objects.create(name="tcp-pool", backend_protocol="tcp")
    tcp_group.servers.create(address="10.0.1.5", port=5432, weight=100)
    open_wizard(page, live_server.url, instance)

    page.get_by_label("Listener Protocol", exact=True).select_option("TCP SSL")
    expect(page.get_by_label("Listener Port", exact=True)).to_have_value("8443")
    page.get_by_label("Listener Port", exact=True).fill("6443")
    open_advanced_settings(page)
    scheduler = page.get_by_label("Scheduling Algorithm", exact=True)
    options = scheduler.locator("option")
    expect(options).to_have_count(2)
    assert sorted(options.evaluate_all("os => os.map(o => o.value)")) == sorted(
        [Scheduler.WRR, Scheduler.WLC]
    )
    scheduler.select_option(Scheduler.WLC)
    shot(page, "wizard-1-protocol-tcp-ssl")
    next_step(page, "SSL Certificate")

    page.get_by_label("Server Certificate", exact=True).select_option(certificate.id)
    next_step(page, "Server Group")
    # Only groups whose backend protocol a TCP SSL listener can forward to are offered.
    page.get_by_role("radio", name="Select Existing Server Group").check()
    page.get_by_label("Select Server Group", exact=True).select_option(label=str(tcp_group))
    next_step(page, "Health Check")
    expect(page.get_by_label("Health Check Protocol", exact=True)).to_have_value("tcp")
    next_step(page, "Confirm")
    page.get_by_role("button", name="Submit").click()

    expect(page.get_by_role("heading", name="TCP_SSL_6443", exact=True)).to_be_visible()
    listener = Listener.objects.get(instance=instance)
    assert (listener.protocol, listener.port) == ("tcp_ssl", 6443)
    assert listener.scheduler == Scheduler.WLC
    assert listener.default_certificate == certificate
    assert listener.server_group == tcp_group
    assert tcp_group.health_check.protocol == "tcp"


def test_modify_from_confirm_returns_to_the_step_and_keeps_the_change(
    signed_in_page: Page, live_server, instance: Instance, server_group: ServerGroup
) -> None:
    page = signed_in_page
    open_wizard(page, live_server.url, instance)
    page.get_by_label("Listener Port", exact=True).fill("8080")
    page.get_by_label("Listener Name", exact=True).fill("first-name")
    next_step(page, "Server Group")
    page.get_by_label("Select Server Group", exact=True).select_option(label=str(server_group))
    next_step(page, "Health Check")
    next_step(page, "Confirm")
    expect(page.get_by_role("region", name="Protocol & Listener")).to_contain_text("first-name")

    page.get_by_role("link", name="Modify Protocol & Listener").click()
    expect(current_step(page)).to_have_text("Protocol & Listener")
    expect(page.get_by_label("Listener Name", exact=True)).to_have_value("first-name")
    page.get_by_label("Listener Name", exact=True).fill("second-name")
    open_advanced_settings(page)
    page.get_by_label("Request Timeout (s)", exact=True).fill("120")
    next_step(page, "Server Group")
    # What was chosen on the later steps is still there.
    expect(page.get_by_label("Select Server Group", exact=True)).to_have_value(server_group.id)
    next_step(page, "Health Check")
    next_step(page, "Confirm")
    summary = page.get_by_role("region", name="Protocol & Listener")
    expect(summary).to_contain_text("second-name")
    expect(summary).not_to_contain_text("first-name")
    expect(summary).to_contain_text("120")
    page.get_by_role("button", name="Submit").click()

    expect(page.get_by_role("heading", name="second-name", exact=True)).to_be_visible()
    listener = Listener.objects.get(instance=instance)
    assert (listener.name, listener.port, listener.request_timeout) == ("second-name", 8080, 120)


def test_protocol_switch_rerenders_the_options(
    signed_in_page: Page, live_server, instance: Instance
) -> None:
    page = signed_in_page
    open_wizard(page, live_server.url, instance)
    steps = page.get_by_role("list", name="Wizard steps").get_by_role("listitem")
    persistence = page.get_by_label("Session Persistence", exact=True)
    cookie_name = page.get_by_label("Cookie Name", exact=True)
    expect(steps).to_have_text(["Protocol & Listener", "Server Group", "Health Check", "Confirm"])
    page.get_by_label("Listener Name", exact=True).fill("kept-while-switching")
    open_advanced_settings(page)
    expect(persistence.locator("option")).to_have_text(["Off", "Insert Cookie", "Rewrite Cookie"])
    # The cookie name is asked for only when the listener rewrites the application's cookie.
    expect(cookie_name).to_be_hidden()
    persistence.select_option("Rewrite Cookie")
    expect(cookie_name).to_be_visible()
    expect(page.get_by_label("X-Forwarded-For", exact=True)).to_be_visible()

    page.get_by_label("Listener Protocol", exact=True).select_option("TCP")
    expect(page.get_by_label("Listener Port", exact=True)).to_have_value("8080")
    expect(cookie_name).to_have_count(0)
    expect(page.get_by_label("X-Forwarded-For", exact=True)).to_have_count(0)
    expect(page.get_by_label("Request Timeout (s)", exact=True)).to_have_count(0)
    expect(persistence.locator("option")).to_have_text(["Off", "Source IP"])
    expect(steps).to_have_text(["Protocol & Listener", "Server Group", "Health Check", "Confirm"])
    # What was typed survives the re-render, and Advanced Settings stay open.
    expect(page.get_by_label("Listener Name", exact=True)).to_have_value("kept-while-switching")
    expect(page.get_by_label("Idle Connection Timeout Period (s)", exact=True)).to_be_visible()
    shot(page, "wizard-1-protocol-tcp")

    page.get_by_label("Listener Protocol", exact=True).select_option("HTTPS")
    expect(page.get_by_label("Listener Port", exact=True)).to_have_value("443")
    expect(persistence.locator("option")).to_have_text(["Off", "Insert Cookie", "Rewrite Cookie"])
    expect(page.get_by_label("X-Forwarded-Clientcert-subjectdn", exact=True)).to_be_visible()
    expect(steps).to_have_text(
        ["Protocol & Listener", "SSL Certificate", "Server Group", "Health Check", "Confirm"]
    )
    shot(page, "wizard-1-protocol-https")
    next_step(page, "SSL Certificate")
    assert not Listener.objects.exists()
