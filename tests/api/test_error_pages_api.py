"""Error pages through the API (issue 20): list, get, put and delete by status, with the console
dialog's messages; and backup/restore carrying the pages with their listener."""

from __future__ import annotations

import copy

import pytest

from console import backup
from console.models import AuditRecord, Instance
from listeners.models import ErrorPage, Listener, ServerGroup
from tests.api.test_backup_restore import PASSPHRASE, Source, no_push, source  # noqa: F401
from tests.fixtures.listeners import make_listener

pytestmark = pytest.mark.django_db


@pytest.fixture
def running(instance: Instance, server_group: ServerGroup) -> Listener:
    return make_listener(instance, server_group, port=80, status=Listener.Status.RUNNING)


@pytest.fixture
def pushes(monkeypatch) -> list[set[str]]:
    pushed: list[set[str]] = []
    monkeypatch.setattr("listeners.services.queue_push", pushed.append)
    return pushed


def url(listener: Listener, status: str = "") -> str:
    base = f"/api/v1/instances/{listener.instance_id}/listeners/{listener.id}/error-pages"
    return f"{base}/{status}" if status else base


def back_to_running(listener: Listener) -> None:
    Listener.objects.filter(pk=listener.pk).update(status=Listener.Status.RUNNING)


def test_put_get_list_and_delete(api, running, pushes):
    assert api.send("get", url(running)).json() == []

    put = api.send("put", url(running, "503"), {"content_type": "text/html", "body": "<p>busy</p>"})

    assert put.status_code == 200, put.content
    assert put.json() == {
        "status": "503",
        "label": "503 Service Unavailable",
        "content_type": "text/html",
        "body": "<p>busy</p>",
        "size_bytes": 11,
    }
    running.refresh_from_db()
    assert running.status == Listener.Status.CONFIGURING
    assert AuditRecord.objects.filter(action="listener.set_error_page", via="api").count() == 1
    assert api.send("get", url(running, "503")).json()["body"] == "<p>busy</p>"
    assert [p["status"] for p in api.send("get", url(running)).json()] == ["503"]

    back_to_running(running)
    assert api.send("delete", url(running, "503")).status_code == 204
    assert not running.error_pages.exists()
    assert api.send("get", url(running, "503")).status_code == 404
    assert api.send("delete", url(running, "503")).status_code == 404


def test_the_content_type_defaults_to_html_and_a_put_replaces(api, running):
    api.send("put", url(running, "maintenance"), {"body": "down for an hour"})
    back_to_running(running)
    api.send("put", url(running, "maintenance"), {"content_type": "text/plain", "body": "again"})
    assert list(running.error_pages.values_list("status", "content_type", "body")) == [
        ("maintenance", "text/plain", "again")
    ]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"body": "x" * 65_537}, "body", "at most 65,536 bytes"),
        ({"content_type": "application/json", "body": "{nope"}, "body", "not valid JSON"),
        ({"body": "nul \u0000"}, "body", "Null characters are not allowed"),
        ({"body": "bell \u0007"}, "body", "must be UTF-8 text"),
        ({"body": ""}, "body", "Page Body is required"),
        ({"content_type": "text/xml", "body": "<x/>"}, "content_type", ""),
        ({"body": "x", "status": "502"}, "status", ""),
    ],
)
def test_bad_bodies_are_refused_by_field(api, running, body, field, message):
    response = api.send("put", url(running, "502"), body)
    assert response.status_code == 422, response.content
    errors = response.json()["errors"]
    assert field in [error["field"] for error in errors]
    assert message in " ".join(error["message"] for error in errors)
    assert not running.error_pages.exists()


def test_a_lone_surrogate_is_refused_before_the_form(api, running):
    response = api.send("put", url(running, "502"), {"body": "lone \ud800"})
    assert response.status_code == 400
    assert not running.error_pages.exists()


