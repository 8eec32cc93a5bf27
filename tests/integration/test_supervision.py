"""`make run` under faults: a killed process is restarted alone, and a stop drains.

Each test runs `make run` itself (supervisord and its four programs, tests/fixtures/stack.py) on
the test database with the embedded broker, a listener on its dataplane node in front of real
backends, and a client sending requests through that listener the whole time. The listener is
saved the way the console saves it; the stack's own reconcile delivers it.
"""

from __future__ import annotations

import http.client
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import transaction
from django.utils import timezone

from console.models import DataplaneNode, Instance
from listeners.models import Listener, ServerGroup
from listeners.services import create_listener, create_server_group, default_health_check
from tests.fixtures.load import SteadyClient
from tests.fixtures.processes import ControlPlane, free_port, wait_until
from tests.fixtures.stack import PROGRAMS, Stack, started_stack, wait_serving_again

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# Seconds; bounds for a loaded 2-core machine, the figures are printed.
CONVERGES_WITHIN = 15.0
NODE_BACK_WITHIN = 15.0


@pytest.fixture
def stack(tmp_path: Path, transactional_db) -> Iterator[Stack]:
    # The environment the test's own processes get (its database, its secrets), with the
    # embedded broker of a fresh `make run` instead of the test's Redis.
    env = ControlPlane(tmp_path, redis_url="").env()
    running = started_stack(tmp_path, env)
    yield running
    running.stop()


def get(port: int, path: str = "/", timeout: float = 15) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def add_listener(group: ServerGroup, port: int, name: str, captured) -> Listener:
    """Save a listener as the console does. The push it queues on commit would go to the
    test's broker, not the stack's: the stack's reconcile delivers it."""
    with captured(execute=False), transaction.atomic():
        return create_listener(
            Instance.objects.get(),
            protocol=Listener.Protocol.HTTP,
            port=port,
            name=name,
            settings={},
            server_group=group,
        )


def server_group(backend_ports: list[int], *, health_check: bool = True) -> ServerGroup:
    protocol = ServerGroup.BackendProtocol.HTTP
    with transaction.atomic():
        return create_server_group(
            name="web",
            backend_protocol=protocol,
            servers=[{"address": "127.0.0.1", "port": port} for port in backend_ports],
            health_check={**default_health_check(protocol), "enabled": health_check},
        )


def serves(port: int) -> bool:
    return get(port, timeout=2)[0] == 200


def steady_client(port: int) -> SteadyClient:
    def request() -> str | None:
        status, _ = get(port, "/load", timeout=5)
        return None if status == 200 else f"HTTP {status}"

    return SteadyClient(request, pause=0.01)


def test_killing_the_console_worker_or_beat_costs_no_request(
    stack: Stack, backends, django_capture_on_commit_callbacks
) -> None:
    """kill -9 each control-plane program in turn while a client uses a listener.

    supervisord restarts the killed program alone: the node keeps its pid and the client sees
    no failed request. After the worker's restart, a new change still converges.
    """
    group = server_group([backends("backend-a").port, backends("backend-b").port])
    port = free_port()
    add_listener(group, port, "steady", django_capture_on_commit_callbacks)
    wait_until(lambda: serves(port), timeout=CONVERGES_WITHIN)
    node_pid = stack.pid("dataplane")

    with steady_client(port) as client:
        for program in ("console", "worker", "beat"):
            others = {name: stack.pid(name) for name in PROGRAMS if name != program}
            killed = stack.kill(program)
            stack.wait_restarted(program, killed)
            assert {name: stack.pid(name) for name in others} == others
        wait_until(lambda: serves_console(stack), timeout=15)
        # The worker and beat that supervisord started again deliver a new change.
        changed = free_port()
        saved = time.monotonic()
        add_listener(group, changed, "after-restarts", django_capture_on_commit_callbacks)
        converged = wait_serving_again(lambda: serves(changed), timeout=CONVERGES_WITHIN)
        served_before = client.ok
        wait_until(lambda: client.ok > served_before + 20, timeout=10)

    print(f"\nchange after restarts served in {converged:.2f} s ({time.monotonic() - saved:.2f})")
    print(f"client: {client.ok} requests answered, {len(client.failures)} failed")
    assert client.failures == []
    assert stack.pid("dataplane") == node_pid


def listening_ports(stack: Stack) -> set[int]:
    listing = subprocess.run(
        ["ss", "-Htln", "sport", "!=", str(stack.control_port)],
        check=True,
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout
    return {int(line.split()[3].rpartition(":")[2]) for line in listing.splitlines()}


def serves_console(stack: Stack) -> bool:
    return get(stack.port, "/accounts/login/", timeout=2)[0] == 200


def _children(pid: int) -> list[int]:
    try:
        return [
            int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ]
    except OSError:
        return []


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2][:1]
    except OSError:
        return False
    return state not in ("", "Z")


