"""Error pages in the console (issue 20): the two use cases (set, remove), the Error Pages
section of the listener details page and its dialog, the audit log and the snapshot."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from console.models import AuditRecord, Instance
from console.snapshot import build_snapshot
from listeners import services
from listeners.forms.errorpages import body_problem
from listeners.models import ErrorPage, Listener, ServerGroup
from tests.fixtures.listeners import make_listener

pytestmark = pytest.mark.django_db
PAGE = "<h1>We'll be right back</h1>\n<script>alert('x')</script>"


@pytest.fixture
def running(instance: Instance, server_group: ServerGroup) -> Listener:
    return make_listener(instance, server_group, port=80, status=Listener.Status.RUNNING)


@pytest.fixture
def pushes(monkeypatch) -> list[set[str]]:
    pushed: list[set[str]] = []
    monkeypatch.setattr(services, "queue_push", pushed.append)
    return pushed


def page_url(listener: Listener, status: str, *, remove: bool = False) -> str:
    name = "listener-error-page-remove" if remove else "listener-error-page"
    return reverse(name, args=[listener.instance_id, listener.id, status])


def back_to_running(listener: Listener) -> None:
    Listener.objects.filter(pk=listener.pk).update(status=Listener.Status.RUNNING)


# -- the use cases ---------------------------------------------------------------------------------


def test_setting_a_page_reconfigures_audits_and_pushes_on_commit(
    running, pushes, django_capture_on_commit_callbacks
):
    before = running.instance.generation
    with django_capture_on_commit_callbacks(execute=True):
        page = services.set_error_page(
            listener_id=running.pk, status="503", content_type="text/html", body=PAGE
        )
    assert (page.status, page.content_type, page.body) == ("503", "text/html", PAGE)
    running.refresh_from_db()
    running.instance.refresh_from_db()
    assert running.status == Listener.Status.CONFIGURING
    assert running.instance.generation == before + 1
    assert pushes == [{running.instance_id}]
    record = AuditRecord.objects.get(action="listener.set_error_page")
    assert record.object_id == running.pk
    # Size and digest, not the page itself.
    assert record.changes["error_pages"]["after"]["503"].startswith(
        f"text/html, {len(PAGE.encode())} bytes, sha256 "
    )


def test_setting_again_replaces_the_page_and_removing_goes_back_to_none(running):
    services.set_error_page(
        listener_id=running.pk, status="502", content_type="text/html", body="a"
    )
    back_to_running(running)
    services.set_error_page(
        listener_id=running.pk, status="502", content_type="text/plain", body="b"
    )
    assert list(running.error_pages.values_list("status", "content_type", "body")) == [
        ("502", "text/plain", "b")
    ]
    back_to_running(running)
    services.remove_error_page(listener_id=running.pk, status="502")
    assert not running.error_pages.exists()
    assert AuditRecord.objects.filter(action="listener.remove_error_page").count() == 1
    back_to_running(running)
    with pytest.raises(services.NotFound, match="502 Bad Gateway page no longer exists"):
        services.remove_error_page(listener_id=running.pk, status="502")


def test_a_configuring_listener_refuses_the_change(instance, server_group):
    configuring = make_listener(instance, server_group, port=81)
    with pytest.raises(services.ListenerConfiguring):
        services.set_error_page(
            listener_id=configuring.pk, status="504", content_type="text/html", body="x"
        )
    assert not ErrorPage.objects.exists()


def test_a_tcp_listener_has_no_error_pages(instance):
    group = ServerGroup.objects.create(name="tcp", backend_protocol="tcp")
    tcp = make_listener(instance, group, port=9000, protocol="tcp", status="running")
    with pytest.raises(services.RuleViolation, match="Only HTTP, HTTPS and QUIC"):
        services.set_error_page(listener_id=tcp.pk, status="502", content_type="text/html", body="")


@pytest.mark.parametrize(
    ("status", "content_type", "field"),
    [
        ("502", "text/html; charset=utf-8", "content_type"),
        ("502", "image/svg+xml", "content_type"),
        ("500", "text/html", "status"),
    ],
)
def test_a_page_the_node_would_refuse_is_refused_by_the_service(
    running, pushes, status, content_type, field
):
    """The node refuses a whole snapshot over one such page, so no caller may store one: the
    service checks what the dialog and the API check, and the database holds the same rule."""
    with pytest.raises(services.RuleViolation) as refused:
        services.set_error_page(
            listener_id=running.pk, status=status, content_type=content_type, body="x"
        )
    assert refused.value.field == field
    assert not ErrorPage.objects.exists()
    assert pushes == []


@pytest.mark.parametrize(
    ("status", "content_type"), [("502", "text/html; charset=utf-8"), ("500", "text/html")]
)
def test_the_database_refuses_a_page_the_node_would_refuse(running, status, content_type):
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        ErrorPage.objects.create(
            listener=running, status=status, content_type=content_type, body="x"
        )


def test_the_snapshot_carries_the_pages(running):
    ErrorPage.objects.create(
        listener=running, status="maintenance", content_type="text/plain", body="back soon"
    )
    ErrorPage.objects.create(listener=running, status="502", body=PAGE)
    [listener] = build_snapshot(running.instance).listeners
    assert [(p.status, p.content_type, p.body) for p in listener.error_pages] == [
        ("502", "text/html", PAGE),
        ("maintenance", "text/plain", "back soon"),
    ]


# -- the body's checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        ("x" * 65_537, "text/html", "at most 65,536 bytes (64 KiB); it is 65,537 bytes"),
        ("\N{EM DASH}" * 21_846, "text/plain", "it is 65,538 bytes"),
        ("bad \ufffd byte", "text/html", "must be UTF-8 text"),
        ("nul \x00 here", "text/plain", "must be UTF-8 text"),
        ("lone \ud800", "text/html", "must be UTF-8 text"),
        ("{'single': 'quotes'}", "application/json", "not valid JSON: Expecting property name"),
        ("", "application/json", "not valid JSON"),
    ],
)
def test_bodies_that_cannot_be_served_are_refused(body, content_type, message):
    assert message in body_problem(body, content_type)


def test_bodies_that_can_be_served_pass():
    assert body_problem("x" * 65_536, "text/html") is None
    assert body_problem('{"error": "down"}\n', "application/json") is None
    assert body_problem("tabs\tand\r\nlines", "text/plain") is None
    # Not JSON, but not said to be: any text.
    assert body_problem("{not json", "text/plain") is None


# -- the details page and its dialog ---------------------------------------------------------------


def test_the_details_page_lists_the_four_pages_escaped(admin_client: Client, running):
    ErrorPage.objects.create(listener=running, status="503", body=PAGE)
    page = admin_client.get(running.get_absolute_url()).content.decode()
    assert "Error Pages" in page
    for label in ("502 Bad Gateway", "503 Service Unavailable", "504 Gateway Timeout"):
        assert label in page
    assert 'data-error-page="maintenance"' in page
    # The operator's HTML is text in the console, never markup.
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert page.count("Not set: the plain-text answer is sent") == 3
    assert page_url(running, "503", remove=True) in page


def test_a_tcp_listener_page_has_no_error_pages(admin_client: Client, instance):
    group = ServerGroup.objects.create(name="tcp", backend_protocol="tcp")
    tcp = make_listener(instance, group, port=9000, protocol="tcp", status="running")
    assert "Error Pages" not in admin_client.get(tcp.get_absolute_url()).content.decode()
    assert admin_client.get(page_url(tcp, "502")).status_code == 404


def test_the_dialog_sets_a_page_and_returns_to_the_details_page(
    admin_client: Client, running, pushes
):
    form = admin_client.get(page_url(running, "maintenance"), headers={"HX-Request": "true"})
    assert form.status_code == 200
    assert "Set Maintenance Page" in form.content.decode()

    response = admin_client.post(
        page_url(running, "maintenance"),
        {"content_type": "application/json", "body": '{"maintenance": true}'},
        headers={"HX-Request": "true"},
    )

    assert response.status_code == 200
    assert response["HX-Redirect"] == running.get_absolute_url()
    page = running.error_pages.get()
    assert (page.status, page.content_type, page.body) == (
        "maintenance",
        "application/json",
        '{"maintenance": true}',
    )
    back_to_running(running)
    edit = admin_client.get(page_url(running, "maintenance")).content.decode()
    assert "Edit Maintenance Page" in edit
    assert "{&quot;maintenance&quot;: true}" in edit


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"content_type": "text/html", "body": "x" * 65_537}, "at most 65,536 bytes"),
        ({"content_type": "text/plain", "body": "\N{EM DASH}" * 21_846}, "it is 65,538 bytes"),
        ({"content_type": "application/json", "body": "{oops"}, "not valid JSON"),
        ({"content_type": "text/html", "body": "a\x01b"}, "must be UTF-8 text"),
        ({"content_type": "text/html", "body": ""}, "Page Body is required"),
        ({"content_type": "text/xml", "body": "<x/>"}, "Select a valid choice"),
    ],
)
def test_bad_input_is_shown_next_to_its_field(admin_client: Client, running, data, message):
    response = admin_client.post(page_url(running, "502"), data)
    assert response.status_code == 422
    html = response.content.decode()
    field = "content_type" if data["content_type"] == "text/xml" else "body"
    error_at = html.index(f'id="id_{field}_error"')
    assert message in html[error_at : error_at + 300]
    assert not running.error_pages.exists()


def test_invalid_utf8_bytes_in_a_form_post_are_refused(admin_client: Client, running):
    # A browser posting bytes that are not UTF-8: Django decodes them to U+FFFD.
    response = admin_client.post(
        page_url(running, "502"),
        b"content_type=text%2Fhtml&body=caf%E9",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 422
    assert "must be UTF-8 text" in response.content.decode()
    assert not running.error_pages.exists()


def test_remove_goes_back_to_the_plain_answer(admin_client: Client, running):
    ErrorPage.objects.create(listener=running, status="504", body="slow")
    response = admin_client.post(page_url(running, "504", remove=True))
    assert response.status_code == 302
    assert not running.error_pages.exists()


def test_unknown_statuses_are_not_found(admin_client: Client, running):
    assert admin_client.get(page_url(running, "500")).status_code == 404
    assert admin_client.post(page_url(running, "500"), {"body": "x"}).status_code == 404
    assert admin_client.post(page_url(running, "500", remove=True)).status_code == 404


def test_the_dialog_says_the_listener_is_configuring(admin_client: Client, instance, server_group):
    configuring = make_listener(instance, server_group, port=82)
    response = admin_client.post(
        page_url(configuring, "502"),
        {"content_type": "text/html", "body": "x"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 409
    assert "Configuring" in response.content.decode()
    assert not ErrorPage.objects.exists()


def test_viewers_read_the_pages_but_change_nothing(viewer_client: Client, running):
    ErrorPage.objects.create(listener=running, status="502", body="down")
    page = viewer_client.get(running.get_absolute_url()).content.decode()
    assert "Error Pages" in page and "down" in page
    assert page_url(running, "502", remove=True) not in page
    response = viewer_client.post(
        page_url(running, "502"), {"content_type": "text/html", "body": "x"}
    )
    assert response.status_code == 403
    assert viewer_client.post(page_url(running, "502", remove=True)).status_code == 403
    assert running.error_pages.get().body == "down"


def test_json_in_the_snapshot_is_the_body_as_written(running):
    body = json.dumps({"error": "maintenance", "retry_after": 600})
    services.set_error_page(
        listener_id=running.pk, status="maintenance", content_type="application/json", body=body
    )
    [listener] = build_snapshot(running.instance).listeners
    assert listener.error_pages[0].body == body
