"""python -m bench --instructions: user-space instructions per request, counted by callgrind.

Each proxy runs alone under valgrind's callgrind, as one serving process: the dataplane with
`--workers 1` (the node serves in its own process), HAProxy with `nbthread 1` and without
master-worker mode, nginx with one process (`master_process off`). For every scenario the proxy
is warmed up with h2load, then callgrind counts two h2load runs of the same shape: a short one
of one request per connection, and one of `--requests` more. The difference between the two
counts is what the extra requests cost: opening, closing and the TLS handshakes of the
keep-alive connections appear in both and cancel out, while with `Connection: close` every extra
request brings its own connection. Unlike requests per second, the counts do not move with the
machine's load, so they are the figures to compare before and after a change.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import configs, loadgen
from bench.loadgen import LoadError
from bench.processes import PortAllocator, ProcessError, Supervisor, cpu_seconds
from bench.proxies import Dataplane, Haproxy, Nginx, Proxy, Shared, write_atomically
from bench.report import PROXY_TITLES
from bench.scenarios import QUICK, Bench
from bench.tools import ToolError, Tools, ensure_tools, install

log = logging.getLogger("bench")

REQUESTS = 2000
WARM_UP_REQUESTS = 400
PROXIES = ("dataplane", "haproxy", "nginx")
REPORT_VERSION = 1
VALGRIND_PACKAGE = "valgrind"
# Under callgrind a proxy runs some 50 times slower than natively, and the machine may be busy.
SECONDS_PER_REQUEST = 0.1
H2LOAD_GRACE = 120.0
CONTROL_TIMEOUT = 120.0
# A proxy is idle when it used at most IDLE_CPU seconds of CPU over IDLE_WINDOW seconds.
IDLE_WINDOW = 0.5
IDLE_CPU = 0.02
IDLE_TIMEOUT = 120.0
# Settings that change how much work the interpreter does per request; the node runs without.
PYTHON_DEBUG_VARIABLES = (
    "PYTHONMALLOC",
    "PYTHONDEVMODE",
    "PYTHONTRACEMALLOC",
    "PYTHONASYNCIODEBUG",
)


class CallgrindError(RuntimeError):
    """callgrind_control failed, or a callgrind file cannot be read."""


# Reading callgrind's files.


@dataclass(frozen=True)
class CallgrindCounts:
    """The header of one callgrind dump: its events and their total counts."""

    events: tuple[str, ...]
    summary: tuple[int, ...] | None
    totals: tuple[int, ...] | None
    trigger: str = ""

    def count(self, event: str = "Ir") -> int:
        """An event's total: `summary:` (what callgrind_annotate calls PROGRAM TOTALS), else
        `totals:` (the sum of the file's cost lines)."""
        if event not in self.events:
            raise CallgrindError(f"the dump has no {event} event (events: {' '.join(self.events)})")
        costs = self.summary if self.summary is not None else self.totals
        if costs is None:
            raise CallgrindError("the dump has neither a summary: nor a totals: line")
        index = self.events.index(event)
        # Trailing zero counts may be left off a cost line.
        return costs[index] if index < len(costs) else 0

    @property
    def instructions(self) -> int:
        """User-space instructions executed (callgrind's Ir event)."""
        return self.count("Ir")


def _costs(key: str, value: str) -> tuple[int, ...]:
    fields = value.split()
    if not fields or not all(item.isascii() and item.isdigit() for item in fields):
        raise CallgrindError(f"{key}: holds {value.strip()[:80]!r}, not counts")
    return tuple(int(item) for item in fields)


def parse_callgrind(text: str) -> CallgrindCounts:
    """The events and totals of a callgrind output file (format version 1)."""
    found: dict[str, str] = {}
    trigger = ""
    for line in text.splitlines():
        key, separator, value = line.partition(":")
        if not separator:
            continue
        if key in {"events", "summary", "totals"}:
            if key in found:
                raise CallgrindError(f"the dump has more than one {key}: line")
            found[key] = value
        elif key == "desc" and value.strip().startswith("Trigger:"):
            trigger = value.strip().removeprefix("Trigger:").strip()
    if "events" not in found:
        raise CallgrindError("not a callgrind dump: no events: line")
    events = tuple(found["events"].split())
    if not events:
        raise CallgrindError("the events: line names no event")
    summary = _costs("summary", found["summary"]) if "summary" in found else None
    totals = _costs("totals", found["totals"]) if "totals" in found else None
    for key, costs in (("summary", summary), ("totals", totals)):
        if costs is not None and len(costs) > len(events):
            raise CallgrindError(f"{key}: has {len(costs)} counts for {len(events)} events")
    if summary is None and totals is None:
        raise CallgrindError("the dump has neither a summary: nor a totals: line")
    return CallgrindCounts(events, summary, totals, trigger)


def read_callgrind(path: Path) -> CallgrindCounts:
    return parse_callgrind(path.read_text(errors="replace"))


# Running a proxy under callgrind.


def callgrind_command(valgrind: str, out_file: Path) -> list[str]:
    """The valgrind prefix: callgrind with instrumentation off until callgrind_control -i on."""
    return [
        valgrind,
        "--tool=callgrind",
        # Starting up and loading the configuration run at a few times native speed, uncounted.
        "--instr-atstart=no",
        "--trace-children=no",
        # callgrind_control talks to the process through vgdb.
        "--vgdb=yes",
        f"--callgrind-out-file={out_file}.%p",
    ]


class CallgrindSupervisor(Supervisor):
    """Starts the proxies named in `measured` inside callgrind, every other process as usual."""

    def __init__(self, log_dir: Path, valgrind: str, measured: Iterable[str]) -> None:
        super().__init__(log_dir)
        self.valgrind = valgrind
        self.measured = set(measured)
        self.dump_dir = log_dir / "callgrind"
        self.dump_dir.mkdir(exist_ok=True)

    def start(self, name: str, command: Sequence[str], *, env: dict[str, str] | None = None):
        if name not in self.measured:
            return super().start(name, command, env=env)
        clean = {
            key: value
            for key, value in (env if env is not None else os.environ).items()
            if key not in PYTHON_DEBUG_VARIABLES
        }
        prefix = callgrind_command(self.valgrind, self.dump_dir / name)
        return super().start(name, [*prefix, *command], env=clean)


class Counter:
    """callgrind_control for one process: instrumentation on, zero, dump and read the dump."""

    def __init__(self, control: str, pid: int, out_base: Path) -> None:
        self.control = control
        self.pid = pid
        self.out_base = out_base
        self.read: set[Path] = set()

    def _command(self, *arguments: str) -> None:
        command = [self.control, *arguments, str(self.pid)]
        try:
            done = subprocess.run(
                command, check=False, capture_output=True, text=True, timeout=CONTROL_TIMEOUT
            )
        except subprocess.TimeoutExpired as exc:
            raise CallgrindError(f"{' '.join(command)} did not answer in time") from exc
        output = done.stdout + done.stderr
        if done.returncode != 0 or "OK." not in output:
            raise CallgrindError(f"{' '.join(command)} failed: {output.strip()[-400:]}")

    def instrument(self) -> None:
        self._command("--instr=on")

    def zero(self) -> None:
        self._command("--zero")

    def dump(self, label: str) -> CallgrindCounts:
        """Dump the counts since the last zero or dump (dumping zeroes them) and read them."""
        self._command(f"--dump={label}")
        fresh = sorted(
            (path for path in self._parts() if path not in self.read),
            key=lambda path: int(path.suffix[1:]),
        )
        if not fresh:
            raise CallgrindError(f"callgrind wrote no dump for {label}")
        self.read.update(fresh)
        counts = read_callgrind(fresh[-1])
        if counts.trigger != f"dump {label}":
            raise CallgrindError(f"{fresh[-1].name} is from {counts.trigger!r}, not dump {label}")
        return counts

    def _parts(self) -> list[Path]:
        base = f"{self.out_base.name}.{self.pid}."
        return [
            path
            for path in self.out_base.parent.iterdir()
            if path.name.startswith(base)
            and path.name[len(base) :].isascii()
            and path.name[len(base) :].isdigit()
        ]


# /proc/net/tcp states of a proxy-side socket whose connection the proxy has not closed yet.
TCP_ESTABLISHED = "01"
TCP_CLOSE_WAIT = "08"


def open_connections(port: int, table: str | None = None) -> int:
    """Accepted connections on 127.0.0.1:port that the proxy has not closed (IPv4 /proc/net/tcp)."""
    if table is None:
        table = Path("/proc/net/tcp").read_text()
    count = 0
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or ":" not in fields[1]:
            continue
        try:
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
        except ValueError:
            continue
        if local_port == port and fields[3] in {TCP_ESTABLISHED, TCP_CLOSE_WAIT}:
            count += 1
    return count


def wait_idle(pid: int, *, port: int | None = None, timeout: float = IDLE_TIMEOUT) -> None:
    """Wait until the process has finished its work: every client connection on `port` closed
    on its side, and no CPU used for two windows in a row."""
    deadline = time.monotonic() + timeout
    # A busy machine may keep a process that still has work off the CPU: the sockets say
    # whether it has handled the client's close yet.
    while port is not None and open_connections(port):
        if time.monotonic() > deadline:
            raise ProcessError(f"connections to port {port} stayed open for {timeout:.0f}s")
        time.sleep(0.05)
    quiet = 0
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(IDLE_WINDOW)
        now = cpu_seconds(pid)
        quiet = quiet + 1 if now - before <= IDLE_CPU else 0
        if quiet == 2:
            return
        before = now
    raise ProcessError(f"process {pid} stayed busy for {timeout:.0f}s")


class SingleProcessHaproxy(Haproxy):
    """HAProxy without master-worker mode (-W): the one process callgrind counts serves."""

    def _launch(self) -> subprocess.Popen[bytes]:
        return self.shared.supervisor.start(
            self.name, [self.shared.tools.haproxy, "-db", "-f", str(self._path)]
        )


class SingleProcessNginx(Nginx):
    """nginx with `master_process off`: one process accepts and serves, as a single worker."""

    def _write_config(self, extra_ports: Sequence[int]) -> None:
        super()._write_config(extra_ports)
        text = self._path.read_text()
        if "master_process on;" not in text:
            raise ProcessError("nginx's configuration no longer says master_process on")
        write_atomically(self._path, text.replace("master_process on;", "master_process off;"))


# Scenarios.


@dataclass(frozen=True)
class Scenario:
    """One fixed-count h2load shape, and the application protocol it must agree on."""

    key: str
    title: str
    tls: bool
    protocol: str
    connections: int
    streams: int = 1
    headers: tuple[str, ...] = ()

    def port(self, ports: configs.ProxyPorts) -> int:
        return ports.https if self.tls else ports.http

    def url(self, ports: configs.ProxyPorts) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port(ports)}/0"

    def command(self, h2load: str, url: str, requests: int | str) -> list[str]:
        command = [h2load, f"-n{requests}", f"-c{self.connections}", "-t1"]
        command += ["--h1"] if self.protocol == "http/1.1" else [f"-m{self.streams}"]
        for header in self.headers:
            command += ["-H", header]
        return [*command, url]

    def shown_command(self) -> str:
        """The h2load command as the report shows it: N requests, any port."""
        scheme = "https" if self.tls else "http"
        return shlex.join(self.command("h2load", f"{scheme}://127.0.0.1:PORT/0", "N"))


