"""The node's Prometheus metrics, served by the control API as `GET /metrics`.

Nothing here runs on the request path: a scrape renders the same status document `GET /v1/status`
answers (in a supervisor, the workers' counters added up), so the proxy keeps bumping its plain
integers (dataplane.stats) and pays nothing more for being scraped. prometheus_client's metric
families and writer keep the text format exact (escaping, `_total` suffixes, HELP and TYPE lines).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from dataplane.config import LAYER7_PROTOCOLS, SERVER_STATES
from dataplane.health import OK, REASON_CODES

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()

_LISTENER = ["listener", "protocol", "port"]
_SERVER = ["listener", "server_group", "server", "address"]
_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

# The last check's code as the label: the node's own reason codes (dataplane.health), which are
# few, and two for a server no check ran on. Free text would grow a series per OS message.
DISABLED = "disabled"
UNCHECKED = "unchecked"
# The text dataplane.node writes for a group without a health check.
_DISABLED_REASON = "health check disabled"


def reason_code(backend: Mapping[str, Any]) -> str:
    """The bounded code of a server entry's last check ("other" for a code not known here)."""
    code = backend.get("reason_code")
    if code is None:
        return DISABLED if backend.get("reason") == _DISABLED_REASON else UNCHECKED
    return code if code in REASON_CODES else "other"


@dataclass
class ControlCounters:
    """What the control API itself counts: refused snapshots and the last apply's duration."""

    # Keyed by reason: "invalid" (422, the snapshot does not validate) or "generation" (409).
    rejections: dict[str, int] = field(default_factory=lambda: {"invalid": 0, "generation": 0})
    # Wall time of the last apply that changed the generation; None before the first.
    apply_seconds: float | None = None

    def copy(self) -> ControlCounters:
        """A copy to render from while the loop goes on counting."""
        return ControlCounters(dict(self.rejections), self.apply_seconds)


