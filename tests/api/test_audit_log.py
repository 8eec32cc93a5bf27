"""The audit log: every change from the console or the API is recorded in its service function,
with who made it (user or token), the object, the action and a before/after diff with secrets
redacted; the Audit Log page filters it, a listener's details page shows its history, and
nothing edits it."""

from __future__ import annotations

import datetime
import threading
import time

import pytest
from django.db import connection, transaction
from django.utils import timezone

from console.models import AuditRecord, Instance
from listeners import services
from listeners.models import BackendServer, Listener, ServerGroup
from tests.factories.certs import make_server_cert
from tests.fixtures.listeners import make_listener

pytestmark = pytest.mark.django_db


def settled(listener: Listener) -> Listener:
    Listener.objects.filter(pk=listener.pk).update(status="running", configuring_since=None)
    return Listener.objects.get(pk=listener.pk)


def test_an_api_change_names_the_token_and_the_fields_it_changed(api, instance, server_group):
    listener = settled(make_listener(instance, server_group, port=80, http2=False))

    api.send(
        "patch", f"/api/v1/instances/{instance.id}/listeners/{listener.id}", {"idle_timeout": 42}
    )

    record = AuditRecord.objects.get(action="listener.modify")
    assert record.actor.startswith("alice (token ci, ferry_")
    assert record.via == "api"
    assert (record.object_type, record.object_id, record.object_name) == (
        "listener",
        listener.id,
        listener.name,
    )
    assert record.changes == {"idle_timeout": {"before": 15, "after": 42}}


def test_a_console_change_names_the_user(admin_client, instance, server_group):
    listener = settled(make_listener(instance, server_group, port=80))

    admin_client.post(f"/instances/{instance.id}/listeners/{listener.id}/stop/")

    record = AuditRecord.objects.get(object_id=listener.id)
    assert (record.actor, record.via, record.action) == ("alice", "console", "listener.stop")
    assert record.changes == {"desired_state": {"before": "running", "after": "stopped"}}


def test_create_and_delete_are_recorded_whole(api, instance, server_group):
    created = api.send(
        "post",
        f"/api/v1/instances/{instance.id}/listeners",
        {"protocol": "http", "port": 8080, "server_group": server_group.id},
    ).json()
    settled(Listener.objects.get(pk=created["id"]))
    api.delete(f"/api/v1/instances/{instance.id}/listeners/{created['id']}")

    create, delete = AuditRecord.objects.filter(object_id=created["id"]).order_by("at", "id")
    assert create.action == "listener.create"
    assert create.changes["port"] == {"before": None, "after": 8080}
    assert delete.action == "listener.delete"
    assert delete.changes["port"] == {"before": 8080, "after": None}
    assert delete.object_name == "HTTP_8080"


def test_private_keys_are_redacted(api):
    server = make_server_cert()

    api.send(
        "post",
        "/api/v1/certificates",
        {
            "name": "www",
            "kind": "server",
            "certificate": server.cert_pem,
            "private_key": server.key_pem,
        },
    )

    record = AuditRecord.objects.get(action="certificate.upload")
    assert record.changes["private_key_token"] == {"before": None, "after": "[redacted]"}
    assert "PRIVATE KEY" not in str(record.changes)


def test_a_refused_change_records_nothing(api, instance, server_group):
    make_listener(instance, server_group, port=80)  # Configuring
    before = AuditRecord.objects.count()

    refused = api.send("post", f"/api/v1/instances/{instance.id}/listeners/x/start")
    with pytest.raises(services.RuleViolation), transaction.atomic():
        services.create_listener(
            instance, protocol="http", port=80, name="again", settings={}, server_group=server_group
        )

    assert refused.status_code == 404
    assert AuditRecord.objects.count() == before


def cell(action: str) -> str:
    return f'<td class="mono">{action}</td>'


def test_the_audit_log_page_filters_and_the_details_page_shows_history(
    admin_client, api, instance, server_group
):
    listener = settled(make_listener(instance, server_group, port=80))
    api.send("post", f"/api/v1/instances/{instance.id}/listeners/{listener.id}/stop")
    api.send("post", "/api/v1/acls", {"name": "office", "entries": [{"cidr": "10.0.0.0/8"}]})

    by_action = admin_client.get("/audit-log/", {"action": "acl.create"}).content.decode()
    by_object = admin_client.get("/audit-log/", {"object": listener.id}).content.decode()
    by_user = admin_client.get("/audit-log/", {"user": "nobody"}).content.decode()
    details = admin_client.get(listener.get_absolute_url()).content.decode()

    assert "office" in by_action and listener.id not in by_action
    assert cell("listener.stop") in by_object and cell("acl.create") not in by_object
    assert "No changes recorded." in by_user
    assert "Change History" in details and cell("listener.stop") in details
    api_listed = api.get("/api/v1/audit-log", {"object": listener.id}).json()
    assert [r["action"] for r in api_listed] == ["listener.stop"]


