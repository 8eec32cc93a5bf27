"""A broker outage: changes saved meanwhile reach traffic right after Redis returns, quietly.

The broker is a redis-server of the test's own (stopping it touches no one else); the worker,
beat and a dataplane node are real processes. Beat ticks every 5 s, as in `make run`: the change
has to arrive through the worker reconnecting, not through a lucky tick.
"""

from __future__ import annotations

import logging
import time

import kombu
import pytest
from django.db import transaction

from console.celery import BrokerOutage, Consumer
from console.models import Instance
from listeners.models import Listener, ServerGroup
from listeners.services import create_listener, create_server_group
from tests.fixtures.nodes import register_node
from tests.fixtures.processes import ControlPlane, free_port, wait_until
from tests.integration.test_convergence import celery_broker, fetch

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

OUTAGE = 20.0  # Celery's own backoff would next try 10 s after Redis is back
CONVERGES_WITHIN = 2.0
SAVES_DURING_OUTAGE = 3


def add_listener(instance: Instance, group: ServerGroup, port: int, name: str) -> Listener:
    with transaction.atomic():
        return create_listener(
            instance,
            protocol=Listener.Protocol.HTTP,
            port=port,
            name=name,
            settings={},
            server_group=group,
        )


def serves(port: int) -> bool:
    try:
        return fetch("127.0.0.1", port, "/")[0] == 200
    except OSError:
        return False


def outage_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "broker unreachable" in line]


def problems(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR" in line or "Traceback" in line]


def test_changes_saved_during_an_outage_converge_within_2_s_of_the_broker_returning(
    control_plane: ControlPlane, backends, caplog
) -> None:
    plane = control_plane
    plane.reconcile_interval = 5.0
    redis = plane.redis()
    node = plane.node("node-1")
    instance = Instance.objects.create(name="outage")
    register_node(instance, node.url, name="node-1", token=node.token)
    with transaction.atomic():
        group = create_server_group(
            name="web",
            backend_protocol=ServerGroup.BackendProtocol.HTTP,
            servers=[{"address": "127.0.0.1", "port": backends("backend-a").port}],
        )
    with celery_broker(redis.url):
        worker = plane.worker()
        beat = plane.beat()
        before = free_port()
        add_listener(instance, group, before, "before")
        wait_until(lambda: serves(before), timeout=30)

        redis.stop()
        down = time.monotonic()
        ports = [free_port() for _ in range(SAVES_DURING_OUTAGE)]
        with caplog.at_level(logging.INFO, logger="console"):
            for index, port in enumerate(ports):
                add_listener(instance, group, port, f"during-{index}")
        # Long enough for beat to fail a few ticks and for a growing backoff to show.
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down)))
        assert not any(serves(port) for port in ports)

        redis.start()
        redis.wait_ready()
        back = time.monotonic()
        wait_until(lambda: all(serves(port) for port in ports), timeout=30, interval=0.02)
        converged = time.monotonic() - back

    print(f"\nbroker back after {OUTAGE:.0f} s: changes served {converged:.2f} s later")
    assert converged <= CONVERGES_WITHIN
    assert serves(before)
    # One line when the broker went away and one when it came back, per process; no tracebacks.
    saves = [record for record in caplog.records if "broker unreachable" in record.getMessage()]
    assert len(saves) == 1 and saves[0].exc_info is None
    for process in (worker, beat):
        log = process.log()
        assert len(outage_lines(log)) == 1, log[-3000:]
        assert log.count("broker reachable again") <= 1, log[-3000:]
        assert problems(log) == [], log[-3000:]
    assert "worker: broker reachable again" in worker.log()


def test_a_task_acked_as_the_broker_goes_away_is_the_outage_line_not_a_traceback(
    control_plane: ControlPlane, caplog, monkeypatch
) -> None:
    # The race a fresh-clone run lost once: a push finished just as Redis stopped, and kombu
    # logged its failed acknowledgement as CRITICAL with a traceback.
    redis = control_plane.redis()
    monkeypatch.setattr(Consumer, "outage", BrokerOutage("worker", "retrying"))
    with celery_broker(redis.url), kombu.Connection(redis.url) as connection:
        queue = connection.SimpleQueue("ack-during-outage")
        queue.put({"push": 1})
        message = queue.get(timeout=5)
        redis.stop()
        with caplog.at_level(logging.INFO):
            message.ack_log_error(
                logging.getLogger("celery.worker.request"), connection.connection_errors
            )
    assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []
    lines = [record.getMessage() for record in caplog.records]
    assert len(outage_lines("\n".join(lines))) == 1, lines
    assert not message.acknowledged  # the broker hands it out again once it is back