SCENARIOS = {
    scenario.key: scenario
    for scenario in (
        Scenario("http1", "HTTP/1.1 keep-alive, 4 connections, 0 B", False, "http/1.1", 4),
        Scenario(
            "https", "HTTPS (HTTP/1.1, TLS 1.3) keep-alive, 4 connections, 0 B", True, "http/1.1", 4
        ),
        Scenario(
            "new_connection",
            "HTTP/1.1, new connection per request (Connection: close), 0 B",
            False,
            "http/1.1",
            4,
            headers=("Connection: close",),
        ),
        Scenario("h2", "HTTP/2 over TLS, 4 connections x 10 streams, 0 B", True, "h2", 4, 10),
    )
}


def scenario_list(text: str) -> list[str]:
    """`--only http1,h2`: scenario keys, in the order given, each once."""
    keys = [key.strip() for key in text.split(",") if key.strip()]
    unknown = [key for key in keys if key not in SCENARIOS]
    if not keys or unknown:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or repr(text)}: choose from {', '.join(SCENARIOS)}"
        )
    return list(dict.fromkeys(keys))


def request_count(text: str) -> int:
    """`--requests N`: at least 10 requests, so the per-request figure means something."""
    if not (text.isascii() and text.isdigit()) or not 10 <= int(text) <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of requests from 10 to 1000000")
    return int(text)


