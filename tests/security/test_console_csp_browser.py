"""The console's own pages satisfy its Content-Security-Policy, in a real Chromium.

Every page answers with a policy that allows scripts, styles and images from the console only,
with no inline script, style attribute or eval. The walk goes through the main pages, the
listener wizard, the details page and the dialogs htmx opens, and Chromium reports nothing:
neither a ``securitypolicyviolation`` event nor a CSP line in the console.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from console.models import Instance
from listeners.models import Listener, ServerGroup
from tests.fixtures.listeners import make_listener
from tests.fixtures.users import PASSWORD

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

# Reported by the page itself, so nothing the browser blocks goes unseen.
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.reportCspViolation(
    `${event.violatedDirective} blocked ${event.blockedURI || "inline"} at ` +
    `${event.sourceFile}:${event.lineNumber} on ${location.pathname}`
  );
});
"""


@pytest.fixture(autouse=True)
def no_push(monkeypatch: pytest.MonkeyPatch) -> None:
    """This is about the console's pages: no push to dataplane nodes is started."""
    monkeypatch.setattr("listeners.services.queue_push", lambda ids: None)


class Violations(list):
    def report(self, line: str) -> None:
        self.append(line)

    def watch(self, page: Page) -> Page:
        page.expose_function("reportCspViolation", self.report)
        page.add_init_script(REPORT_VIOLATIONS)
        page.on(
            "console",
            lambda message: (
                self.append(f"console: {message.text}")
                if "Content Security Policy" in message.text
                else None
            ),
        )
        return page


@pytest.fixture
def violations() -> Violations:
    return Violations()


def open_dialog(page: Page, link: str, title: str | None = None) -> None:
    """Click a link htmx turns into a dialog, then close it with its Close button."""
    page.get_by_role("link", name=link, exact=True).first.click()
    dialog = page.get_by_role("dialog", name=title or link)
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Close", exact=True).click()
    expect(dialog).to_have_count(0)


def test_policy_header_on_every_page(signed_in_page: Page, live_server) -> None:
    response = signed_in_page.goto(f"{live_server.url}/instances/")
    policy = response.headers["content-security-policy"]
    directives = {part.split()[0]: part.split()[1:] for part in policy.split("; ")}
    assert directives["default-src"] == ["'self'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["form-action"] == ["'self'"]
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy


def test_sign_in_page(page: Page, live_server, admin_user, violations: Violations) -> None:
    violations.watch(page)
    page.goto(f"{live_server.url}/instances/")
    page.get_by_label("Username").fill(admin_user.username)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_be_visible()
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Instances")).to_be_visible()
    assert violations == []


def test_wizard_details_and_dialogs(
    signed_in_page: Page,
    live_server,
    instance: Instance,
    server_group: ServerGroup,
    violations: Violations,
) -> None:
    page = violations.watch(signed_in_page)
    base = live_server.url

    # Listener tab and its Quick Create dialog.
    page.goto(f"{base}/instances/{instance.id}/listeners/")
    open_dialog(page, "Quick Create Listener")

    # The wizard, step by step: protocol fields re-rendered by htmx, Add More, the preview.
    page.get_by_role("link", name="Create Listener", exact=True).click()
    page.get_by_label("Listener Protocol", exact=True).select_option("HTTPS")
    page.get_by_label("Listener Protocol", exact=True).select_option("HTTP")
    expect(page.get_by_label("Listener Port", exact=True)).to_have_value("80")
    page.get_by_label("Listener Name", exact=True).fill("web")
    page.get_by_role("button", name="Next", exact=True).click()
    page.get_by_role("radio", name="Select Existing Server Group").check()
    page.get_by_label("Select Server Group", exact=True).select_option(label=str(server_group))
    page.get_by_role("radio", name="Create Server Group").check()
    page.get_by_label("Server Group Name", exact=True).fill("web-pool")
    page.get_by_label("Server Address, row 1", exact=True).fill("10.0.0.11")
    page.get_by_label("Port, row 1", exact=True).fill("8080")
    page.get_by_role("button", name="Add More").click()
    page.get_by_role("button", name="Reset weight of row 1 to 100").click()
    page.get_by_label("Server Address, row 2", exact=True).fill("10.0.0.12")
    page.get_by_label("Port, row 2", exact=True).fill("8080")
    page.get_by_role("button", name="Next", exact=True).click()
    expect(page.get_by_label("Health Check Protocol", exact=True)).to_have_value("http")
    page.get_by_role("button", name="Next", exact=True).click()
    page.get_by_role("button", name="Submit", exact=True).click()

    # The details page polls its status with htmx while Configuring; a dialog is refused.
    expect(page.get_by_role("heading", name="Status", exact=True)).to_be_visible()
    page.get_by_role("status").filter(has_text="created").get_by_role("button").click()
    page.get_by_role("link", name="Delete", exact=True).click()
    refusal = page.get_by_role("dialog", name="Not possible now")
    expect(refusal).to_be_visible()
    refusal.get_by_role("button", name="OK").click()

    # Settled, every dialog of the details page opens.
    Listener.objects.filter(instance=instance).update(
        status=Listener.Status.RUNNING, configuring_since=None
    )
    page.reload()
    for link, title in [
        ("Modify Listener", None),
        ("Stop", "Stop Listener"),
        ("Change Server Group", None),
        ("Add Rule", "Add Forwarding Rule"),
        ("Delete", "Delete Listener"),
    ]:
        open_dialog(page, link, title)

    assert violations == []


def test_list_pages_and_their_dialogs(
    signed_in_page: Page,
    live_server,
    instance: Instance,
    server_group: ServerGroup,
    violations: Violations,
) -> None:
    page = violations.watch(signed_in_page)
    base = live_server.url
    make_listener(instance, server_group, port=80, name="web", status="running")

    page.goto(f"{base}/instances/")
    open_dialog(page, "Create Instance")
    page.goto(f"{base}/instances/{instance.id}/nodes/")
    open_dialog(page, "Add Dataplane Node")
    page.goto(f"{base}/certificates/")
    open_dialog(page, "Upload Server Certificate")
    page.goto(f"{base}/server-groups/")
    page.get_by_role("link", name=server_group.name, exact=True).click()
    expect(page.get_by_role("heading", name=server_group.name, exact=True)).to_be_visible()
    page.goto(f"{base}/server-groups/")
    page.get_by_role("link", name="Create Server Group", exact=True).click()
    page.get_by_role("button", name="Add More").click()
    expect(page.get_by_label("Server Address, row 2", exact=True)).to_be_visible()
    page.goto(f"{base}/access-control/")
    open_dialog(page, "Create IP Address Group")
    page.goto(f"{base}/tls-policies/")
    page.get_by_role("link", name="tls_cipher_policy_1_2", exact=True).click()
    expect(page.get_by_role("heading", name="tls_cipher_policy_1_2")).to_be_visible()

    assert violations == []


def test_the_watch_sees_a_violation(
    signed_in_page: Page, live_server, violations: Violations
) -> None:
    """The control: an inline handler slipped into a page is blocked and reported."""
    page = violations.watch(signed_in_page)
    page.goto(f"{live_server.url}/instances/")
    page.evaluate(
        """document.body.insertAdjacentHTML(
             "beforeend", '<img alt="" src="/static/icons/ferry.svg" onload="document.title=1">')"""
    )
    expect(page.locator("img[onload]")).to_have_count(1)
    page.wait_for_function("document.readyState === 'complete'")
    page.wait_for_timeout(500)
    assert any("script-src" in line for line in violations), violations
