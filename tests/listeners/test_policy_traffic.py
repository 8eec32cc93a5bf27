"""From the console to real traffic (issue 20), the two cases its other traffic tests leave out:
an error page set for a listener is what a client gets when the group's only server is dead, and
a server the group's passive health checks eject gets nothing for its ejection time, then
returns by itself.

The stack is one real dataplane node process (tests/fixtures/single_node.py); settings are saved
with the console's service functions (what its dialogs and API call) and the snapshot is pushed
as the push task does. The ejection time is the shortest the console allows (1 s); the wait for
the return is bounded with generous slack, as the time is the feature under test.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import transaction

from console import nodeclient
from console.snapshot import build_snapshot
from listeners import services
from listeners.models import Listener
from tests.fixtures.processes import free_port, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

PAGE = "<!doctype html><title>Back soon</title><h1>We are fixing it</h1>"


class Failing:
    """A backend that answers every proxied GET with 500 and counts them; the group's active
    health check ("/") passes, so only the passive checks can take it out."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        failing = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                healthy = self.path == "/"
                if not healthy:
                    failing.requests.append(self.path)
                body = b"ok" if healthy else b"broken"
                self.send_response(200 if healthy else 500)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def failing():
    backend = Failing()
    yield backend
    backend.stop()


def _push(stack) -> None:
    """Send the instance's snapshot to its node, then record what the push task records."""
    stack.instance.refresh_from_db()
    answer = nodeclient.put_config(
        stack.node.url, stack.node.token, build_snapshot(stack.instance).to_json()
    )
    assert answer.ok, answer.reasons
    Listener.objects.filter(instance=stack.instance).update(
        status=Listener.Status.RUNNING, configuring_since=None
    )


def _listener(stack, port: int) -> Listener:
    return services.create_listener(
        stack.instance,
        protocol=Listener.Protocol.HTTP,
        port=port,
        name="shop",
        settings={"scheduler": "round_robin"},
        server_group=stack.group,
    )


def _get(port: int, path: str) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        connection.close()


def test_the_502_page_set_in_the_console_is_served_when_the_backend_is_dead(stack) -> None:
    # Given a listener whose group's only server is a closed port (no active check to take it
    # out first: the node tries it and fails),
    port = free_port()
    with transaction.atomic():
        services.update_server_group(
            group_id=stack.group.pk,
            values={},
            servers=[{"address": "127.0.0.1", "port": free_port(), "weight": 100}],
        )
        services.update_health_check(group=stack.group, values={"enabled": False})
        listener = _listener(stack, port)
    _push(stack)
    assert _get(port, "/")[:2] == (502, "text/plain")

    # when a 502 page is set for the listener,
    with transaction.atomic():
        services.set_error_page(
            listener_id=listener.pk,
            status="502",
            content_type="text/html",
            body=PAGE,
        )
    _push(stack)

    # then the client gets it, with its status and content type.
    assert _get(port, "/order") == (502, "text/html; charset=utf-8", PAGE.encode())


def test_a_server_ejected_by_passive_checks_set_in_the_console_returns_after_its_time(
    stack, failing
) -> None:
    # Given round robin over a server answering 500 and a healthy one, with passive checks of
    # 2 failures and a 3 s ejection,
    port = free_port()
    with transaction.atomic():
        services.update_server_group(
            group_id=stack.group.pk,
            values={
                "passive_health_check": True,
                "passive_consecutive_failures": 2,
                "passive_base_ejection_time": 3,
                "passive_max_ejection_time": 60,
                "passive_max_ejection_percent": 50,
            },
            servers=[
                {"address": "127.0.0.1", "port": failing.port, "weight": 100},
                {"address": "127.0.0.1", "port": stack.backend.port, "weight": 100},
            ],
        )
        _listener(stack, port)
    _push(stack)
    healthy = stack.backend.name.encode()

    # when requests come, the failing server answers two of them and is ejected:
    statuses = [_get(port, f"/first/{n}")[0] for n in range(4)]
    ejected_at = time.monotonic()
    assert sorted(statuses) == [200, 200, 500, 500]
    assert len(failing.requests) == 2
    # during its ejection the healthy server takes every request (these take milliseconds);
    answers = [_get(port, f"/during/{n}") for n in range(6)]
    assert [(status, body) for status, _, body in answers] == [(200, healthy)] * 6
    assert len(failing.requests) == 2

    # and once its time is up it returns by itself and takes its share again.
    assert wait_until(lambda: _get(port, "/after")[0] == 500, timeout=20)
    # Not before its time (less a second of slack for the requests above).
    assert time.monotonic() - ejected_at >= 2.0
    assert failing.requests[-1] == "/after"
