"""The push pipeline converges under faults, with every process real (issue 6).

Each test runs a Celery worker (and beat where reconcile is part of the story), two dataplane
nodes and two backend servers as real processes and sockets; the test saves changes the way the
console does (rows in one transaction, the push queued on commit) and then only watches: the
database, each node's /v1/status, and real HTTP requests through each node's listener port.

The two nodes of the instance each live in a network namespace of their own, behind a bridge on
the host (see ``NodeNetwork`` in tests/fixtures/processes.py). An instance's nodes share one
snapshot, so they listen on the same bind address and port; two processes on one host could not
both do that, two machines can. The instance binds 0.0.0.0, the backends listen on the host's
address on the bridge, and the test reaches each node's listener at that node's own address.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import kombu.pools
import pytest
from django.db import transaction

from console.celery import app as celery_app
from console.models import DataplaneNode as ConsoleNode
from console.models import Instance, PushAttempt
from listeners.models import Listener, ServerGroup
from listeners.services import create_server_group
from tests.fixtures.listeners import submit_http_listener
from tests.fixtures.nodes import register_node
from tests.fixtures.processes import (
    ControlPlane,
    DataplaneNode,
    Managed,
    NodeNetwork,
    free_port,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BACKENDS = {"backend-a", "backend-b"}
# Generous bounds for a 2-core machine that also starts interpreters during the test; the issue
# itself states only the 10 s for reconcile to restore a node.
CONVERGENCE = 30.0
RECONCILE_RESTORES_WITHIN = 10.0


@dataclass
class Cluster:
    plane: ControlPlane
    instance: Instance
    group: ServerGroup
    nodes: list[DataplaneNode]

    def node(self, name: str) -> DataplaneNode:
        return next(node for node in self.nodes if node.name == name)

    def add_listener(self, port: int, name: str) -> Listener:
        return submit_http_listener(self.instance, self.group, port, name)

    def generation(self) -> int:
        self.instance.refresh_from_db(fields=["generation"])
        return self.instance.generation


@pytest.fixture
def cluster(node_network: NodeNetwork, control_plane: ControlPlane, backends) -> Cluster:
    """Two nodes of one instance and two backends; no Celery process yet (each test picks)."""
    host = node_network.host_address
    servers = [backends(name, host) for name in sorted(BACKENDS)]
    nodes = [
        control_plane.node(name, namespace=node_network.namespace())
        for name in ("node-a", "node-b")
    ]
    instance = Instance.objects.create(
        name="convergence", edition=Instance.Edition.STANDARD, bind_address="0.0.0.0"
    )
    for node in nodes:
        register_node(instance, node.url, name=node.name, token=node.token)
    with transaction.atomic():
        group = create_server_group(
            name="web",
            backend_protocol=ServerGroup.BackendProtocol.HTTP,
            servers=[{"address": host, "port": server.port} for server in servers],
        )
    return Cluster(control_plane, instance, group, nodes)


def fetch(address: str, port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection(address, port, timeout=3)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def served_by(node: DataplaneNode, port: int, requests: int = 6) -> set[str]:
    """Which backends answered a few requests sent to ``port`` on this node."""
    answers = [fetch(node.host, port, f"/probe/{index}") for index in range(requests)]
    return {body for status, body in answers if status == 200}


def status_of(listener: Listener) -> tuple[str, str]:
    listener.refresh_from_db(fields=["status", "last_error"])
    return listener.status, listener.last_error


def runs(node: DataplaneNode, listener: Listener, generation: int) -> bool:
    report = node.status()
    entry = report["listeners"].get(listener.id) or {}
    return report["generation"] == generation and entry.get("status") == "running"


def wait_running(*listeners: Listener, timeout: float = CONVERGENCE) -> None:
    try:
        wait_until(
            lambda: all(
                status_of(listener)[0] == Listener.Status.RUNNING for listener in listeners
            ),
            timeout=timeout,
        )
    except AssertionError as error:
        raise AssertionError(f"{error}\n{pipeline_state(listeners)}") from None


def pipeline_state(listeners) -> str:
    """What the database believes, for the failure message of a test that did not converge."""
    listener = listeners[0]
    instance = Instance.objects.get(pk=listener.instance_id)
    lines = [f"instance generation {instance.generation}"]
    lines += [f"listener {item.name}: {status_of(item)}" for item in listeners]
    for node in ConsoleNode.objects.filter(instance=instance).order_by("name"):
        lines.append(
            f"{node.name}: applied {node.applied_generation} acked {node.acked_generation}"
            f" reachable {node.reachable} error {node.last_error!r}"
        )
    attempts = PushAttempt.objects.filter(node__instance=instance).order_by("started_at", "id")
    lines += [f"attempt {a.node.name} g{a.generation} {a.result} {a.detail!r}" for a in attempts]
    return "\n".join(lines)


@contextlib.contextmanager
def celery_broker(url: str) -> Iterator[None]:
    """Point this process's Celery app (which queues pushes on commit) at another broker."""
    previous = celery_app.conf.broker_url
    _drop_broker_connections()
    celery_app.conf.broker_url = url
    try:
        yield
    finally:
        _drop_broker_connections()
        celery_app.conf.broker_url = previous


