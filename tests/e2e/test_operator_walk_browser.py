"""What a new operator meets clicking through the console by the cloud guides' labels.

The wizard's step indicator on every step of every protocol, the Listener tab at 1024 and 1440
pixels, options that follow their switches, a Viewer opening a form by its URL, Configuration
History that follows a push, and an upload that fails and is put right. Screenshots go to
/tmp/shots/ for a person to look at; the tests do not compare them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from certificates.models import Certificate
from certificates.validation import validate_server_certificate
from console import pipeline
from console.models import Instance
from listeners.models import Listener, ServerGroup
from tests.factories.certs import CertMaterial, make_server_cert
from tests.fixtures.listeners import make_listener
from tests.fixtures.nodes import FakeNode, register_node
from tests.fixtures.users import PASSWORD

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

SHOTS = Path("/tmp/shots")
# The Listener Protocol options as the select labels them, and the group each forwards to.
PROTOCOLS = {
    "HTTP": ("http", "http"),
    "HTTPS": ("https", "http"),
    "TCP": ("tcp", "tcp"),
    "TCP SSL": ("tcp_ssl", "tcp"),
    "UDP": ("udp", "udp"),
    "QUIC": ("quic", "http"),
}
WITH_CERTIFICATE = {"HTTPS", "TCP SSL", "QUIC"}


@pytest.fixture(autouse=True)
def no_push(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the console: saving a listener does not start a push."""
    monkeypatch.setattr("listeners.services.queue_push", lambda ids: None, raising=False)


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SHOTS / f"{name}.png", full_page=False)


def stored_server_certificate(name: str, material: CertMaterial) -> Certificate:
    certificate = Certificate(name=name, kind=Certificate.Kind.SERVER)
    certificate.apply_validated(
        validate_server_certificate(material.cert_pem, material.key_pem, material.chain_pem)
    )
    certificate.save()
    return certificate


def visible_steps(page: Page) -> list[str]:
    items = page.get_by_role("list", name="Wizard steps").locator("li:visible")
    return [text.strip() for text in items.all_inner_texts()]


def current_step_number(page: Page) -> int:
    """The number the indicator paints on the current step (hidden items take none)."""
    return page.evaluate(
        """() => {
          const shown = [...document.querySelectorAll('.steps li')]
            .filter((li) => getComputedStyle(li).display !== 'none');
          return shown.findIndex((li) => li.getAttribute('aria-current') === 'step') + 1;
        }"""
    )


def expect_steps(page: Page, steps: list[str], current: str) -> None:
    expect(
        page.get_by_role("list", name="Wizard steps").locator("[aria-current=step]")
    ).to_have_text(current)
    assert visible_steps(page) == steps
    assert current_step_number(page) == steps.index(current) + 1


@pytest.mark.parametrize("label", list(PROTOCOLS))
def test_the_step_indicator_lists_the_protocols_steps_on_every_step(
    signed_in_page: Page, live_server, instance: Instance, label: str
) -> None:
    # Given a server group the protocol can forward to, and a certificate for TLS protocols
    protocol, backend = PROTOCOLS[label]
    group = ServerGroup.objects.create(name=f"{backend}-pool", backend_protocol=backend)
    group.servers.create(address="10.0.0.5", port=8080 if backend != "udp" else 5353)
    certificate = stored_server_certificate("walk", make_server_cert("ec-p256"))
    steps = ["Protocol & Listener", "Server Group", "Health Check", "Confirm"]
    if label in WITH_CERTIFICATE:
        steps.insert(1, "SSL Certificate")
    page = signed_in_page

    # When the operator picks the protocol on step 1 and walks every step with Next
    page.goto(f"{live_server.url}/instances/{instance.id}/listeners/create/?reset=1")
    if label != "HTTP":
        page.get_by_label("Listener Protocol", exact=True).select_option(label)
        expect(page.get_by_label("Listener Port", exact=True)).not_to_have_value("80")
    page.get_by_label("Listener Port", exact=True).fill("4433")
    # Then every step shows the protocol's steps, numbered without gaps
    expect_steps(page, steps, "Protocol & Listener")
    page.get_by_role("button", name="Next", exact=True).click()
    if label in WITH_CERTIFICATE:
        expect_steps(page, steps, "SSL Certificate")
        page.get_by_label("Server Certificate", exact=True).select_option(certificate.id)
        page.get_by_role("button", name="Next", exact=True).click()
    expect_steps(page, steps, "Server Group")
    page.get_by_role("radio", name="Select Existing Server Group").check()
    page.get_by_label("Select Server Group", exact=True).select_option(label=str(group))
    page.get_by_role("button", name="Next", exact=True).click()
    # The Health Check step has a select named "protocol" too; it must not steer the indicator.
    expect_steps(page, steps, "Health Check")
    shot(page, f"stepper-healthcheck-{protocol}")
    page.get_by_role("button", name="Next", exact=True).click()
    expect_steps(page, steps, "Confirm")
    page.get_by_role("button", name="Submit", exact=True).click()
    expect(page.get_by_role("heading", name="Status", exact=True)).to_be_visible()
    assert Listener.objects.get(instance=instance).protocol == protocol


