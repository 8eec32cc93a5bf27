"""Run the load generators (wrk, h2load, openssl s_time, curl) and parse what they print."""

from __future__ import annotations

import math
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Extra seconds a tool may take beyond its own duration before we give up on it.
GRACE = 30.0
_SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class LoadError(RuntimeError):
    """A load generator failed or printed something we cannot read."""


@dataclass
class Load:
    """What one load generator run measured."""

    requests: int = 0
    seconds: float = 0.0
    failed: int = 0
    bytes_per_second: float = 0.0
    latencies_us: list[int] = field(default_factory=list)
    detail: dict[str, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def _size(number: str, unit: str) -> float:
    return float(number) * _SIZE_UNITS[unit]


def parse_wrk(output: str) -> Load:
    """Requests, duration, failures (socket errors and non-2xx/3xx) and transfer rate of wrk."""
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h),", output)
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB|TB)", output)
    if total is None or transfer is None:
        raise LoadError(f"cannot read wrk's output: {output.strip()[-400:]}")
    load = Load(
        requests=int(total[1]),
        seconds=float(total[2]) * _TIME_UNITS[total[3]],
        bytes_per_second=_size(transfer[1], transfer[2]),
    )
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if errors is not None:
        names = ("connect", "read", "write", "timeout")
        for name, value in zip(names, errors.groups(), strict=True):
            load.detail[f"{name}_errors"] = int(value)
    statuses = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    load.detail["non_2xx_3xx"] = int(statuses[1]) if statuses else 0
    load.failed = int(sum(load.detail.values()))
    return load


def parse_h2load(output: str) -> Load:
    """Totals of h2load: requests done and failed, duration and rate."""
    finished = re.search(
        r"finished in ([\d.]+)(us|ms|s|m|h), ([\d.]+) req/s, ([\d.]+)(\w+)/s", output
    )
    requests = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        output,
    )
    if finished is None or requests is None:
        raise LoadError(f"cannot read h2load's output: {output.strip()[-400:]}")
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    bad_status = int(status[3]) + int(status[4]) if status else 0
    unit = finished[5]
    return Load(
        requests=int(requests[4]),
        seconds=float(finished[1]) * _TIME_UNITS[finished[2]],
        failed=int(requests[5]) + int(requests[6]) + int(requests[7]) + bad_status,
        bytes_per_second=_size(finished[4], unit if unit in _SIZE_UNITS else "B"),
    )


def parse_h2load_protocols(output: str) -> list[str]:
    """Every ALPN protocol h2load printed ("Application protocol: h2"), in order."""
    return re.findall(r"^Application protocol: (\S+)", output, flags=re.MULTILINE)


def parse_h2load_h2(output: str) -> Load:
    """An HTTP/2 run of h2load: its totals, or LoadError unless h2 was agreed and none failed."""
    protocols = sorted(set(parse_h2load_protocols(output)))
    if protocols != ["h2"]:
        # h2load falls back to HTTP/1.1 when the server picks it or answers no ALPN at all, and
        # still exits 0: its figures would be an HTTP/1.1 measurement filed under HTTP/2.
        agreed = ", ".join(protocols) or "no application protocol"
        raise LoadError(f"h2load negotiated {agreed}, not h2")
    load = parse_h2load(output)
    if load.failed:
        # h2load's own lines, since its counters overlap (an errored request is also failed).
        totals = re.findall(r"^(?:requests|status codes): .*$", output, flags=re.MULTILINE)
        raise LoadError(f"h2load saw failures: {'; '.join(totals)}")
    return load


def parse_h2load_log(text: str) -> tuple[list[int], int]:
    """(latencies in microseconds of 2xx/3xx responses, count of other statuses) of --log-file."""
    latencies, failed = [], 0
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        status, latency = int(parts[1]), int(parts[2])
        if 200 <= status < 400:
            latencies.append(latency)
        else:
            failed += 1
    return latencies, failed


def parse_s_time(output: str) -> tuple[int, int]:
    """(connections made, of which resumed) from openssl s_time's output."""
    counts = re.findall(r"^(\d+) connections in [\d.]+s;", output, flags=re.MULTILINE)
    if not counts:
        raise LoadError(f"cannot read s_time's output: {output.strip()[-400:]}")
    connections = int(counts[-1])
    # In -reuse mode s_time prints one character per connection: "r" when it was resumed.
    progress = "".join(line for line in output.splitlines() if line and set(line) <= set("r*123.:"))
    return connections, progress.count("r")


