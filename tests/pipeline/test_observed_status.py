"""The status the console shows, derived from the nodes' reports and the clock (console/status.py).

A real HTTP server stands in for the node (tests/fixtures/nodes.py); Celery runs eagerly. The
clock is the one thing faked: a derivation is asked about a later ``now``, or the deadline is 0.
"""

from __future__ import annotations

import datetime
import json

import pytest

from console import pipeline, status
from console.snapshot import build_snapshot
from console.tasks import push_instance
from listeners import rules
from listeners.models import Listener
from listeners.services import listeners_changed
from tests.fixtures.listeners import make_listener
from tests.fixtures.nodes import FakeNode, register_node
from tests.fixtures.processes import free_port
from tests.integration.test_convergence import celery_broker

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("eager_celery")]


@pytest.fixture
def listener(instance, server_group) -> Listener:
    listener = make_listener(instance, server_group, port=8080)
    listeners_changed([listener])
    instance.refresh_from_db()
    return listener


@pytest.fixture(autouse=True)
def fresh_broker_probe(monkeypatch) -> None:
    # The probe's answer is kept for an interval; each test asks its own broker.
    monkeypatch.setattr(status, "_probe", (0.0, ""))


def shown(listener: Listener, **kwargs) -> tuple[str, str]:
    row = Listener.objects.select_related("instance").get(pk=listener.pk)
    observed = status.observe(row, list(row.instance.nodes.all()), **kwargs)
    return observed.status, observed.reason


def pushed(instance, fake_node: FakeNode) -> None:
    push_instance.delay(instance_id=instance.id, generation=instance.generation)


def test_a_change_whose_ack_was_lost_settles_from_the_node_status(
    instance, listener, fake_node
) -> None:
    node = register_node(instance, fake_node.url)
    # The node applied the snapshot; its answer never reached the console.
    fake_node.ack(json.loads(build_snapshot(instance).to_json()))

    pipeline.reconcile()

    assert fake_node.puts == []
    node.refresh_from_db()
    assert node.acked_generation == node.applied_generation == instance.generation
    assert shown(listener) == ("running", "")
    listener.refresh_from_db()
    assert listener.status == "running"


def test_a_listener_the_node_started_again_on_its_own_recovers_without_a_push(
    instance, listener, fake_node
) -> None:
    def port_taken(snapshot):
        code, payload = fake_node.ack(snapshot)
        fake_node.listeners[listener.id] = {"status": "failed", "reason": "port 8080 in use"}
        return code, payload

    fake_node.answer = port_taken
    register_node(instance, fake_node.url)
    pushed(instance, fake_node)
    assert shown(listener) == ("failed", "node node-a: port 8080 in use")

    # The node's retry found the port free; only its /v1/status says so.
    fake_node.listeners[listener.id] = {"status": "running", "reason": ""}
    pipeline.reconcile()

    assert len(fake_node.puts) == 1
    assert shown(listener) == ("running", "")
    listener.refresh_from_db()
    assert (listener.status, listener.last_error) == ("running", "")


def test_a_node_that_restarted_empty_shows_until_it_has_the_configuration_again(
    instance, listener, fake_node
) -> None:
    register_node(instance, fake_node.url)
    pushed(instance, fake_node)
    fake_node.generation = 0  # restarted with nothing

    pipeline.collect(instance)

    assert shown(listener) == ("failed", "node node-a: not in the configuration it runs (0)")
    pipeline.reconcile()
    assert shown(listener) == ("running", "")


def test_an_unreachable_node_fails_its_running_listener_until_it_answers_again(
    instance, listener, fake_node
) -> None:
    register_node(instance, fake_node.url)
    pushed(instance, fake_node)
    fake_node.down = True

    pipeline.reconcile()

    state, reason = shown(listener)
    assert state == "failed"
    assert reason.startswith("node node-a unreachable since ")
    fake_node.down = False
    pipeline.reconcile()
    assert shown(listener) == ("running", "")


def test_reports_older_than_two_reconcile_intervals_are_not_vouched_for(
    instance, listener, fake_node, settings
) -> None:
    register_node(instance, fake_node.url)
    pushed(instance, fake_node)
    checked = instance.nodes.get().checked_at
    window = datetime.timedelta(seconds=2 * settings.RECONCILE_INTERVAL)
    at = status.clock_time(checked)

    assert shown(listener, now=checked + window) == ("running", "")
    later = checked + window + datetime.timedelta(seconds=1)
    reason = f"no Celery worker and beat are running reconcile (nodes last checked at {at})"
    assert shown(listener, now=later) == ("failed", reason)


def test_configuring_past_the_deadline_is_failed_with_the_broker_down_and_can_be_edited(
    instance, listener, fake_node, settings
) -> None:
    register_node(instance, fake_node.url)
    since = Listener.objects.get(pk=listener.pk).configuring_since
    deadline = datetime.timedelta(seconds=settings.CONFIGURING_DEADLINE)
    assert shown(listener, now=since + deadline) == ("configuring", "")
    assert rules.configuring_refusal(Listener.objects.get(pk=listener.pk), "modifying it")

    # No task has run, and the broker is a port nobody listens on.
    with celery_broker(f"redis://127.0.0.1:{free_port()}/0"):
        late = shown(listener, now=since + deadline + datetime.timedelta(seconds=1))
    limit = f"{settings.CONFIGURING_DEADLINE:g}"
    expected = f"not applied within {limit} s: the task broker is unreachable (no node checked yet)"
    assert late == ("failed", expected)

    settings.CONFIGURING_DEADLINE = 0
    row = Listener.objects.get(pk=listener.pk)
    assert not row.is_configuring
    assert rules.configuring_refusal(row, "modifying it") is None


def test_an_overdue_listener_settles_once_its_nodes_answer(
    instance, listener, fake_node, settings
) -> None:
    settings.CONFIGURING_DEADLINE = 0
    register_node(instance, fake_node.url)
    fake_node.down = True
    pipeline.reconcile()
    listener.refresh_from_db()
    assert listener.status == "failed"
    assert "not applied within 0 s: node node-a unreachable since" in listener.last_error

    fake_node.down = False
    pipeline.reconcile()

    listener.refresh_from_db()
    assert (listener.status, listener.last_error, listener.configuring_since) == (
        "running",
        "",
        None,
    )