def test_step_one_previews_the_certificate_step_as_the_protocol_changes(
    signed_in_page: Page, live_server, instance: Instance
) -> None:
    page = signed_in_page
    page.goto(f"{live_server.url}/instances/{instance.id}/listeners/create/?reset=1")
    plain = ["Protocol & Listener", "Server Group", "Health Check", "Confirm"]
    with_certificate = [plain[0], "SSL Certificate", *plain[1:]]

    expect_steps(page, plain, "Protocol & Listener")
    for label, expected in [
        ("HTTPS", with_certificate),
        ("UDP", plain),
        ("QUIC", with_certificate),
        ("TCP", plain),
        ("TCP SSL", with_certificate),
        ("HTTP", plain),
    ]:
        page.get_by_label("Listener Protocol", exact=True).select_option(label)
        expect(page.get_by_role("list", name="Wizard steps").locator("li:visible")).to_have_count(
            len(expected)
        )
        assert visible_steps(page) == expected, label


def many_listeners(instance: Instance) -> None:
    http_group = ServerGroup.objects.create(name="storefront-backends", backend_protocol="http")
    tcp_group = ServerGroup.objects.create(name="database-replicas", backend_protocol="tcp")
    certificate = stored_server_certificate(
        "storefront-wildcard", make_server_cert("ec-p256", sans=["shop.example.test"])
    )
    rows = [
        ("storefront-https-production", "https", 443, http_group, certificate, "running"),
        ("storefront-http-redirect", "http", 80, http_group, None, "running"),
        ("database-primary-tls", "tcp_ssl", 5433, tcp_group, certificate, "stopped"),
        ("database-replicas", "tcp", 5432, tcp_group, None, "failed"),
        ("checkout-api-v2", "https", 8443, http_group, certificate, "configuring"),
        # One long word: it may break only because no column could hold it whole.
        (
            "storefront_checkout_payments_primary",
            "tcp_ssl",
            9443,
            tcp_group,
            certificate,
            "running",
        ),
    ]
    for name, protocol, port, group, cert, status in rows:
        make_listener(
            instance,
            group,
            port=port,
            name=name,
            protocol=protocol,
            default_certificate=cert,
            status=status,
            tags=[
                {"key": "env", "value": "production"},
                {"key": "owner", "value": "platform-engineering-storefront-payments"},
            ],
        )


