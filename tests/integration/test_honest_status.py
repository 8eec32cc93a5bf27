"""The console says Running only while the nodes say so, and it says so even when no task runs.

Every fault is real: the node is killed with SIGKILL and started again, the broker is a private
redis-server that is stopped, an acknowledgement is lost by killing the worker that waits for it.
What the console shows is read from the listener's details page.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from console import pipeline
from console.models import PushAttempt
from listeners import rules
from listeners.models import Listener
from tests.fixtures.processes import free_port, wait_until
from tests.fixtures.single_node import DEADLINE, INTERVAL, Stack
from tests.integration.test_convergence import celery_broker, push_in_flight

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CONVERGENCE = 30.0


def running(stack: Stack, listener: Listener) -> bool:
    return stack.shown(listener) == ("Running", "—")


def test_a_killed_node_shows_on_its_listeners_and_they_recover_when_it_returns(
    stack: Stack,
) -> None:
    stack.start_pipeline()
    port = free_port()
    listener = stack.add_listener(port, "web")
    wait_until(lambda: running(stack, listener), timeout=CONVERGENCE)
    assert stack.serves(port)

    stack.node.kill()  # SIGKILL, and kept down
    killed = time.monotonic()

    wait_until(lambda: stack.shown(listener)[0] == "Failed", timeout=2 * INTERVAL)
    seen_after = time.monotonic() - killed
    error = stack.shown(listener)[1]
    assert error.startswith("node local unreachable since ")
    assert "Connection refused" in error
    assert not stack.serves(port)
    print(f"shown Failed {seen_after:.1f} s after the kill: {error}")

    stack.node.start().wait_ready()  # it comes back with the snapshot it saved

    wait_until(lambda: running(stack, listener), timeout=3 * INTERVAL)
    assert stack.serves(port)


def test_a_node_that_restarts_empty_is_not_running_until_it_has_the_configuration_again(
    stack: Stack,
) -> None:
    stack.plane.worker()
    port = free_port()
    listener = stack.add_listener(port, "web")
    wait_until(lambda: running(stack, listener), timeout=CONVERGENCE)

    # Beat is not started: no reconcile can give the node its configuration back yet, so the
    # window in which the node runs nothing stays open while the test looks.
    stack.node.restart(empty=True)
    pipeline.collect(stack.instance)  # what reconcile reads first

    badge, error = stack.shown(listener)
    assert (badge, error) == ("Failed", "node local: not in the configuration it runs (0)")

    stack.plane.beat()
    wait_until(lambda: running(stack, listener), timeout=CONVERGENCE)
    assert stack.serves(port)


def test_a_change_saved_while_the_broker_is_down_fails_at_its_deadline_and_can_be_edited(
    stack: Stack,
) -> None:
    redis = stack.plane.redis()
    with celery_broker(redis.url):
        stack.start_pipeline()
        before = stack.add_listener(free_port(), "before")
        wait_until(lambda: running(stack, before), timeout=CONVERGENCE)

        redis.stop()
        port = free_port()
        listener = stack.add_listener(port, "during-outage")
        saved = time.monotonic()
        assert stack.shown(listener)[0] == "Configuring"

        wait_until(lambda: stack.shown(listener)[0] == "Failed", timeout=DEADLINE + INTERVAL)
        failed_after = time.monotonic() - saved
        assert stack.shown(listener)[1].startswith(f"not applied within {DEADLINE:g} s: ")
        wait_until(
            lambda: "the task broker is unreachable" in stack.shown(listener)[1],
            timeout=INTERVAL,
        )
        print(f"shown Failed {failed_after:.1f} s after the save: {stack.shown(listener)[1]}")
        # The listener that was running is not vouched for either: nobody is reading the node.
        assert stack.shown(before)[0] == "Failed"
        # Failed, so edits are allowed again (seed 003 refuses them only while Configuring).
        listener.refresh_from_db()
        assert rules.configuring_refusal(listener, "modifying it") is None

        redis.start()
        redis.wait_ready()

        wait_until(lambda: running(stack, listener), timeout=CONVERGENCE)
        wait_until(lambda: running(stack, before), timeout=CONVERGENCE)
    assert stack.serves(port)


def test_a_change_whose_acknowledgement_was_lost_converges_from_the_node_status(
    stack: Stack,
) -> None:
    """The node applies a change but its ACK never reaches the console: the worker that sent the
    PUT is killed with SIGKILL while the node (paused) has not answered. Reconcile then reads the
    node's status, which already reports the generation and the listener running: that is the
    acknowledgement, with no second push."""
    worker = stack.plane.worker("worker-1")
    before = stack.add_listener(free_port(), "before")
    wait_until(lambda: running(stack, before), timeout=CONVERGENCE)

    os.kill(stack.node.proc.pid, signal.SIGSTOP)
    try:
        port = free_port()
        listener = stack.add_listener(port, "during")
        wait_until(lambda: push_in_flight(stack.node), timeout=15)
        worker.kill()
    finally:
        os.kill(stack.node.proc.pid, signal.SIGCONT)
    stack.instance.refresh_from_db()
    generation = stack.instance.generation
    wait_until(lambda: stack.node.status()["generation"] == generation, timeout=10)
    assert stack.shown(listener)[0] == "Configuring"

    stack.plane.worker("worker-2")
    stack.plane.beat()

    wait_until(lambda: running(stack, listener), timeout=CONVERGENCE)
    assert stack.serves(port)
    # Nobody pushed that generation again: the node's status stood for the lost ACK.
    assert not PushAttempt.objects.filter(generation=generation).exists()