def check_h2load(output: str, *, requests: int, protocol: str) -> loadgen.Load:
    """h2load's totals; LoadError unless it agreed on `protocol` and all `requests` succeeded."""
    agreed = sorted(set(loadgen.parse_h2load_protocols(output)))
    if agreed != [protocol]:
        # h2load falls back to HTTP/1.1 and still exits 0 when the proxy does not agree on h2.
        raise LoadError(f"h2load negotiated {', '.join(agreed) or 'nothing'}, not {protocol}")
    load = loadgen.parse_h2load(output)
    if load.failed or load.requests != requests:
        totals = re.findall(r"^(?:requests|status codes): .*$", output, flags=re.MULTILINE)
        raise LoadError(f"not all {requests} requests succeeded: {'; '.join(totals)}")
    return load


def run_h2load(command: Sequence[str], *, requests: int, protocol: str) -> loadgen.Load:
    """Run h2load for exactly `requests` requests; LoadError unless every one succeeded."""
    timeout = H2LOAD_GRACE + SECONDS_PER_REQUEST * requests
    try:
        done = subprocess.run(
            list(command), check=False, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"h2load did not finish {requests} requests in {timeout:.0f}s") from exc
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise LoadError(f"{shlex.join(command)} exited {done.returncode}: {output.strip()[-400:]}")
    return check_h2load(output, requests=requests, protocol=protocol)


