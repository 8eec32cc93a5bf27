"""From the console to real traffic: a server drained with the server group page's dialog gets
nothing new on a real node process while a long download on it completes; Maintenance then cuts
what remains.

The stack is one real dataplane node (tests/fixtures/single_node.py); the snapshot is pushed as
the push task does. The slow download is a backend whose chunks the test releases, so nothing
depends on the machine's speed.
"""

from __future__ import annotations

import http.client
import queue
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import transaction
from django.urls import reverse

from console import nodeclient
from console.snapshot import build_snapshot
from listeners import services
from listeners.models import BackendServer, Listener
from tests.fixtures.processes import free_port, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

CHUNK = b"d" * 4096


class SlowDownload:
    """A backend whose downloads are chunked bodies sent one chunk per `release()`."""

    @property
    def downloads(self) -> list[str]:
        return [path for path in self.requests if path != "/"]

    def __init__(self) -> None:
        self.requests: list[str] = []
        # The chunks the test released, None ending a body.
        self.chunks: queue.Queue[bytes | None] = queue.Queue()
        download = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                download.requests.append(self.path)
                if self.path == "/":
                    # The group's health check: answered at once, it takes no chunk.
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                    return
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    while (chunk := download.chunks.get(timeout=30)) is not None:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except (OSError, queue.Empty):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self, chunks: int = 1, *, finish: bool = False) -> None:
        for _ in range(chunks):
            self.chunks.put(CHUNK)
        if finish:
            self.chunks.put(None)

    def stop(self) -> None:
        for _ in range(10):
            self.chunks.put(None)
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow():
    download = SlowDownload()
    yield download
    download.stop()


def _push(stack) -> None:
    """Send the instance's snapshot to its node, then record what the push task records."""
    stack.instance.refresh_from_db()
    answer = nodeclient.put_config(
        stack.node.url, stack.node.token, build_snapshot(stack.instance).to_json()
    )
    assert answer.ok, answer.reasons
    Listener.objects.filter(instance=stack.instance).update(status=Listener.Status.RUNNING)


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _start_download(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /big.iso HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
    return sock


def _read_some(sock: socket.socket, until: bytes) -> bytes:
    data = b""
    while until not in data:
        piece = sock.recv(65536)
        assert piece, data
        data += piece
    return data


def _read_rest(sock: socket.socket) -> bytes:
    data = b""
    try:
        while piece := sock.recv(65536):
            data += piece
    except ConnectionResetError:
        pass
    return data


def test_a_server_drained_from_the_console_finishes_its_download_and_takes_nothing_new(
    stack, slow
) -> None:
    # Given a listener whose group has the slow server and the stack's backend (weight 0 first,
    # so the download surely starts on the slow one).
    port = free_port()
    with transaction.atomic():
        services.update_server_group(
            group_id=stack.group.pk,
            values={},
            servers=[
                {"address": "127.0.0.1", "port": slow.port, "weight": 100},
                {"address": "127.0.0.1", "port": stack.backend.port, "weight": 0},
            ],
        )
        listener = services.create_listener(
            stack.instance,
            protocol=Listener.Protocol.HTTP,
            port=port,
            name="downloads",
            settings={},
            server_group=stack.group,
        )
    _push(stack)
    sock = _start_download(port)
    wait_until(lambda: slow.downloads, timeout=10)
    slow.release()
    received = _read_some(sock, CHUNK)

    # When the other server gets its weight and the slow one is drained from the group page,
    with transaction.atomic():
        services.update_server_group(
            group_id=stack.group.pk,
            values={},
            servers=[
                {"address": "127.0.0.1", "port": slow.port, "weight": 100},
                {"address": "127.0.0.1", "port": stack.backend.port, "weight": 100},
            ],
        )
    _push(stack)
    server = BackendServer.objects.get(group=stack.group, port=slow.port)
    state_url = reverse("servergroup-server-state", args=[stack.group.pk, server.pk])
    response = stack.client.post(state_url, {"state": "draining", "deregistration_delay": "600"})
    assert response.status_code == 302
    shown = stack.client.get(stack.group.get_absolute_url()).content.decode()
    assert re.search(r"Draining, (10 min|9 min \d+ s) left", shown)
    _push(stack)

    # then new requests all go to the other server,
    answers = [_get(port, f"/page/{n}") for n in range(5)]
    assert answers == [(200, stack.backend.name.encode())] * 5
    assert slow.downloads == ["/big.iso"]
    # the node reports the drain and its time left,
    status = nodeclient.get_status(stack.node.url, stack.node.token).payload
    reported = {b["id"]: b for b in status["listeners"][listener.id]["backends"]}
    assert reported[server.server_id]["state"] == "draining"
    # The deadline is rounded up to the second, so up to 601 s are left at first.
    assert 0 < reported[server.server_id]["drain_seconds_left"] <= 601
    # its health checks go on (the node still probes it),
    checks = slow.requests.count("/")
    assert wait_until(lambda: slow.requests.count("/") > checks, timeout=20)
    # and the download completes.
    slow.release(3, finish=True)
    received += _read_rest(sock)
    sock.close()
    assert received.count(CHUNK) == 4
    assert received.endswith(b"0\r\n\r\n")

    # Maintenance, from the API's service, cuts a download at once.
    with transaction.atomic():
        services.set_server_state(server_pk=server.pk, state="enabled")
    _push(stack)
    with transaction.atomic():
        services.update_server_group(
            group_id=stack.group.pk,
            values={},
            servers=[
                {"address": "127.0.0.1", "port": slow.port, "weight": 100},
                {"address": "127.0.0.1", "port": stack.backend.port, "weight": 0},
            ],
        )
    _push(stack)
    sock = _start_download(port)
    wait_until(lambda: len(slow.downloads) == 2, timeout=10)
    slow.release()
    received = _read_some(sock, CHUNK)
    with transaction.atomic():
        services.set_server_state(server_pk=server.pk, state="maintenance")
    _push(stack)
    received += _read_rest(sock)
    sock.close()
    assert not received.endswith(b"0\r\n\r\n")
    assert _get(port, "/after")[0] == 503
