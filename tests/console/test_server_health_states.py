"""Health you can explain, for the server states: a server drained or put in maintenance from the
console shows so in Backend Server Health as the real node reports it (the State column shows
what was asked; this shows the node has applied it), next to its health and reason.

One real dataplane node (tests/fixtures/single_node.py); pushes run as eager Celery tasks and the
console reads the node's status the way reconcile does (pipeline.collect).
"""

from __future__ import annotations

import re

import pytest
from django.db import transaction

from console import pipeline
from console.models import DataplaneNode
from console.server_health import describe
from listeners import services
from tests.fixtures.processes import free_port, wait_until


def _health_row(stack, address: str) -> str:
    """The server's row of the group page's Backend Server Health table."""
    page = stack.client.get(stack.group.get_absolute_url())
    assert page.status_code == 200
    text = page.content.decode()
    section = text[text.index('id="server-health"') :]
    rows = [row for row in re.findall(r"<tr>(.*?)</tr>", section, re.S) if address in row]
    assert len(rows) == 1, rows
    return rows[0]


def _node_state(stack, listener_id: str) -> str:
    [backend] = stack.node.status()["listeners"][listener_id]["backends"]
    return backend["state"]


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_draining_then_maintenance_show_as_the_node_reports_them(stack, eager_celery) -> None:
    listener = stack.add_listener(free_port(), "shop")
    server = stack.group.servers.get()
    address = f"{server.address}:{server.port}"
    pipeline.collect(stack.instance)
    assert "server-node-state" not in _health_row(stack, address)

    # When the server is drained from the console, with a 300 s delay.
    with transaction.atomic():
        services.set_server_state(server_pk=server.pk, state="draining", deregistration_delay=300)
    assert wait_until(lambda: _node_state(stack, listener.id) == "draining", timeout=10)
    pipeline.collect(stack.instance)

    # Then the node's report shows it draining, with the delay still to run.
    row = _health_row(stack, address)
    badge = re.search(r'class="[^"]*server-node-state[^"]*"[^>]*>([^<]+)<', row)
    assert badge is not None, row
    seconds = int(re.fullmatch(r"Draining, (\d+) s left", badge.group(1)).group(1))
    # The figure is the one the node reported, as reconcile stored it.
    stored = DataplaneNode.objects.get(instance=stack.instance).status_report
    [reported] = stored["listeners"][listener.id]["backends"]
    assert seconds == round(reported["drain_seconds_left"]) > 0

    # And in maintenance it says so.
    with transaction.atomic():
        services.set_server_state(server_pk=server.pk, state="maintenance")
    assert wait_until(lambda: _node_state(stack, listener.id) == "maintenance", timeout=10)
    pipeline.collect(stack.instance)
    row = _health_row(stack, address)
    assert re.search(r'server-node-state[^"]*"[^>]*>Maintenance<', row), row

    # Enabled again: no note.
    with transaction.atomic():
        services.set_server_state(server_pk=server.pk, state="enabled")
    assert wait_until(lambda: _node_state(stack, listener.id) == "enabled", timeout=10)
    pipeline.collect(stack.instance)
    assert "server-node-state" not in _health_row(stack, address)


@pytest.mark.parametrize(
    ("entry", "note"),
    [
        ({"state": "draining", "drain_seconds_left": 41.6}, "Draining, 42 s left"),
        # A drain whose delay a node does not give (no deadline yet): no figure is made up.
        ({"state": "draining"}, "Draining"),
        ({"state": "draining", "drain_seconds_left": float("nan")}, "Draining"),
        ({"state": "draining", "drain_seconds_left": True}, "Draining"),
        ({"state": "draining", "drain_seconds_left": "5"}, "Draining"),
        ({"state": "maintenance", "drain_seconds_left": 10}, "Maintenance"),
        ({"state": "enabled"}, ""),
        # An older node reports no state; anything else it might send reads as enabled.
        ({}, ""),
        ({"state": ["draining"]}, ""),
        ({"state": "<script>"}, ""),
    ],
)
def test_a_reported_state_is_read_defensively(entry: dict, note: str) -> None:
    assert describe({"id": "srv-1", "healthy": True, **entry}).state_note == note
