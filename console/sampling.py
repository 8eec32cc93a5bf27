"""Traffic samples for the console's graphs: every node's counters, per listener, every few seconds.

Celery beat runs ``sample_traffic`` every TRAFFIC_SAMPLE_INTERVAL seconds (default 10). It reads
each node's GET /v1/status and stores one TrafficSample per node and listener: the counters as the
node reports them (cumulative), the gauges at that moment, and the request-duration histogram when
the node reports one. Rates and percentiles are worked out when a graph is drawn (console.graphs),
from the differences between samples, so a lost tick costs nothing and a node restart is seen
there. The same task deletes samples older than TRAFFIC_RETENTION seconds (default 24 hours), so
the table stays bounded without another server.

A status document is a network input: a value that is not a sane count is dropped, and so is a
histogram whose buckets do not make sense, rather than stored.
"""

from __future__ import annotations

import itertools
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from console import nodeclient
from console.models import DataplaneNode, TrafficSample

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 10.0
DEFAULT_RETENTION = 24 * 3600.0
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Largest value a counter may have: PositiveBigIntegerField's range.
MAX_COUNT = 2**63 - 1
# Prometheus clients use about a dozen buckets; more than this is not a histogram we store.
MAX_BUCKETS = 64


def interval() -> float:
    """Seconds between two samples (setting TRAFFIC_SAMPLE_INTERVAL)."""
    return float(getattr(settings, "TRAFFIC_SAMPLE_INTERVAL", DEFAULT_INTERVAL))


def retention() -> float:
    """Seconds a sample is kept (setting TRAFFIC_RETENTION)."""
    return float(getattr(settings, "TRAFFIC_RETENTION", DEFAULT_RETENTION))


@shared_task(ignore_result=True)
def sample_traffic() -> int:
    """Beat's task: one sample of every node's listeners, then pruning. Returns rows stored."""
    return take_samples()


def take_samples(now: datetime | None = None) -> int:
    """Read every node's status and store its listeners' counters, all stamped ``now`` (one tick,
    so the samples of several nodes line up); then delete what is older than the retention."""
    from listeners.models import Listener

    now = now or timezone.now()
    nodes = list(DataplaneNode.objects.all())
    known = set(Listener.objects.values_list("instance_id", "pk"))
    rows: list[TrafficSample] = []
    for node, answer in _statuses(nodes):
        if not answer.ok:
            continue
        rows.extend(samples_from_status(node, answer.payload, now, known))
    stored = store(rows)
    prune(now)
    return stored


def store(rows: list[TrafficSample]) -> int:
    """Save a tick's samples; those of a listener or node removed since the status was read are
    dropped. Returns how many were saved."""
    from listeners.models import Listener

    try:
        with transaction.atomic():
            TrafficSample.objects.bulk_create(rows)
        return len(rows)
    except IntegrityError:
        listeners = set(
            Listener.objects.filter(pk__in={row.listener_id for row in rows}).values_list(
                "pk", flat=True
            )
        )
        nodes = set(
            DataplaneNode.objects.filter(pk__in={row.node_id for row in rows}).values_list(
                "pk", flat=True
            )
        )
        rows = [row for row in rows if row.listener_id in listeners and row.node_id in nodes]
        TrafficSample.objects.bulk_create(rows)
        return len(rows)


def prune(now: datetime) -> int:
    """Delete the samples older than the retention; returns how many."""
    cutoff = now - timedelta(seconds=retention())
    deleted, _ = TrafficSample.objects.filter(at__lt=cutoff).delete()
    return deleted


def _statuses(nodes: list[DataplaneNode]) -> list[tuple[DataplaneNode, nodeclient.NodeAnswer]]:
    # HTTP only in the threads; the rows are written afterwards from this thread.
    if not nodes:
        return []
    jobs = [(node, node.control_url, node.token) for node in nodes]
    with ThreadPoolExecutor(max_workers=min(16, len(jobs))) as pool:
        answers = pool.map(lambda job: nodeclient.get_status(job[1], job[2]), jobs)
        return [(job[0], answer) for job, answer in zip(jobs, answers, strict=True)]


