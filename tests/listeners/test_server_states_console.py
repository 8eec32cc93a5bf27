"""Server states in the console: the service, the pages, the API, the audit log and the snapshot.

Enable, drain (with a deregistration delay of 0-3600 s, default 300 s) or put a backend server in
maintenance; the group's listeners are reconfigured and the nodes get ``state`` and
``drain_deadline`` in their snapshot.
"""

from __future__ import annotations

import datetime
import math
import re

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from console import tokens
from console.models import AuditRecord, Instance
from console.snapshot import build_snapshot
from listeners import services
from listeners.models import BackendServer, Listener, ServerGroup
from tests.api.conftest import TokenClient
from tests.fixtures.listeners import make_listener

pytestmark = pytest.mark.django_db


@pytest.fixture
def running(instance: Instance, server_group: ServerGroup) -> Listener:
    return make_listener(instance, server_group, port=80, status=Listener.Status.RUNNING)


@pytest.fixture
def pushes(monkeypatch) -> list[set[str]]:
    pushed: list[set[str]] = []
    monkeypatch.setattr(services, "queue_push", pushed.append)
    return pushed


def first_server(group: ServerGroup) -> BackendServer:
    return group.servers.order_by("pk").first()


def state_url(server: BackendServer) -> str:
    return reverse("servergroup-server-state", args=[server.group_id, server.pk])


# -- the service -----------------------------------------------------------------------------------


def test_draining_starts_the_delay_reconfigures_and_pushes_on_commit(
    running, server_group, pushes, django_capture_on_commit_callbacks
):
    server = first_server(server_group)
    before = running.instance.generation
    with django_capture_on_commit_callbacks(execute=True):
        drained = services.set_server_state(
            server_pk=server.pk, state="draining", deregistration_delay=120
        )
    assert (drained.state, drained.deregistration_delay) == ("draining", 120)
    assert drained.draining_since is not None
    assert drained.drain_deadline == drained.draining_since + datetime.timedelta(seconds=120)
    running.refresh_from_db()
    running.instance.refresh_from_db()
    assert running.status == Listener.Status.CONFIGURING
    assert running.instance.generation == before + 1
    assert pushes == [{running.instance_id}]


def test_the_default_delay_is_300_s_and_a_second_drain_keeps_its_start(running, server_group):
    server = first_server(server_group)
    assert server.deregistration_delay == 300
    drained = services.set_server_state(server_pk=server.pk, state="draining")
    assert drained.drain_seconds_left() in range(290, 301)
    Listener.objects.filter(pk=running.pk).update(status=Listener.Status.RUNNING)
    again = services.set_server_state(
        server_pk=server.pk, state="draining", deregistration_delay=60
    )
    assert again.draining_since == drained.draining_since
    assert again.deregistration_delay == 60


def test_enabling_or_maintenance_ends_the_drain(running, server_group):
    server = first_server(server_group)
    services.set_server_state(server_pk=server.pk, state="draining")
    Listener.objects.filter(pk=running.pk).update(status=Listener.Status.RUNNING)
    server = services.set_server_state(server_pk=server.pk, state="maintenance")
    assert (server.state, server.draining_since, server.drain_seconds_left()) == (
        "maintenance",
        None,
        None,
    )
    Listener.objects.filter(pk=running.pk).update(status=Listener.Status.RUNNING)
    server = services.set_server_state(server_pk=server.pk, state="enabled")
    assert (server.state, server.draining_since) == ("enabled", None)
    # The delay chosen last is kept for the next drain.
    assert server.deregistration_delay == 300


def test_a_configuring_listener_refuses_the_change(running, server_group):
    Listener.objects.filter(pk=running.pk).update(status=Listener.Status.CONFIGURING)
    server = first_server(server_group)
    with pytest.raises(services.ListenerConfiguring, match="is Configuring"):
        services.set_server_state(server_pk=server.pk, state="maintenance")
    assert BackendServer.objects.get(pk=server.pk).state == "enabled"


