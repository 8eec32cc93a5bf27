"""Regression guard: fail when a ratio falls more than 15% below the committed baseline.

    python -m bench.guard [--latest bench/results/latest.json] [--baseline .../baseline.json]

A ratio is dataplane / HAProxy. Where higher is better (rates), a regression is a ratio below
baseline x 0.85. Where lower is better (latency, time to apply), it is a ratio above
baseline / 0.85, the same 15% fall in the other direction. Failed requests during
reconfiguration have no ratio: any failure where the baseline had none is a regression too.
Rows in only one of the two files are ignored, so a quick run checks the rows it has.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = 0.15


def _rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in report.get("rows", [])}


def regressions(
    latest: dict[str, Any], baseline: dict[str, Any], tolerance: float = TOLERANCE
) -> list[str]:
    """One message per row whose ratio regressed by more than `tolerance` from the baseline."""
    problems = []
    latest_rows, baseline_rows = _rows(latest), _rows(baseline)
    for key, row in latest_rows.items():
        before = baseline_rows.get(key)
        if before is None:
            continue
        if row.get("ratio") is not None and before.get("ratio") is not None:
            now, then = row["ratio"], before["ratio"]
            if row["better"] == "higher" and now < then * (1 - tolerance):
                problems.append(
                    f"{key}: ratio {now:.3f} is more than {tolerance:.0%} below the baseline "
                    f"{then:.3f}"
                )
            elif row["better"] == "lower" and now > then / (1 - tolerance):
                problems.append(
                    f"{key}: ratio {now:.3f} is more than {tolerance:.0%} worse than the "
                    f"baseline {then:.3f} (lower is better)"
                )
        if row.get("metric") == "reconfig_failed":
            failed_now = _dataplane_median(row)
            failed_then = _dataplane_median(before)
            if failed_now and not failed_then:
                problems.append(
                    f"{key}: the dataplane failed {failed_now:g} requests where the baseline "
                    "failed none"
                )
    return problems


def _dataplane_median(row: dict[str, Any]) -> float | None:
    return row.get("values", {}).get("dataplane", {}).get("median")


def check_files(latest_path: Path, baseline_path: Path) -> tuple[bool, list[str]]:
    """(passed, messages) comparing two report files; no baseline passes with a note."""
    if not baseline_path.exists():
        return True, [f"no baseline at {baseline_path}: nothing to compare with"]
    latest = json.loads(latest_path.read_text())
    baseline = json.loads(baseline_path.read_text())
    problems = regressions(latest, baseline)
    if problems:
        return False, ["regression against the baseline:", *problems]
    compared = len(set(_rows(latest)) & set(_rows(baseline)))
    return True, [f"no regression against the baseline ({compared} rows compared)"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.guard", description=__doc__)
    parser.add_argument("--latest", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--baseline", type=Path, default=RESULTS / "baseline.json")
    args = parser.parse_args(argv)
    passed, messages = check_files(args.latest, args.baseline)
    for message in messages:
        print(message, file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
