"""Traffic samples for the graphs: taken from a real node serving real requests, rates across a
node restart, percentiles from histogram buckets, hostile status documents, and retention."""

from __future__ import annotations

import datetime
import http.client
import math

import pytest
from django.utils import timezone

from console import graphs, sampling
from console.celery import app as celery_app
from console.graphs import quantile
from console.models import DataplaneNode, TrafficSample
from tests.fixtures.listeners import make_listener
from tests.fixtures.nodes import register_node
from tests.fixtures.processes import free_port

STEP = 20  # seconds per point of the last-hour graph at the default 10 s sample interval


def get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


# From a real node process.


@pytest.mark.integration
def test_samples_come_from_a_real_node_serving_real_requests(stack, eager_celery):
    # Given a listener on a real node, and 7 requests through it.
    port = free_port()
    listener = stack.add_listener(port, "web")
    before = len(stack.backend.requests)
    assert [get(port, f"/item/{n}") for n in range(7)] == [200] * 7
    assert len(stack.backend.requests) - before == 7
    first = timezone.now()

    # When the console samples, then 5 more requests, then samples 10 s later.
    assert sampling.sample_traffic() >= 1
    TrafficSample.objects.update(at=first)
    assert [get(port, "/more") for _ in range(5)] == [200] * 5
    second = first + datetime.timedelta(seconds=10)
    assert sampling.take_samples(now=second) == 1

    # Then each sample holds the node's cumulative counters as it reported them.
    node = DataplaneNode.objects.get()
    earlier, later = TrafficSample.objects.filter(listener=listener, node=node).order_by("at")
    reported = stack.node.status()["listeners"][listener.id]
    assert (earlier.requests, later.requests) == (7, 12)
    assert (earlier.responses_2xx, later.responses_2xx) == (7, 12)
    assert later.responses_5xx == later.responses_4xx == 0
    assert later.requests == reported["counters"]["requests"]
    assert later.bytes_out == reported["counters"]["bytes_out"] > earlier.bytes_out > 0
    assert later.bytes_in > earlier.bytes_in > 0
    assert (later.servers, later.healthy_servers) == (1, 1)
    assert later.uptime >= earlier.uptime
    # The histogram is stored as the node reports it, or not at all.
    assert later.latency == sampling.histogram(reported.get("request_duration"))

    # And the graph reads 5 requests in those 10 s.
    traffic = graphs.traffic(listener.id, "1h", now=second)
    requests = traffic.charts[0].series[0].values
    assert traffic.charts[0].title == "Requests per second"
    assert requests[-1] == pytest.approx(0.5)
    assert all(value is None for value in requests[:-1])
    responses = {series.name: series.values[-1] for series in traffic.charts[1].series}
    assert responses == {"2xx": pytest.approx(0.5), "3xx": 0, "4xx": 0, "5xx": 0, "1xx": 0}
    latency = next(chart for chart in traffic.charts if chart.key == "latency")
    if later.latency is None:
        assert latency.empty.startswith("No latency data")
    else:
        # The node times its requests: the 5 requests of the step give the percentiles, each
        # inside the buckets the requests fell in.
        assert later.latency["count"] - earlier.latency["count"] == 5
        p50, p95, p99 = (series.values[-1] for series in latency.series)
        assert 0 < p50 <= p95 <= p99 <= later.latency["buckets"][-1]


def test_the_beat_schedule_samples_every_interval():
    entry = celery_app.conf.beat_schedule["sample traffic"]

    assert entry["task"] == "console.sampling.sample_traffic"
    assert entry["schedule"] == sampling.interval() == 10.0
    assert "console.sampling.sample_traffic" in celery_app.tasks


# Rates across counter resets.


@pytest.fixture
def listener(instance, server_group):
    return make_listener(instance, server_group, port=8080)


@pytest.fixture
def nodes(instance):
    return [
        register_node(instance, "http://127.0.0.1:9", name="a"),
        register_node(instance, "http://127.0.0.1:9", name="b"),
    ]


def sample(listener, node, at, *, uptime, requests, **fields) -> TrafficSample:
    return TrafficSample.objects.create(
        listener=listener, node=node, at=at, uptime=uptime, requests=requests, **fields
    )


def requests_of(listener, now, range_key="1h") -> list[float | None]:
    return graphs.traffic(listener.id, range_key, now=now).charts[0].series[0].values


