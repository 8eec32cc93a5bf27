"""From the console to real traffic: Retries and the Retry Budget set with Modify Listener, pushed
to a real node process, with one server answering 503 and one healthy. A retry lands on the
healthy server; a budget of 1 % stops a retry storm at its floor; 0 retries retries nothing.

The stack is one real dataplane node (tests/fixtures/single_node.py); the snapshot is pushed as
the push task does. Each backend counts what it received.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import transaction
from django.urls import reverse

from console import nodeclient
from console.snapshot import build_snapshot
from dataplane.retry import MIN_RETRIES_PER_SECOND
from listeners import services
from listeners.models import Listener
from tests.fixtures.processes import free_port
from tests.listeners.test_wizard import ADVANCED_DEFAULTS

pytestmark = pytest.mark.django_db(transaction=True)


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # The node closes a connection whose 503 it retried elsewhere: not the test's concern.
        pass


class Unavailable:
    """A backend that answers every GET with 503 and counts them (health checks aside)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        unavailable = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/":
                    # The group's health check: passed, so the server stays in rotation.
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                    return
                unavailable.requests.append(self.path)
                body = b"overloaded"
                self.send_response(503)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def unavailable():
    backend = Unavailable()
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


def _modify(stack, listener: Listener, **fields) -> None:
    response = stack.client.post(
        reverse("listener-modify", args=[stack.instance.pk, listener.pk]),
        {**ADVANCED_DEFAULTS, "name": listener.name, "scheduler": "round_robin", **fields},
    )
    assert response.status_code == 302, response.context and response.context["form"].errors
    _push(stack)


def paths(backend, prefix: str) -> list[str]:
    """What the backend received under `prefix` (its health checks ask for "/")."""
    return [r["path"] for r in backend.requests if r["path"].startswith(prefix)]


def _get(connection: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read()


def test_retries_from_the_console_land_on_the_healthy_server_within_the_budget(
    stack, unavailable
) -> None:
    # Given a listener, round robin over the 503 server first, then the healthy one.
    port = free_port()
    with transaction.atomic():
        services.update_server_group(
            group_id=stack.group.pk,
            values={},
            servers=[
                {"address": "127.0.0.1", "port": unavailable.port, "weight": 100},
                {"address": "127.0.0.1", "port": stack.backend.port, "weight": 100},
            ],
        )
        listener = services.create_listener(
            stack.instance,
            protocol=Listener.Protocol.HTTP,
            port=port,
            name="shop",
            settings={"scheduler": "round_robin"},
            server_group=stack.group,
        )
    _push(stack)
    healthy = stack.backend
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    # When Modify Listener sets 2 retries and a budget that lets every request retry,
    _modify(stack, listener, retries="2", retry_budget_percent="100")
    sick_before = len(unavailable.requests)
    answers = [_get(connection, f"/item/{n}") for n in range(10)]

    # then every GET is answered by the healthy server, most after the 503 server's refusal
    # (round robin may start the new generation on either server).
    assert answers == [(200, healthy.name.encode())] * 10
    assert paths(healthy, "/item/") == [f"/item/{n}" for n in range(10)]
    refused = unavailable.requests[sick_before:]
    assert len(refused) >= 9 and len(set(refused)) == len(refused)

    # When the budget is 1 %, a storm of 503s gets no more retries than the floor allows.
    _modify(stack, listener, retries="2", retry_budget_percent="1")
    sick_before = len(unavailable.requests)
    started = time.monotonic()
    statuses = [_get(connection, f"/storm/{n}")[0] for n in range(60)]
    elapsed = time.monotonic() - started
    refused = len(unavailable.requests) - sick_before
    answered = len(paths(healthy, "/storm/"))
    # Requests that went to the 503 server first and were retried on the healthy one; the
    # others went to the healthy server first (round robin) or got the 503.
    retried = answered - (60 - refused)
    assert statuses.count(200) == answered
    assert statuses.count(503) == refused - retried
    # 1 % of 60 requests is none: the floor of 3 a second is all the budget allows.
    assert refused >= 30
    assert 0 < retried <= MIN_RETRIES_PER_SECOND * (int(elapsed) + 2) + 1

    # When Retries is 0, nothing is retried.
    _modify(stack, listener, retries="0")
    sick_before = len(unavailable.requests)
    answers = sorted(_get(connection, f"/no-retry/{n}") for n in range(2))
    assert answers == [(200, healthy.name.encode()), (503, b"overloaded")]
    # Round robin: one request each, and the 503 stayed a 503.
    assert len(unavailable.requests) - sick_before == 1
    assert len(paths(healthy, "/no-retry/")) == 1
    connection.close()
