"""The push task against a real HTTP server standing in for a node (Celery in eager mode)."""

from __future__ import annotations

import pytest
from celery.exceptions import Retry
from django.db import transaction

from console import pipeline
from console.models import PushAttempt
from console.snapshot import build_snapshot
from console.tasks import push_instance, reconcile
from dataplane.config import Snapshot
from listeners.models import Listener
from listeners.services import listeners_changed
from tests.fixtures.listeners import make_listener
from tests.fixtures.nodes import register_node

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("eager_celery")]


@pytest.fixture
def listener(instance, server_group) -> Listener:
    listener = make_listener(instance, server_group, port=8080)
    with transaction.atomic():
        listeners_changed([listener])
    instance.refresh_from_db()
    return listener


def test_snapshot_round_trips_through_the_dataplane_schema(instance, listener) -> None:
    snapshot = build_snapshot(instance)
    decoded = Snapshot.from_json(snapshot.to_json())
    assert decoded.generation == instance.generation
    assert decoded.listeners[0].id == listener.id
    assert [s.port for s in decoded.server_groups[0].servers] == [8081, 8082]


def test_ack_moves_the_listener_to_running(instance, listener, fake_node) -> None:
    register_node(instance, fake_node.url)

    push_instance.delay(instance_id=instance.id, generation=instance.generation)

    listener.refresh_from_db()
    assert listener.status == Listener.Status.RUNNING
    assert fake_node.puts[-1]["generation"] == instance.generation
    attempt = PushAttempt.objects.get()
    assert (attempt.result, attempt.generation) == ("ack", instance.generation)


def test_push_is_idempotent(instance, listener, fake_node) -> None:
    register_node(instance, fake_node.url)
    push_instance.delay(instance_id=instance.id, generation=instance.generation)
    push_instance.delay(instance_id=instance.id, generation=instance.generation)
    push_instance.delay(instance_id=instance.id, generation=instance.generation - 1)
    assert len(fake_node.puts) == 1


def test_a_lagging_task_pushes_the_newest_generation(instance, listener, fake_node) -> None:
    register_node(instance, fake_node.url)
    old = instance.generation
    listeners_changed([listener])
    instance.refresh_from_db()
    push_instance.delay(instance_id=instance.id, generation=old)
    assert [put["generation"] for put in fake_node.puts] == [instance.generation]


def test_per_listener_failure_fails_only_that_listener(instance, server_group, fake_node) -> None:
    good = make_listener(instance, server_group, port=8080)
    taken = make_listener(instance, server_group, port=8443)
    listeners_changed([good, taken])
    instance.refresh_from_db()

    def answer(snapshot):
        status, payload = fake_node.ack(snapshot)
        payload["listeners"][taken.id] = {"status": "failed", "reason": "port 8443 already in use"}
        return status, payload

    fake_node.answer = answer
    register_node(instance, fake_node.url)
    push_instance.delay(instance_id=instance.id, generation=instance.generation)

    good.refresh_from_db()
    taken.refresh_from_db()
    assert good.status == "running"
    assert taken.status == "failed"
    assert taken.last_error == "node node-a: port 8443 already in use"


def test_nack_keeps_the_reason_and_is_not_retried_forever(instance, listener, fake_node) -> None:
    fake_node.answer = lambda snapshot: (
        422,
        {"error": "invalid", "reasons": ["listeners[0]: bad"]},
    )
    node = register_node(instance, fake_node.url)

    push_instance.delay(instance_id=instance.id, generation=instance.generation)
    reconcile()

    listener.refresh_from_db()
    node.refresh_from_db()
    assert listener.status == "failed"
    assert "rejected: listeners[0]: bad" in listener.last_error
    assert "rejected generation" in node.last_error
    assert len(fake_node.puts) == 1
    assert PushAttempt.objects.get().result == "nack"


