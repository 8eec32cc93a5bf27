"""The console's own Prometheus metrics, served at /metrics.

gunicorn runs several worker processes and the pushes happen in Celery, so nothing is counted in
a process: every scrape reads the database (a custom collector), and whichever worker answers
says the same. (console.metrics is another thing: the details page's sums of node counters.)

A push attempt's history is kept per node for the last pipeline.HISTORY_PER_NODE attempts, so
what it holds is a window, not a running total: attempts by result are gauges over that window,
and push latency is a gauge histogram of it (buckets that can go down; use histogram_quantile
on them without rate()). The running totals (console.push_counters) are real counters:
ferry_console_pushes_total and the histogram ferry_console_push_latency_seconds, by result.

Prometheus authenticates with a personal API token (any role: the metrics only read), sent as
`Authorization: Bearer <token>`; a signed-in browser session also works. Nothing is anonymous.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from django.contrib.auth.decorators import login_not_required
from django.db.models import Count, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from console import tokens
from console.models import DataplaneNode, PushAttempt
from console.status import observe

# Upper bounds in seconds; a push to a node on the same network takes a few milliseconds.
PUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_NODE = ["instance", "node"]


class ConsoleCollector:
    """Push, reconcile and listener-status metrics read from the database on each scrape."""

    def collect(self) -> Iterator[Metric]:
        nodes = list(DataplaneNode.objects.select_related("instance").order_by("pk"))
        yield from self._pushes(nodes)
        yield from self._push_totals(nodes)
        yield from self._reconcile(nodes)
        yield self._listeners(nodes)

    def _pushes(self, nodes: list[DataplaneNode]) -> Iterator[Metric]:
        attempts = GaugeMetricFamily(
            "ferry_console_push_attempts",
            "Push attempts by result (ack, nack, unreachable) in the node's recorded history.",
            labels=[*_NODE, "result"],
        )
        latency = GaugeHistogramMetricFamily(
            "ferry_console_push_duration_seconds",
            "How long pushes in the node's recorded history took, by result.",
            labels=[*_NODE, "result"],
        )
        buckets = {
            f"le_{index}": Count("pk", filter=Q(duration_ms__lte=bound * 1000))
            for index, bound in enumerate(PUSH_BUCKETS)
        }
        rows = (
            PushAttempt.objects.values("node_id", "result")
            .annotate(count=Count("pk"), total_ms=Sum("duration_ms"), **buckets)
            .order_by()
        )
        by_node: dict[int, dict[str, dict]] = defaultdict(dict)
        for row in rows:
            by_node[row["node_id"]][row["result"]] = row
        for node in nodes:
            for result in PushAttempt.Result.values:
                row = by_node[node.pk].get(result)
                labels = [node.instance_id, node.name, result]
                attempts.add_metric(labels, row["count"] if row else 0)
                if row is None:
                    continue
                cumulative = [
                    (str(bound), row[f"le_{index}"]) for index, bound in enumerate(PUSH_BUCKETS)
                ]
                latency.add_metric(
                    labels,
                    [*cumulative, ("+Inf", row["count"])],
                    gsum_value=(row["total_ms"] or 0) / 1000,
                )
        yield attempts
        yield latency

    def _push_totals(self, nodes: list[DataplaneNode]) -> Iterator[Metric]:
        from console import push_counters

        pushes = CounterMetricFamily(
            "ferry_console_pushes",
            "Pushes to the node by result (ack, nack, unreachable) since it was added.",
            labels=[*_NODE, "result"],
        )
        latency = HistogramMetricFamily(
            "ferry_console_push_latency_seconds",
            "How long pushes to the node took, by result, since it was added.",
            labels=[*_NODE, "result"],
        )
        totals = push_counters.totals()
        for node in nodes:
            for result in PushAttempt.Result.values:
                tally = totals.get(node.pk, {}).get(result) or push_counters.Totals()
                labels = [node.instance_id, node.name, result]
                pushes.add_metric(labels, tally.count)
                latency.add_metric(labels, tally.cumulative(), sum_value=tally.seconds)
        yield pushes
        yield latency

    def _reconcile(self, nodes: list[DataplaneNode]) -> Iterator[Metric]:
        now = timezone.now()
        reachable = GaugeMetricFamily(
            "ferry_console_node_reachable",
            "1 when the node answered the pipeline's last call, else 0.",
            labels=_NODE,
        )
        age = GaugeMetricFamily(
            "ferry_console_node_status_age_seconds",
            "Seconds since the node's status was last read successfully (absent: never).",
            labels=_NODE,
        )
        lag = GaugeMetricFamily(
            "ferry_console_node_generation_lag",
            "Generations the node's applied configuration is behind its instance's.",
            labels=_NODE,
        )
        for node in nodes:
            labels = [node.instance_id, node.name]
            reachable.add_metric(labels, 1 if node.reachable else 0)
            if node.status_report_at is not None:
                age.add_metric(labels, (now - node.status_report_at).total_seconds())
            applied = node.applied_generation or 0
            lag.add_metric(labels, max(0, node.instance.generation - applied))
        yield from (reachable, age, lag)

    def _listeners(self, nodes: list[DataplaneNode]) -> Metric:
        from listeners.models import Listener

        family = GaugeMetricFamily(
            "ferry_console_listeners",
            "Listeners by the status the console shows (derived from the nodes' reports).",
            labels=["instance", "status"],
        )
        nodes_of: dict[str, list[DataplaneNode]] = defaultdict(list)
        for node in nodes:
            nodes_of[node.instance_id].append(node)
        counts: dict[str, dict[str, int]] = defaultdict(
            lambda: dict.fromkeys(Listener.Status.values, 0)
        )
        for listener in Listener.objects.select_related("instance").order_by("pk"):
            observed = observe(listener, nodes_of[listener.instance_id])
            counts[listener.instance_id][observed.status] += 1
        for instance_id, by_status in counts.items():
            for status, count in by_status.items():
                family.add_metric([instance_id, status], count)
        return family


def _scraper_allowed(request: HttpRequest) -> bool:
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, secret = header.partition(" ")
        return scheme.lower() == "bearer" and tokens.authenticate(secret.strip()) is not None
    return request.user.is_authenticated


@login_not_required
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """The exposition, for a scraper with an API token or a signed-in user."""
    if not _scraper_allowed(request):
        response = HttpResponse(
            "Send a personal API token as Authorization: Bearer <token>.\n",
            status=401,
            content_type="text/plain; charset=utf-8",
        )
        response["WWW-Authenticate"] = 'Bearer realm="ferry"'
        return response
    return HttpResponse(generate_latest(ConsoleCollector()), content_type=CONTENT_TYPE_LATEST)  # type: ignore[arg-type]
