"""The backup document's size limit fits what an export writes.

An instance whose listeners carry large custom error pages exports to a document of several MiB
(over Django's in-memory body ceiling and over the API's 1 MiB settings limit); it is exported
and imported again over real HTTP, and through the Import page. A document over the limit is
refused at export (a backup the import would refuse is worse than none), and an import body
over its own limit gets 413 before it is read.
"""

from __future__ import annotations

import json

import pytest
import requests
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from console import backup, tokens
from console.api.auth import API_MAX_BODY_BYTES, API_MAX_CRL_BYTES, API_MAX_IMPORT_BYTES
from console.models import AuditRecord, Instance
from listeners.models import ErrorPage, Listener, ServerGroup
from tests.api.test_backup_restore import PASSPHRASE, counts
from tests.fixtures.listeners import make_listener
from tests.fixtures.users import make_user

LISTENERS = 10
PAGE_BYTES = 64 * 1024


def page_body(status: str) -> str:
    """A page of just under 64 KiB of UTF-8 with what JSON escapes (quotes, line breaks) and
    non-ASCII text, so the document's size is not simply the pages' size."""
    unit = f'<p class="status">Ferry {status}: «service unavailable» ✓</p>\n'
    return unit * (PAGE_BYTES // len(unit.encode()))


@pytest.fixture
def no_push(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about documents and bodies: no push is queued to a broker."""
    monkeypatch.setattr("listeners.services.queue_push", lambda ids: None)


@pytest.fixture
def large(instance: Instance, server_group: ServerGroup) -> Instance:
    """An instance of LISTENERS HTTP listeners, each with all four error pages of ~64 KiB."""
    for index in range(LISTENERS):
        listener = make_listener(
            instance, server_group, port=8001 + index, status=Listener.Status.RUNNING
        )
        ErrorPage.objects.bulk_create(
            ErrorPage(listener=listener, status=status, body=page_body(status))
            for status in ErrorPage.Status.values
        )
    return instance


def pages_of(instance: Instance) -> list[tuple[int, str, str, str]]:
    return sorted(
        (page.listener.port, page.status, page.content_type, page.body)
        for page in ErrorPage.objects.filter(listener__instance=instance).select_related("listener")
    )


@pytest.mark.django_db(transaction=True)
def test_an_instance_with_many_large_error_pages_round_trips_over_http(
    large: Instance, live_server, no_push
) -> None:
    user = make_user("backups", "Administrators")
    api = requests.Session()
    api.headers["Authorization"] = (
        f"Bearer {tokens.issue_token(user=user, name='backup', role='admin', days=1).secret}"
    )
    base = f"{live_server.url}/api/v1"

    # When: the instance is exported, and the document sent back as it came.
    exported = api.post(f"{base}/instances/{large.pk}/export", json={"passphrase": PASSPHRASE})
    assert exported.status_code == 200, exported.text[:500]
    body = b'{"passphrase": "' + PASSPHRASE.encode() + b'", "document": ' + exported.content + b"}"
    imported = api.post(
        f"{base}/instances/import",
        data=body,
        headers={"Content-Type": "application/json"},
    )

    # Then: the document is over every ceiling but its own, and the copy has every page.
    size = len(exported.content)
    assert size > max(API_MAX_BODY_BYTES, settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    assert size <= backup.MAX_DOCUMENT_BYTES < API_MAX_IMPORT_BYTES
    assert imported.status_code == 201, imported.text[:2000]
    copy = Instance.objects.get(pk=imported.json()["instance"])
    assert len(imported.json()["listeners"]) == LISTENERS
    assert pages_of(copy) == pages_of(large)
    assert len(pages_of(copy)) == LISTENERS * len(ErrorPage.Status.values)


@pytest.mark.django_db
def test_the_import_page_takes_a_file_of_several_mib(admin_client, large: Instance, no_push):
    document = backup.serialize(backup.export_instance(large, PASSPHRASE))
    assert len(document) > 2 * 1024 * 1024

    answer = admin_client.post(
        reverse("instance-import"),
        {
            "document": SimpleUploadedFile("big.json", document),
            "passphrase": PASSPHRASE,
            "name": "from the big file",
        },
    )

    assert answer.status_code == 302, answer.content.decode()[:2000]
    assert pages_of(Instance.objects.get(name="from the big file")) == pages_of(large)


@pytest.mark.django_db
def test_an_export_over_the_import_limit_is_refused_and_not_recorded(
    api, admin_client, large: Instance, monkeypatch
) -> None:
    # The limit lowered below this instance's document: the same check as at 32 MiB, without
    # building 32 MiB of rows.
    monkeypatch.setattr(backup, "MAX_DOCUMENT_BYTES", 1024 * 1024)

    by_api = api.send("post", f"/api/v1/instances/{large.pk}/export", {"passphrase": PASSPHRASE})
    by_page = admin_client.post(
        reverse("instance-export", args=[large.pk]),
        {"passphrase": PASSPHRASE, "confirm": PASSPHRASE},
    )

    assert by_api.status_code == 422
    assert by_api["Content-Type"] == "application/problem+json"
    assert "over the 1.0 MiB an import accepts" in by_api.json()["detail"]
    assert by_page.status_code == 422
    assert "over the 1.0 MiB an import accepts" in by_page.content.decode()
    assert not AuditRecord.objects.filter(action="instance.export").exists()


@pytest.mark.django_db
def test_bodies_over_each_documented_limit_get_413_and_change_nothing(api, no_push) -> None:
    before = counts()
    settings_body = {"name": "office", "description": "x" * API_MAX_BODY_BYTES, "entries": []}
    document = {"pad": "x" * API_MAX_IMPORT_BYTES}

    too_big_settings = api.send("post", "/api/v1/acls", settings_body)
    too_big_import = api.send(
        "post", "/api/v1/instances/import", {"passphrase": PASSPHRASE, "document": document}
    )
    too_big_crl = api.send(
        "post", "/api/v1/certificates/crt-x/crls", {"crl": "x" * API_MAX_CRL_BYTES}
    )
    # Over the settings limit, within the CRL upload's: read and answered, not refused unread.
    big_crl = api.send("post", "/api/v1/certificates/crt-x/crls", {"crl": "x" * (1152 * 1024)})

    for answer, limit in (
        (too_big_settings, API_MAX_BODY_BYTES),
        (too_big_import, API_MAX_IMPORT_BYTES),
        (too_big_crl, API_MAX_CRL_BYTES),
    ):
        assert answer.status_code == 413
        assert answer.json()["detail"] == f"The request body is larger than {limit} bytes."
    # No such CA, or a CRL over its field limit: either way the body was read and answered.
    assert big_crl.status_code in (404, 422)
    assert counts() == before


@pytest.mark.django_db
def test_the_limits_are_documented_where_they_apply(api, admin_client) -> None:
    schema = api.get("/api/v1/openapi.json").json()
    page = admin_client.get(reverse("instance-import")).content.decode()

    assert str(API_MAX_IMPORT_BYTES) in schema["info"]["description"]
    assert str(API_MAX_BODY_BYTES) in schema["info"]["description"]
    assert "at most 32 MiB" in page
    assert json.dumps(backup.MAX_DOCUMENT_BYTES) in schema["info"]["description"]