@dataclass
class Measurement:
    """One proxy in one scenario: the counts behind its instructions per request."""

    requests: int = 0
    instructions: int = 0
    setup_instructions: int = 0
    run_instructions: int = 0
    seconds: float = 0.0
    error: str = ""

    @property
    def per_request(self) -> float | None:
        if self.error or not self.requests:
            return None
        return self.instructions / self.requests


def measure_scenario(
    counter: Counter,
    pid: int,
    scenario: Scenario,
    ports: configs.ProxyPorts,
    h2load: str,
    *,
    requests: int,
    warm_up: int,
) -> Measurement:
    """Warm up, then count a setup run (one request per connection) and a run of `requests` more."""
    url, port = scenario.url(ports), scenario.port(ports)
    setup_requests = scenario.connections
    run_h2load(
        scenario.command(h2load, url, max(warm_up, setup_requests)),
        requests=max(warm_up, setup_requests),
        protocol=scenario.protocol,
    )
    wait_idle(pid, port=port)
    counter.zero()
    run_h2load(
        scenario.command(h2load, url, setup_requests),
        requests=setup_requests,
        protocol=scenario.protocol,
    )
    wait_idle(pid, port=port)
    setup = counter.dump(f"{scenario.key}-setup").instructions
    started = time.monotonic()
    total = setup_requests + requests
    run_h2load(scenario.command(h2load, url, total), requests=total, protocol=scenario.protocol)
    seconds = time.monotonic() - started
    wait_idle(pid, port=port)
    run = counter.dump(f"{scenario.key}-run").instructions
    if run <= setup:
        raise CallgrindError(f"the run counted {run:,} instructions, its setup alone {setup:,}")
    return Measurement(
        requests=requests,
        instructions=run - setup,
        setup_instructions=setup,
        run_instructions=run,
        seconds=round(seconds, 1),
    )


@dataclass
class InstructionResults:
    requests: int
    scenarios: list[Scenario]
    proxies: list[str]
    values: dict[tuple[str, str], Measurement] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(value.error for value in self.values.values())


def _proxy(name: str, shared: Shared, ports: PortAllocator) -> Proxy:
    proxy_ports = configs.ProxyPorts(*ports.take(3))
    if name == "dataplane":
        return Dataplane(shared, proxy_ports, control_port=ports.one())
    if name == "haproxy":
        return SingleProcessHaproxy(shared, proxy_ports)
    return SingleProcessNginx(shared, proxy_ports)


