"""A node's /v1/status is input from the network: whatever a node (broken, old or hostile) sends,
stored as reconcile stores it, every page of a listener and of its server group renders.

The documents go through the real pipeline: a real HTTP server answers /v1/status with them and
``pipeline.collect`` stores them, twice (so the previous report is hostile too). The shapes
``collect`` itself cannot read are written into the row the way it writes a report.
"""

from __future__ import annotations

import datetime

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from console import pipeline
from console.metrics import listener_metrics
from console.models import DataplaneNode
from listeners.models import Listener
from tests.fixtures.listeners import make_listener
from tests.fixtures.nodes import FakeNode, register_node

# Hostile inside the listener entry; the envelope is what collect reads.
ENTRIES = {
    "status a list": {"status": ["running"], "reason": {"why": 1}},
    "counters a string": {"status": "running", "counters": "lots"},
    "counters of other types": {
        "status": "running",
        "counters": {
            "requests": "12",
            "bytes_in": -5,
            "bytes_out": 1.5,
            "active_connections": True,
            "responses": ["2xx"],
        },
    },
    "counters huge": {"status": "running", "counters": {"requests": 10**30}},
    "backends a dict": {"status": "running", "backends": {"id": "x"}},
    "backends of other types": {
        "status": "running",
        "backends": [1, "server", None, ["a"], {"id": ["unhashable"], "port": "80"}],
    },
    "backend fields of other types": {
        "status": "failed",
        "server_group_id": None,
        "backends": [
            {
                "id": {"x": 1},
                "address": ["127.0.0.1"],
                "port": 1e9,
                "weight": "heavy",
                "healthy": "yes",
                "reason": {"a": "<script>"},
                "reason_code": 7,
                "http_status": "200",
                "last_change": 1e300,
                "slow_start_percent": [],
                "checks": 5,
            }
        ],
    },
    "timeline of other types": {
        "status": "running",
        "backends": [
            {
                "id": "s",
                "checks": [
                    [1e300, True, "ok"],
                    [-1, True, "ok"],
                    ["now", 1, 2],
                    [1, 2],
                    "check",
                    None,
                ],
                "last_change": 2**40,
            }
        ],
    },
    "empty": {},
    "a deep nest": {"status": "running", "counters": {"responses": {"2xx": {"a": {"b": {}}}}}},
}


@pytest.fixture
def listener(instance, server_group) -> Listener:
    listener = make_listener(instance, server_group, port=8080, name="shop")
    # Settled, so the status comes from what the nodes reported.
    Listener.objects.filter(pk=listener.pk).update(status=Listener.Status.RUNNING)
    instance.generation = 1
    instance.save(update_fields=["generation"])
    listener.refresh_from_db()
    return listener


def pages(listener: Listener) -> list[str]:
    args = [listener.instance_id, listener.id]
    return [
        reverse("listener-detail", args=args),
        reverse("listener-status", args=args),
        reverse("listener-monitoring", args=args),
        reverse("listener-monitoring", args=args) + "?range=24h",
        reverse("listener-logs", args=args),
        reverse("instance-listeners", args=[listener.instance_id]),
        reverse("instance-nodes", args=[listener.instance_id]),
        listener.server_group.get_absolute_url(),
    ]


def assert_pages_render(client: Client, listener: Listener) -> None:
    for page in pages(listener):
        response = client.get(page)
        assert response.status_code == 200, page
        # The node's text is shown escaped, never as markup.
        assert b"<script>" not in response.content, page


def listener_document(listener: Listener, group_id: int, entry: dict) -> dict:
    """A status document whose listener entry is ``entry``; a server group entry that names the
    listener's group, so the server group page reads the hostile servers too."""
    entry = dict(entry)
    entry.setdefault("server_group_id", group_id)
    return {"generation": 1, "uptime_seconds": 5.0, "listeners": {listener.id: entry}}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", list(ENTRIES))
def test_pages_render_whatever_the_listener_entry_holds(
    name, listener, fake_node: FakeNode, admin_client: Client
):
    node = register_node(listener.instance, fake_node.url)
    document = listener_document(listener, listener.server_group_id, ENTRIES[name])
    fake_node.report = lambda: document
    pipeline.collect(listener.instance)
    pipeline.collect(listener.instance)
    node.refresh_from_db()
    # Stored as received (JSONB may write a float such as 1e300 back as an integer).
    for report in (node.status_report, node.previous_report):
        assert report["listeners"].keys() == document["listeners"].keys()

    assert_pages_render(admin_client, listener)
    # The listener is not vouched for on the strength of a status that is not one.
    if name == "status a list":
        listener.refresh_from_db()
        assert listener.observed.status == Listener.Status.FAILED


@pytest.mark.django_db(transaction=True)
def test_counters_read_as_absent_when_they_are_not_counts(listener, fake_node: FakeNode):
    register_node(listener.instance, fake_node.url)
    first = {
        "requests": 100,
        "bytes_in": "7",
        "active_connections": 3,
        "responses": {"2xx": 90, "5xx": -1},
    }
    second = {**first, "requests": 160}
    documents = iter([first, second])

    def report() -> dict:
        entry = {"status": "running", "counters": next(documents), "backends": [1, {"id": "s"}]}
        return listener_document(listener, listener.server_group_id, entry)

    fake_node.report = report
    pipeline.collect(listener.instance)
    pipeline.collect(listener.instance)

    metrics = listener_metrics(listener.id, list(listener.instance.nodes.all()))
    assert metrics.nodes_reporting == 1
    assert (metrics.requests, metrics.bytes_in, metrics.active_connections) == (160, 0, 3)
    assert metrics.responses["2xx"] == 90 and metrics.responses["5xx"] == 0
    assert metrics.requests_per_second is not None and metrics.requests_per_second > 0
    assert [backend["id"] for backend in metrics.backends] == ["s"]


