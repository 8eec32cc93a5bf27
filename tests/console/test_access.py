"""Login is required everywhere; viewers read and never change."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from console.models import Instance

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("url_name", ["instance-list", "instance-create"])
def test_anonymous_is_sent_to_login(client: Client, url_name: str) -> None:
    response = client.get(reverse(url_name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_login_page_is_public_and_accepts_credentials(admin_user) -> None:
    client = Client()
    assert client.get(reverse("login")).status_code == 200
    response = client.post(
        reverse("login"), {"username": "alice", "password": "correct horse battery staple"}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("instance-list")


def test_wrong_password_is_explained_on_the_form(admin_user) -> None:
    response = Client().post(reverse("login"), {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content


def test_viewer_sees_instances_but_cannot_create_one(viewer_client: Client) -> None:
    page = viewer_client.get(reverse("instance-list"))
    assert page.status_code == 200
    assert b"Create Instance" not in page.content

    response = viewer_client.post(reverse("instance-create"), {"name": "sneaky"})

    assert response.status_code == 403
    assert not Instance.objects.filter(name="sneaky").exists()


def test_viewer_cannot_delete_an_instance(viewer_client: Client, instance: Instance) -> None:
    response = viewer_client.post(reverse("instance-delete", args=[instance.id]))
    assert response.status_code == 403
    assert Instance.objects.filter(pk=instance.pk).exists()


def test_viewer_may_sign_out(viewer_client: Client) -> None:
    response = viewer_client.post(reverse("logout"))
    assert response.status_code == 302
    assert viewer_client.get(reverse("instance-list")).status_code == 302