@pytest.mark.parametrize(
    ("state", "delay", "field"),
    [("paused", None, "state"), ("draining", 3601, "deregistration_delay")],
)
def test_bad_values_are_refused_by_field(running, server_group, state, delay, field):
    server = first_server(server_group)
    with pytest.raises(services.RuleViolation) as refused:
        services.set_server_state(server_pk=server.pk, state=state, deregistration_delay=delay)
    assert refused.value.field == field


def test_no_change_records_nothing_and_keeps_the_listener_running(running, server_group):
    server = first_server(server_group)
    services.set_server_state(server_pk=server.pk, state="enabled")
    running.refresh_from_db()
    assert running.status == Listener.Status.RUNNING
    assert not AuditRecord.objects.filter(object_type="backendserver").exists()


def test_the_change_is_audited(running, server_group):
    server = first_server(server_group)
    services.set_server_state(server_pk=server.pk, state="draining", deregistration_delay=30)
    record = AuditRecord.objects.get(action="backend_server.drain")
    assert record.object_name == "127.0.0.1:8081"
    assert record.changes["state"] == {"before": "enabled", "after": "draining"}
    assert record.changes["deregistration_delay"] == {"before": 300, "after": 30}


def test_editing_the_group_keeps_a_servers_state(running, server_group):
    server = first_server(server_group)
    services.set_server_state(server_pk=server.pk, state="maintenance")
    Listener.objects.filter(pk=running.pk).update(status=Listener.Status.RUNNING)
    services.update_server_group(
        group_id=server_group.pk,
        values={},
        servers=[
            {"address": "127.0.0.1", "port": 8081, "weight": 10},
            {"address": "127.0.0.1", "port": 8082, "weight": 50},
        ],
    )
    kept = BackendServer.objects.get(pk=server.pk)
    assert (kept.state, kept.weight) == ("maintenance", 10)


# -- the snapshot ----------------------------------------------------------------------------------


def test_the_snapshot_carries_state_and_a_wall_clock_deadline(running, server_group):
    drained, other = server_group.servers.order_by("pk")
    drained = services.set_server_state(
        server_pk=drained.pk, state="draining", deregistration_delay=90
    )
    snapshot = build_snapshot(running.instance)
    servers = {s.id: s for s in snapshot.server_groups[0].servers}
    assert servers[drained.server_id].state == "draining"
    deadline = servers[drained.server_id].drain_deadline
    assert deadline == math.ceil(drained.drain_deadline.timestamp())
    assert (servers[other.server_id].state, servers[other.server_id].drain_deadline) == (
        "enabled",
        None,
    )
    snapshot.validate()


# -- the pages ---------------------------------------------------------------------------------


def test_the_group_page_shows_the_state_time_left_and_the_action(
    admin_client: Client, running, server_group
):
    server = first_server(server_group)
    BackendServer.objects.filter(pk=server.pk).update(
        state="draining",
        deregistration_delay=300,
        draining_since=timezone.now() - datetime.timedelta(seconds=50),
    )
    page = admin_client.get(server_group.get_absolute_url()).content.decode()
    # 300 s from 50 s ago; a second or two less on a slow machine.
    assert re.search(r"Draining, 4 min (10|[0-9]) s left", page)
    assert f'href="{state_url(server)}?next=' in page
    assert "Change State" in page


def test_the_listener_page_lists_the_state_of_its_servers(admin_client: Client, running):
    server = first_server(running.server_group)
    BackendServer.objects.filter(pk=server.pk).update(state="maintenance")
    page = admin_client.get(
        reverse("listener-detail", args=[running.instance_id, running.pk])
    ).content.decode()
    assert "<th>State</th>" in page
    assert ">Maintenance</span>" in page
    assert state_url(server) in page