def samples_from_status(
    node: DataplaneNode,
    status: dict[str, Any],
    now: datetime,
    known: set[tuple[str, str]],
) -> list[TrafficSample]:
    """One unsaved TrafficSample per listener of the node's instance the status reports."""
    uptime = _number(status.get("uptime_seconds"))
    listeners = status.get("listeners")
    if uptime is None or not isinstance(listeners, dict):
        return []
    rows = []
    for listener_id, entry in listeners.items():
        if (node.instance_id, listener_id) not in known or not isinstance(entry, dict):
            continue
        row = _sample(entry)
        if row is None:
            log.warning(
                "node %s: unusable counters for listener %s",
                node.name,
                listener_id,
                extra={"node": node.name, "listener_id": listener_id},
            )
            continue
        row.listener_id, row.node_id, row.at, row.uptime = listener_id, node.pk, now, uptime
        rows.append(row)
    return rows


def _sample(entry: dict[str, Any]) -> TrafficSample | None:
    counters = entry.get("counters")
    if not isinstance(counters, dict):
        return None
    responses = counters.get("responses")
    responses = responses if isinstance(responses, dict) else {}
    values = {
        "requests": _count(counters.get("requests", 0)),
        "bytes_in": _count(counters.get("bytes_in", 0)),
        "bytes_out": _count(counters.get("bytes_out", 0)),
        "total_connections": _count(counters.get("total_connections", 0)),
        "active_connections": _count(counters.get("active_connections", 0)),
        **{f"responses_{name}": _count(responses.get(name, 0)) for name in CLASSES},
    }
    if any(value is None for value in values.values()):
        return None
    backends = entry.get("backends")
    backends = [b for b in backends if isinstance(b, dict)] if isinstance(backends, list) else []
    return TrafficSample(
        **values,
        servers=len(backends),
        healthy_servers=sum(1 for backend in backends if backend.get("healthy") is True),
        latency=histogram(entry.get("request_duration")),
    )


def histogram(value: object) -> dict[str, Any] | None:
    """A request-duration histogram as stored: finite upper bounds, increasing; cumulative counts,
    never decreasing; the total count (which includes the +Inf bucket) and the sum. None when the
    node sent none or one that does not make sense."""
    if not isinstance(value, dict):
        return None
    bounds, counts = value.get("buckets"), value.get("counts")
    if not isinstance(bounds, list) or not isinstance(counts, list):
        return None
    if not 0 < len(bounds) <= MAX_BUCKETS + 1 or len(bounds) != len(counts):
        return None
    pairs = []
    for bound, count in zip(bounds, counts, strict=True):
        upper = _bound(bound)
        number = _count(count)
        if upper is None or number is None:
            return None
        pairs.append((upper, number))
    total = _count(value.get("count", pairs[-1][1]))
    seconds = _number(value.get("sum", 0.0))
    if total is None or seconds is None:
        return None
    if math.isinf(pairs[-1][0]):
        # The +Inf bucket is the total; only finite bounds are kept.
        total = max(total, pairs.pop()[1])
    if not pairs or len(pairs) > MAX_BUCKETS:
        return None
    for (bound, count), (next_bound, next_count) in itertools.pairwise(pairs):
        if next_bound <= bound or next_count < count:
            return None
    if pairs[0][0] <= 0 or total < pairs[-1][1]:
        return None
    return {
        "buckets": [bound for bound, _ in pairs],
        "counts": [count for _, count in pairs],
        "count": total,
        "sum": seconds,
    }


def _count(value: object) -> int | None:
    # bool is an int in Python; a JSON true is not a count.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        return None
    return value


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def _bound(value: object) -> float | None:
    if value in ("+Inf", "Inf", "inf") or (isinstance(value, float) and value == math.inf):
        return math.inf
    number = _number(value)
    return number if number is not None and number > 0 else None
