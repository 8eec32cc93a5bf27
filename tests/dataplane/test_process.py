"""`python -m dataplane` as a real process: the documented HTTPS example, restart, SIGTERM."""

from __future__ import annotations

import http.client
import json
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from dataplane.example import fill
from tests.dataplane.conftest import (
    WAIT,
    Reply,
    get,
    listener,
    peer_certificate,
    server_group,
    snapshot,
    wait_until,
)
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "process-test-token"
READY = re.compile(r"dataplane ready: control API on [^ ]+:(\d+)")


class DataplaneProcess:
    """`python -m dataplane` on a free control port; its log is read in a thread."""

    def __init__(
        self, tmp_path: Path, state_dir: Path, *, drain_timeout: int = 5, extra: tuple = ()
    ) -> None:
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dataplane",
                "--control",
                "127.0.0.1:0",
                "--token-file",
                str(token_file),
                "--state-dir",
                str(state_dir),
                "--drain-timeout",
                str(drain_timeout),
                *extra,
            ],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.port = self._wait_ready()

    def _read(self) -> None:
        for line in self.process.stderr:  # type: ignore[union-attr]
            self.lines.put(line)

    def _wait_ready(self) -> int:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.log.append(line)
            match = READY.search(line)
            if match:
                return int(match.group(1))
        self.process.kill()
        raise AssertionError("dataplane did not start:\n" + "".join(self.log))

    def request(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            data = json.dumps(body).encode() if body is not None else None
            connection.request(
                method, path, body=data, headers={"Authorization": f"Bearer {TOKEN}"}
            )
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(WAIT)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT)


@pytest.fixture
def start(tmp_path):
    started: list[DataplaneProcess] = []

    def run(state_dir: Path | None = None) -> DataplaneProcess:
        process = DataplaneProcess(tmp_path, state_dir or tmp_path / "state")
        started.append(process)
        return process

    yield run
    for process in started:
        process.kill()


def test_documented_https_example_serves_two_backends(start, backends, tmp_path):
    first, second = backends("first"), backends("second")
    demo = tmp_path / "demo"
    example = fill(json.loads((ROOT / "docs/examples/https.json").read_text()), demo)
    port = free_port()
    example["listeners"][0]["port"] = port
    servers = example["server_groups"][0]["servers"]
    servers[0]["port"], servers[1]["port"] = first.port, second.port
    dataplane = start()

    status, ack = dataplane.request("PUT", "/v1/config", example)

    assert status == 200
    assert ack["listeners"] == {"lsn-https001": {"status": "running", "reason": ""}}
    client = ssl.create_default_context(cafile=str(demo / "server-ca.pem"))
    client.load_cert_chain(demo / "client.pem", demo / "client.key")
    client.check_hostname = False
    bodies = []
    for _ in range(4):
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=WAIT, context=client)
        connection.request("GET", "/", headers={"Host": "www.example.com"})
        response = connection.getresponse()
        bodies.append((response.status, response.read()))
        connection.close()
    assert sorted(bodies) == [(200, b"first")] * 2 + [(200, b"second")] * 2
    received = first.requests[0]
    assert received.header("X-Forwarded-Proto") == "https"
    assert received.header("X-Forwarded-Clientcert-subjectdn") == "CN=demo-client"
    shop = peer_certificate(port, "cart.shop.example.com", client)
    san = shop.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["*.shop.example.com"]
    assert dataplane.stop() == 0


def test_restart_restores_the_applied_snapshot(start, backends, tmp_path):
    web = backends("web")
    port = free_port()
    dataplane = start()
    dataplane.request(
        "PUT", "/v1/config", snapshot([listener(port)], [server_group(web)], generation=4)
    )
    assert get(port)[2] == b"web"
    assert dataplane.stop() == 0

    restarted = start()
    assert get(port)[2] == b"web"
    status, body = restarted.request("GET", "/v1/status")
    assert (status, body["generation"]) == (200, 4)
    assert restarted.stop() == 0


def test_sigterm_drains_requests_in_flight_and_exits_0(start, backends):
    slow = backends("slow", lambda request: Reply(body=b"finished", delay=1.0))
    port = free_port()
    dataplane = start()
    dataplane.request("PUT", "/v1/config", snapshot([listener(port)], [server_group(slow)]))
    result: list[tuple[int, bytes]] = []

    def in_flight() -> None:
        status, _, body = get(port)
        result.append((status, body))

    client = threading.Thread(target=in_flight)
    client.start()
    assert wait_until(lambda: len(slow.requests) == 1)
    dataplane.process.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            get(port)
        except ConnectionRefusedError:
            return True
        except (ConnectionResetError, http.client.RemoteDisconnected):
            # Accepted into the backlog just before the socket closed.
            return False
        return False

    assert wait_until(refused, timeout=5)
    client.join(WAIT)
    assert result == [(200, b"finished")]
    assert dataplane.process.wait(WAIT) == 0