# Shapes collect() cannot store today (it reads the listeners as a dict of dicts), written into
# the row as collect writes a report, and a report without its time. By the listener's id.
ROWS = {
    "listeners a list": lambda lid: {"status_report": {"listeners": [1, lid]}},
    "listeners a string": lambda lid: {"status_report": {"listeners": lid}},
    "entry a list": lambda lid: {"status_report": {"listeners": {lid: ["running"]}}},
    "entry a number": lambda lid: {"status_report": {"listeners": {lid: 5}}},
    "results of other types": lambda lid: {"listener_results": {lid: "running", "*": [1]}},
    "results a list": lambda lid: {"listener_results": [1, 2, 3]},
    "report without its time": lambda lid: {
        "status_report": {"listeners": {lid: {"counters": {"requests": 5}, "backends": [{}]}}},
        "status_report_at": None,
        "previous_report": {"listeners": {lid: {"counters": {"requests": 1}}}},
        "previous_report_at": None,
    },
}


@pytest.mark.django_db
@pytest.mark.parametrize("name", list(ROWS))
def test_pages_render_whatever_the_stored_report_holds(name, listener, admin_client: Client):
    node = register_node(listener.instance, "http://127.0.0.1:9")
    now = timezone.now()
    fields = {
        "status_report_at": now,
        "previous_report_at": now - datetime.timedelta(seconds=10),
        "checked_at": now,
        "last_contact": now,
        "reachable": True,
        "acked_generation": 1,
        "applied_generation": 1,
        **ROWS[name](listener.id),
    }
    DataplaneNode.objects.filter(pk=node.pk).update(**fields)

    assert_pages_render(admin_client, listener)
    detail = admin_client.get(reverse("listener-detail", args=[listener.instance_id, listener.id]))
    if name == "report without its time":
        assert b"1 node(s)" in detail.content
    if name.startswith("results"):
        # No word from the node on this listener: not vouched for.
        listener.refresh_from_db()
        assert listener.observed.status == Listener.Status.FAILED


# A node's answer to the Logs tab's question (its recent access-log lines) is network input too.
LOG_ANSWERS = {
    "lines a number": {"lines": 5},
    "lines a dict": {"lines": {"time": "x"}},
    "lines of other types": {
        "lines": [
            1,
            None,
            ["a"],
            {"protocol": ["http"], "http_version": {"v": 2}, "status": "500", "time": [1]},
            {"protocol": 7, "status": True, "method": {"<script>": 1}, "bytes_in": 1.5},
        ]
    },
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", list(LOG_ANSWERS))
def test_the_logs_tab_renders_whatever_a_node_answers(
    name, listener, fake_node: FakeNode, admin_client: Client
):
    register_node(listener.instance, fake_node.url)
    fake_node.report = lambda: LOG_ANSWERS[name]
    args = [listener.instance_id, listener.id]

    for page in (reverse("listener-logs", args=args), reverse("listener-logs-download", args=args)):
        response = admin_client.get(page)
        assert response.status_code == 200, page
    page = admin_client.get(reverse("listener-logs", args=args)).content
    assert b"<script>" not in page
    if name == "lines of other types":
        # The two objects are shown, their odd fields as text.
        download = admin_client.get(reverse("listener-logs-download", args=args)).content
        assert len(download.splitlines()) == 2


# Hostile envelopes: what collect() and a push read before any page does.
ENVELOPES = {
    "listeners a list": lambda lid: {"generation": 1, "listeners": [1, lid]},
    "listeners a string": lambda lid: {"generation": 1, "listeners": lid},
    "entry a list": lambda lid: {"generation": 1, "listeners": {lid: ["running"]}},
    "status and reason of other types": lambda lid: {
        "generation": 1,
        "listeners": {lid: {"status": {"a": 1}, "reason": ["why"]}},
    },
    "generation a string": lambda lid: {"generation": "abc", "listeners": {}},
    "generation a list": lambda lid: {"generation": [1], "listeners": {}},
    "generation negative": lambda lid: {"generation": -5},
    "generation past 64 bits": lambda lid: {"generation": 2**70},
    "generation not a number": lambda lid: {"generation": float("nan")},
    "a reason of a megabyte": lambda lid: {
        "generation": 1,
        "listeners": {lid: {"status": "failed", "reason": "x" * 1_000_000}},
    },
    "reasons not a list": lambda lid: {"generation": 1, "reasons": 7},
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", list(ENVELOPES))
def test_collect_and_push_read_whatever_a_node_answers(
    name, listener, fake_node: FakeNode, admin_client: Client
):
    document = ENVELOPES[name](listener.id)
    fake_node.report = lambda: document
    fake_node.answer = lambda snapshot: (200, document)
    node = register_node(listener.instance, fake_node.url)

    pipeline.collect(listener.instance)
    pipeline.push(listener.instance_id, listener.instance.generation)
    pipeline.collect(listener.instance)

    node.refresh_from_db()
    assert node.reachable
    for results in (node.listener_results,):
        for entry in (results or {}).values():
            assert isinstance(entry["status"], str)
            assert isinstance(entry["reason"], str) and len(entry["reason"]) <= 1000
    assert 0 <= (node.applied_generation or 0) < 2**63
    assert_pages_render(admin_client, listener)
