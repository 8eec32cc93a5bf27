"""Words on listener pages that point the operator somewhere: they must point the right way."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from console.models import Instance
from listeners.models import ServerGroup
from tests.fixtures.listeners import make_listener

pytestmark = pytest.mark.django_db


def test_empty_forwarding_rules_name_the_server_group_instead_of_a_direction(
    admin_client: Client, instance: Instance, server_group: ServerGroup
) -> None:
    listener = make_listener(instance, server_group, status="running")

    page = admin_client.get(listener.get_absolute_url()).content.decode()

    assert (
        "every request goes to the listener's server group, "
        f'<a href="{server_group.get_absolute_url()}">{server_group.name}</a>' in page
    )
    assert "server group below" not in page
    # The Server Group section comes before the Forwarding Rules section it is named in.
    assert page.index('id="group-heading"') < page.index('id="rules-heading"')


def test_quick_create_marks_the_server_certificate_required(
    admin_client: Client, instance: Instance
) -> None:
    page = admin_client.get(reverse("listener-quick-create", args=[instance.id])).content.decode()
    certificate_field = page.split('for="id_default_certificate"', 1)[0].rsplit("<div", 1)[1]
    assert 'class="field required"' in certificate_field


def test_remove_checkboxes_name_their_row(admin_client: Client) -> None:
    page = admin_client.get(reverse("servergroup-create")).content.decode()
    assert 'Remove<span class="visually-hidden"> row 1</span>' in page