class StatusCollector:
    """Metric families from one status document; a prometheus_client collector."""

    def __init__(self, status: Mapping[str, Any], counters: ControlCounters) -> None:
        self.status = status
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        yield from self._node()
        yield from self._listeners()
        yield from self._servers()

    def _node(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "ferry_node_generation",
            "Generation of the snapshot the node runs.",
            value=int(self.status.get("generation") or 0),
        )
        if self.counters.apply_seconds is not None:
            yield GaugeMetricFamily(
                "ferry_node_apply_duration_seconds",
                "How long applying the last new snapshot took.",
                value=self.counters.apply_seconds,
            )
        rejections = CounterMetricFamily(
            "ferry_node_config_rejections",
            "Snapshots refused: invalid (422) or an old or conflicting generation (409).",
            labels=["reason"],
        )
        for reason, count in self.counters.rejections.items():
            rejections.add_metric([reason], count)
        yield rejections
        access_log = self.status.get("access_log") or {}
        dropped = CounterMetricFamily(
            "ferry_node_access_log_dropped_lines",
            "Access-log lines not written: the writer fell behind (dropped) or a write failed.",
            labels=["reason"],
        )
        dropped.add_metric(["dropped"], access_log.get("dropped", 0))
        dropped.add_metric(["failed"], access_log.get("failed", 0))
        yield dropped

    def _listeners(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "ferry_listener_running", "1 while the listener serves, else 0.", labels=_LISTENER
        )
        responses = CounterMetricFamily(
            "ferry_listener_responses",
            "HTTP responses sent to clients, by status class.",
            labels=[*_LISTENER, "status_class"],
        )
        requests = CounterMetricFamily(
            "ferry_listener_requests",
            "HTTP requests received; for TCP, connections proxied; for UDP, datagrams received.",
            labels=_LISTENER,
        )
        received = CounterMetricFamily(
            "ferry_listener_received_bytes", "Bytes received from clients.", labels=_LISTENER
        )
        sent = CounterMetricFamily(
            "ferry_listener_sent_bytes", "Bytes sent to clients.", labels=_LISTENER
        )
        active = GaugeMetricFamily(
            "ferry_listener_active_connections", "Client connections open now.", labels=_LISTENER
        )
        total = CounterMetricFamily(
            "ferry_listener_connections", "Client connections accepted.", labels=_LISTENER
        )
        denied = CounterMetricFamily(
            "ferry_listener_denied_connections",
            "Client connections refused by the access control list.",
            labels=_LISTENER,
        )
        throttled = CounterMetricFamily(
            "ferry_listener_throttled_requests",
            "HTTP requests answered 429 by a QPS per client IP limit (listener-wide or a rule's).",
            labels=_LISTENER,
        )
        rule_throttled = CounterMetricFamily(
            "ferry_rule_throttled_requests",
            "HTTP requests answered 429 by a forwarding rule's QPS per client IP limit.",
            labels=[*_LISTENER, "rule"],
        )
        retries = CounterMetricFamily(
            "ferry_listener_retries",
            "HTTP requests sent again to another server after a connect failure or a 502/503.",
            labels=_LISTENER,
        )
        retries_refused = CounterMetricFamily(
            "ferry_listener_retries_refused",
            "Retries not made because the listener's retry budget was spent.",
            labels=_LISTENER,
        )
        handshakes = CounterMetricFamily(
            "ferry_listener_tls_handshakes",
            "TLS handshakes completed (HTTPS and TCP SSL listeners).",
            labels=_LISTENER,
        )
        handshake_failures = CounterMetricFamily(
            "ferry_listener_tls_handshake_failures",
            "TLS handshakes refused, by OpenSSL's reason code.",
            labels=[*_LISTENER, "reason"],
        )
        # Seed 000 bandwidth on UDP: a datagram for the client while the listener's bucket is
        # in debt is dropped (dataplane.bandwidth.TokenBucket.admit), and counted by the
        # listener. Stream listeners pause their source instead and drop nothing.
        bandwidth_dropped = CounterMetricFamily(
            "ferry_listener_bandwidth_dropped_datagrams",
            "UDP datagrams to clients dropped because the listener's bandwidth limit was spent.",
            labels=_LISTENER,
        )
        # Stream listeners (HTTP, HTTPS, TCP, TCP SSL, QUIC) pause the source of the bytes while
        # the bucket is in debt (dataplane.bandwidth.ThrottledWriter): how often, and for how long
        # (summed over connections). Only listeners with a bucket have these series; the
        # listeners without a limit of their own share the instance's bucket and its counts.
        bandwidth_limit = GaugeMetricFamily(
            "ferry_listener_bandwidth_limit_bytes_per_second",
            "The listener's bandwidth limit in bytes per second (the instance's remainder for "
            "listeners without a limit of their own).",
            labels=_LISTENER,
        )
        bandwidth_pauses = CounterMetricFamily(
            "ferry_listener_bandwidth_throttled",
            "Times a connection was paused because the listener's bandwidth limit was spent.",
            labels=_LISTENER,
        )
        bandwidth_seconds = CounterMetricFamily(
            "ferry_listener_bandwidth_throttled_seconds",
            "Seconds connections spent paused by the listener's bandwidth limit, summed over "
            "connections.",
            labels=_LISTENER,
        )
        durations = []
        for listener_id, entry in self.status.get("listeners", {}).items():
            labels = _listener_labels(listener_id, entry)
            counters = entry.get("counters", {})
            handshakes.add_metric(labels, counters.get("tls_handshakes", 0))
            for reason, count in sorted(counters.get("tls_handshake_failures", {}).items()):
                handshake_failures.add_metric([*labels, reason], count)
            durations.append((labels, counters))
            running.add_metric(labels, 1 if entry.get("status") == "running" else 0)
            classes = counters.get("responses", {})
            for name in _CLASSES:
                responses.add_metric([*labels, name], classes.get(name, 0))
            requests.add_metric(labels, counters.get("requests", 0))
            received.add_metric(labels, counters.get("bytes_in", 0))
            sent.add_metric(labels, counters.get("bytes_out", 0))
            active.add_metric(labels, counters.get("active_connections", 0))
            total.add_metric(labels, counters.get("total_connections", 0))
            denied.add_metric(labels, counters.get("denied_connections", 0))
            if entry.get("protocol") in LAYER7_PROTOCOLS:
                retries.add_metric(labels, counters.get("retries", 0))
                retries_refused.add_metric(labels, counters.get("retries_refused", 0))
            if "throttled_requests" in counters and entry.get("protocol") in LAYER7_PROTOCOLS:
                throttled.add_metric(labels, counters["throttled_requests"])
            for rule_id, count in sorted(counters.get("throttled_by_rule", {}).items()):
                rule_throttled.add_metric([*labels, rule_id], count)
            udp = entry.get("udp")
            if isinstance(udp, Mapping):
                bandwidth_dropped.add_metric(labels, udp.get("throttled", 0))
            bandwidth = entry.get("bandwidth")
            if isinstance(bandwidth, Mapping):
                bandwidth_limit.add_metric(labels, bandwidth.get("limit_bytes_per_second", 0))
                bandwidth_pauses.add_metric(labels, bandwidth.get("pauses", 0))
                bandwidth_seconds.add_metric(labels, bandwidth.get("paused_seconds", 0))
        yield from (running, responses, requests, received, sent, active, total, denied)
        yield from (throttled, rule_throttled, bandwidth_dropped)
        yield from (bandwidth_limit, bandwidth_pauses, bandwidth_seconds)
        yield from (retries, retries_refused)
        yield from (handshakes, handshake_failures)
        yield from _histograms(
            "ferry_listener_request_duration_seconds",
            "From a request's first byte to the end of its response (HTTP listeners).",
            "request_duration",
            durations,
        )
        yield from _histograms(
            "ferry_listener_backend_response_time_seconds",
            "From choosing a server to the first byte of its response head (HTTP listeners).",
            "backend_response_time",
            durations,
        )

    def _servers(self) -> Iterator[Metric]:
        healthy = GaugeMetricFamily(
            "ferry_server_healthy",
            "1 while the server takes traffic by its health checks, else 0.",
            labels=_SERVER,
        )
        check = GaugeMetricFamily(
            "ferry_server_last_check_info",
            "The last health check: result (pass, fail or none) and reason code; always 1.",
            labels=[*_SERVER, "result", "reason"],
        )
        active = GaugeMetricFamily(
            "ferry_server_active_connections",
            "Connections open to the server now.",
            labels=_SERVER,
        )
        server_requests = CounterMetricFamily(
            "ferry_server_requests",
            "Requests (HTTP), connections (TCP) or sessions (UDP) sent to the server.",
            labels=_SERVER,
        )
        connect_failures = CounterMetricFamily(
            "ferry_server_connect_failures",
            "Connections to the server that failed to open.",
            labels=_SERVER,
        )
        state = GaugeMetricFamily(
            "ferry_server_state",
            "1 for the server's state (enabled, draining or maintenance), 0 for the others.",
            labels=[*_SERVER, "state"],
        )
        drain_left = GaugeMetricFamily(
            "ferry_server_drain_seconds_left",
            "A draining server: seconds until what remains on it is closed.",
            labels=_SERVER,
        )
        ejected = GaugeMetricFamily(
            "ferry_server_ejected",
            "1 while passive health checks keep the server out of rotation, else 0.",
            labels=_SERVER,
        )
        ejections = CounterMetricFamily(
            "ferry_server_ejections",
            "Times passive health checks ejected the server (consecutive 5xx or connect failures).",
            labels=_SERVER,
        )
        for listener_id, entry in self.status.get("listeners", {}).items():
            group = entry.get("server_group_id") or ""
            for backend in entry.get("backends", []):
                labels = [
                    listener_id,
                    group,
                    backend["id"],
                    f"{backend['address']}:{backend['port']}",
                ]
                code = reason_code(backend)
                result = "pass" if code == OK else "none" if code in _NOT_RUN else "fail"
                healthy.add_metric(labels, 1 if backend.get("healthy") else 0)
                check.add_metric([*labels, result, code], 1)
                active.add_metric(labels, backend.get("active", 0))
                server_requests.add_metric(labels, backend.get("requests", 0))
                connect_failures.add_metric(labels, backend.get("connect_failures", 0))
                current = backend.get("state", "enabled")
                for name in SERVER_STATES:
                    state.add_metric([*labels, name], 1 if name == current else 0)
                if backend.get("drain_seconds_left") is not None:
                    drain_left.add_metric(labels, backend["drain_seconds_left"])
                ejected.add_metric(labels, 1 if backend.get("ejected") else 0)
                ejections.add_metric(labels, backend.get("ejections", 0))
        yield from (healthy, check, active, server_requests, connect_failures, state, drain_left)
        yield from (ejected, ejections)