@pytest.mark.parametrize("width", [1024, 1440])
def test_the_listener_tab_fits_the_window_and_ids_stay_whole(
    signed_in_page: Page, live_server, instance: Instance, width: int
) -> None:
    many_listeners(instance)
    page = signed_in_page
    page.set_viewport_size({"width": width, "height": 800})

    page.goto(f"{live_server.url}/instances/{instance.id}/listeners/")
    expect(page.get_by_role("link", name="checkout-api-v2")).to_be_visible()
    shot(page, f"listener-tab-{width}")

    # No horizontal scroll: neither the page nor the table runs past the card
    layout = page.evaluate(
        """() => {
          const table = document.querySelector('table.listener-table');
          const card = table.closest('.panel');
          const cardBox = card.getBoundingClientRect();
          const cells = [...table.querySelectorAll('td.actions, th.actions')];
          return {
            page: document.documentElement.scrollWidth - document.documentElement.clientWidth,
            table: table.getBoundingClientRect().right - (cardBox.right - 1),
            actions: Math.max(...cells.map((c) => c.getBoundingClientRect().right)) - cardBox.right,
          };
        }"""
    )
    assert layout["page"] <= 0, layout
    assert layout["table"] <= 0, layout
    assert layout["actions"] <= 0, layout
    # Every listener ID is on one line
    ids = page.locator("table.listener-table .resource-id")
    expect(ids).to_have_count(6)
    assert ids.evaluate_all("els => els.map((el) => el.getClientRects().length)") == [1] * 6
    heights = ids.evaluate_all("els => els.map((el) => el.getBoundingClientRect().height)")
    line = page.evaluate(
        "parseFloat(getComputedStyle(document.querySelector('.resource-id')).lineHeight)"
    )
    assert all(height < 1.5 * line for height in heights), (heights, line)
    # The tag filter and the listener count sit on one line, centred alike
    filter_box = page.get_by_label("Tag", exact=True).bounding_box()
    count_box = page.get_by_text("6 / 50 listeners").bounding_box()
    filter_middle = filter_box["y"] + filter_box["height"] / 2
    count_middle = count_box["y"] + count_box["height"] / 2
    assert abs(filter_middle - count_middle) <= 2, (filter_box, count_box)
    # The filter still works, now from the static script
    page.get_by_label("Tag", exact=True).select_option("env=production")
    expect(page).to_have_url(
        f"{live_server.url}/instances/{instance.id}/listeners/?tag=env%3Dproduction"
    )


def test_the_wizard_fits_1024_pixels(signed_in_page: Page, live_server, instance: Instance) -> None:
    page = signed_in_page
    page.set_viewport_size({"width": 1024, "height": 800})
    page.goto(f"{live_server.url}/instances/{instance.id}/listeners/create/?reset=1")
    page.get_by_label("Listener Protocol", exact=True).select_option("HTTPS")
    expect(page.get_by_role("list", name="Wizard steps").locator("li:visible")).to_have_count(5)
    shot(page, "wizard-1024")
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    page.set_viewport_size({"width": 1440, "height": 800})
    shot(page, "wizard-1440")


def test_options_show_only_while_their_switch_is_on(
    signed_in_page: Page, live_server, instance: Instance
) -> None:
    page = signed_in_page
    page.goto(f"{live_server.url}/instances/{instance.id}/listeners/create/?reset=1")
    page.get_by_label("Listener Protocol", exact=True).select_option("HTTPS")
    expect(page.get_by_label("Listener Port", exact=True)).to_have_value("443")
    page.get_by_label("Listener Port", exact=True).fill("4443")
    page.get_by_role("button", name="Next", exact=True).click()

    # Mutual Authentication off: no CA Certificate select; on: it appears
    expect(page.get_by_label("Mutual Authentication", exact=True)).not_to_be_checked()
    expect(page.get_by_label("CA Certificate", exact=True)).to_be_hidden()
    page.get_by_label("Mutual Authentication", exact=True).check()
    expect(page.get_by_label("CA Certificate", exact=True)).to_be_visible()
    page.get_by_label("Mutual Authentication", exact=True).uncheck()
    expect(page.get_by_label("CA Certificate", exact=True)).to_be_hidden()