def test_unknown_statuses_and_tcp_listeners_are_refused(api, running, instance):
    assert api.send("put", url(running, "500"), {"body": "x"}).status_code == 422
    assert api.send("get", url(running, "maintenance")).status_code == 404
    group = ServerGroup.objects.create(name="tcp", backend_protocol="tcp")
    tcp = make_listener(instance, group, port=9000, protocol="tcp", status="running")
    assert api.send("get", url(tcp)).status_code == 404
    assert api.send("put", url(tcp, "502"), {"body": "x"}).status_code == 404


def test_409_while_configuring(api, instance, server_group):
    configuring = make_listener(instance, server_group, port=81)
    response = api.send("put", url(configuring, "502"), {"body": "x"})
    assert response.status_code == 409
    assert "Configuring" in response.json()["detail"]


def test_a_viewer_token_reads_but_changes_nothing(viewer_api, running):
    ErrorPage.objects.create(listener=running, status="502", body="down")
    assert viewer_api.send("get", url(running)).status_code == 200
    assert viewer_api.send("put", url(running, "502"), {"body": "x"}).status_code == 403
    assert viewer_api.send("delete", url(running, "502")).status_code == 403
    assert running.error_pages.get().body == "down"


# -- backup and restore ----------------------------------------------------------------------------


def test_error_pages_travel_with_their_listener(source: Source, no_push):  # noqa: F811
    ErrorPage.objects.create(
        listener=source.http, status="maintenance", content_type="text/plain", body="back soon"
    )
    ErrorPage.objects.create(listener=source.https, status="502", body="<h1>\N{EM DASH}</h1>")
    document = backup.export_instance(source.http.instance, PASSPHRASE)
    by_name = {listener["name"]: listener for listener in document["listeners"]}
    assert by_name[source.http.name]["error_pages"] == [
        {"status": "maintenance", "content_type": "text/plain", "body": "back soon"}
    ]
    assert by_name[source.tcp.name]["error_pages"] == []

    imported = backup.import_instance(
        document=copy.deepcopy(document), passphrase=PASSPHRASE, name="copy"
    )

    pages = {
        (listener.name, page.status, page.content_type, page.body)
        for listener in imported.listeners
        for page in listener.error_pages.all()
    }
    assert pages == {
        (source.http.name, "maintenance", "text/plain", "back soon"),
        (source.https.name, "502", "text/html", "<h1>\N{EM DASH}</h1>"),
    }
    again = backup.export_instance(imported.instance, PASSPHRASE)
    assert [listener["error_pages"] for listener in again["listeners"]] == [
        listener["error_pages"] for listener in document["listeners"]
    ]


def test_a_document_with_bad_pages_lists_every_problem(source: Source, no_push):  # noqa: F811
    document = backup.export_instance(source.http.instance, PASSPHRASE)
    by_name = {listener["name"]: listener for listener in document["listeners"]}
    http_at = f"listeners[{document['listeners'].index(by_name[source.http.name])}]"
    tcp_at = f"listeners[{document['listeners'].index(by_name[source.tcp.name])}]"
    by_name[source.http.name]["error_pages"] = [
        {"status": "500", "body": "x"},
        {"status": "502", "content_type": "application/json", "body": "{nope"},
        {"status": "504", "body": "x" * 65_537},
        {"status": "504", "body": "again"},
    ]
    by_name[source.tcp.name]["error_pages"] = [{"status": "502", "body": "x"}]
    before = ErrorPage.objects.count()

    with pytest.raises(backup.BackupInvalid) as refused:
        backup.import_instance(document=document, passphrase=PASSPHRASE, name="copy")

    problems = {(p["field"], p["message"]) for p in refused.value.problems}
    fields = {field for field, _ in problems}
    assert f"{http_at}.error_pages[0].status" in fields
    assert any(f == f"{http_at}.error_pages[1].body" and "not valid JSON" in m for f, m in problems)
    assert any(f == f"{http_at}.error_pages[2].body" and "65,536 bytes" in m for f, m in problems)
    assert (f"{http_at}.error_pages[3].status", "A second page for 504.") in problems
    assert (f"{tcp_at}.error_pages", "A tcp listener has no error pages.") in problems
    assert ErrorPage.objects.count() == before
