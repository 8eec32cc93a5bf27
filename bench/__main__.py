"""python -m bench [--quick]: benchmark the dataplane against HAProxy and nginx.

Writes bench/results/latest.md and latest.json, checks the ratios against
bench/results/baseline.json (exit 1 on a regression of more than 15%), and prints
`ratio <scenario> <value>` lines last.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench import guard, instructions, report
from bench.processes import Supervisor
from bench.scenarios import FULL, QUICK, Bench
from bench.tools import ToolError, ensure_tools

log = logging.getLogger("bench")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="one repetition of shorter scenarios (< 2 minutes)"
    )
    parser.add_argument(
        "--results", type=Path, default=guard.RESULTS, help="where latest.md/json are written"
    )
    parser.add_argument("--no-guard", action="store_true", help="do not compare with baseline.json")
    parser.add_argument(
        "--save-baseline",
        action="store_true",
        help="also copy this run's latest.json to baseline.json",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request under callgrind instead (bench/instructions.py)",
    )
    parser.add_argument(
        "--only",
        type=instructions.scenario_list,
        help=f"with --instructions: these scenarios only ({','.join(instructions.SCENARIOS)})",
    )
    parser.add_argument(
        "--requests",
        type=instructions.request_count,
        help="with --instructions: requests counted per scenario "
        f"(default {instructions.REQUESTS})",
    )
    args = parser.parse_args(argv)
    if (args.only or args.requests) and not args.instructions:
        parser.error("--only and --requests go with --instructions")
    return args


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C, so every process is stopped on the way out.
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> dict:
    plan = QUICK if args.quick else FULL
    tools = ensure_tools()
    directory = Path(tempfile.mkdtemp(prefix="bench-"))
    # nginx workers run as nobody and must read the bodies; keys stay 0600.
    directory.chmod(0o755)
    supervisor = Supervisor(directory)
    started = time.monotonic()
    # Other work on the machine moves the absolute figures; the report says how busy it was.
    load_before = os.getloadavg()[0]
    started_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        bench = Bench.prepare(plan, tools, supervisor, directory)
        results = bench.run()
    finally:
        supervisor.stop_all()
        if args.keep:
            log.info("work directory kept: %s", directory)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    results.environment = {
        "started": started_at,
        "cpus": os.cpu_count(),
        "repetitions": plan.repetitions,
        "seconds_per_run": plan.seconds,
        "duration_seconds": round(time.monotonic() - started, 1),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "tools": tools.versions(),
    }
    return report.build(results)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _terminate)
    if args.instructions:
        return instructions.main(args)
    try:
        built = run(args)
    except ToolError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted: every process was stopped")
        return 130
    md_path, json_path = report.write(built, args.results)
    log.info("wrote %s and %s", md_path, json_path)
    print(md_path.read_text())
    passed = True
    if args.save_baseline:
        shutil.copyfile(json_path, args.results / "baseline.json")
        log.info("saved %s as the baseline", json_path)
    elif not args.no_guard:
        passed, messages = guard.check_files(json_path, args.results / "baseline.json")
        for message in messages:
            print(message)
    # The ratios come last, one per line, for scripts that read the end of the output.
    for line in report.ratio_lines(built):
        print(line)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
