"""The Access Log switch and the Logs tab: real requests through a real node process, read back
through the console's pages as an operator reads them."""

from __future__ import annotations

import http.client
import json

import pytest
from django.db import transaction
from django.test import Client
from django.urls import reverse

from console import nodeclient
from console.snapshot import build_snapshot
from listeners import services
from listeners.models import Listener
from tests.fixtures.listeners import make_listener
from tests.fixtures.nodes import register_node
from tests.fixtures.processes import free_port, wait_until
from tests.fixtures.users import make_user
from tests.listeners.test_wizard import ADVANCED_DEFAULTS

pytestmark = pytest.mark.django_db(transaction=True)


def url(name: str, listener: Listener) -> str:
    return reverse(name, args=[listener.instance_id, listener.id])


def _push(stack) -> None:
    """Send the instance's snapshot to its node, as the push task does."""
    stack.instance.refresh_from_db()
    answer = nodeclient.put_config(
        stack.node.url, stack.node.token, build_snapshot(stack.instance).to_json()
    )
    assert answer.ok, answer.reasons


def _request(port: int, path: str, user_agent: str = "probe/1.0") -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"User-Agent": user_agent})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.fixture
def logged(stack) -> tuple[Listener, int]:
    """An HTTP listener with its Access Log on, served by the stack's node, and two requests."""
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
    _push(stack)
    # What the push task writes back once the node has acknowledged the generation.
    Listener.objects.filter(pk=listener.pk).update(status=Listener.Status.RUNNING)
    assert wait_until(lambda: _request(port, "/warm") == 200, timeout=10)
    assert _request(port, "/shop/cart?x=1") == 200
    assert _request(port, "/about", user_agent="<script>alert(1)</script>") == 200
    return listener, port


def test_the_logs_tab_shows_the_requests_made(stack, logged) -> None:
    listener, _ = logged
    page = stack.client.get(url("listener-logs", listener))

    assert page.status_code == 200
    text = page.content.decode()
    assert 'aria-current="page" href="' + url("listener-logs", listener) in text
    for path in ("/warm", "/shop/cart?x=1", "/about"):
        assert path in text
    # Newest first.
    assert text.index("/about") < text.index("/shop/cart?x=1") < text.index("/warm")
    assert "srv-" in text and "completed" in text and "probe/1.0" in text
    # A client's header is text on the page, never markup.
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert 'hx-trigger="every 3s"' in text
    assert url("listener-logs-download", listener) in text
    assert "Access Log is off" not in text


def test_filters_by_path_status_class_and_client(stack, logged) -> None:
    listener, _ = logged
    page = stack.client.get(url("listener-logs", listener), {"path": "cart"})
    assert "/shop/cart?x=1" in page.content.decode()
    assert "/about" not in page.content.decode()

    page = stack.client.get(url("listener-logs", listener), {"status": "5xx"})
    assert "No lines match these filters yet." in page.content.decode()

    page = stack.client.get(url("listener-logs", listener), {"status": "2xx", "client": "127.0."})
    assert "/about" in page.content.decode()

    page = stack.client.get(url("listener-logs", listener), {"client": "10.9."})
    assert "No lines match" in page.content.decode()


@pytest.mark.parametrize(
    "query, field",
    [
        ({"client": '"><script>'}, "client"),
        ({"status": "6xx"}, "status"),
        ({"limit": "999999"}, "limit"),
        ({"path": "x" * 300}, "path"),
    ],
)
def test_bad_filters_are_shown_next_to_their_field(stack, logged, query, field) -> None:
    listener, _ = logged
    page = stack.client.get(url("listener-logs", listener), query)
    assert page.status_code == 200
    text = page.content.decode()
    assert f'id="id_{field}_error"' in text
    assert '"><script>' not in text
    # The lines are still shown, unfiltered.
    assert "/about" in text


def test_htmx_gets_only_the_logs_block(stack, logged) -> None:
    listener, _ = logged
    page = stack.client.get(url("listener-logs", listener), HTTP_HX_REQUEST="true")
    text = page.content.decode()
    assert text.lstrip().startswith("<section") or '<section class="panel" id="logs"' in text
    assert "<html" not in text
    assert "/about" in text


def test_download_gives_json_lines(stack, logged) -> None:
    listener, _ = logged
    response = stack.client.get(url("listener-logs-download", listener), {"path": "/"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/x-ndjson")
    assert response["Content-Disposition"].startswith(f'attachment; filename="{listener.id}-')
    lines = [json.loads(line) for line in response.content.decode().splitlines()]
    assert [line["path"] for line in lines] == ["/about", "/shop/cart?x=1", "/warm"]
    assert all(line["listener"] == listener.id and line["status"] == 200 for line in lines)
    assert lines[0]["user_agent"] == "<script>alert(1)</script>"
    assert lines[0]["node"] == stack.node.name


def test_a_node_that_does_not_answer_is_named(stack, logged) -> None:
    listener, _ = logged
    register_node(stack.instance, f"http://127.0.0.1:{free_port()}", name="node-gone")
    page = stack.client.get(url("listener-logs", listener))
    text = page.content.decode()
    assert "Node node-gone did not answer" in text
    assert "/about" in text


def test_a_viewer_reads_the_logs_and_anonymous_users_are_sent_to_sign_in(stack, logged) -> None:
    listener, _ = logged
    viewer = Client()
    viewer.force_login(make_user("watcher", "Viewers"))
    assert "/about" in viewer.get(url("listener-logs", listener)).content.decode()
    anonymous = Client().get(url("listener-logs", listener))
    assert anonymous.status_code == 302 and "login" in anonymous["Location"]
    assert Client().get(url("listener-logs-download", listener)).status_code == 302


def test_switch_off_says_so_and_nothing_new_is_recorded(stack, logged) -> None:
    listener, port = logged
    response = stack.client.post(
        url("listener-modify", listener),
        {**ADVANCED_DEFAULTS, "name": "web", "idle_timeout": "15"},
    )
    assert response.status_code == 302
    listener.refresh_from_db()
    assert listener.access_log is False
    _push(stack)
    assert _request(port, "/after-off") == 200

    page = stack.client.get(url("listener-logs", listener)).content.decode()
    assert "Access Log is off for this listener" in page
    assert "/after-off" not in page
    assert "/about" in page  # recorded while it was on


def test_the_switch_is_on_the_modify_dialog_and_reaches_the_snapshot(
    admin_client: Client, instance, server_group
) -> None:
    listener = make_listener(instance, server_group, port=80, status=Listener.Status.RUNNING)
    dialog = admin_client.get(url("listener-modify", listener)).content.decode()
    assert 'name="access_log"' in dialog and "Access Log" in dialog

    response = admin_client.post(
        url("listener-modify", listener),
        {**ADVANCED_DEFAULTS, "name": "web", "idle_timeout": "15", "access_log": "on"},
    )

    assert response.status_code == 302
    listener.refresh_from_db()
    assert listener.access_log is True
    [entry] = [item for item in build_snapshot(instance).listeners if item.id == listener.id]
    assert entry.access_log is True


def test_the_details_page_links_the_logs_tab(admin_client: Client, instance, server_group) -> None:
    listener = make_listener(instance, server_group, port=80, status=Listener.Status.RUNNING)
    page = admin_client.get(listener.get_absolute_url()).content.decode()
    assert f'href="{url("listener-logs", listener)}">Logs</a>' in page