def parse_curl(output: str) -> tuple[int, int, float]:
    """(status, bytes, seconds) from curl -w '%{http_code} %{size_download} %{time_total}'."""
    parts = output.split()
    if len(parts) != 3:
        raise LoadError(f"cannot read curl's output: {output!r}")
    return int(parts[0]), int(parts[1]), float(parts[2])


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with `fraction` of all values at or below it."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def _run(command: Sequence[str], timeout: float) -> str:
    try:
        done = subprocess.run(
            list(command), check=False, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"{command[0]} did not finish in {timeout:.0f}s") from exc
    if done.returncode != 0:
        raise LoadError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-400:]}")
    return done.stdout + done.stderr


def wrk(
    binary: str,
    url: str,
    *,
    seconds: float,
    connections: int = 64,
    threads: int = 1,
    headers: Sequence[str] = (),
) -> Load:
    command = [binary, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    for header in headers:
        command += ["-H", header]
    return parse_wrk(_run([*command, url], seconds + GRACE))


def wrk_start(
    binary: str, url: str, *, seconds: float, connections: int = 64, threads: int = 1
) -> subprocess.Popen[str]:
    """Start wrk in the background (reconfiguration under load); finish with wrk_finish."""
    command = [binary, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", url]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wrk_finish(process: subprocess.Popen[str], seconds: float) -> Load:
    try:
        output, _ = process.communicate(timeout=seconds + GRACE)
    except subprocess.TimeoutExpired as exc:
        process.kill()
        process.communicate()
        raise LoadError("wrk did not finish in time") from exc
    return parse_wrk(output)


def h2load_fixed_rate(
    binary: str,
    url: str,
    *,
    rate: float,
    seconds: float,
    log_file: Path,
    connections: int = 64,
    warm_up: float = 1.0,
) -> Load:
    """HTTP/1.1 at a constant total rate; latencies from h2load's per-request log."""
    per_connection = max(rate / connections, 0.01)
    command = [
        binary,
        "--h1",
        "-t1",
        f"-c{connections}",
        f"--rps={per_connection:.2f}",
        f"-D{max(1, round(seconds))}",
        f"--warm-up-time={warm_up:g}",
        f"--log-file={log_file}",
        url,
    ]
    load = parse_h2load(_run(command, seconds + warm_up + GRACE))
    latencies, failed = parse_h2load_log(log_file.read_text())
    load.latencies_us = latencies
    load.failed = max(load.failed, failed)
    return load


def h2load_command(
    binary: str,
    url: str,
    *,
    seconds: float,
    connections: int,
    streams: int,
    threads: int = 1,
) -> list[str]:
    """h2load over TLS with its default ALPN list (h2 first), for a fixed duration."""
    return [
        binary,
        f"-c{connections}",
        f"-m{streams}",
        f"-t{threads}",
        f"-D{max(1, round(seconds))}",
        url,
    ]


def h2load_h2(binary: str, url: str, *, seconds: float, connections: int, streams: int) -> Load:
    """As many HTTP/2 requests as `connections` x `streams` concurrent streams can do."""
    command = h2load_command(binary, url, seconds=seconds, connections=connections, streams=streams)
    return parse_h2load_h2(_run(command, seconds + GRACE))


def s_time(binary: str, port: int, *, seconds: float, reuse: bool, parallel: int = 1) -> Load:
    """TLS handshakes per second with `parallel` openssl s_time clients, each one at a time."""
    command = [
        binary,
        "s_time",
        "-connect",
        f"127.0.0.1:{port}",
        "-time",
        str(max(1, round(seconds))),
    ]
    # With TLS 1.3 the ticket arrives after the handshake and s_time never reads it, so
    # resumption is measured over TLS 1.2, whose ticket is part of the handshake.
    command += ["-reuse", "-tls1_2"] if reuse else ["-new"]
    started = time.monotonic()
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(parallel)
    ]
    outputs = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=seconds + GRACE)
            outputs.append(output)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    # s_time's own "real seconds" is a whole number; our clock is finer.
    elapsed = time.monotonic() - started
    load = Load(seconds=elapsed)
    for output in outputs:
        connections, resumed = parse_s_time(output)
        load.requests += connections
        load.detail["resumed"] = load.detail.get("resumed", 0) + resumed
    return load


def curl_download(binary: str, url: str, *, timeout: float = 120.0) -> Load:
    """One download with curl; the rate is bytes over curl's total time."""
    output = _run(
        [
            binary,
            "--silent",
            "--show-error",
            "--insecure",
            "--http1.1",
            "--output",
            "/dev/null",
            "--max-time",
            str(int(timeout)),
            "--write-out",
            "%{http_code} %{size_download} %{time_total}",
            url,
        ],
        timeout + GRACE,
    )
    status, size, seconds = parse_curl(output)
    return Load(
        requests=1,
        seconds=seconds,
        failed=0 if status == 200 else 1,
        bytes_per_second=size / seconds if seconds > 0 else 0.0,
        detail={"bytes": size},
    )
