"""Instances: create, list, delete, and the first-run bootstrap."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from console.models import Instance

pytestmark = pytest.mark.django_db


def test_create_instance_with_defaults(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("instance-create"),
        {"name": "edge", "edition": "standard", "bind_address": "127.0.0.1", "listener_quota": 50},
    )
    assert response.status_code == 302
    instance = Instance.objects.get(name="edge")
    assert re.fullmatch(r"lb-[a-z0-9]{8}", instance.id)
    assert instance.bind_address == "127.0.0.1"
    assert instance.listener_quota == 50
    assert instance.generation == 1
    assert instance.id.encode() in admin_client.get(reverse("instance-list")).content


def test_create_instance_form_defaults_are_the_seeds(admin_client: Client) -> None:
    form = admin_client.get(reverse("instance-create")).context["form"]
    assert form["bind_address"].value() == "127.0.0.1"
    assert form["listener_quota"].value() == 50


def test_invalid_instance_shows_errors_next_to_fields(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("instance-create"),
        {"name": "", "edition": "standard", "bind_address": "not-an-ip", "listener_quota": 500},
    )
    assert response.status_code == 422
    errors = response.context["form"].errors
    assert set(errors) == {"name", "bind_address", "listener_quota"}
    assert "between 1 and 100" in errors["listener_quota"][0]
    assert not Instance.objects.exists()


def test_htmx_create_answers_with_client_redirect(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("instance-create"),
        {"name": "h", "edition": "basic", "bind_address": "127.0.0.1", "listener_quota": 10},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == reverse("instance-list")


def test_delete_instance(admin_client: Client, instance: Instance) -> None:
    response = admin_client.post(reverse("instance-delete", args=[instance.id]))
    assert response.status_code == 302
    assert not Instance.objects.filter(pk=instance.pk).exists()


def test_listener_tab_lists_an_empty_instance(admin_client: Client, instance: Instance) -> None:
    response = admin_client.get(reverse("instance-listeners", args=[instance.id]))
    assert response.status_code == 200
    assert b"No listeners yet." in response.content


def test_unknown_instance_is_404(admin_client: Client) -> None:
    assert admin_client.get(reverse("instance-listeners", args=["lb-missing0"])).status_code == 404


def signs_in(username: str, password: str) -> bool:
    # Through the sign-in page: the throttling backend needs the request (Client.login has none).
    response = Client().post(reverse("login"), {"username": username, "password": password})
    return response.status_code == 302


def test_bootstrap_creates_admin_with_given_password_once(monkeypatch) -> None:
    monkeypatch.setenv("ADMIN_PASSWORD", "s3cret-pass")
    out = StringIO()
    call_command("bootstrap", stdout=out)
    call_command("bootstrap", stdout=out)

    assert User.objects.count() == 1
    assert signs_in("admin", "s3cret-pass")
    assert Instance.objects.count() == 1
    assert "s3cret-pass" not in out.getvalue()


def test_bootstrap_prints_a_generated_password(monkeypatch) -> None:
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    out = StringIO()
    call_command("bootstrap", stdout=out)
    password = re.search(r"generated password: (\S+)", out.getvalue()).group(1)
    assert signs_in("admin", password)


def test_createuser_command_assigns_the_role(monkeypatch) -> None:
    monkeypatch.setenv("NEW_PASSWORD", "pw-for-viewer")
    call_command(
        "createuser", "vera", role="viewer", password_env="NEW_PASSWORD", stdout=StringIO()
    )
    vera = User.objects.get(username="vera")
    assert list(vera.groups.values_list("name", flat=True)) == ["Viewers"]