def _drop_broker_connections() -> None:
    # Kombu keeps process-wide connection and producer pools, and the app holds on to the ones
    # for the broker it first saw; Celery drops its references the same way after a fork.
    kombu.pools.reset()
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


def push_in_flight(node: DataplaneNode, state: str = "established") -> bool:
    """A TCP connection to the node's control API is open (or opening): a PUT on its way."""
    listing = subprocess.run(
        ["ss", "-Htn", "state", state, "dst", f"{node.host}:{node.control_port}"],
        check=True,
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout
    return bool(listing.strip())


def test_a_new_listener_is_served_by_both_nodes(cluster: Cluster) -> None:
    """Submit to traffic on every node, through the on-commit push alone.

    Beat is not started, so no reconcile can stand in for the push queued on commit. "Serves"
    means real HTTP requests to the listener port at each node's own address reach both backends.
    Both nodes bind the same 0.0.0.0:port, which works because each runs in its own network
    namespace, like a separate machine; checking only /v1/status, or one node's port, would not
    show that the second node really serves.
    """
    cluster.plane.worker()
    port = free_port()

    listener = cluster.add_listener(port, "web")

    wait_running(listener)
    generation = cluster.generation()
    for node in cluster.nodes:
        assert runs(node, listener, generation)
        assert served_by(node, port) == BACKENDS
    assert status_of(listener) == (Listener.Status.RUNNING, "")


def test_reconcile_restores_a_node_that_restarted_empty(cluster: Cluster) -> None:
    cluster.plane.worker()
    cluster.plane.beat()
    port = free_port()
    listener = cluster.add_listener(port, "web")
    wait_running(listener)
    generation = cluster.generation()
    node = cluster.node("node-b")

    node.restart(empty=True)  # kill -9, state directory emptied, started again

    wait_until(lambda: runs(node, listener, generation), timeout=RECONCILE_RESTORES_WITHIN)
    assert served_by(node, port) == BACKENDS
    assert served_by(cluster.node("node-a"), port) == BACKENDS
    wait_running(listener)


def test_a_change_converges_when_the_worker_dies_before_its_push_arrives(
    cluster: Cluster, node_network: NodeNetwork
) -> None:
    """kill -9 the worker while it is still trying to reach the nodes; the push dies with it.

    Both nodes are cut off the network, so the worker's connections hang in SYN-SENT: the
    push is under way and cannot have been delivered. Beat is not running yet, so a connection
    to a node's control API can only be that push. A new worker and beat must deliver the change.
    """
    plane = cluster.plane
    worker = plane.worker("worker-1")
    before = cluster.add_listener(free_port(), "before")
    wait_running(before)

    for namespace in node_network.namespaces:
        namespace.disconnect()
    try:
        port = free_port()
        listener = cluster.add_listener(port, "during")
        wait_until(
            lambda: any(push_in_flight(node, "syn-sent") for node in cluster.nodes), timeout=15
        )
        worker.kill()
    finally:
        for namespace in node_network.namespaces:
            namespace.connect()

    plane.worker("worker-2")
    plane.beat()

    wait_running(listener, before)
    generation = cluster.generation()
    for node in cluster.nodes:
        assert runs(node, listener, generation)
        assert served_by(node, port) == BACKENDS


def test_a_change_converges_when_the_worker_dies_while_its_push_is_answered(
    cluster: Cluster,
) -> None:
    """kill -9 the worker after its PUT reached the nodes and before it read their answer.

    Both nodes are paused (SIGSTOP) so the push is certainly in flight when the worker dies:
    the kernel accepts the worker's connections and buffers the PUT, nobody answers. Beat is not
    running yet, so an open connection to a node's control API can only be that push. Resumed,
    the nodes apply the orphaned PUT; the console has to learn that from their /v1/status.
    """
    plane = cluster.plane
    worker = plane.worker("worker-1")
    before = cluster.add_listener(free_port(), "before")
    wait_running(before)

    for node in cluster.nodes:
        os.kill(node.proc.pid, signal.SIGSTOP)
    try:
        port = free_port()
        listener = cluster.add_listener(port, "during")
        wait_until(lambda: all(push_in_flight(node) for node in cluster.nodes), timeout=15)
        worker.kill()
    finally:
        for node in cluster.nodes:
            os.kill(node.proc.pid, signal.SIGCONT)

    plane.worker("worker-2")
    plane.beat()

    # Shorter than the configuring deadline (15 s), after which the listener is marked failed.
    wait_running(listener, before, timeout=12)
    generation = cluster.generation()
    for node in cluster.nodes:
        assert runs(node, listener, generation)
        assert served_by(node, port) == BACKENDS


def test_a_change_saved_while_redis_is_down_converges_once_it_is_back(cluster: Cluster) -> None:
    """The broker is a private redis-server, stopped while a change is saved.

    Queueing the push on commit fails; the save must not (a web request would answer 500
    otherwise). Once Redis is back, beat's reconcile finds the lagging nodes and pushes.
    """
    plane = cluster.plane
    redis = plane.redis()  # private: stopping it touches no one else's broker
    with celery_broker(redis.url):
        plane.worker()
        plane.beat()
        before = cluster.add_listener(free_port(), "before")
        wait_running(before)

        redis.stop()
        port = free_port()
        # The save is what a web request does; with the broker down it must still succeed.
        listener = cluster.add_listener(port, "during-outage")
        assert Listener.objects.filter(pk=listener.pk, port=port).exists()
        assert status_of(listener)[0] == Listener.Status.CONFIGURING

        redis.start()
        redis.wait_ready()

        wait_running(listener, before)
    generation = cluster.generation()
    for node in cluster.nodes:
        assert runs(node, listener, generation)
        assert served_by(node, port) == BACKENDS


def test_a_taken_port_fails_that_listener_with_the_reason_and_spares_the_others(
    cluster: Cluster, node_network: NodeNetwork, tmp_path
) -> None:
    """Another program on node-b's machine holds the port the new listener asks for.

    The listener is failed with node-b's reason; the listener that was already running keeps
    running, and serving, on both nodes.
    """
    plane = cluster.plane
    node_b = cluster.node("node-b")
    taken_port, free = free_port(), free_port()
    # Something else on node-b's machine already listens on the port.
    holder = Managed(
        "port-holder",
        [
            *node_network.namespaces[1].prefix,
            sys.executable,
            "-c",
            "import socket, time\n"
            "sock = socket.socket()\n"
            f"sock.bind(('0.0.0.0', {taken_port}))\n"
            "sock.listen()\n"
            "print('listening', flush=True)\n"
            "time.sleep(120)\n",
        ],
        dict(os.environ),
        tmp_path / "port-holder.log",
    )
    plane.processes.append(holder.start())
    wait_until(lambda: "listening" in holder.log(), timeout=10)
    plane.worker()
    good = cluster.add_listener(free, "good")
    wait_running(good)

    taken = cluster.add_listener(taken_port, "taken")

    try:
        wait_until(lambda: status_of(taken)[0] == Listener.Status.FAILED, timeout=CONVERGENCE)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{pipeline_state([taken, good])}") from None
    assert status_of(taken)[1] == f"node node-b: port {taken_port} already in use"
    on_node_b = node_b.status()["listeners"][taken.id]
    assert (on_node_b["status"], on_node_b["reason"]) == (
        "failed",
        f"port {taken_port} already in use",
    )
    assert status_of(good) == (Listener.Status.RUNNING, "")
    generation = cluster.generation()
    for node in cluster.nodes:
        assert runs(node, good, generation)
        assert served_by(node, free) == BACKENDS
