"""From the browser to real traffic (issue 20): a Maintenance page set in the listener details
page's Error Pages section is what a client gets from a real dataplane node once every server of
the group is in Maintenance; the backend gets nothing.

The node is a real process (tests/fixtures/single_node.py); the snapshot is pushed as the push
task does.
"""

from __future__ import annotations

import http.client

import pytest

from console import nodeclient
from console.snapshot import build_snapshot
from listeners import services
from listeners.models import Listener
from tests.fixtures.processes import free_port

PAGE = "<h1>Back at 14:00</h1>"


def _push(stack) -> None:
    stack.instance.refresh_from_db()
    answer = nodeclient.put_config(
        stack.node.url, stack.node.token, build_snapshot(stack.instance).to_json()
    )
    assert answer.ok, answer.reasons
    Listener.objects.filter(instance=stack.instance).update(status=Listener.Status.RUNNING)


def proxied(stack) -> int:
    """Requests the node forwarded to the backend (its health checks ask for "/")."""
    return sum(1 for request in stack.backend.requests if request["path"] == "/status")


def _get(port: int) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/status")
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_maintenance_page_set_in_the_browser_is_served_by_the_node(
    stack, signed_in_page, live_server
) -> None:
    from playwright.sync_api import expect

    port = free_port()
    listener = stack.add_listener(port, "web")
    _push(stack)
    assert _get(port)[0] == 200
    served = proxied(stack)

    page = signed_in_page
    page.goto(live_server.url + listener.get_absolute_url())
    section = page.get_by_role("region", name="Error Pages")
    expect(section).to_contain_text("Not set: the plain-text answer is sent")
    section.get_by_role("link", name="Set the Maintenance page").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Content Type").select_option("text/html")
    dialog.get_by_label("Page Body").fill(PAGE)
    dialog.get_by_role("button", name="Save").click()
    row = page.locator('[data-error-page="maintenance"]')
    expect(row).to_contain_text("text/html")
    # The operator's HTML is shown as text: no heading of its own in the console.
    expect(row.locator("pre")).to_have_text(PAGE)
    expect(page.get_by_role("heading", name="Back at 14:00")).to_have_count(0)

    server = stack.group.servers.get()
    Listener.objects.filter(pk=listener.pk).update(status=Listener.Status.RUNNING)
    services.set_server_state(server_pk=server.pk, state="maintenance")
    _push(stack)

    status, headers, body = _get(port)
    assert (status, body) == (503, PAGE.encode())
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    assert proxied(stack) == served
