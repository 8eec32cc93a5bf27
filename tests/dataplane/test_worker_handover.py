"""A node with --workers killed outright: its workers keep serving, the next node takes over.

Real processes and sockets: `python -m dataplane --workers 2` serves a listener in front of a
recording backend while a client opens a new connection per request the whole time; the
supervisor is killed with SIGKILL, a new node is started on the same state directory, and the
client must not see one failed request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.dataplane.conftest import get, listener, server_group, snapshot, wait_until
from tests.dataplane.test_process import DataplaneProcess
from tests.dataplane.test_workers import Supervisor, _gone
from tests.fixtures.load import SteadyClient
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.integration


def steady_client(port: int) -> SteadyClient:
    def request() -> str | None:
        status, _, body = get(port, "/load")
        return None if status == 200 and body == b"web" else f"HTTP {status} {body[:40]!r}"

    return SteadyClient(request)


def dataplane_processes(token_file: Path) -> list[int]:
    """Every node and worker process of this test (they all name its token file)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(token_file).encode() in arguments and not _gone(int(entry.name)):
            found.append(int(entry.name))
    return found


def listening_sockets(port: int) -> int:
    listing = subprocess.run(
        ["ss", "-Htln", "sport", "=", str(port)],
        check=True,
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout
    return len(listing.splitlines())


def test_a_killed_supervisor_costs_no_request_and_the_next_node_retires_its_workers(
    tmp_path, backends
):
    web = backends("web")
    port = free_port()
    token_file = tmp_path / "token"
    first = Supervisor(tmp_path, workers=2)
    second = None
    try:
        status, ack = first.request(
            "PUT", "/v1/config", snapshot([listener(port)], [server_group(web)], generation=4)
        )
        assert status == 200 and ack["listeners"]["lsn-web"]["status"] == "running"
        orphans = first.workers()
        assert len(orphans) == 2

        with steady_client(port) as client:
            assert wait_until(lambda: client.ok > 20)
            os.kill(first.process.pid, signal.SIGKILL)
            first.process.wait(10)
            # Orphaned, the workers go on serving on their own.
            served = client.ok
            assert wait_until(lambda: client.ok > served + 50)
            assert all(not _gone(pid) for pid in orphans)

            second = Supervisor(tmp_path, workers=2)
            handed_over = time.monotonic()
            assert wait_until(lambda: all(_gone(pid) for pid in orphans))
            drained = time.monotonic() - handed_over
            served = client.ok
            assert wait_until(lambda: client.ok > served + 50)

        print(f"\norphans drained {drained:.2f} s after the new node was ready")
        print(f"client: {client.ok} answered, {len(client.failures)} failed")
        assert client.failures == []
        assert "the supervisor is gone" in "".join(first.lines.queue)
        # The new node serves the saved snapshot, and only its own processes are left: itself,
        # its two workers, and one listening socket per worker.
        status, body = second.request("GET", "/v1/status")
        assert status == 200 and body["generation"] == 4
        assert body["listeners"]["lsn-web"]["status"] == "running"
        assert sorted(dataplane_processes(token_file)) == sorted(
            [second.process.pid, *second.workers()]
        )
        assert listening_sockets(port) == 2
        assert sorted(p.name for p in (tmp_path / "state" / "workers").iterdir()) == sorted(
            str(pid) for pid in second.workers()
        )
        # Everything the backend received was the client's (the health checks aside).
        assert len([r for r in web.requests if r.target == "/load"]) == client.ok

        assert second.stop() == 0
        assert wait_until(lambda: dataplane_processes(token_file) == [])
        assert listening_sockets(port) == 0
    finally:
        for node in (first, second):
            if node is not None:
                node.kill()
        for pid in dataplane_processes(token_file):
            os.kill(pid, signal.SIGKILL)


def test_a_single_process_node_takes_the_ports_over_from_the_workers_left_behind(
    tmp_path, backends
):
    """--workers 1 binds without SO_REUSEPORT: it drains the orphans first, then serves."""
    web = backends("web")
    port = free_port()
    token_file = tmp_path / "token"
    first = Supervisor(tmp_path, workers=2)
    second = None
    try:
        first.request("PUT", "/v1/config", snapshot([listener(port)], [server_group(web)]))
        orphans = first.workers()
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        assert get(port)[::2] == (200, b"web")

        second = DataplaneProcess(tmp_path, tmp_path / "state", drain_timeout=2)

        assert all(_gone(pid) for pid in orphans)
        assert [get(port)[::2] for _ in range(5)] == [(200, b"web")] * 5
        assert dataplane_processes(token_file) == [second.process.pid]
        assert listening_sockets(port) == 1
    finally:
        for node in (first, second):
            if node is not None:
                node.kill()
        for pid in dataplane_processes(token_file):
            os.kill(pid, signal.SIGKILL)