def test_killing_the_node_costs_no_request_and_it_comes_back(
    stack: Stack, backends, django_capture_on_commit_callbacks
) -> None:
    """kill -9 the dataplane node while a client uses its listener: 0 failed requests.

    The node runs with its default two workers, which hold the listening sockets: they keep
    serving, orphaned, while supervisord starts the node again; the new node serves the snapshot
    it saved beside them and then drains them. No other program is touched, and the console
    sees the new node (a status report from after the restart).
    """
    group = server_group([backends("backend-a").port])
    port = free_port()
    add_listener(group, port, "web", django_capture_on_commit_callbacks)
    wait_until(lambda: serves(port), timeout=CONVERGES_WITHIN)
    others = {name: stack.pid(name) for name in PROGRAMS if name != "dataplane"}
    orphans = _children(stack.pid("dataplane"))
    assert len(orphans) == 2

    with steady_client(port) as client:
        killed_at = timezone.now()
        killed = stack.kill("dataplane")
        down = time.monotonic()
        restarted = stack.wait_restarted("dataplane", killed)
        back = time.monotonic() - down
        wait_until(lambda: not any(_running(pid) for pid in orphans), timeout=NODE_BACK_WITHIN)
        handed_over = time.monotonic() - down
        node = DataplaneNode.objects.get()

        def console_sees_the_new_node() -> bool:
            node.refresh_from_db()
            return bool(
                node.reachable
                and node.status_report_at
                and node.status_report_at > killed_at
                and node.status_report.get("listeners", {})
            )

        wait_until(console_sees_the_new_node, timeout=CONVERGES_WITHIN)
        seen = time.monotonic() - down
        served_before = client.ok
        wait_until(lambda: client.ok > served_before + 20, timeout=10)

    print(
        f"\nnode killed: restarted after {back:.2f} s, old workers drained after {handed_over:.2f}"
    )
    print(f"s, console saw the new node after {seen:.2f} s")
    print(f"client: {client.ok} answered, {len(client.failures)} failed")
    assert client.failures == []
    assert {name: stack.pid(name) for name in others} == others
    log = stack.log()
    assert "restored generation" in log
    assert "taking over from 2 worker(s) of the previous node" in log
    assert "the previous node's 2 worker(s) drained and exited" in log
    assert len(_children(restarted)) == 2
    assert all(status == "running" for status in _listener_statuses(node))


def _listener_statuses(node: DataplaneNode) -> list[str]:
    return [entry["status"] for entry in node.status_report["listeners"].values()]


def test_ctrl_c_drains_requests_in_flight_and_stops_quietly(
    stack: Stack, backends, django_capture_on_commit_callbacks
) -> None:
    """Ctrl-C with 8 requests in flight whose backend answers after 8 s: all 8 complete.

    Ctrl-C is typed in `make run`'s terminal. Its SIGINT reaches supervisord alone (the terminal's
    foreground job, see deploy/foreground.py; the programs have process groups of their own);
    supervisord gives each program SIGTERM and its drain time before any SIGKILL. The stop logs
    no error, every program exits 0, and so does make.
    """
    slow = backends("slow", delay=8)
    # A backend that takes 8 s would fail every health check.
    group = server_group([slow.port], health_check=False)
    port = free_port()
    add_listener(group, port, "slow", django_capture_on_commit_callbacks)
    wait_until(lambda: port in listening_ports(stack), timeout=CONVERGES_WITHIN)
    slow.requests.clear()

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = [pool.submit(get, port, f"/slow/{index}", 20) for index in range(8)]
        wait_until(
            lambda: sum(r["path"].startswith("/slow/") for r in slow.requests) == 8, timeout=10
        )
        stack.interrupt()
        results = [answer.result(timeout=30) for answer in answers]
    returncode = stack.wait(timeout=40)

    assert [status for status, _ in results] == [200] * 8
    log = stack.log()
    assert returncode == 0, stack.log()[-3000:]
    assert not re.search(r"make: \*\*\* .*Error", log), log[-3000:]
    for program in PROGRAMS:
        assert f"stopped: {program} (exit status 0)" in log, log[-3000:]
    problems = [
        line for line in log.splitlines() if re.search(r"\b(ERROR|CRITICAL|CRIT)\b|Traceback", line)
    ]
    assert problems == []
