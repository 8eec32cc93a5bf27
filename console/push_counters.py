"""Running totals of pushes per node, result and latency bucket, for the console's /metrics.

The pipeline adds each push here as it records the attempt (console.pipeline); the totals only
grow, unlike the attempt history, which keeps a node's last attempts only. Every process writes
the same rows with atomic increments, so gunicorn workers and Celery workers count together.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import F

from console.models import PushCounter
from console.prometheus import PUSH_BUCKETS


def record(node_id: int, result: str, seconds: float) -> None:
    """Count one push to a node: its result and how long it took."""
    # The smallest bound the push fits under (Prometheus buckets are "less or equal").
    bucket = bisect.bisect_left(PUSH_BUCKETS, seconds)
    with transaction.atomic():
        counter, _ = PushCounter.objects.get_or_create(
            node_id=node_id, result=result, bucket=bucket
        )
        PushCounter.objects.filter(pk=counter.pk).update(
            count=F("count") + 1, seconds=F("seconds") + seconds
        )


@dataclass
class Totals:
    """One node's pushes with one result: how many, their seconds, and a count per bucket."""

    count: int = 0
    seconds: float = 0.0
    # Index into PUSH_BUCKETS (len(PUSH_BUCKETS): slower than the largest bound) -> pushes.
    buckets: dict[int, int] = field(default_factory=dict)

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus histogram buckets: (upper bound, pushes at or under it), +Inf last."""
        running, rows = 0, []
        for index, bound in enumerate(PUSH_BUCKETS):
            running += self.buckets.get(index, 0)
            rows.append((str(bound), running))
        rows.append(("+Inf", self.count))
        return rows


def totals() -> dict[int, dict[str, Totals]]:
    """Every node's totals by result: {node id: {result: Totals}}."""
    by_node: dict[int, dict[str, Totals]] = defaultdict(dict)
    for row in PushCounter.objects.order_by().values(
        "node_id", "result", "bucket", "count", "seconds"
    ):
        tally = by_node[row["node_id"]].setdefault(row["result"], Totals())
        tally.count += row["count"]
        tally.seconds += row["seconds"]
        tally.buckets[row["bucket"]] = tally.buckets.get(row["bucket"], 0) + row["count"]
    return by_node
