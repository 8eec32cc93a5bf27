"""A listener's traffic over the last hour or day, from its TrafficSamples (console.sampling).

The time range is cut into equal steps. Rates come from the difference between two consecutive
samples of one node, spread over the steps the two samples span and added up over the nodes; a
counter that went down, or a node whose uptime went down, started again from zero (a restart), so
its new value is all increase, as Prometheus' rate() reads it. Two samples further apart than
``max_gap`` leave the steps between them empty: the node was not heard, and the graph shows a gap
rather than a guess.

Latency percentiles come from the request-duration histograms: the differences of the cumulative
bucket counts, added up over the nodes, interpolated linearly inside the bucket the rank falls in
(Prometheus' histogram_quantile). A rank beyond the largest finite bound reads as that bound.

Gauges (active connections, servers) are the last value a node reported in or before a step,
while it is not older than ``max_gap``: active connections add up over the nodes; healthy servers
are the fewest any node sees healthy, since every node checks on its own.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby, pairwise
from typing import Any

from django.utils import timezone

from console.models import TrafficSample
from console.sampling import interval

COUNTERS = (
    "requests",
    "responses_1xx",
    "responses_2xx",
    "responses_3xx",
    "responses_4xx",
    "responses_5xx",
    "bytes_in",
    "bytes_out",
    "total_connections",
)
GAUGES = ("active_connections", "servers", "healthy_servers")
QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True)
class Range:
    key: str
    label: str
    seconds: int
    # Seconds per point at the default sample interval; never below two sample intervals.
    step: int
    # How often the open page asks for new points.
    refresh: int

    def step_seconds(self) -> float:
        return max(float(self.step), 2 * interval())


RANGES = {
    "1h": Range("1h", "Last hour", 3600, 20, 10),
    "24h": Range("24h", "Last 24 hours", 86400, 300, 60),
}
DEFAULT_RANGE = "1h"


@dataclass
class Series:
    name: str
    values: list[float | None]

    def latest(self) -> float | None:
        return next((value for value in reversed(self.values) if value is not None), None)


@dataclass
class Chart:
    key: str
    title: str
    # How values read: "rate" (per second), "seconds", "bits" (per second), "count".
    unit: str
    series: list[Series]
    # Shown instead of the chart when there is nothing to draw, and why.
    empty: str = ""


@dataclass
class Traffic:
    """Everything the Monitoring tab draws for one listener and range."""

    range: Range
    times: list[datetime]
    charts: list[Chart] = field(default_factory=list)
    samples: int = 0
    has_latency: bool = False


def quantile(q: float, bounds: list[float], cumulative: list[float], total: float) -> float | None:
    """The q-quantile of a cumulative histogram (Prometheus' histogram_quantile); None when it
    holds no observations. ``bounds`` are the finite upper bounds; ``total`` counts all
    observations, the +Inf bucket included."""
    if total <= 0 or not bounds:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= rank:
            inside = count - lower_count
            if inside <= 0:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / inside
        lower_bound, lower_count = bound, count
    return bounds[-1]


@dataclass
class _Sample:
    at: float
    uptime: float
    counters: tuple[int, ...]
    gauges: tuple[int, ...]
    latency: dict[str, Any] | None


def _increase(previous: _Sample, current: _Sample) -> tuple[list[float], _Latency | None]:
    restarted = current.uptime < previous.uptime
    counters = [
        float(now - before if not restarted and now >= before else now)
        for before, now in zip(previous.counters, current.counters, strict=True)
    ]
    return counters, _latency_increase(previous.latency, current.latency, restarted)


@dataclass
class _Latency:
    bounds: tuple[float, ...]
    counts: list[float]
    total: float


def _latency_increase(
    previous: dict[str, Any] | None, current: dict[str, Any] | None, restarted: bool
) -> _Latency | None:
    if current is None:
        return None
    bounds = tuple(current["buckets"])
    counts = [float(count) for count in current["counts"]]
    total = float(current["count"])
    if restarted:
        return _Latency(bounds, counts, total)
    if previous is None or tuple(previous["buckets"]) != bounds:
        # No baseline to subtract (the histogram just appeared, or its buckets changed).
        return None
    before = previous["counts"]
    if total < previous["count"] or any(n < b for n, b in zip(counts, before, strict=True)):
        # The histogram started again (the listener was re-created on the node).
        return _Latency(bounds, counts, total)
    return _Latency(
        bounds,
        [n - b for n, b in zip(counts, before, strict=True)],
        total - previous["count"],
    )


# Rows fetched at once by primary key (SQLite caps the parameters of one query).
BATCH = 500


def _load(
    listener_id: str, since: datetime, until: datetime, *, start: float, step: float, gap: float
) -> dict[int, list[_Sample]]:
    """The samples the graph needs, by node, oldest first.

    Counters are cumulative, so the last sample of each step is enough for every rate in it. A
    first pass over the light columns keeps those, plus the sample before a reset and the samples
    on both sides of a silence (so neither is read across); only they are read in full. A day of
    10 s samples is read as 288 per node instead of 8640.
    """
    light = (
        TrafficSample.objects.filter(listener_id=listener_id, at__gte=since, at__lte=until)
        .order_by("node_id", "at")
        .values_list("pk", "at", "uptime", "requests", "total_connections", "node_id")
    )
    wanted: list[int] = []
    for _, group in groupby(light, key=lambda row: row[-1]):
        rows = [(pk, at.timestamp(), uptime, a, b) for pk, at, uptime, a, b, _ in group]
        for index, (pk, at, uptime, requests, connections) in enumerate(rows):
            last = index + 1 == len(rows)
            after = rows[index + 1] if not last else None
            before = rows[index - 1] if index else None
            if (
                after is None
                or (after[1] - start) // step != (at - start) // step
                or after[2] < uptime
                or after[3] < requests
                or after[4] < connections
                or after[1] - at > gap
                or before is None
                or at - before[1] > gap
            ):
                wanted.append(pk)
    fields = ("node_id", "at", "uptime", *COUNTERS, *GAUGES, "latency")
    full = []
    for offset in range(0, len(wanted), BATCH):
        full.extend(
            TrafficSample.objects.filter(pk__in=wanted[offset : offset + BATCH]).values_list(
                *fields
            )
        )
    full.sort(key=lambda row: (row[0], row[1]))
    nodes: dict[int, list[_Sample]] = {}
    for node_id, group in groupby(full, key=lambda row: row[0]):
        nodes[node_id] = [
            _Sample(
                row[1].timestamp(),
                row[2],
                row[3 : 3 + len(COUNTERS)],
                row[3 + len(COUNTERS) : 3 + len(COUNTERS) + len(GAUGES)],
                row[-1],
            )
            for row in group
        ]
    return nodes


def traffic(
    listener_id: str, range_key: str = DEFAULT_RANGE, *, now: datetime | None = None, http=True
) -> Traffic:
    """The Monitoring tab's series for one listener over one range."""
    span = RANGES.get(range_key) or RANGES[DEFAULT_RANGE]
    now = now or timezone.now()
    step = span.step_seconds()
    points = math.ceil(span.seconds / step)
    end = now.timestamp()
    start = end - points * step
    max_gap = max(3 * interval(), 2 * step)
    nodes = _load(
        listener_id,
        datetime.fromtimestamp(start - max_gap, tz=now.tzinfo),
        now,
        start=start,
        step=step,
        gap=max_gap,
    )

    # Per step: increases and the seconds they cover, per node, then rates added up.
    rates: list[list[float] | None] = [None] * points
    latency: list[dict[tuple[float, ...], _Latency]] = [{} for _ in range(points)]
    active: list[float | None] = [None] * points
    servers: list[float | None] = [None] * points
    healthy: list[float | None] = [None] * points
    ends = [start + (index + 1) * step for index in range(points)]

    for samples in nodes.values():
        increases = [[0.0] * len(COUNTERS) for _ in range(points)]
        covered = [0.0] * points
        for previous, current in pairwise(samples):
            seconds = current.at - previous.at
            if not 0 < seconds <= max_gap or current.at <= start:
                continue
            counters, histogram = _increase(previous, current)
            first = max(0, int((max(previous.at, start) - start) // step))
            last = min(points - 1, int((current.at - start) // step))
            for index in range(first, last + 1):
                low = max(previous.at, start + index * step)
                high = min(current.at, ends[index])
                if high <= low:
                    continue
                share = (high - low) / seconds
                covered[index] += high - low
                row = increases[index]
                for position, amount in enumerate(counters):
                    row[position] += amount * share
                if histogram is not None:
                    _add_latency(latency[index], histogram, share)
        for index in range(points):
            if covered[index] <= 0:
                continue
            node_rates = [amount / covered[index] for amount in increases[index]]
            total = rates[index]
            rates[index] = (
                node_rates
                if total is None
                else [a + b for a, b in zip(total, node_rates, strict=True)]
            )
        times = [sample.at for sample in samples]
        for index, moment in enumerate(ends):
            position = bisect.bisect_right(times, moment) - 1
            if position < 0 or moment - times[position] > max_gap:
                continue
            node_active, node_servers, node_healthy = samples[position].gauges
            active[index] = (active[index] or 0) + node_active
            servers[index] = max(servers[index] or 0, node_servers)
            healthy[index] = (
                node_healthy if healthy[index] is None else min(healthy[index], node_healthy)
            )

    def rate_of(name: str, scale: float = 1.0) -> list[float | None]:
        position = COUNTERS.index(name)
        return [None if row is None else row[position] * scale for row in rates]

    result = Traffic(
        span,
        [datetime.fromtimestamp(moment, tz=now.tzinfo) for moment in ends],
        samples=sum(len(samples) for samples in nodes.values()),
    )
    # A TCP or UDP listener counts the connections (sessions) it proxied as its requests.
    what = "Requests" if http else "Connections"
    result.charts.append(
        Chart("requests", f"{what} per second", "rate", [Series(what, rate_of("requests"))])
    )
    if http:
        result.charts.append(
            Chart(
                "responses",
                "Responses by class per second",
                "rate",
                [
                    Series(name, rate_of(f"responses_{name}"))
                    for name in ("2xx", "3xx", "4xx", "5xx", "1xx")
                ],
            )
        )
        result.has_latency = any(latency)
        percentiles = _percentiles(latency)
        result.charts.append(
            Chart(
                "latency",
                "Request duration percentiles",
                "seconds",
                [Series(f"p{round(q * 100)}", percentiles[q]) for q in QUANTILES],
                empty=""
                if result.has_latency
                else "No latency data: the nodes report no request durations for this listener.",
            )
        )
    result.charts.append(
        Chart("connections", "Active connections", "count", [Series("Active", active)])
    )
    result.charts.append(
        Chart(
            "bandwidth",
            "Bandwidth",
            "bits",
            [Series("In", rate_of("bytes_in", 8.0)), Series("Out", rate_of("bytes_out", 8.0))],
        )
    )
    result.charts.append(
        Chart(
            "servers",
            "Healthy backend servers",
            "count",
            [Series("Healthy", healthy), Series("Servers", servers)],
        )
    )
    return result


def _add_latency(into: dict[tuple[float, ...], _Latency], part: _Latency, share: float) -> None:
    known = into.get(part.bounds)
    if known is None:
        into[part.bounds] = _Latency(
            part.bounds, [count * share for count in part.counts], part.total * share
        )
        return
    for position, count in enumerate(part.counts):
        known.counts[position] += count * share
    known.total += part.total * share


def _percentiles(
    steps: list[dict[tuple[float, ...], _Latency]],
) -> dict[float, list[float | None]]:
    values: dict[float, list[float | None]] = defaultdict(list)
    for histograms in steps:
        # Nodes on different bucket layouts cannot be added up: the layout with most requests.
        histogram = max(histograms.values(), key=lambda item: item.total, default=None)
        for q in QUANTILES:
            values[q].append(
                None
                if histogram is None
                else quantile(q, list(histogram.bounds), histogram.counts, histogram.total)
            )
    return values
