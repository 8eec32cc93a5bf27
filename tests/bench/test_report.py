"""Medians, ratios, the JSON and Markdown reports, and the closing ratio lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report
from bench.report import Results


def results() -> Results:
    measured = Results(mode="full", environment={"cpus": 2, "repetitions": 3})
    for proxy, runs in {
        "dataplane": [50_000.0, 10_000.0, 52_000.0],
        "haproxy": [60_000.0, 58_000.0, 59_000.0],
        "nginx": [61_000.0, 57_000.0, 1.0],
    }.items():
        measured.sample("http_keepalive_0b", 1, proxy).runs.extend(runs)
    for proxy, runs in {"dataplane": [2.0, 3.0], "haproxy": [1.5, 1.0], "nginx": [1.0]}.items():
        measured.sample("latency_p99", 1, proxy).runs.extend(runs)
    for proxy, failed in {"dataplane": 0.0, "haproxy": 0.0, "nginx": 12.0}.items():
        measured.sample("reconfig_failed", 1, proxy).runs.append(failed)
    measured.sample("http_keepalive_0b", 2, "haproxy").runs.append(100_000.0)
    measured.sample("http_keepalive_0b", 2, "nginx").runs.append(90_000.0)
    measured.sample("https_keepalive", 1, "haproxy").runs.append(20_000.0)
    measured.sample("https_keepalive", 1, "dataplane").note = "wrk exited 1"
    measured.skip("http_keepalive_0b", 2, "dataplane", "no --workers option")
    return measured


def row(built: dict, key: str) -> dict:
    return next(r for r in built["rows"] if r["key"] == key)


def test_median_of_odd_and_even_runs() -> None:
    assert report.median([3.0, 1.0, 2.0]) == 2.0
    assert report.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert report.median([]) is None


def test_ratio_is_dataplane_over_haproxy_and_none_when_undefined() -> None:
    assert report.ratio(45.0, 60.0) == pytest.approx(0.75)
    assert report.ratio(None, 60.0) is None
    assert report.ratio(45.0, None) is None
    assert report.ratio(45.0, 0.0) is None


def test_rows_report_medians_and_the_ratio() -> None:
    built = report.build(results())

    keepalive = row(built, "http_keepalive_0b")
    assert keepalive["values"]["dataplane"]["median"] == 50_000.0
    assert keepalive["values"]["haproxy"]["median"] == 59_000.0
    assert keepalive["ratio"] == pytest.approx(50_000 / 59_000)
    latency = row(built, "latency_p99")
    assert latency["better"] == "lower"
    assert latency["ratio"] == pytest.approx(2.5 / 1.25)


def test_failed_request_counts_have_no_ratio() -> None:
    built = report.build(results())

    assert row(built, "reconfig_failed")["ratio"] is None
    assert "reconfig_failed" not in built["ratios"]


def test_second_pass_rows_are_suffixed_and_a_skipped_dataplane_has_no_ratio() -> None:
    built = report.build(results())

    second = row(built, "http_keepalive_0b_2w")
    assert second["workers"] == 2
    assert second["values"]["dataplane"]["median"] is None
    assert second["values"]["dataplane"]["note"] == "no --workers option"
    assert second["ratio"] is None


def test_rows_follow_the_metric_order_one_pass_after_the_other() -> None:
    built = report.build(results())

    assert [r["key"] for r in built["rows"]] == [
        "http_keepalive_0b",
        "https_keepalive",
        "latency_p99",
        "reconfig_failed",
        "http_keepalive_0b_2w",
    ]


def test_unknown_metrics_are_refused() -> None:
    with pytest.raises(KeyError):
        Results(mode="quick").sample("http_keepalive_2k", 1, "dataplane")


def test_markdown_table_has_each_proxy_and_the_ratio() -> None:
    text = report.markdown(report.build(results()))

    assert "| scenario | unit | dataplane | HAProxy | nginx | dataplane/HAProxy |" in text
    assert (
        "| 1. HTTP keep-alive, 64 connections, 0 B | req/s | 50,000 | 59,000 | 57,000 | 0.85 |"
        in text
    )
    assert "| 6. latency p99 at half HAProxy's max rate | ms | 2.50 | 1.25 | 1.00 | 2.00 |" in text
    assert "## 2 workers per proxy" in text
    assert "| skipped | 100,000 | 90,000 | - |" in text
    assert "http_keepalive_0b_2w (dataplane): no --workers option" in text
    assert (
        "| 3. HTTPS keep-alive (TLS 1.3), 64 connections, 0 B | req/s | error | 20,000 | - | - |"
        in text
    )
    assert "https_keepalive (dataplane): wrk exited 1" in text


def test_ratio_lines_name_the_scenario_and_value() -> None:
    lines = report.ratio_lines(report.build(results()))

    assert lines == ["ratio http_keepalive_0b 0.847", "ratio latency_p99 2.000"]


def test_write_creates_both_files(tmp_path: Path) -> None:
    built = report.build(results())

    md_path, json_path = report.write(built, tmp_path / "results")

    assert md_path.read_text().startswith("# Benchmark")
    assert json.loads(json_path.read_text())["ratios"] == built["ratios"]


@pytest.mark.parametrize(
    ("value", "unit", "shown"),
    [
        (62594.5, "req/s", "62,594"),
        (1.234, "ms", "1.23"),
        (119.3, "ms", "119"),
        (779.18, "MB/s", "779.2"),
        (None, "s", "-"),
    ],
)
def test_format_value(value: float | None, unit: str, shown: str) -> None:
    assert report.format_value(value, unit) == shown