def measure(
    tools: Tools,
    directory: Path,
    supervisor: CallgrindSupervisor,
    *,
    scenarios: Sequence[Scenario],
    proxies: Sequence[str] = PROXIES,
    requests: int = REQUESTS,
    warm_up: int = WARM_UP_REQUESTS,
) -> InstructionResults:
    """The backend, then each proxy in turn under callgrind through every scenario."""
    results = InstructionResults(requests, list(scenarios), list(proxies))
    bench = Bench.prepare(QUICK, tools, supervisor, directory)
    control = shutil.which("callgrind_control")
    if control is None:
        raise ToolError("callgrind_control is missing (Debian's valgrind package has it)")
    for name in proxies:
        proxy = _proxy(name, bench.shared, bench.ports)
        try:
            _measure_proxy(
                proxy,
                control=control,
                supervisor=supervisor,
                results=results,
                h2load=tools.h2load,
                warm_up=warm_up,
            )
        finally:
            proxy.stop()
    return results


def _measure_proxy(
    proxy: Proxy,
    *,
    control: str,
    supervisor: CallgrindSupervisor,
    results: InstructionResults,
    h2load: str,
    warm_up: int,
) -> None:
    def fail_all(reason: str) -> None:
        for scenario in results.scenarios:
            results.values[(scenario.key, proxy.name)] = Measurement(error=reason)

    log.info("%s: starting under callgrind", proxy.name)
    try:
        proxy.start(1)
        assert proxy.process is not None
        pid = proxy.process.pid
        counter = Counter(control, pid, supervisor.dump_dir / proxy.name)
        counter.instrument()
    except (ProcessError, CallgrindError, OSError) as exc:
        log.error("%s did not start under callgrind: %s", proxy.name, exc)
        fail_all(f"did not start under callgrind: {exc}")
        return
    for scenario in results.scenarios:
        try:
            measured = measure_scenario(
                counter,
                pid,
                scenario,
                proxy.ports,
                h2load,
                requests=results.requests,
                warm_up=warm_up,
            )
        except (LoadError, CallgrindError, ProcessError, OSError) as exc:
            log.error("%s %s: %s", scenario.key, proxy.name, exc)
            results.values[(scenario.key, proxy.name)] = Measurement(error=str(exc))
            continue
        results.values[(scenario.key, proxy.name)] = measured
        log.info(
            "%-9s %-15s %12s instructions/request (%.1fs)",
            proxy.name,
            scenario.key,
            f"{measured.per_request:,.0f}",
            measured.seconds,
        )


# Reports.


def ratio(dataplane: float | None, haproxy: float | None) -> float | None:
    if dataplane is None or haproxy is None or haproxy <= 0:
        return None
    return dataplane / haproxy


def build(results: InstructionResults) -> dict[str, Any]:
    """The JSON form: one entry per scenario, each proxy's counts and the ratio."""
    rows = []
    for scenario in results.scenarios:
        values = {}
        for proxy in results.proxies:
            value = results.values.get((scenario.key, proxy))
            if value is None:
                continue
            values[proxy] = {
                "instructions_per_request": value.per_request,
                "requests": value.requests,
                "instructions": value.instructions,
                "setup_instructions": value.setup_instructions,
                "run_instructions": value.run_instructions,
                "seconds": value.seconds,
                "error": value.error,
            }
        per_request = {proxy: value["instructions_per_request"] for proxy, value in values.items()}
        rows.append(
            {
                "key": scenario.key,
                "title": scenario.title,
                "command": scenario.shown_command(),
                "values": values,
                "ratio": ratio(per_request.get("dataplane"), per_request.get("haproxy")),
            }
        )
    return {
        "version": REPORT_VERSION,
        "requests": results.requests,
        "environment": results.environment,
        "notes": results.notes,
        "rows": rows,
        "ratios": {row["key"]: row["ratio"] for row in rows if row["ratio"] is not None},
    }


