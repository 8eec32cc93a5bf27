"""From the console to real traffic: QPS per client IP set in Modify Listener and in the
Forwarding Rules dialog, saved by the services, pushed as the push task does to a real dataplane
node process, and measured at the client: about the limit passes, the rest is answered 429 with
Retry-After, the backend gets only what passed, and two clients behind a trusted proxy are
throttled each by their own address.

The stack is one real dataplane node (tests/fixtures/single_node.py). The bounds allow for a slow
machine: a burst sent as fast as one client can earns back at most the limit per second taken.
"""

from __future__ import annotations

import http.client

import pytest
from django.db import transaction
from django.urls import reverse

from console import nodeclient
from console.snapshot import build_snapshot
from listeners import services
from listeners.models import Listener
from tests.fixtures.processes import free_port
from tests.listeners.test_wizard import ADVANCED_DEFAULTS

pytestmark = pytest.mark.django_db(transaction=True)


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


def _burst(port: int, count: int, path: str = "/", client_ip: str | None = None) -> list:
    """`count` requests on one keep-alive connection: (status, Retry-After) of each."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"X-Forwarded-For": client_ip} if client_ip else {}
    answers = []
    try:
        for _ in range(count):
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            answers.append((response.status, response.getheader("Retry-After")))
    finally:
        connection.close()
    return answers


def _passed(answers: list) -> int:
    return [status for status, _ in answers].count(200)


def _reached(stack, client_ip: str) -> int:
    """Requests of this client the backend received (its health checks aside)."""
    forwarded = f"{client_ip}, 127.0.0.1"
    return sum(
        1 for r in stack.backend.requests if r["headers"].get("X-Forwarded-For") == forwarded
    )


def test_limits_set_in_the_console_throttle_real_traffic(stack) -> None:
    # Given an HTTP listener on the node,
    port = free_port()
    with transaction.atomic():
        listener = services.create_listener(
            stack.instance,
            protocol=Listener.Protocol.HTTP,
            port=port,
            name="shop",
            settings={},
            server_group=stack.group,
        )
    _push(stack)

    # when the operator sets 10 QPS per client IP behind a trusted proxy in Modify Listener,
    response = stack.client.post(
        reverse("listener-modify", args=[stack.instance.id, listener.id]),
        {
            **ADVANCED_DEFAULTS,
            "name": "shop",
            "qps_per_client_ip": "10",
            "retrieve_client_ip": "on",
            "trusted_proxies": "127.0.0.1",
        },
    )
    assert response.status_code == 302, response.context and response.context["form"].errors
    _push(stack)

    # then a burst of 50 from one client lets about 10 through, the rest get 429,
    first = _burst(port, 50, client_ip="198.51.100.1")
    passed = _passed(first)
    assert 10 <= passed <= 20
    assert [status for status, _ in first][:10] == [200] * 10
    assert all(int(wait) >= 1 for status, wait in first if status == 429)
    assert [status for status, _ in first].count(429) == 50 - passed
    # and the backend got only what passed;
    assert _reached(stack, "198.51.100.1") == passed
    # another client behind the proxy has its own allowance.
    second = _burst(port, 20, client_ip="198.51.100.2")
    assert 10 <= _passed(second) <= 20
    assert _reached(stack, "198.51.100.2") == _passed(second)

    # When a rule for /api/ gets its own limit of 3 in the Forwarding Rules dialog,
    response = stack.client.post(
        reverse("listener-rule-create", args=[stack.instance.id, listener.id]),
        {
            "path": "/api/",
            "path_match": "prefix",
            "action": "forward",
            "server_group": stack.group.pk,
            "qps_per_client_ip": "3",
        },
    )
    assert response.status_code == 302, response.context and response.context["form"].errors
    _push(stack)

    # then requests it matches are held to 3, and the others to the listener's 10.
    to_api = _burst(port, 20, "/api/items", client_ip="198.51.100.3")
    elsewhere = _burst(port, 20, "/shop", client_ip="198.51.100.4")
    assert 3 <= _passed(to_api) <= 8
    assert 10 <= _passed(elsewhere) <= 20
    assert _reached(stack, "198.51.100.3") == _passed(to_api)
    status = nodeclient.get_status(stack.node.url, stack.node.token).payload
    counters = status["listeners"][listener.id]["counters"]
    throttled = 70 - passed - _passed(second) + 40 - _passed(to_api) - _passed(elsewhere)
    assert counters["throttled_requests"] == throttled
    [rule] = listener.rules.all()
    # The listener's limit is checked first: past its 10, the rule's own count stops growing.
    assert list(counters["throttled_by_rule"]) == [rule.rule_id]
    assert 0 < counters["throttled_by_rule"][rule.rule_id] <= 20 - _passed(to_api)
