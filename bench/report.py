"""The results of a run: metrics, medians, ratios, and the Markdown and JSON reports."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROXY_TITLES = {"dataplane": "dataplane", "haproxy": "HAProxy", "nginx": "nginx"}
REPORT_VERSION = 1
SKIPPED = "skipped (see notes)"


@dataclass(frozen=True)
class Metric:
    """One row of the table: what is measured, in which unit, and which way is better."""

    key: str
    title: str
    unit: str
    better: str = "higher"  # or "lower" (latency, time to apply, failed requests)
    # False when dividing makes no sense (counts that should be 0).
    has_ratio: bool = True


METRICS = {
    metric.key: metric
    for metric in (
        Metric("http_keepalive_0b", "1. HTTP keep-alive, 64 connections, 0 B", "req/s"),
        Metric("http_keepalive_0b_per_cpu", "1. HTTP keep-alive, 0 B, per CPU-second", "req/CPU-s"),
        Metric("http_keepalive_1k", "1. HTTP keep-alive, 64 connections, 1 KiB", "req/s"),
        Metric("http_keepalive_64k", "1. HTTP keep-alive, 64 connections, 64 KiB", "req/s"),
        Metric("http_keepalive_64k_mbps", "1. HTTP keep-alive, 64 KiB, throughput", "MB/s"),
        Metric("http_new_connection", "2. HTTP, new connection per request, 0 B", "req/s"),
        Metric(
            "http_new_connection_per_cpu", "2. HTTP, new connection, per CPU-second", "req/CPU-s"
        ),
        Metric("https_keepalive", "3. HTTPS keep-alive (TLS 1.3), 64 connections, 0 B", "req/s"),
        Metric("https_keepalive_per_cpu", "3. HTTPS keep-alive, per CPU-second", "req/CPU-s"),
        Metric("tls_handshake_full", "4. new TLS handshakes, full (TLS 1.3)", "handshakes/s"),
        Metric(
            "tls_handshake_resumed", "4. TLS handshakes, resumed (TLS 1.2 ticket)", "handshakes/s"
        ),
        Metric("tcp_ssl_bulk", "5. TCP SSL bulk download, 100 MiB", "MB/s"),
        Metric("latency_p50", "6. latency p50 at half HAProxy's max rate", "ms", "lower"),
        Metric("latency_p99", "6. latency p99 at half HAProxy's max rate", "ms", "lower"),
        Metric("reconfig_throughput", "7. HTTP keep-alive 0 B during reconfigurations", "req/s"),
        Metric(
            "reconfig_failed",
            "7. failed requests during reconfigurations",
            "requests",
            "lower",
            has_ratio=False,
        ),
        Metric("control_new_listener", "8. new listener: change to first 200", "ms", "lower"),
        Metric("control_apply_100", "8. 100 listeners: change to all serving", "s", "lower"),
        Metric("control_apply_1000", "8. 1,000 listeners: change to all serving", "s", "lower"),
        Metric("https_h2_0b", "9. HTTPS with HTTP/2, 16 connections x 10 streams, 0 B", "req/s"),
        Metric("https_h2_0b_per_cpu", "9. HTTPS with HTTP/2, 0 B, per CPU-second", "req/CPU-s"),
        Metric("https_h2_1k", "9. HTTPS with HTTP/2, 16 connections x 10 streams, 1 KiB", "req/s"),
    )
}


def row_key(metric: str, workers: int) -> str:
    """The key of a metric in one pass: the 2-worker pass gets a `_2w` suffix."""
    return metric if workers == 1 else f"{metric}_{workers}w"


@dataclass
class Sample:
    """One proxy's repeated measurements of one row."""

    runs: list[float] = field(default_factory=list)
    failed: int = 0
    note: str = ""
    skipped: bool = False
    detail: dict[str, float] = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return median(self.runs)