def format_count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def markdown(report: dict[str, Any]) -> str:
    """One row per scenario: instructions per request for each proxy, and dataplane/HAProxy."""
    environment = report.get("environment", {})
    proxies = [proxy for proxy in PROXY_TITLES if any(proxy in r["values"] for r in report["rows"])]
    lines = [
        "# Instructions per request: dataplane, HAProxy and nginx",
        "",
        f"User-space instructions of each proxy's serving process per request (callgrind's Ir), "
        f"over {report['requests']:,} requests after a warm-up, "
        f"{environment.get('started', '')}. The counts do not depend on the machine's load. "
        "Ratio = dataplane / HAProxy: below 1 means fewer instructions than HAProxy.",
        "",
        f"Dataplane: commit {environment.get('commit', 'unknown')}"
        + (
            f", with uncommitted changes to {len(environment['dataplane_changes'])} file(s)"
            if environment.get("dataplane_changes")
            else ""
        )
        + f", {environment.get('python', 'Python')}.",
        "",
        "| scenario | " + " | ".join(PROXY_TITLES[p] for p in proxies) + " | dataplane/HAProxy |",
        "| --- | " + " | ".join("---:" for _ in proxies) + " | ---: |",
    ]
    notes = list(report.get("notes", []))
    for row in report["rows"]:
        cells = []
        for proxy in proxies:
            value = row["values"].get(proxy)
            if value is None:
                cells.append("-")
            elif value["error"]:
                cells.append("error")
                notes.append(f"{row['key']} ({PROXY_TITLES[proxy]}): {value['error']}")
            else:
                cells.append(format_count(value["instructions_per_request"]))
        shown = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        lines.append(f"| {row['title']} | {' | '.join(cells)} | {shown} |")
    lines += ["", "## Commands", ""]
    lines += [f"- {row['key']}: `{row['command']}`" for row in report["rows"]]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in dict.fromkeys(notes)]
    tools = environment.get("tools", {})
    if tools:
        lines += ["", "## Tools", ""] + [f"- {name}: {text}" for name, text in tools.items()]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    md_path, json_path = directory / "instructions.md", directory / "instructions.json"
    md_path.write_text(markdown(report))
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    return md_path, json_path


# Entry point.


def ensure_valgrind() -> str:
    """valgrind's path, installing Debian's package (as the other tools are) when missing."""
    found = shutil.which("valgrind")
    if found is None:
        install([VALGRIND_PACKAGE])
        found = shutil.which("valgrind")
    if found is None or shutil.which("callgrind_control") is None:
        raise ToolError("valgrind is still missing after installation")
    return found


def _version(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(
            list(command), check=False, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def _source() -> dict[str, Any]:
    """Which dataplane was counted: the commit, and the files under dataplane/ changed since."""
    root = Path(__file__).resolve().parents[1]
    found: dict[str, Any] = {"commit": "unknown", "dataplane_changes": []}
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "dataplane"],
            cwd=root,
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return found
    if head.returncode == 0:
        found["commit"] = head.stdout.strip()
        found["dataplane_changes"] = [line[3:] for line in status.stdout.splitlines()]
    return found


def main(args: argparse.Namespace) -> int:
    """Count, write instructions.md and instructions.json, print the table; 1 if a count failed."""
    scenarios = [SCENARIOS[key] for key in (args.only or SCENARIOS)]
    requests = args.requests or REQUESTS
    try:
        tools = ensure_tools()
        valgrind = ensure_valgrind()
    except ToolError as exc:
        log.error("%s", exc)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    # nginx workers run as nobody and must read the bodies; keys stay 0600.
    directory.chmod(0o755)
    supervisor = CallgrindSupervisor(directory, valgrind, PROXIES)
    started = time.monotonic()
    started_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        results = measure(tools, directory, supervisor, scenarios=scenarios, requests=requests)
    except (ToolError, ProcessError) as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted: every process was stopped")
        return 130
    finally:
        supervisor.stop_all()
        if args.keep:
            log.info("work directory kept (callgrind dumps in callgrind/): %s", directory)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    results.environment = {
        "started": started_at,
        "duration_seconds": round(time.monotonic() - started, 1),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        **_source(),
        "tools": {
            "valgrind": _version([valgrind, "--version"]),
            "h2load": _version([tools.h2load, "--version"]),
            "haproxy": _version([tools.haproxy, "-v"]),
            "nginx": _version([tools.nginx, "-v"]),
        },
    }
    results.notes.append(
        "Each figure is (instructions of a run of 4 connections and N + 4 requests) minus "
        "(instructions of a run of 4 connections and 4 requests), divided by N: connection set-up, "
        "TLS handshakes and close of the keep-alive scenarios cancel out; with Connection: close "
        "every request opens its own connection. Health checks (every 5 s, dataplane and HAProxy) "
        "are counted in."
    )
    built = build(results)
    md_path, json_path = write(built, args.results)
    log.info("wrote %s and %s", md_path, json_path)
    print(md_path.read_text())
    for key, value in built["ratios"].items():
        print(f"instructions-ratio {key} {value:.3f}")
    if results.failed:
        log.error("some counts failed: see the notes")
        return 1
    return 0