def test_a_node_restart_is_a_reset_not_a_negative_rate(listener, nodes):
    node_a, node_b = nodes
    now = timezone.now()
    at = [now - datetime.timedelta(seconds=STEP * back) for back in (3, 2, 1, 0)]
    # Node a: 10/s, restarts (uptime falls back, 40 since), then 10/s again.
    for moment, uptime, requests in zip(at, (500, 520, 10, 30), (1000, 1200, 40, 240), strict=True):
        sample(listener, node_a, moment, uptime=uptime, requests=requests)
    # Node b: a steady 1/s, never restarted.
    for moment, requests in zip(at, (50, 70, 90, 110), strict=True):
        sample(listener, node_b, moment, uptime=9000 + requests, requests=requests)

    values = requests_of(listener, now)

    assert values[-3:] == [pytest.approx(11), pytest.approx(3), pytest.approx(11)]
    assert all(value is None for value in values[:-3])


def test_a_counter_that_goes_down_without_a_restart_is_a_reset_too(listener, nodes):
    # The listener was removed and added again on the node: its counters start over.
    node = nodes[0]
    now = timezone.now()
    sample(listener, node, now - datetime.timedelta(seconds=40), uptime=100, requests=500)
    sample(listener, node, now - datetime.timedelta(seconds=20), uptime=120, requests=20)
    sample(listener, node, now, uptime=140, requests=60)

    assert requests_of(listener, now)[-2:] == [pytest.approx(1), pytest.approx(2)]


def test_a_node_not_heard_for_long_leaves_a_gap(listener, nodes):
    node = nodes[0]
    now = timezone.now()
    sample(listener, node, now - datetime.timedelta(seconds=600), uptime=100, requests=0)
    sample(listener, node, now - datetime.timedelta(seconds=580), uptime=120, requests=200)
    sample(listener, node, now, uptime=700, requests=5000)

    values = requests_of(listener, now)

    # 580 s between the last two samples: no rate is made up for the time in between.
    assert values[-30] == pytest.approx(10)
    assert all(value is None for value in values[-29:])


def test_samples_between_steps_spread_over_the_steps_they_span(listener, nodes):
    # Samples 10 s apart but not aligned with the 20 s steps: every step still has a rate.
    node = nodes[0]
    now = timezone.now()
    for tick in range(13):
        moment = now - datetime.timedelta(seconds=125 - tick * 10)
        sample(listener, node, moment, uptime=100 + tick * 10, requests=tick * 30)

    values = requests_of(listener, now)

    assert values[-6:-1] == [pytest.approx(3)] * 5
    # The last step is covered for 15 s of its 20 s, at 3/s.
    assert values[-1] == pytest.approx(3)


def test_the_24_hour_range_reads_the_same_rates(listener, nodes):
    node = nodes[0]
    now = timezone.now()
    for tick in range(61):
        moment = now - datetime.timedelta(seconds=600 - tick * 10)
        sample(listener, node, moment, uptime=tick * 10 + 1, requests=tick * 20)

    values = requests_of(listener, now, "24h")

    assert len(values) == 288
    assert values[-2:] == [pytest.approx(2), pytest.approx(2)]


def test_the_24_hour_range_counts_a_restart_inside_a_step(listener, nodes):
    # 2 requests per second for 10 minutes, sampled every 10 s; the node restarts once, in the
    # middle of a 300 s step. The day view reads only some samples, and still every request.
    node = nodes[0]
    now = timezone.now()
    restart = 35
    for tick in range(61):
        moment = now - datetime.timedelta(seconds=600 - tick * 10)
        if tick < restart:
            uptime, requests = 5000 + tick * 10, 100_000 + tick * 20
        else:
            since = tick - restart + 1
            uptime, requests = since * 10, since * 20
        sample(listener, node, moment, uptime=uptime, requests=requests)

    values = requests_of(listener, now, "24h")

    assert values[-2:] == [pytest.approx(2), pytest.approx(2)]


def test_gauges_add_up_and_healthy_servers_are_the_fewest(listener, nodes):
    node_a, node_b = nodes
    now = timezone.now()
    sample(
        listener,
        node_a,
        now,
        uptime=1,
        requests=0,
        active_connections=3,
        servers=2,
        healthy_servers=2,
    )
    sample(
        listener, node_b, now, uptime=1, requests=0, active_connections=4, servers=2,
        healthy_servers=1,
    )  # fmt: skip

    charts = {chart.key: chart for chart in graphs.traffic(listener.id, now=now).charts}

    assert charts["connections"].series[0].values[-1] == 7
    healthy, servers = charts["servers"].series
    assert (healthy.values[-1], servers.values[-1]) == (1, 2)


# Percentiles from buckets.