def test_the_dialog_drains_and_returns_to_the_page_it_came_from(
    admin_client: Client, running, server_group
):
    server = first_server(server_group)
    listener_page = reverse("listener-detail", args=[running.instance_id, running.pk])
    dialog = admin_client.get(
        state_url(server), {"next": listener_page}, headers={"HX-Request": "true"}
    )
    assert dialog.status_code == 200
    assert b"Deregistration Delay (s)" in dialog.content
    assert b"Proceed with caution" in dialog.content
    response = admin_client.post(
        state_url(server),
        {"state": "draining", "deregistration_delay": "45", "next": listener_page},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == listener_page
    server.refresh_from_db()
    assert (server.state, server.deregistration_delay) == ("draining", 45)


def test_an_outside_next_is_not_followed(admin_client: Client, running, server_group):
    server = first_server(server_group)
    response = admin_client.post(
        state_url(server),
        {"state": "maintenance", "deregistration_delay": "300", "next": "https://evil.test/"},
    )
    assert response.status_code == 302
    assert response["Location"] == server_group.get_absolute_url()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"state": "draining", "deregistration_delay": "3601"}, "Deregistration Delay must be"),
        ({"state": "draining", "deregistration_delay": "-1"}, "Deregistration Delay must be"),
        ({"state": "draining", "deregistration_delay": "soon"}, "Enter a whole number"),
        ({"state": "gone", "deregistration_delay": "300"}, "Select a valid choice"),
        ({"deregistration_delay": "300"}, "This field is required"),
    ],
)
def test_bad_input_is_shown_next_to_its_field(
    admin_client: Client, running, server_group, data, message
):
    server = first_server(server_group)
    response = admin_client.post(state_url(server), data)
    assert response.status_code == 422
    assert message in response.content.decode()
    assert BackendServer.objects.get(pk=server.pk).state == "enabled"


def test_the_dialog_says_the_listener_is_configuring(admin_client: Client, running, server_group):
    Listener.objects.filter(pk=running.pk).update(status=Listener.Status.CONFIGURING)
    server = first_server(server_group)
    response = admin_client.post(
        state_url(server), {"state": "maintenance", "deregistration_delay": "300"}
    )
    assert response.status_code == 409
    assert b"is Configuring" in response.content


def test_a_server_of_another_group_is_not_found(admin_client: Client, server_group):
    other = ServerGroup.objects.create(name="other")
    server = first_server(server_group)
    url = reverse("servergroup-server-state", args=[other.pk, server.pk])
    assert admin_client.get(url).status_code == 404
    huge = reverse("servergroup-server-state", args=[server_group.pk, 10**40])
    assert admin_client.get(huge).status_code == 404
    assert admin_client.post(huge, {"state": "maintenance"}).status_code == 404


def test_viewers_see_the_state_but_change_nothing(viewer_client: Client, running, server_group):
    server = first_server(server_group)
    page = viewer_client.get(server_group.get_absolute_url()).content.decode()
    assert "Enabled" in page
    assert "Change State" not in page
    response = viewer_client.post(
        state_url(server), {"state": "maintenance", "deregistration_delay": "300"}
    )
    assert response.status_code == 403
    assert BackendServer.objects.get(pk=server.pk).state == "enabled"


def test_anonymous_users_sign_in_first(client: Client, server_group):
    response = client.get(state_url(first_server(server_group)))
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


# -- the API ---------------------------------------------------------------------------------
@pytest.fixture
def api(admin_user) -> TokenClient:
    return TokenClient(tokens.issue_token(user=admin_user, name="ci", role="admin", days=30).secret)


@pytest.fixture
def viewer_api(admin_user) -> TokenClient:
    secret = tokens.issue_token(user=admin_user, name="read", role="viewer", days=30).secret
    return TokenClient(secret)


def api_url(server: BackendServer) -> str:
    return f"/api/v1/server-groups/{server.group_id}/servers/{server.server_id}/state"


