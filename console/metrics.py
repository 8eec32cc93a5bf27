"""Listener metrics for the details page, from the nodes' last two /v1/status reports.

A node's status document is input from the network: anything in it may be missing, of another
type or out of range, and is read as absent rather than trusted (a page never fails on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from console.models import DataplaneNode

COUNTERS = ("active_connections", "requests", "bytes_in", "bytes_out")
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Above this a counter is not believed (a 64-bit counter never gets there in practice).
MAX_COUNT = 2**63 - 1


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


def listener_entry(report: object, listener_id: str) -> dict[str, Any] | None:
    """The listener's entry in a stored status document, or None when there is no usable one."""
    listeners = report.get("listeners") if isinstance(report, dict) else None
    entry = listeners.get(listener_id) if isinstance(listeners, dict) else None
    return entry if isinstance(entry, dict) and entry else None


def count(value: object) -> int:
    """A counter as a non-negative int; anything else (a string, a float, true) counts as 0."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        return 0
    return value


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def listener_metrics(listener_id: str, nodes: list[DataplaneNode]) -> ListenerMetrics:
    """Counters summed over the nodes; the rate is over each node's last two reports."""
    metrics = ListenerMetrics()
    rate, have_rate = 0.0, False
    reported = []
    for node in nodes:
        current = listener_entry(node.status_report, listener_id)
        if current is None:
            continue
        metrics.nodes_reporting += 1
        counters = _mapping(current.get("counters"))
        for name in COUNTERS:
            setattr(metrics, name, getattr(metrics, name) + count(counters.get(name)))
        responses = _mapping(counters.get("responses"))
        for name in CLASSES:
            metrics.responses[name] += count(responses.get(name))
        backends = current.get("backends")
        for backend in backends if isinstance(backends, list) else []:
            if isinstance(backend, dict):
                metrics.backends.append({**backend, "node": node.name})
        if node.status_report_at is not None:
            reported.append(node.status_report_at)
        previous = listener_entry(node.previous_report, listener_id)
        if previous and node.previous_report_at and node.status_report_at:
            seconds = (node.status_report_at - node.previous_report_at).total_seconds()
            delta = count(counters.get("requests")) - count(
                _mapping(previous.get("counters")).get("requests")
            )
            if seconds > 0 and delta >= 0:
                rate += delta / seconds
                have_rate = True
    metrics.reported_at = max(reported, default=None)
    metrics.requests_per_second = round(rate, 1) if have_rate else None
    return metrics
