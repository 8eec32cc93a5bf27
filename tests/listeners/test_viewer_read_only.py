"""A Viewer who opens a form by its URL gets the page to read, disabled, with a line saying why."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from console.models import Instance
from listeners.models import Listener, ServerGroup
from tests.fixtures.listeners import make_listener

pytestmark = pytest.mark.django_db
NOTICE = "You have read-only access (Viewer)"


def form_urls(instance: Instance, listener: Listener) -> list[str]:
    one = [instance.id, listener.id]
    return [
        reverse("listener-modify", args=one),
        reverse("listener-stop", args=one),
        reverse("listener-delete", args=one),
        reverse("listener-health-check", args=one),
        reverse("listener-quick-create", args=[instance.id]),
        reverse("certificate-upload", args=["server"]),
        reverse("listener-create", args=[instance.id]) + "?reset=1",
    ]


@pytest.mark.parametrize("htmx", [False, True], ids=["page", "dialog"])
def test_viewer_reads_every_form_disabled(
    viewer_client: Client, instance: Instance, server_group: ServerGroup, htmx: bool
) -> None:
    listener = make_listener(instance, server_group, status="running")
    headers = {"HX-Request": "true"} if htmx else {}
    for url in form_urls(instance, listener):
        response = viewer_client.get(url, headers=headers, follow=True)
        page = response.content.decode()
        assert response.status_code == 200, url
        assert NOTICE in page, url
        assert '<fieldset class="read-only" disabled>' in page, url


def test_administrator_gets_the_live_form(
    admin_client: Client, instance: Instance, server_group: ServerGroup
) -> None:
    listener = make_listener(instance, server_group, status="running")
    for url in form_urls(instance, listener):
        page = admin_client.get(url, follow=True).content.decode()
        assert NOTICE not in page, url
        assert 'class="read-only" disabled' not in page, url


def test_the_post_is_still_refused(
    viewer_client: Client, instance: Instance, server_group: ServerGroup
) -> None:
    listener = make_listener(instance, server_group, status="running")
    response = viewer_client.post(reverse("listener-stop", args=[instance.id, listener.id]))
    assert response.status_code == 403
    listener.refresh_from_db()
    assert listener.desired_state == Listener.DesiredState.RUNNING
