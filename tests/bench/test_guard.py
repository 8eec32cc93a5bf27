"""The regression guard: a ratio more than 15% worse than the baseline fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import guard


def row(key: str, ratio: float | None, *, better: str = "higher", dataplane: float = 1.0) -> dict:
    return {
        "key": key,
        "metric": key.removesuffix("_2w"),
        "better": better,
        "ratio": ratio,
        "values": {"dataplane": {"median": dataplane}},
    }


def report(*rows: dict) -> dict:
    return {"rows": list(rows)}


@pytest.mark.parametrize(("now", "regressed"), [(0.86, False), (0.85, False), (0.849, True)])
def test_higher_is_better_fails_below_85_percent_of_the_baseline(
    now: float, regressed: bool
) -> None:
    problems = guard.regressions(
        report(row("http_keepalive_0b", now)), report(row("http_keepalive_0b", 1.0))
    )

    assert bool(problems) is regressed


@pytest.mark.parametrize(("now", "regressed"), [(1.17, False), (1.18, True), (0.5, False)])
def test_lower_is_better_fails_when_the_ratio_grows_past_the_same_margin(
    now: float, regressed: bool
) -> None:
    problems = guard.regressions(
        report(row("latency_p99", now, better="lower")),
        report(row("latency_p99", 1.0, better="lower")),
    )

    assert bool(problems) is regressed


def test_improvements_and_rows_missing_on_either_side_pass() -> None:
    latest = report(row("http_keepalive_0b", 1.4), row("https_keepalive_2w", 0.1))
    baseline = report(row("http_keepalive_0b", 1.0), row("tcp_ssl_bulk", 1.0))

    assert guard.regressions(latest, baseline) == []


def test_a_row_without_a_ratio_is_not_compared() -> None:
    latest = report(row("http_keepalive_0b_2w", None))
    baseline = report(row("http_keepalive_0b_2w", 0.9))

    assert guard.regressions(latest, baseline) == []


def test_failed_requests_during_reconfiguration_fail_when_the_baseline_had_none() -> None:
    baseline = report(row("reconfig_failed", None, better="lower", dataplane=0.0))

    assert guard.regressions(
        report(row("reconfig_failed", None, better="lower", dataplane=3.0)), baseline
    ) == ["reconfig_failed: the dataplane failed 3 requests where the baseline failed none"]
    assert (
        guard.regressions(
            report(row("reconfig_failed", None, better="lower", dataplane=0.0)), baseline
        )
        == []
    )


def test_the_message_names_the_row_and_both_ratios() -> None:
    problems = guard.regressions(
        report(row("https_keepalive", 0.5)), report(row("https_keepalive", 0.9))
    )

    assert problems == ["https_keepalive: ratio 0.500 is more than 15% below the baseline 0.900"]


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_files_without_a_baseline_pass(tmp_path: Path) -> None:
    latest = write(tmp_path / "latest.json", report(row("http_keepalive_0b", 0.1)))

    passed, messages = guard.check_files(latest, tmp_path / "baseline.json")

    assert passed
    assert "no baseline" in messages[0]


def test_main_exits_1_on_a_regression(tmp_path: Path) -> None:
    latest = write(tmp_path / "latest.json", report(row("http_keepalive_0b", 0.5)))
    baseline = write(tmp_path / "baseline.json", report(row("http_keepalive_0b", 0.9)))

    assert guard.main(["--latest", str(latest), "--baseline", str(baseline)]) == 1
    assert guard.main(["--latest", str(latest), "--baseline", str(latest)]) == 0
