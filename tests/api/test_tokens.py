"""Personal API tokens: created on the Tokens page and shown once, stored hashed, refused when
revoked or expired, and limited to reading with the Viewer role."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from console import tokens
from console.models import ApiToken, Instance
from tests.api.conftest import TokenClient

pytestmark = pytest.mark.django_db


def test_tokens_page_shows_a_new_token_once_and_stores_only_its_hash(admin_client):
    response = admin_client.post("/tokens/", {"name": "terraform", "role": "admin", "days": 30})

    assert response.status_code == 201
    secret = re.search(r'id="new-token">([^<]+)<', response.content.decode()).group(1)
    token = ApiToken.objects.get(name="terraform")
    assert token.key_hash == tokens.hash_token(secret)
    assert secret not in str(ApiToken.objects.values().get(pk=token.pk))
    assert secret.startswith(token.prefix)
    assert (token.expires_at - timezone.now()).days in (29, 30)
    listed = admin_client.get("/tokens/").content.decode()
    assert token.prefix in listed
    assert secret not in listed


def test_a_token_reads_and_writes_without_session_or_csrf(admin_token, instance):
    api = TokenClient(admin_token)

    listed = api.get(f"/api/v1/instances/{instance.id}/listeners")
    started = api.post(f"/api/v1/instances/{instance.id}/listeners/lsn-missing/start")

    assert listed.status_code == 200
    assert listed.json() == []
    # Past authentication and CSRF: the listener does not exist.
    assert started.status_code == 404
    assert started["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(
    "header",
    ["Bearer ferry_0000_unknown", "Bearer ", "Basic YWxpY2U6eA==", "Bearer not-a-ferry-token"],
)
def test_a_bad_authorization_header_gets_401(header, instance):
    response = Client(HTTP_AUTHORIZATION=header).get(f"/api/v1/instances/{instance.id}/listeners")

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["status"] == 401


def test_no_credentials_get_401_not_the_sign_in_page(instance):
    response = Client().get(f"/api/v1/instances/{instance.id}/listeners")

    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"


def test_a_revoked_token_gets_401(admin_client, admin_user, instance):
    issued = tokens.issue_token(user=admin_user, name="old", role="admin", days=7)
    api = TokenClient(issued.secret)
    assert api.get(f"/api/v1/instances/{instance.id}/listeners").status_code == 200

    admin_client.post(f"/tokens/{issued.token.pk}/revoke/")

    assert api.get(f"/api/v1/instances/{instance.id}/listeners").status_code == 401
    assert "Revoked" in admin_client.get("/tokens/").content.decode()


def test_an_expired_token_gets_401(admin_user, instance):
    issued = tokens.issue_token(user=admin_user, name="old", role="admin", days=7)
    ApiToken.objects.filter(pk=issued.token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    response = TokenClient(issued.secret).get(f"/api/v1/instances/{instance.id}/listeners")

    assert response.status_code == 401


def test_a_viewer_token_reads_but_every_write_gets_403_and_changes_nothing(
    viewer_api, instance, server_group
):
    generation = instance.generation

    read = viewer_api.get(f"/api/v1/instances/{instance.id}/listeners")
    write = viewer_api.post(
        f"/api/v1/instances/{instance.id}/listeners",
        {"protocol": "http", "port": 80, "server_group": server_group.id},
        content_type="application/json",
    )

    assert read.status_code == 200
    assert write.status_code == 403
    assert "Viewer" in write.json()["detail"]
    assert not instance.listeners.exists()
    assert Instance.objects.get(pk=instance.pk).generation == generation


def test_an_administrator_token_of_a_user_now_a_viewer_only_reads(admin_user, instance):
    issued = tokens.issue_token(user=admin_user, name="ci", role="admin", days=7)
    admin_user.groups.clear()

    response = TokenClient(issued.secret).post(f"/api/v1/instances/{instance.id}/listeners/x/stop")

    assert response.status_code == 403


def test_viewers_cannot_create_administrator_tokens(viewer_user):
    with pytest.raises(PermissionError):
        tokens.issue_token(user=viewer_user, name="x", role="admin", days=7)


def test_a_viewer_creates_and_revokes_a_viewer_token_of_their_own(
    viewer_client, admin_user, instance
):
    page = viewer_client.get("/tokens/").content.decode()
    created = viewer_client.post("/tokens/", {"name": "grafana", "role": "viewer", "days": 30})
    secret = re.search(r'id="new-token">([^<]+)<', created.content.decode()).group(1)
    api = TokenClient(secret)
    read = api.get(f"/api/v1/instances/{instance.id}/listeners")
    write = api.post(f"/api/v1/instances/{instance.id}/listeners/lsn-missing/start")
    someone_elses = tokens.issue_token(user=admin_user, name="ci", role="admin", days=7)
    viewer_client.post(f"/tokens/{someone_elses.token.pk}/revoke/")
    own = ApiToken.objects.get(name="grafana")
    viewer_client.post(f"/tokens/{own.pk}/revoke/")

    assert 'value="admin"' not in page  # the form offers a Viewer only what a Viewer may have
    assert created.status_code == 201
    assert read.status_code == 200
    assert write.status_code == 403
    assert ApiToken.objects.get(pk=someone_elses.token.pk).revoked_at is None
    assert ApiToken.objects.get(pk=own.pk).revoked_at is not None
    assert api.get(f"/api/v1/instances/{instance.id}/listeners").status_code == 401


def test_a_viewer_asking_for_an_administrator_token_is_told_why(viewer_client):
    refused = viewer_client.post("/tokens/", {"name": "sneaky", "role": "admin", "days": 30})

    assert refused.status_code == 422
    assert not ApiToken.objects.filter(name="sneaky").exists()


def test_the_token_exception_opens_no_other_write_to_viewers(viewer_client, instance):
    assert viewer_client.post("/tokens/../instances/").status_code in (403, 404)
    assert viewer_client.post(f"/instances/{instance.id}/delete/").status_code == 403


def test_a_session_write_needs_the_csrf_token(admin_user, instance):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(admin_user)
    path = f"/api/v1/instances/{instance.id}/listeners/lsn-missing/start"

    refused = browser.post(path)
    browser.get("/tokens/")  # sets the CSRF cookie, as any page does
    allowed = browser.post(path, HTTP_X_CSRFTOKEN=browser.cookies["csrftoken"].value)

    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    assert allowed.status_code == 404


def test_a_body_over_the_limit_gets_413(api, instance):
    response = api.post(
        f"/api/v1/instances/{instance.id}/listeners",
        "x" * (1024 * 1024 + 1),
        content_type="application/json",
    )

    assert response.status_code == 413


def test_a_viewer_session_reads_and_its_writes_get_a_403_problem(viewer_client, instance):
    listed = viewer_client.get(f"/api/v1/instances/{instance.id}/listeners")
    refused = viewer_client.post(f"/api/v1/instances/{instance.id}/listeners/x/stop")

    assert listed.status_code == 200
    assert refused.status_code == 403
    assert refused["Content-Type"] == "application/problem+json"