def test_slow_start_duration_follows_its_switch_and_rows_are_told_apart(
    signed_in_page: Page, live_server, instance: Instance
) -> None:
    page = signed_in_page
    page.goto(f"{live_server.url}/instances/{instance.id}/listeners/create/?reset=1")
    page.get_by_role("button", name="Next", exact=True).click()
    page.get_by_role("radio", name="Create Server Group").check()

    expect(page.get_by_label("Slow Start", exact=True)).not_to_be_checked()
    expect(page.get_by_label("Slow Start Duration (s)", exact=True)).to_be_hidden()
    page.get_by_label("Slow Start", exact=True).check()
    expect(page.get_by_label("Slow Start Duration (s)", exact=True)).to_be_visible()

    # Each row's Remove checkbox names its row
    page.get_by_role("button", name="Add More").click()
    expect(page.get_by_label("Server Address, row 2", exact=True)).to_be_visible()
    expect(page.get_by_role("checkbox", name="Remove row 1", exact=True)).to_have_count(1)
    expect(page.get_by_role("checkbox", name="Remove row 2", exact=True)).to_have_count(1)

    # The Health Check Interval states its range to the browser
    page.get_by_label("Server Group Name", exact=True).fill("pool")
    page.get_by_label("Server Address, row 1", exact=True).fill("10.0.0.1")
    page.get_by_label("Port, row 1", exact=True).fill("80")
    page.get_by_role("checkbox", name="Remove row 2", exact=True).check()
    page.get_by_role("button", name="Next", exact=True).click()
    interval = page.get_by_label("Health Check Interval (s)", exact=True)
    expect(interval).to_have_attribute("min", "1")
    expect(interval).to_have_attribute("max", "300")


def sign_in_as_viewer(page: Page, live_server, viewer_user) -> None:
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Username").fill(viewer_user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Viewer").first).to_be_visible()


def test_a_viewer_opening_a_form_by_its_url_reads_it_disabled(
    page: Page, live_server, viewer_user, instance: Instance, server_group: ServerGroup
) -> None:
    page.set_default_timeout(10_000)
    listener = make_listener(instance, server_group, status="running")
    sign_in_as_viewer(page, live_server, viewer_user)
    base = f"{live_server.url}/instances/{instance.id}/listeners"
    pages = {
        "Modify Listener": (f"{base}/{listener.id}/modify/", "Save"),
        "Stop": (f"{base}/{listener.id}/stop/", "OK"),
        "Quick Create": (f"{base}/quick-create/", "OK"),
        "Upload": (f"{live_server.url}/certificates/upload/server/", "Upload"),
        "Create Listener": (f"{base}/create/?reset=1", "Next"),
    }
    for name, (url, button) in pages.items():
        page.goto(url)
        expect(page.get_by_text("You have read-only access (Viewer)")).to_be_visible()
        expect(page.get_by_role("button", name=button, exact=True)).to_be_disabled()
        controls = page.locator("main form").locator(
            "input:not([type=hidden]), select, textarea, button"
        )
        assert controls.count() > 0, name
        assert all(controls.evaluate_all("els => els.map((el) => el.matches(':disabled'))")), name
        shot(page, f"viewer-{name.lower().replace(' ', '-')}")
    assert Listener.objects.count() == 1


def test_configuration_history_follows_the_push_without_a_reload(
    signed_in_page: Page,
    live_server,
    instance: Instance,
    server_group: ServerGroup,
    fake_node: FakeNode,
) -> None:
    # Given a listener that is Configuring, shown on its details page
    register_node(instance, fake_node.url)
    listener = make_listener(instance, server_group)
    instance.generation += 1
    instance.save(update_fields=["generation"])
    page = signed_in_page
    page.goto(f"{live_server.url}{listener.get_absolute_url()}")
    history = page.get_by_role("region", name="Configuration History")
    expect(history).to_contain_text("No pushes yet.")

    # When the push reaches the node (the same call the Celery task makes)
    pipeline.push(instance.id, instance.generation)

    # Then the badge turns Running and the history shows the push, without a reload
    expect(page.locator("#listener-status")).to_contain_text("Running")
    expect(history.get_by_role("cell", name="Applied")).to_be_visible()
    expect(history).to_contain_text("node-a")
    expect(history).not_to_contain_text("No pushes yet.")
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1


