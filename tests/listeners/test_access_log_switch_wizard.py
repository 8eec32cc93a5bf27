"""The Access Log switch in the Create Listener wizard's Advanced Settings: shown on the first
step, carried through the wizard, saved on the listener and sent to the nodes in the snapshot.
(The Modify Listener dialog's switch is tested in test_logs_tab.py.)"""

from __future__ import annotations

import pytest
from django.test import Client

from console.models import Instance
from console.snapshot import build_snapshot
from listeners.models import Listener
from tests.listeners.test_wizard import post_step, step_url, walk_http_wizard

pytestmark = pytest.mark.django_db


def test_the_first_step_offers_the_switch(admin_client: Client, instance: Instance) -> None:
    page = admin_client.get(step_url(instance, "protocol")).content.decode()

    assert 'name="access_log"' in page
    assert "Access Log" in page


@pytest.mark.parametrize("switch", [{"access_log": "on"}, {}])
def test_the_wizards_switch_reaches_the_listener_and_the_snapshot(
    admin_client: Client, instance: Instance, switch: dict
) -> None:
    confirm = walk_http_wizard(admin_client, instance, **switch)
    assert confirm.status_code == 200

    response = post_step(
        admin_client, instance, "confirm", {"token": confirm.context["token"]}, action="submit"
    )

    listener = Listener.objects.get()
    assert response.status_code == 302
    assert listener.access_log is bool(switch)
    [entry] = [item for item in build_snapshot(instance).listeners if item.id == listener.id]
    assert entry.access_log is bool(switch)