def test_quantile_interpolates_inside_the_bucket():
    bounds, counts = [0.1, 0.5, 1.0], [50, 90, 100]

    assert quantile(0.5, bounds, counts, 100) == pytest.approx(0.1)
    assert quantile(0.25, bounds, counts, 100) == pytest.approx(0.05)
    assert quantile(0.95, bounds, counts, 100) == pytest.approx(0.75)
    assert quantile(0.99, bounds, counts, 100) == pytest.approx(0.95)
    # Beyond the largest finite bound (the +Inf bucket): that bound, as Prometheus does.
    assert quantile(0.99, bounds, counts, 110) == 1.0
    # No observations: no percentile.
    assert quantile(0.5, bounds, [0, 0, 0], 0) is None
    # The rank on a bucket's upper edge reads that bound; an empty bucket is skipped.
    assert quantile(0.5, [0.1, 0.2, 0.4], [5, 5, 10], 10) == pytest.approx(0.1)
    assert quantile(0.75, [0.1, 0.2, 0.4], [5, 5, 10], 10) == pytest.approx(0.3)


def test_percentiles_come_from_bucket_differences_added_over_nodes(listener, nodes):
    node_a, node_b = nodes
    now = timezone.now()
    before = now - datetime.timedelta(seconds=STEP)
    bounds = [0.01, 0.1, 1.0]
    # Node a had 1000 fast requests before; in this step 10 more, all under 10 ms.
    sample(
        listener,
        node_a,
        before,
        uptime=10,
        requests=1000,
        latency={"buckets": bounds, "counts": [1000, 1000, 1000], "count": 1000, "sum": 5.0},
    )
    sample(
        listener,
        node_a,
        now,
        uptime=30,
        requests=1010,
        latency={"buckets": bounds, "counts": [1010, 1010, 1010], "count": 1010, "sum": 5.05},
    )
    # Node b: 90 requests in this step between 100 ms and 1 s.
    sample(
        listener,
        node_b,
        before,
        uptime=10,
        requests=0,
        latency={"buckets": bounds, "counts": [0, 0, 0], "count": 0, "sum": 0.0},
    )
    sample(listener, node_b, now, uptime=30, requests=90,
           latency={"buckets": bounds, "counts": [0, 0, 90], "count": 90, "sum": 45.0})  # fmt: skip

    traffic = graphs.traffic(listener.id, now=now)
    latency = next(chart for chart in traffic.charts if chart.key == "latency")
    p50, p95, p99 = (series.values[-1] for series in latency.series)

    assert traffic.has_latency and not latency.empty
    # 100 requests: 10 under 10 ms, 90 between 100 ms and 1 s (rank 50 is the 40th of those 90).
    assert p50 == pytest.approx(0.1 + 0.9 * 40 / 90)
    assert p95 == pytest.approx(0.1 + 0.9 * 85 / 90)
    assert p99 == pytest.approx(0.1 + 0.9 * 89 / 90)
    assert all(series.values[-2] is None for series in latency.series)


def test_without_histograms_there_is_no_latency_data(listener, nodes):
    now = timezone.now()
    sample(listener, nodes[0], now - datetime.timedelta(seconds=STEP), uptime=1, requests=0)
    sample(listener, nodes[0], now, uptime=21, requests=20)

    latency = next(c for c in graphs.traffic(listener.id, now=now).charts if c.key == "latency")

    assert latency.empty.startswith("No latency data")
    assert all(value is None for series in latency.series for value in series.values)


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (None, None),
        ("histogram", None),
        ({"buckets": [0.1, 1], "counts": [1, 2], "count": 3, "sum": 0.5},
         {"buckets": [0.1, 1.0], "counts": [1, 2], "count": 3, "sum": 0.5}),
        # A trailing +Inf bound is the total.
        ({"buckets": [0.1, "+Inf"], "counts": [1, 4], "sum": 1},
         {"buckets": [0.1], "counts": [1], "count": 4, "sum": 1.0}),
        ({"buckets": [0.1, math.inf], "counts": [1, 4], "sum": 1},
         {"buckets": [0.1], "counts": [1], "count": 4, "sum": 1.0}),
        # Hostile or broken: bounds not increasing, counts going down, lengths that differ,
        # negative or boolean or huge counts, a total below the last bucket, too many buckets.
        ({"buckets": [1, 0.1], "counts": [1, 2], "count": 2}, None),
        ({"buckets": [0.1, 0.1], "counts": [1, 2], "count": 2}, None),
        ({"buckets": [0.1, 1], "counts": [3, 2], "count": 3}, None),
        ({"buckets": [0.1, 1], "counts": [1], "count": 1}, None),
        ({"buckets": [0.1], "counts": [-1], "count": 1}, None),
        ({"buckets": [0.1], "counts": [True], "count": 1}, None),
        ({"buckets": [0.1], "counts": [2**70], "count": 2**70}, None),
        ({"buckets": [0.1], "counts": [5], "count": 4}, None),
        ({"buckets": [0], "counts": [0], "count": 0}, None),
        ({"buckets": ["0.1"], "counts": [0], "count": 0}, None),
        ({"buckets": [0.1], "counts": [0], "count": 0, "sum": float("nan")}, None),
        ({"buckets": list(range(1, 200)), "counts": [0] * 199, "count": 0}, None),
        ({"buckets": [], "counts": [], "count": 0}, None),
    ],
)  # fmt: skip
def test_histograms_are_checked_before_they_are_stored(value, stored):
    assert sampling.histogram(value) == stored