def test_an_upload_that_fails_keeps_the_certificate_and_asks_for_the_key_file(
    signed_in_page: Page, live_server, tmp_path: Path
) -> None:
    material = make_server_cert("ec-p256", chain_depth=1)
    other = make_server_cert("rsa-2048")
    (tmp_path / "shop.pem").write_text(material.cert_pem)
    (tmp_path / "wrong.key").write_text(other.key_pem)
    (tmp_path / "shop.key").write_text(material.key_pem)
    (tmp_path / "big.pem").write_bytes(b"A" * (1024 * 1024))
    page = signed_in_page
    page.goto(f"{live_server.url}/certificates/")
    page.get_by_role("link", name="Upload Server Certificate").click()
    dialog = page.get_by_role("dialog", name="Upload Server Certificate")
    expect(dialog.locator(".field.required")).to_have_count(3)

    # A 1 MiB file is reported at its size
    dialog.get_by_label("Certificate Name", exact=True).fill("shop")
    dialog.get_by_label("Certificate file").set_input_files(tmp_path / "big.pem")
    dialog.get_by_label("Private Key file").set_input_files(tmp_path / "shop.key")
    dialog.get_by_role("button", name="Upload", exact=True).click()
    expect(dialog.get_by_text("The Certificate file big.pem is 1024 KiB")).to_be_visible()

    # A key that does not match: the certificate's text stays, the key file is asked for again
    dialog.get_by_label("Certificate file").set_input_files(tmp_path / "shop.pem")
    dialog.get_by_label("Private Key file").set_input_files(tmp_path / "wrong.key")
    dialog.get_by_role("button", name="Upload", exact=True).click()
    expect(dialog.get_by_text("Choose wrong.key again, or another file.")).to_be_visible()
    expect(dialog.get_by_text("The text of shop.pem is kept in the field above.")).to_be_visible()
    expect(dialog.get_by_label("Certificate", exact=True)).to_have_value(material.cert_pem)
    shot(page, "upload-kept-after-error")

    dialog.get_by_label("Private Key file").set_input_files(tmp_path / "shop.key")
    dialog.get_by_role("button", name="Upload", exact=True).click()
    expect(page.get_by_role("heading", name="shop", exact=True)).to_be_visible()
    stored = Certificate.objects.get(name="shop")
    assert stored.fingerprint_sha256 == material.fingerprint_sha256
    # The confirmation is dismissed by its button, served from the static script
    flash = page.get_by_role("status").filter(has_text="uploaded")
    expect(flash).to_be_visible()
    flash.get_by_role("button", name="Dismiss").click()
    expect(flash).to_have_count(0)


INLINE_HANDLERS = """() => [...document.querySelectorAll('*')].flatMap((el) =>
  [...el.attributes]
    .filter((a) => a.name.startsWith('on'))
    .map((a) => `${el.tagName} ${a.name}`))"""


def test_buttons_work_without_inline_handlers(
    signed_in_page: Page, live_server, instance: Instance
) -> None:
    # A strict Content-Security-Policy runs no inline handler: the pages carry none, and their
    # buttons still work from static/js/console.js.
    page = signed_in_page
    page.goto(f"{live_server.url}/instances/{instance.id}/listeners/")
    for close in ("Cancel", "Close"):
        page.get_by_role("link", name="Quick Create Listener").click()
        dialog = page.get_by_role("dialog", name="Quick Create Listener")
        expect(dialog).to_be_visible()
        assert page.evaluate(INLINE_HANDLERS) == []
        dialog.get_by_role("button", name=close, exact=True).click()
        expect(dialog).to_have_count(0)

    # Advanced Settings stay open across the Listener Protocol's re-render
    page.goto(f"{live_server.url}/instances/{instance.id}/listeners/create/?reset=1")
    page.locator("details.advanced").get_by_text("Advanced Settings").click()
    expect(page.get_by_label("Idle Connection Timeout Period (s)", exact=True)).to_be_visible()
    page.get_by_label("Listener Protocol", exact=True).select_option("TCP")
    expect(page.get_by_label("Listener Port", exact=True)).to_have_value("8080")
    expect(page.get_by_label("Idle Connection Timeout Period (s)", exact=True)).to_be_visible()
    assert page.evaluate(INLINE_HANDLERS) == []

    # Reset puts a backend server's weight back to 100
    page.get_by_role("button", name="Next", exact=True).click()
    page.get_by_role("radio", name="Create Server Group").check()
    page.get_by_label("Weight, row 1", exact=True).fill("7")
    page.get_by_role("button", name="Reset weight of row 1 to 100").click()
    expect(page.get_by_label("Weight, row 1", exact=True)).to_have_value("100")
    assert page.evaluate(INLINE_HANDLERS) == []
