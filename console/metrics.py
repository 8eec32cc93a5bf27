"""Listener metrics for the details page, from the nodes' last two /v1/status reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from console.models import DataplaneNode

COUNTERS = ("active_connections", "requests", "bytes_in", "bytes_out")
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


@dataclass
class ListenerMetrics:
    active_connections: int = 0
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    requests_per_second: float | None = None
    responses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))
    backends: list[dict] = field(default_factory=list)
    reported_at: object = None
    nodes_reporting: int = 0


def listener_metrics(listener_id: str, nodes: list[DataplaneNode]) -> ListenerMetrics:
    """Counters summed over the nodes; the rate is over each node's last two reports."""
    metrics = ListenerMetrics()
    rate, have_rate = 0.0, False
    for node in nodes:
        current = (node.status_report or {}).get("listeners", {}).get(listener_id)
        if not current:
            continue
        metrics.nodes_reporting += 1
        counters = current.get("counters", {})
        for name in COUNTERS:
            setattr(metrics, name, getattr(metrics, name) + int(counters.get(name, 0)))
        for name in CLASSES:
            metrics.responses[name] += int(counters.get("responses", {}).get(name, 0))
        for backend in current.get("backends", []):
            metrics.backends.append({**backend, "node": node.name})
        metrics.reported_at = max(filter(None, [metrics.reported_at, node.status_report_at]))
        previous = (node.previous_report or {}).get("listeners", {}).get(listener_id)
        if previous and node.previous_report_at and node.status_report_at:
            seconds = (node.status_report_at - node.previous_report_at).total_seconds()
            delta = int(counters.get("requests", 0)) - int(
                previous.get("counters", {}).get("requests", 0)
            )
            if seconds > 0 and delta >= 0:
                rate += delta / seconds
                have_rate = True
    metrics.requests_per_second = round(rate, 1) if have_rate else None
    return metrics
