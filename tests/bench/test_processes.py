"""Process accounting, ports and the HTTP probe, with real processes and sockets."""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import processes
from bench.processes import PortAllocator, Supervisor


def test_stat_line_with_spaces_and_parentheses_in_the_name() -> None:
    ticks = processes.CLOCK_TICKS
    line = f"4242 (odd (name) x) S 17 4242 4242 0 -1 4194560 1 0 0 0 {ticks} {ticks} 0 {ticks} 20"

    parent, seconds = processes.parse_stat(line)

    assert parent == 17
    assert seconds == pytest.approx(3.0)


def test_tree_cpu_seconds_adds_descendants_only() -> None:
    stats = {
        10: (1, 1.0),  # the root
        11: (10, 0.5),  # a worker
        12: (11, 0.25),  # a worker's child
        20: (1, 9.0),  # unrelated
    }

    assert processes.tree(stats, 10) == [10, 11, 12]
    assert processes.tree_cpu_seconds(stats, 10) == pytest.approx(1.75)
    assert processes.tree_cpu_seconds(stats, 99) == 0.0


def test_cpu_seconds_and_process_count_of_this_process() -> None:
    sum(range(200_000))

    assert processes.cpu_seconds(os.getpid()) > 0
    assert processes.process_count(os.getpid()) >= 1


def test_port_allocator_skips_ports_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free_port = probe.getsockname()[1]

        assert not processes.port_is_free(busy_port)
        assert PortAllocator([busy_port, free_port]).take(1) == [free_port]
        with pytest.raises(processes.ProcessError):
            PortAllocator([busy_port]).one()


@pytest.fixture
def tiny_server() -> Iterator[int]:
    """Answers one request with 204, for the probe."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(5)

    def serve_once() -> None:
        try:
            connection, _ = server.accept()
        except OSError:
            return
        with connection:
            connection.recv(4096)
            connection.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    thread.join(5)
    server.close()


def test_http_status_reads_the_status_code(tiny_server: int) -> None:
    assert processes.http_status(tiny_server) == 204


def test_http_status_is_none_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    assert processes.http_status(port, timeout=0.5) is None


def test_supervisor_stops_what_it_started(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    process = supervisor.start(
        "sleeper", [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"]
    )

    supervisor.stop_all()

    assert process.poll() is not None
    assert supervisor.processes == []
    assert (tmp_path / "sleeper.log").exists()
