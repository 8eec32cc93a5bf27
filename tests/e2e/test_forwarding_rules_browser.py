"""Seed 002 advanced forwarding end to end: Chromium creates an HTTP listener with the wizard and a
second server group on the Server Groups pages, then adds, edits, reorders and deletes forwarding
rules on the listener's details page. After every change the push pipeline applies the rules to a
real dataplane node, and real HTTP requests show which backend got them or what came back."""

from __future__ import annotations

import http.client

import pytest
from playwright.sync_api import Page, expect

from console.models import Instance
from listeners.models import ForwardingRule, Listener, ServerGroup
from tests.fixtures.nodes import register_node
from tests.fixtures.processes import RecordingBackend, free_port, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]
HOST = "web.example.test"


def get(port: int, path: str, env: str | None = None) -> tuple[int, dict[str, str], str]:
    """One request on a new connection, with X-Env when ``env`` is given: status, headers
    (lower-case names), body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Host": f"{HOST}:{port}"}
        if env is not None:
            headers["X-Env"] = env
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read().decode()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


def paths(backend: RecordingBackend) -> list[str]:
    """What the backend got from clients (health checks use the server's address as Host)."""
    clients = [r for r in backend.requests if r["headers"].get("Host", "").startswith(HOST)]
    return [r["path"] for r in clients]


def wait_running(page: Page) -> None:
    """The change put the listener in Configuring; the node's acknowledgement makes it Running."""
    expect(page.locator("#listener-status")).to_contain_text("Running", timeout=20_000)


def rule_rows(page: Page):
    return page.get_by_role("region", name="Forwarding Rules").locator("tbody tr")


def test_forwarding_rules_added_edited_reordered_and_deleted_in_the_browser_steer_traffic(
    signed_in_page: Page, live_server, control_plane, backends
) -> None:
    page = signed_in_page
    instance = Instance.objects.create(name="web-edge")
    node = control_plane.node("node-1")
    register_node(instance, node.url, name="node-1", token=node.token)
    worker = control_plane.worker()
    wait_until(lambda: "ready" in worker.log(), timeout=30)
    a, b = backends("a"), backends("b")
    port = free_port()

    # Server group B on the Server Groups pages.
    page.goto(live_server.url + "/server-groups/")
    page.get_by_role("link", name="Create Server Group").click()
    page.get_by_label("Server Group Name", exact=True).fill("group-b")
    page.get_by_label("Backend Protocol", exact=True).select_option("HTTP")
    page.get_by_label("Server Address, row 1", exact=True).fill("127.0.0.1")
    page.get_by_label("Port, row 1", exact=True).fill(str(b.port))
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.get_by_text("Server group group-b")).to_be_visible()
    group_b = ServerGroup.objects.get(name="group-b")
    assert [(s.address, s.port) for s in group_b.servers.all()] == [("127.0.0.1", b.port)]

    # The HTTP listener with server group A, through the wizard.
    page.goto(f"{live_server.url}/instances/{instance.id}/listeners/")
    page.get_by_role("link", name="Create Listener", exact=True).click()
    # The wizard opens on HTTP with its port suggested: nothing to re-render before typing.
    expect(page.get_by_label("Listener Protocol", exact=True)).to_have_value("http")
    expect(page.get_by_label("Listener Port", exact=True)).to_have_value("80")
    page.get_by_label("Listener Port", exact=True).fill(str(port))
    page.get_by_label("Listener Name", exact=True).fill("web-http")
    page.get_by_role("button", name="Next").last.click()
    page.get_by_label("Create Server Group").check()
    page.get_by_label("Server Group Name", exact=True).fill("group-a")
    page.get_by_label("Server Address, row 1", exact=True).fill("127.0.0.1")
    page.get_by_label("Port, row 1", exact=True).fill(str(a.port))
    page.get_by_role("button", name="Next").last.click()
    page.get_by_role("button", name="Next").last.click()
    page.get_by_role("button", name="Submit").click()
    wait_running(page)
    listener = Listener.objects.get(name="web-http")
    assert listener.server_group.name == "group-a"
    expect(rule_rows(page)).to_contain_text(["No forwarding rules"])

    # No rules: everything goes to the default server group, A.
    assert wait_until(lambda: get(port, "/api/users")[2] == "a", timeout=10), node.log()[-3000:]
    assert get(port, "/")[::2] == (200, "a")

    def add_rule(name: str, fill) -> None:
        page.get_by_role("link", name="Add Rule").click()
        dialog = page.get_by_role("dialog", name="Add Forwarding Rule")
        dialog.get_by_label("Rule Name", exact=True).fill(name)
        fill(dialog)
        dialog.get_by_role("button", name="Save").click()
        expect(page.get_by_text(f"Forwarding rule {name} saved.")).to_be_visible()
        wait_running(page)

    # Rule 1: path prefix /api forwards to group B.
    def api_to_b(dialog) -> None:
        dialog.get_by_label("Path", exact=True).fill("/api")
        dialog.get_by_label("Path Match", exact=True).select_option("Prefix")
        dialog.get_by_label("Action", exact=True).select_option("Forward to Server Group")
        dialog.get_by_label("Forward to Server Group", exact=True).select_option(value=group_b.id)

    add_rule("api-to-b", api_to_b)
    expect(rule_rows(page)).to_have_count(1)
    expect(rule_rows(page).first).to_contain_text("Forward to Server Group: group-b")
    assert get(port, "/api/users?page=2")[::2] == (200, "b")
    assert get(port, "/home")[::2] == (200, "a")
    assert paths(b) == ["/api/users?page=2"]
    assert "/api/users?page=2" not in paths(a)
    assert paths(a)[-1] == "/home"

    # Rule 2: the header X-Env: canary gets a fixed response; no backend sees the request.
    def canary(dialog) -> None:
        dialog.get_by_label("HTTP Header", exact=True).fill("X-Env")
        dialog.get_by_label("Header Values", exact=True).fill("canary")
        dialog.get_by_label("Action", exact=True).select_option("Return Fixed Response")
        dialog.get_by_label("Status Code", exact=True).fill("200")
        dialog.get_by_label("Content Type", exact=True).select_option("text/plain")
        dialog.get_by_label("Response Body", exact=True).fill("canary")

    add_rule("canary", canary)
    seen_a, seen_b = len(paths(a)), len(paths(b))
    status, headers, body = get(port, "/home", env="canary")
    assert (status, body) == (200, "canary")
    assert headers["content-type"].startswith("text/plain")
    assert (len(paths(a)), len(paths(b))) == (seen_a, seen_b)
    # Another value of the header does not match: the default group answers.
    assert get(port, "/home", env="stable")[::2] == (200, "a")
    assert [r["headers"].get("X-Env") for r in a.requests if r["headers"].get("X-Env")] == [
        "stable"
    ]

    # Rule 3: /old is redirected with 301 to /new, keeping host, port and query.
    def old_to_new(dialog) -> None:
        dialog.get_by_label("Path", exact=True).fill("/old")
        dialog.get_by_label("Path Match", exact=True).select_option("Exact")
        dialog.get_by_label("Action", exact=True).select_option("Redirect")
        dialog.get_by_label("Status Code", exact=True).fill("301")
        dialog.get_by_label("Redirect Path", exact=True).fill("/new")

    add_rule("old-to-new", old_to_new)
    status, headers, _ = get(port, "/old?x=1")
    assert status == 301
    assert headers["location"] == f"http://{HOST}:{port}/new?x=1"
    assert "/old?x=1" not in paths(a) + paths(b)
    assert get(port, "/older")[::2] == (200, "a")  # an exact match, not a prefix
    expect(rule_rows(page)).to_have_count(3)
    expect(rule_rows(page).nth(0)).to_contain_text("api-to-b")
    expect(rule_rows(page).nth(1)).to_contain_text("canary")
    expect(rule_rows(page).nth(2)).to_contain_text("old-to-new")
    expect(rule_rows(page).nth(2)).to_contain_text("Redirect 301")

    # Edit rule 2: another status and body, and a second header value.
    rule_rows(page).nth(1).get_by_role("link", name="Edit").click()
    dialog = page.get_by_role("dialog", name="Edit Forwarding Rule")
    expect(dialog.get_by_label("Header Values", exact=True)).to_have_value("canary")
    expect(dialog.get_by_label("Response Body", exact=True)).to_have_value("canary")
    dialog.get_by_label("Header Values", exact=True).fill("canary, beta")
    dialog.get_by_label("Status Code", exact=True).fill("503")
    dialog.get_by_label("Response Body", exact=True).fill("canary is down")
    dialog.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Forwarding rule canary saved.")).to_be_visible()
    wait_running(page)
    expect(rule_rows(page).nth(1)).to_contain_text("Return Fixed Response 503")
    expect(rule_rows(page).nth(1)).to_contain_text("canary, beta")
    assert get(port, "/home", env="canary")[::2] == (503, "canary is down")
    assert get(port, "/home", env="beta")[::2] == (503, "canary is down")
    assert ForwardingRule.objects.get(name="canary").status_code == 503

    # A request that matches rules 1 and 2: the first rule in the list wins.
    b_before = len(paths(b))
    assert get(port, "/api/orders", env="canary")[::2] == (200, "b")
    assert paths(b)[b_before:] == ["/api/orders"]

    # Move canary up: now it is rule 1, and the same request gets the fixed response.
    page.get_by_role("button", name="Move rule 2 up").click()
    expect(rule_rows(page).nth(0)).to_contain_text("canary")
    expect(rule_rows(page).nth(1)).to_contain_text("api-to-b")
    wait_running(page)
    assert get(port, "/api/orders", env="canary")[::2] == (503, "canary is down")
    assert paths(b)[b_before:] == ["/api/orders"]
    # Without the header, /api still goes to B.
    assert get(port, "/api/orders")[::2] == (200, "b")
    assert [r.name for r in Listener.objects.get(pk=listener.pk).rules.all()] == [
        "canary",
        "api-to-b",
        "old-to-new",
    ]

    # Delete the redirect: /old goes to the default group again.
    page.get_by_role("button", name="Delete rule 3").click()
    expect(page.get_by_text("Forwarding rule old-to-new deleted.")).to_be_visible()
    expect(rule_rows(page)).to_have_count(2)
    wait_running(page)
    assert get(port, "/old?x=1")[::2] == (200, "a")
