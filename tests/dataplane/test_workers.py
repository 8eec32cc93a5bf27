"""`python -m dataplane --workers 2`: SO_REUSEPORT worker processes behind one control API."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
from pathlib import Path

import pytest

from dataplane.config import Snapshot
from dataplane.workers import _merge_listeners, _merge_results
from tests.dataplane.conftest import (
    WAIT,
    certificate_entry,
    get,
    listener,
    server_group,
    snapshot,
    wait_until,
)
from tests.dataplane.test_process import DataplaneProcess
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.integration


class Supervisor(DataplaneProcess):
    """A dataplane started with --workers."""

    def __init__(self, tmp_path: Path, workers: int) -> None:
        super().__init__(
            tmp_path, tmp_path / "state", drain_timeout=2, extra=("--workers", str(workers))
        )

    def workers(self) -> list[int]:
        pid = self.process.pid
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(child) for child in text.split()]

    def kill(self) -> None:
        """SIGKILL the supervisor and its workers: workers outlive a supervisor killed alone."""
        workers = self.workers()
        super().kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def supervisor(tmp_path):
    started = Supervisor(tmp_path, workers=2)
    yield started
    started.kill()


def _pipes(pid: int) -> int:
    """The supervisor's pipes: two per worker (its stdin and stdout)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("pipe:")
        except FileNotFoundError:
            # Closed between the listing and the look: the supervisor is replacing a worker.
            continue
    return count


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def test_two_workers_serve_one_listener_and_status_adds_up(supervisor, backends):
    web = backends("web")
    port = free_port()

    status, ack = supervisor.request(
        "PUT", "/v1/config", snapshot([listener(port)], [server_group(web)], generation=3)
    )

    assert status == 200
    assert ack["listeners"] == {"lsn-web": {"status": "running", "reason": ""}}
    assert len(supervisor.workers()) == 2
    # Each request is a new connection, so the kernel spreads them over both workers.
    results = [get(port)[::2] for _ in range(20)]
    assert results == [(200, b"web")] * 20
    status, body = supervisor.request("GET", "/v1/status")
    assert status == 200
    assert body["generation"] == 3
    web_status = body["listeners"]["lsn-web"]
    assert web_status["status"] == "running"
    assert web_status["counters"]["requests"] == 20
    assert web_status["counters"]["responses"]["2xx"] == 20
    assert [backend["port"] for backend in web_status["backends"]] == [web.port]


def test_an_older_generation_is_refused_by_the_supervisor(supervisor, backends):
    web = backends("web")
    port = free_port()
    supervisor.request(
        "PUT", "/v1/config", snapshot([listener(port)], [server_group(web)], generation=5)
    )

    status, body = supervisor.request(
        "PUT", "/v1/config", snapshot([listener(port)], [server_group(web)], generation=4)
    )

    assert status == 409
    assert body["generation"] == 5


def test_a_worker_that_dies_is_started_again_with_the_snapshot(supervisor, backends, tmp_path):
    web = backends("web")
    port = free_port()
    supervisor.request("PUT", "/v1/config", snapshot([listener(port)], [server_group(web)]))
    first, second = supervisor.workers()
    pipes = _pipes(supervisor.process.pid)

    os.kill(first, signal.SIGKILL)

    assert wait_until(lambda: len(supervisor.workers()) == 2 and first not in supervisor.workers())
    replacement = next(pid for pid in supervisor.workers() if pid != second)

    def serves_everywhere() -> bool:
        # The replacement binds the port once it has the snapshot; until then the kernel sends
        # every connection to the other worker, so success alone proves nothing: the status must
        # also count the replacement's listener as running.
        status, body = supervisor.request("GET", "/v1/status")
        return status == 200 and body["listeners"].get("lsn-web", {}).get("status") == "running"

    assert wait_until(serves_everywhere)
    assert [get(port)[::2] for _ in range(10)] == [(200, b"web")] * 10
    assert not _gone(replacement)
    # The dead worker's pipes are closed, and its pid file replaced by the replacement's.
    assert wait_until(lambda: _pipes(supervisor.process.pid) == pipes)
    assert {path.name for path in (tmp_path / "state" / "workers").iterdir()} == {
        str(pid) for pid in supervisor.workers()
    }