def test_the_audit_log_cannot_be_edited(api, admin_client):
    Instance.objects.create(name="x")
    api.send("post", "/api/v1/acls", {"name": "office", "entries": []})
    record = AuditRecord.objects.get(action="acl.create")

    assert admin_client.post("/audit-log/", {"action": "x"}).status_code == 405
    for method in ("put", "patch", "delete", "post"):
        assert getattr(api, method)(f"/api/v1/audit-log/{record.pk}").status_code in (404, 405)
    assert AuditRecord.objects.get(action="acl.create").changes == record.changes


def test_tokens_created_and_revoked_are_recorded_without_their_secret(admin_client):
    page = admin_client.post("/tokens/", {"name": "deploy", "role": "viewer", "days": 7})
    token_id = AuditRecord.objects.get(action="token.create").object_id
    admin_client.post(f"/tokens/{token_id}/revoke/")

    created = AuditRecord.objects.get(action="token.create")
    revoked = AuditRecord.objects.get(action="token.revoke")
    assert page.status_code == 201
    assert created.actor == revoked.actor == "alice"
    assert created.changes["key_hash"] == {"before": None, "after": "[redacted]"}
    assert set(revoked.changes) == {"revoked_at"}


def wait_for_a_blocked_lock(cursor, seconds: float = 10.0) -> None:
    """Return once some transaction waits for a row lock (pg_locks is live, not a snapshot)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
        if cursor.fetchone()[0]:
            return
        time.sleep(0.01)
    raise AssertionError("No transaction ever waited for the lock.")


@pytest.mark.django_db(transaction=True)
def test_before_is_read_under_the_lock_so_a_change_committed_meanwhile_is_not_in_the_diff(
    instance, server_group
):
    # Given: another transaction holds the listener's row, having changed its description.
    listener = settled(make_listener(instance, server_group, port=80, description="old"))
    holding = threading.Event()
    failures: list[BaseException] = []

    def other_change() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                Listener.objects.filter(pk=listener.pk).update(description="changed meanwhile")
                holding.set()
                # Commit only once the modify below waits for this row's lock.
                wait_for_a_blocked_lock(cursor)
        except BaseException as error:  # reported by the main thread
            failures.append(error)
            holding.set()
        finally:
            connection.close()

    thread = threading.Thread(target=other_change)
    thread.start()
    assert holding.wait(10)

    # When: a rename waits for that lock, then runs.
    services.modify_listener(listener_id=listener.pk, name="renamed", settings={})
    thread.join(10)

    # Then: its record holds the rename only; the description change was not this call's.
    assert failures == []
    record = AuditRecord.objects.get(action="listener.modify")
    assert record.changes == {"name": {"before": "listener-80", "after": "renamed"}}
    assert Listener.objects.get(pk=listener.pk).description == "changed meanwhile"


@pytest.mark.django_db(transaction=True)
def test_a_server_state_change_locks_the_group_before_the_server_for_its_audit(
    instance, server_group
):
    # The audit's lock follows set_server_state's order (group, then server): while another
    # transaction holds the group and then changes a server, the state change waits for it
    # without deadlock, and then records only its own change.
    settled(make_listener(instance, server_group, port=80))
    server = server_group.servers.order_by("pk").first()
    holding = threading.Event()
    failures: list[BaseException] = []

    def edit_group() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                # As update_server_group does: the group first, then (once the drain waits)
                # its servers. Were the server locked first by the drain, this would deadlock.
                ServerGroup.objects.select_for_update(no_key=True).get(pk=server_group.pk)
                holding.set()
                wait_for_a_blocked_lock(cursor)
                BackendServer.objects.filter(pk=server.pk).update(weight=7)
        except BaseException as error:  # reported by the main thread
            failures.append(error)
            holding.set()
        finally:
            connection.close()

    thread = threading.Thread(target=edit_group)
    thread.start()
    assert holding.wait(10)

    services.set_server_state(server_pk=server.pk, state="maintenance")
    thread.join(10)

    assert failures == []
    record = AuditRecord.objects.get(action="backend_server.maintenance")
    assert record.changes == {"state": {"before": "enabled", "after": "maintenance"}}


def test_the_time_filters_keep_the_records_of_those_days(api, admin_client):
    api.send("post", "/api/v1/acls", {"name": "old-office", "entries": []})
    api.send("post", "/api/v1/acls", {"name": "new-office", "entries": []})
    # Given: the first change was made ten days ago (its timestamp moved, as a clock would).
    today = timezone.localdate()
    AuditRecord.objects.filter(object_name="old-office").update(
        at=timezone.now() - datetime.timedelta(days=10)
    )
    recent = {"object": "office", "since": (today - datetime.timedelta(days=1)).isoformat()}
    older = {"object": "office", "until": (today - datetime.timedelta(days=5)).isoformat()}

    recent_page = admin_client.get("/audit-log/", recent).content.decode()
    older_page = admin_client.get("/audit-log/", older).content.decode()
    recent_api = api.get("/api/v1/audit-log", recent).json()
    older_api = api.get("/api/v1/audit-log", older).json()

    assert "new-office" in recent_page and "old-office" not in recent_page
    assert "old-office" in older_page and "new-office" not in older_page
    assert [r["object_name"] for r in recent_api] == ["new-office"]
    assert [r["object_name"] for r in older_api] == ["old-office"]