def test_the_api_drains_and_reports_time_left(api, running, server_group):
    server = first_server(server_group)
    response = api.send("put", api_url(server), {"state": "draining", "deregistration_delay": 600})
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["state"], body["deregistration_delay"]) == ("draining", 600)
    assert body["drain_seconds_left"] in range(590, 601)
    group = api.get(f"/api/v1/server-groups/{server_group.pk}").json()
    assert group["servers"][0]["state"] == "draining"
    assert group["servers"][1]["drain_seconds_left"] is None
    assert AuditRecord.objects.get(action="backend_server.drain").via == "api"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"state": "paused"}, "state"),
        ({"state": "draining", "deregistration_delay": 7200}, "deregistration_delay"),
        ({"state": "draining", "deregistration_delay": -5}, "deregistration_delay"),
    ],
)
def test_the_api_names_the_bad_field(api, running, server_group, body, field):
    response = api.send("put", api_url(first_server(server_group)), body)
    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    assert field in [error["field"] for error in response.json()["errors"]]


def test_the_api_refuses_unknown_fields_and_servers(api, running, server_group):
    server = first_server(server_group)
    extra = api.send("put", api_url(server), {"state": "enabled", "weight": 3})
    assert extra.status_code in (400, 422)
    for url in (
        f"/api/v1/server-groups/{server_group.pk}/servers/srv-999999/state",
        f"/api/v1/server-groups/{server_group.pk}/servers/web/state",
        f"/api/v1/server-groups/{server_group.pk}/servers/srv-{'9' * 40}/state",
        f"/api/v1/server-groups/{server_group.pk}/servers/srv--1/state",
        f"/api/v1/server-groups/sgp-nope/servers/{server.server_id}/state",
    ):
        assert api.send("put", url, {"state": "maintenance"}).status_code == 404
    # An ID outside the IDs' alphabet (an Arabic-Indic digit) is refused as such.
    odd = f"/api/v1/server-groups/{server_group.pk}/servers/srv-%D9%A1/state"
    assert api.send("put", odd, {"state": "maintenance"}).status_code == 422
    assert BackendServer.objects.filter(state="maintenance").count() == 0


def test_the_api_answers_409_while_configuring(api, running, server_group):
    Listener.objects.filter(pk=running.pk).update(status=Listener.Status.CONFIGURING)
    response = api.send("put", api_url(first_server(server_group)), {"state": "maintenance"})
    assert response.status_code == 409
    assert "Configuring" in response.json()["detail"]


def test_a_viewer_token_changes_nothing(viewer_api, running, server_group):
    server = first_server(server_group)
    response = viewer_api.send("put", api_url(server), {"state": "maintenance"})
    assert response.status_code == 403
    assert BackendServer.objects.get(pk=server.pk).state == "enabled"


# -- in the browser --------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_browser_drain_from_the_group_page(signed_in_page, live_server) -> None:
    from playwright.sync_api import expect

    group = ServerGroup.objects.create(name="downloads")
    server = BackendServer.objects.create(group=group, address="10.0.0.7", port=8080)
    page = signed_in_page
    page.goto(live_server.url + group.get_absolute_url())
    row = page.get_by_role("row", name="srv-")
    expect(row).to_contain_text("Enabled")

    page.get_by_role("link", name="Change state of server 10.0.0.7:8080").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Proceed with caution")
    dialog.get_by_label("Draining").check()
    delay = dialog.get_by_label("Deregistration Delay (s)")
    # The browser knows the range too (the server's own message is tested above).
    expect(delay).to_have_attribute("max", "3600")
    expect(delay).to_have_value("300")
    delay.fill("120")
    dialog.get_by_role("button", name="OK").click()
    # Rounded up to the second: 2 min, or a little less on a slow machine.
    left = re.compile(r"Draining, (2 min|1 min \d+ s) left")
    expect(page.get_by_role("row", name="srv-")).to_contain_text(left)
    server.refresh_from_db()
    assert (server.state, server.deregistration_delay) == ("draining", 120)