def test_sigterm_stops_the_workers_and_exits_0(supervisor, backends):
    web = backends("web")
    port = free_port()
    supervisor.request("PUT", "/v1/config", snapshot([listener(port)], [server_group(web)]))
    workers = supervisor.workers()
    assert get(port)[0] == 200

    assert supervisor.stop() == 0
    assert wait_until(lambda: all(_gone(pid) for pid in workers))


def test_session_tickets_resume_in_every_worker(supervisor, backends, ca):
    """The kernel spreads connections over the workers; a ticket from one must resume in the
    others, or half of all resumptions would be full handshakes."""
    web = backends("web")
    port = free_port()
    status, ack = supervisor.request(
        "PUT",
        "/v1/config",
        snapshot(
            [listener(port, protocol="https", default_certificate_id="cert-web")],
            [server_group(web)],
            certificates=[certificate_entry("cert-web", ca.issue_cert("web.example"))],
        ),
    )
    assert status == 200 and ack["listeners"]["lsn-web"]["status"] == "running"
    client = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    # TLS 1.2: the ticket is part of the handshake, so the session can be taken right away.
    client.maximum_version = ssl.TLSVersion.TLSv1_2

    def connect(session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        return client.wrap_socket(raw, server_hostname="web.example", session=session)

    with connect() as first:
        session = first.session
    resumed = []
    for _ in range(24):
        with connect(session) as again:
            resumed.append(again.session_reused)
    assert resumed == [True] * 24


# -- merging the workers' answers ------------------------------------------------------------------


def test_a_listener_runs_only_where_every_worker_runs_it():
    config = Snapshot.from_dict(snapshot([listener(8080)], [server_group()]))
    running = {"lsn-web": {"status": "running", "reason": ""}}
    failed = {"lsn-web": {"status": "failed", "reason": "port 8080 already in use"}}

    assert _merge_results(config, [running, running]) == running
    assert _merge_results(config, [running, failed]) == failed
    assert _merge_results(config, []) == {
        "lsn-web": {"status": "failed", "reason": "no worker process answered"}
    }


def test_status_counters_are_added_up_and_health_comes_from_the_first_worker():
    def report(requests: int, healthy: bool, active: int) -> dict:
        return {
            "listeners": {
                "lsn-web": {
                    "status": "running",
                    "reason": "",
                    "counters": {
                        "active_connections": 1,
                        "total_connections": requests,
                        "denied_connections": 0,
                        "requests": requests,
                        "bytes_in": 10 * requests,
                        "bytes_out": 20 * requests,
                        "responses": {"1xx": 0, "2xx": requests, "3xx": 0, "4xx": 0, "5xx": 0},
                    },
                    "backends": [{"id": "srv-a", "healthy": healthy, "active": active}],
                }
            }
        }

    merged = _merge_listeners([report(3, True, 1), report(4, False, 2)])["lsn-web"]

    assert merged["counters"]["requests"] == 7
    assert merged["counters"]["bytes_out"] == 140
    assert merged["counters"]["active_connections"] == 2
    assert merged["counters"]["responses"]["2xx"] == 7
    assert merged["backends"] == [{"id": "srv-a", "healthy": True, "active": 3}]


def test_a_listener_missing_in_one_worker_is_not_reported_running():
    entry = {
        "status": "running",
        "reason": "",
        "counters": {
            "active_connections": 0,
            "total_connections": 0,
            "denied_connections": 0,
            "requests": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "responses": {},
        },
        "backends": [],
    }

    merged = _merge_listeners([{"listeners": {}}, {"listeners": {"lsn-web": entry}}])

    assert merged["lsn-web"]["status"] == "failed"
    assert merged["lsn-web"]["reason"] == "not yet applied in every worker process"