def test_hostile_status_documents_store_nothing_wrong(listener, nodes, instance, server_group):
    node = nodes[0]
    stranger = make_listener(
        type(instance).objects.create(name="other"), server_group, port=9090, name="other"
    )
    now = timezone.now()
    good = {"counters": {"requests": 3, "responses": {"2xx": 3}}, "backends": []}
    documents = [
        {},
        {"uptime_seconds": "long", "listeners": {listener.id: good}},
        {"uptime_seconds": -5, "listeners": {listener.id: good}},
        {"uptime_seconds": 5, "listeners": ["not", "a", "dict"]},
        {"uptime_seconds": 5, "listeners": {listener.id: "junk"}},
        {"uptime_seconds": 5, "listeners": {listener.id: {"counters": {"requests": -1}}}},
        {"uptime_seconds": 5, "listeners": {listener.id: {"counters": {"requests": "7"}}}},
        {"uptime_seconds": 5, "listeners": {listener.id: {"counters": {"bytes_in": 2**64}}}},
        {"uptime_seconds": 5, "listeners": {listener.id: {"counters": "x"}}},
        # Listeners the console does not know, or of another instance.
        {"uptime_seconds": 5, "listeners": {"lsn-unknown": good, stranger.id: good}},
    ]
    for document in documents:
        assert sampling.samples_from_status(node, document, now, {(instance.id, listener.id)}) == []

    backends = [{"healthy": True}, {"healthy": "yes"}, "junk", {"healthy": False}]
    rows = sampling.samples_from_status(
        node,
        {"uptime_seconds": 5, "listeners": {listener.id: {**good, "backends": backends}}},
        now,
        {(instance.id, listener.id)},
    )
    assert [
        (row.requests, row.responses_2xx, row.servers, row.healthy_servers) for row in rows
    ] == [(3, 3, 3, 1)]


@pytest.mark.django_db(transaction=True)
def test_samples_of_a_listener_deleted_meanwhile_are_dropped(
    listener, nodes, instance, server_group
):
    # The status was read while the listener existed; it is deleted before the rows are saved.
    other = make_listener(instance, server_group, port=8081, name="kept")
    entry = {"counters": {"requests": 1}, "backends": []}
    document = {"uptime_seconds": 5, "listeners": {listener.id: entry, other.id: entry}}
    known = {(instance.id, listener.id), (instance.id, other.id)}
    rows = sampling.samples_from_status(nodes[0], document, timezone.now(), known)
    assert len(rows) == 2
    listener.delete()

    assert sampling.store(rows) == 1

    assert list(TrafficSample.objects.values_list("listener_id", flat=True)) == [other.id]


# Retention.


def test_old_samples_are_pruned_on_the_next_tick(listener, nodes, settings):
    settings.TRAFFIC_RETENTION = 3600
    node = nodes[0]
    # A mocked clock: the tick's time is given, the samples' times are set around it.
    now = timezone.now() + datetime.timedelta(days=3)
    kept = [
        sample(listener, node, now - datetime.timedelta(seconds=seconds), uptime=1, requests=0)
        for seconds in (0, 1800, 3599)
    ]
    for seconds in (3601, 7200, 86400):
        sample(listener, node, now - datetime.timedelta(seconds=seconds), uptime=1, requests=0)

    # The nodes do not answer (port 9): the tick stores nothing and still prunes.
    assert sampling.take_samples(now=now) == 0

    assert sorted(TrafficSample.objects.values_list("pk", flat=True)) == sorted(s.pk for s in kept)


def test_the_default_retention_is_a_day(listener, nodes):
    node = nodes[0]
    now = timezone.now()
    sample(listener, node, now - datetime.timedelta(hours=23, minutes=59), uptime=1, requests=0)
    sample(listener, node, now - datetime.timedelta(hours=24, minutes=1), uptime=1, requests=0)

    assert sampling.prune(now) == 1
    assert TrafficSample.objects.count() == 1
