"""The console's push counters: real Prometheus counters and a latency histogram that keep
counting past the attempt history's window, read back with prometheus_client's parser."""

from __future__ import annotations

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from console import pipeline, push_counters
from console.models import DataplaneNode, PushAttempt, PushCounter
from console.prometheus import PUSH_BUCKETS
from tests.fixtures.nodes import register_node
from tests.fixtures.processes import free_port
from tests.fixtures.users import make_user

pytestmark = pytest.mark.integration


def scrape() -> dict[tuple[str, frozenset], float]:
    client = Client()
    client.force_login(make_user("watcher", "Viewers"))
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def test_counters_keep_counting_past_the_history_window(db, instance, monkeypatch):
    # Given a node that cannot be reached, and a history kept for 3 attempts only.
    monkeypatch.setattr(pipeline, "HISTORY_PER_NODE", 3)
    node = register_node(instance, f"http://127.0.0.1:{free_port()}", name="gone")

    # When the pipeline pushes to it five times.
    for _ in range(5):
        pipeline.push(instance.id, instance.generation)

    # Then the history holds 3 attempts, and the counters all 5.
    assert PushAttempt.objects.filter(node=node).count() == 3
    samples = scrape()
    labels = {"instance": instance.id, "node": "gone"}
    unreachable = frozenset({**labels, "result": "unreachable"}.items())
    assert samples[("ferry_console_pushes_total", unreachable)] == 5
    assert (
        samples[("ferry_console_pushes_total", frozenset({**labels, "result": "ack"}.items()))] == 0
    )
    assert samples[("ferry_console_push_latency_seconds_count", unreachable)] == 5
    slowest = frozenset({*unreachable, ("le", "+Inf")})
    assert samples[("ferry_console_push_latency_seconds_bucket", slowest)] == 5
    assert samples[("ferry_console_push_latency_seconds_sum", unreachable)] >= 0


def test_acks_from_a_real_node_count_with_their_latency(stack, eager_celery):
    # Given a real node, when two listeners are created (each change is pushed).
    stack.add_listener(free_port(), "web")
    stack.add_listener(free_port(), "api")

    node = DataplaneNode.objects.get()
    acks = list(PushAttempt.objects.filter(node=node, result="ack"))
    samples = scrape()
    labels = frozenset({"instance": stack.instance.id, "node": node.name, "result": "ack"}.items())

    # Then every ACK is counted, and the histogram's buckets agree with the attempts' durations.
    assert len(acks) >= 2
    assert samples[("ferry_console_pushes_total", labels)] == len(acks)
    assert samples[("ferry_console_push_latency_seconds_sum", labels)] == pytest.approx(
        sum(attempt.duration_ms for attempt in acks) / 1000
    )
    for bound in PUSH_BUCKETS:
        expected = sum(1 for attempt in acks if attempt.duration_ms / 1000 <= bound)
        bucket = frozenset({*labels, ("le", str(bound))})
        assert samples[("ferry_console_push_latency_seconds_bucket", bucket)] == expected


def test_a_push_lands_in_the_smallest_bucket_it_fits(db, instance):
    node = register_node(instance, "http://127.0.0.1:9", name="n")

    push_counters.record(node.pk, "ack", PUSH_BUCKETS[0])
    push_counters.record(node.pk, "ack", PUSH_BUCKETS[0] + 0.0001)
    push_counters.record(node.pk, "ack", PUSH_BUCKETS[-1] * 10)

    tally = push_counters.totals()[node.pk]["ack"]
    assert tally.count == 3
    assert tally.buckets == {0: 1, 1: 1, len(PUSH_BUCKETS): 1}
    cumulative = dict(tally.cumulative())
    assert cumulative[str(PUSH_BUCKETS[0])] == 1
    assert cumulative[str(PUSH_BUCKETS[-1])] == 2
    assert cumulative["+Inf"] == 3
    assert PushCounter.objects.filter(node=node).count() == 3

    # Removing the node removes its counters (the series ends with it).
    node.delete()
    assert not PushCounter.objects.exists()
