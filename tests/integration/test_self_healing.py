"""A listener that failed for a reason that passes recovers on its own: the node retries it, the
console reads the recovery from the node's status, and nobody has to change anything.

Real processes throughout: a dataplane node, a Celery worker and beat, a backend; the fault is a
real socket holding the listener's port.
"""

from __future__ import annotations

import socket
import time

import pytest

from console import pipeline
from tests.fixtures.processes import free_port, wait_until
from tests.fixtures.single_node import Stack

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# The node retries a failed listener at most 8 s apart; the console reads it within an interval.
RECOVERS_WITHIN = 10.0
RETRY_CAP = 8.0


def hold(port: int) -> socket.socket:
    """Another program's listening socket on the port the listener wants."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    return holder


def test_a_listener_whose_port_was_taken_serves_once_the_port_is_released(stack: Stack) -> None:
    port = free_port()
    holder = hold(port)
    try:
        stack.start_pipeline()
        listener = stack.add_listener(port, "web")
        wait_until(lambda: stack.shown(listener)[0] == "Failed", timeout=30)
        assert stack.shown(listener) == ("Failed", f"node local: port {port} already in use")
    finally:
        holder.close()
    released = time.monotonic()

    # No change is saved and nothing is pushed: the node starts the listener by itself.
    wait_until(lambda: stack.serves(port), timeout=RECOVERS_WITHIN)
    served_after = time.monotonic() - released
    wait_until(lambda: stack.shown(listener) == ("Running", "—"), timeout=RECOVERS_WITHIN)
    shown_after = time.monotonic() - released

    assert served_after < RECOVERS_WITHIN
    assert shown_after < RECOVERS_WITHIN
    entry = stack.node.status()["listeners"][listener.id]
    assert (entry["status"], entry["reason"], entry["retry_in_seconds"]) == ("running", "", None)
    print(f"served {served_after:.1f} s and shown Running {shown_after:.1f} s after the release")


def test_a_port_held_for_long_is_retried_at_most_eight_seconds_apart(stack: Stack) -> None:
    """Held for twice the backoff's cap: the node backs off, but never past the cap, so the
    listener still serves within 10 s of the release. No worker runs: the test pushes once
    itself, and only the node acts after that."""
    port = free_port()
    holder = hold(port)
    try:
        listener = stack.add_listener(port, "web")
        stack.instance.refresh_from_db()
        pipeline.push(stack.instance.id, stack.instance.generation)
        waits = []
        until = time.monotonic() + 2 * RETRY_CAP
        while time.monotonic() < until:
            entry = stack.node.status()["listeners"][listener.id]
            assert (entry["status"], entry["reason"]) == ("failed", f"port {port} already in use")
            waits.append(entry["retry_in_seconds"])
            time.sleep(0.5)
    finally:
        holder.close()
    released = time.monotonic()

    wait_until(lambda: stack.serves(port), timeout=RECOVERS_WITHIN)

    assert 2.0 < max(waits) <= RETRY_CAP
    print(f"longest wait announced {max(waits)} s; served {time.monotonic() - released:.1f} s")