_NOT_RUN = frozenset({DISABLED, UNCHECKED})


def _histograms(
    name: str, documentation: str, key: str, listeners: list[tuple[list[str], Mapping[str, Any]]]
) -> Iterator[Metric]:
    """One histogram family from the listeners' cumulative buckets (dataplane.stats)."""
    family = HistogramMetricFamily(name, documentation, labels=_LISTENER)
    found = False
    for labels, counters in listeners:
        histogram = counters.get(key)
        if not histogram:
            continue
        found = True
        buckets = [
            (_bound(bound), count)
            for bound, count in zip(histogram["buckets"], histogram["counts"], strict=True)
        ]
        buckets.append(("+Inf", histogram["count"]))
        family.add_metric(labels, buckets, histogram["sum"])
    if found:
        yield family


def _bound(seconds: float) -> str:
    # Prometheus writes bucket bounds as floats ("0.005", "1.0"), as its own client does.
    return repr(float(seconds))


def _listener_labels(listener_id: str, entry: Mapping[str, Any]) -> list[str]:
    port = entry.get("port")
    return [listener_id, entry.get("protocol") or "", "" if port is None else str(port)]


def render(status: Mapping[str, Any], counters: ControlCounters) -> bytes:
    """The text exposition of a status document."""
    return generate_latest(StatusCollector(status, counters))  # type: ignore[arg-type]
