"""In the browser: a request made while the Logs tab is open appears in it without a reload, and
the filters narrow the lines. A real node process serves the listener; Chromium reads the page."""

from __future__ import annotations

import http.client
import re

import pytest
from django.db import transaction
from playwright.sync_api import Page, expect

from console import nodeclient
from console.snapshot import build_snapshot
from listeners import services
from listeners.models import Listener
from tests.fixtures.processes import free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def _request(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_a_request_made_while_the_logs_tab_is_open_shows_up(
    signed_in_page: Page, live_server, stack
) -> None:
    page = signed_in_page
    port = free_port()
    with transaction.atomic():
        listener = services.create_listener(
            stack.instance,
            protocol=Listener.Protocol.HTTP,
            port=port,
            name="web",
            settings={"access_log": True},
            server_group=stack.group,
        )
    stack.instance.refresh_from_db()
    answer = nodeclient.put_config(
        stack.node.url, stack.node.token, build_snapshot(stack.instance).to_json()
    )
    assert answer.ok, answer.reasons
    assert wait_until(lambda: _request(port, "/before") == 200, timeout=10)

    page.goto(live_server.url + listener.get_absolute_url())
    page.get_by_role("navigation", name="Listener").get_by_role("link", name="Logs").click()
    expect(page).to_have_url(re.compile(r"/logs/$"))
    lines = page.locator("#logs-lines")
    expect(lines.get_by_text("/before")).to_be_visible()

    # Made now, while the tab is open: the poll brings it in without a reload.
    assert _request(port, "/during-the-test") == 200
    expect(lines.get_by_text("/during-the-test")).to_be_visible(timeout=15_000)
    expect(lines.locator("tbody tr").first).to_contain_text("/during-the-test")

    page.get_by_label("Path Contains").fill("during")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"path=during"))
    expect(lines.get_by_text("/during-the-test")).to_be_visible()
    expect(lines.get_by_text("/before")).to_have_count(0)