def test_running_needs_every_node(instance, listener, fake_node) -> None:
    register_node(instance, fake_node.url, name="node-a")
    register_node(instance, "http://127.0.0.1:9", name="node-b")  # nothing listens on port 9

    # An unreachable node makes the task retry with backoff (eager mode runs the retries at once
    # and re-raises after the last one); the node that acknowledged is not pushed again.
    with pytest.raises(Retry):
        push_instance.delay(instance_id=instance.id, generation=instance.generation)
    assert len(fake_node.puts) == 1

    listener.refresh_from_db()
    assert listener.status == "configuring"
    results = set(PushAttempt.objects.values_list("node__name", "result"))
    assert ("node-a", "ack") in results and ("node-b", "unreachable") in results


def test_reconcile_repairs_a_node_that_restarted_empty(instance, listener, fake_node) -> None:
    register_node(instance, fake_node.url)
    push_instance.delay(instance_id=instance.id, generation=instance.generation)
    fake_node.generation = 0  # the node came back with no state

    reconcile()

    assert [put["generation"] for put in fake_node.puts] == [instance.generation] * 2


def test_overdue_listener_fails_with_the_reason_then_recovers(
    instance, listener, fake_node, settings
) -> None:
    settings.CONFIGURING_DEADLINE = 0
    node = register_node(instance, fake_node.url)
    fake_node.down = True

    reconcile()

    listener.refresh_from_db()
    assert listener.status == "failed"
    assert "node node-a unreachable" in listener.last_error
    fake_node.down = False
    reconcile()
    listener.refresh_from_db()
    node.refresh_from_db()
    assert listener.status == "running"
    assert node.applied_generation == instance.generation


def test_no_node_is_explained(instance, listener, settings) -> None:
    settings.CONFIGURING_DEADLINE = 0
    pipeline.reconcile()
    listener.refresh_from_db()
    assert listener.last_error == "no dataplane node is registered for this instance"


def test_node_ahead_of_the_database_is_overtaken(instance, listener, fake_node) -> None:
    fake_node.generation = instance.generation + 5
    register_node(instance, fake_node.url)

    push_instance.delay(instance_id=instance.id, generation=instance.generation)

    instance.refresh_from_db()
    assert instance.generation > fake_node.generation - 1
    reconcile()
    listener.refresh_from_db()
    assert listener.status == "running"


def test_private_key_reaches_the_node_only(admin_client, instance, server_group, fake_node) -> None:
    from tests.listeners.test_wizard import upload_server_cert

    certificate = upload_server_cert(admin_client)
    https = make_listener(
        instance,
        server_group,
        port=443,
        protocol="https",
        default_certificate=certificate,
        tls_policy_id="tls_cipher_policy_1_0",
    )
    listeners_changed([https])
    instance.refresh_from_db()
    register_node(instance, fake_node.url)
    push_instance.delay(instance_id=instance.id, generation=instance.generation)
    sent = fake_node.puts[-1]["certificates"][0]
    assert sent["private_key_pem"] == certificate.private_key_pem()


@pytest.mark.django_db(transaction=True)
def test_status_poll_does_not_undo_a_push_that_lands_meanwhile(
    instance, listener, fake_node, monkeypatch
) -> None:
    """Reconcile reads a node's status while a push is being recorded: neither loses the other."""
    from console import nodeclient

    register_node(instance, fake_node.url)
    pipeline.push(instance.id, instance.generation)
    with transaction.atomic():
        listeners_changed([listener])
    instance.refresh_from_db()
    original = nodeclient.get_status

    def status_then_push(url: str, token: str):
        answer = original(url, token)  # the node still reports the older generation
        pipeline.push(instance.id, instance.generation)
        return answer

    monkeypatch.setattr(nodeclient, "get_status", status_then_push)
    pipeline.collect(instance)
    pipeline.settle(instance.id)

    node = instance.nodes.get()
    listener.refresh_from_db()
    assert node.acked_generation == node.applied_generation == instance.generation
    assert listener.status == "running"