@dataclass
class Results:
    """Everything one run measured, row by row, proxy by proxy."""

    mode: str
    rows: dict[tuple[str, int], dict[str, Sample]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    def sample(self, metric: str, workers: int, proxy: str) -> Sample:
        if metric not in METRICS:
            raise KeyError(f"unknown metric {metric!r}")
        return self.rows.setdefault((metric, workers), {}).setdefault(proxy, Sample())

    def skip(self, metric: str, workers: int, proxy: str, reason: str = SKIPPED) -> None:
        sample = self.sample(metric, workers, proxy)
        sample.skipped = True
        sample.note = reason


def median(values: Sequence[float]) -> float | None:
    """The median of the runs, None when there are none."""
    return statistics.median(values) if values else None


def ratio(dataplane: float | None, haproxy: float | None) -> float | None:
    """dataplane / HAProxy, None when either is missing or HAProxy's figure is 0."""
    if dataplane is None or haproxy is None or haproxy == 0:
        return None
    return dataplane / haproxy


def build(results: Results) -> dict[str, Any]:
    """The JSON form of the results: one entry per row, in the table's order."""
    rows = []
    metric_order = list(METRICS)
    ordered = sorted(results.rows, key=lambda key: (key[1], metric_order.index(key[0])))
    for metric_key, workers in ordered:
        metric = METRICS[metric_key]
        samples = results.rows[(metric_key, workers)]
        values = {
            proxy: {
                "median": sample.median,
                "runs": sample.runs,
                "failed": sample.failed,
                "note": sample.note,
                "skipped": sample.skipped,
                "detail": sample.detail,
            }
            for proxy, sample in samples.items()
        }
        row_ratio = None
        if metric.has_ratio:
            row_ratio = ratio(
                values.get("dataplane", {}).get("median"), values.get("haproxy", {}).get("median")
            )
        rows.append(
            {
                "key": row_key(metric_key, workers),
                "metric": metric_key,
                "workers": workers,
                "title": metric.title,
                "unit": metric.unit,
                "better": metric.better,
                "values": values,
                "ratio": row_ratio,
            }
        )
    return {
        "version": REPORT_VERSION,
        "mode": results.mode,
        "environment": results.environment,
        "notes": results.notes,
        "rows": rows,
        "ratios": {row["key"]: row["ratio"] for row in rows if row["ratio"] is not None},
    }


def format_value(value: float | None, unit: str) -> str:
    """A figure for the table: whole numbers for rates, decimals for times."""
    if value is None:
        return "-"
    if unit in {"ms", "s"}:
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    if unit == "MB/s":
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def _cell(value: dict[str, Any] | None, unit: str) -> str:
    if value is None:
        return "-"
    if value["median"] is None:
        if not value.get("note"):
            return "-"
        return "skipped" if value.get("skipped") else "error"
    return format_value(value["median"], unit)


def markdown(report: dict[str, Any]) -> str:
    """The table: scenario, dataplane, HAProxy, nginx, and the ratio dataplane/HAProxy."""
    environment = report.get("environment", {})
    lines = [
        "# Benchmark: dataplane, HAProxy and nginx",
        "",
        f"Mode: {report['mode']}. Machine: {environment.get('cpus', '?')} CPUs, "
        f"{environment.get('started', '')}, load average "
        f"{environment.get('load_average_before', '?')} before the run. "
        f"Median of {environment.get('repetitions', '?')} run(s). "
        "Ratio = dataplane / HAProxy (above 1 is better for rates, below 1 for times).",
        "",
    ]
    passes = sorted({row["workers"] for row in report["rows"]})
    for workers in passes:
        lines += [
            f"## {workers} worker{'s' if workers > 1 else ''} per proxy",
            "",
            "| scenario | unit | dataplane | HAProxy | nginx | dataplane/HAProxy |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for row in (r for r in report["rows"] if r["workers"] == workers):
            values = row["values"]
            cells = [_cell(values.get(proxy), row["unit"]) for proxy in PROXY_TITLES]
            shown_ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
            lines.append(
                f"| {row['title']} | {row['unit']} | {' | '.join(cells)} | {shown_ratio} |"
            )
        lines.append("")
    notes = list(report.get("notes", []))
    for row in report["rows"]:
        for proxy, value in row["values"].items():
            if value.get("note") and value["note"] != SKIPPED:
                notes.append(f"{row['key']} ({PROXY_TITLES[proxy]}): {value['note']}")
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in dict.fromkeys(notes)] + [""]
    tools = environment.get("tools", {})
    if tools:
        lines += ["## Tools", ""] + [f"- {name}: {text}" for name, text in tools.items()] + [""]
    return "\n".join(lines)


def ratio_lines(report: dict[str, Any]) -> list[str]:
    """`ratio <scenario> <value>` for every row that has a ratio, in the table's order."""
    return [f"ratio {key} {value:.3f}" for key, value in report["ratios"].items()]


def write(report: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    """latest.md and latest.json in the results directory."""
    directory.mkdir(parents=True, exist_ok=True)
    md_path, json_path = directory / "latest.md", directory / "latest.json"
    md_path.write_text(markdown(report))
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    return md_path, json_path
