"""Instruction counting: callgrind's files and control, the scenarios, the table, one real count."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import configs, instructions
from bench.__main__ import parse_args
from bench.instructions import (
    SCENARIOS,
    CallgrindError,
    CallgrindSupervisor,
    Counter,
    InstructionResults,
    Measurement,
    SingleProcessNginx,
    callgrind_command,
    check_h2load,
    open_connections,
    parse_callgrind,
    read_callgrind,
    wait_idle,
)
from bench.loadgen import LoadError
from bench.processes import Supervisor
from bench.proxies import Shared
from bench.tools import Tools, ensure_tools, missing_packages

VALGRIND = shutil.which("valgrind")
CONTROL = shutil.which("callgrind_control")
needs_valgrind = pytest.mark.skipif(
    VALGRIND is None or CONTROL is None,
    reason="valgrind is not installed (python -m bench --instructions installs Debian's valgrind)",
)

# A process that does as much work as it is told, one line at a time, and answers when done.
WORKER = """
import sys
for line in sys.stdin:
    print(sum(range(int(line))), flush=True)
"""

# Trimmed from h2load 1.52 with --h1 against a proxy's HTTP listener.
H1_OUTPUT = """starting benchmark...
Application protocol: http/1.1
finished in 2.94ms, 3405.99 req/s, 0B/s
requests: 10 total, 10 started, 10 done, 10 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 10 2xx, 0 3xx, 0 4xx, 0 5xx
"""


# Reading callgrind's files.


@needs_valgrind
def test_reads_the_instruction_count_of_a_real_callgrind_file(tmp_path: Path) -> None:
    out = tmp_path / "callgrind.out"
    done = subprocess.run(
        [VALGRIND, "--tool=callgrind", f"--callgrind-out-file={out}", "/bin/true"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )

    counts = read_callgrind(out)

    assert counts.events[0] == "Ir"
    assert counts.instructions > 1000
    assert counts.trigger == "Program termination"
    # valgrind's own closing line: "==PID== I   refs:      123,456".
    refs = next(line for line in done.stderr.splitlines() if "I   refs:" in line)
    assert counts.instructions == int(refs.split(":")[1].replace(",", ""))
    annotate = shutil.which("callgrind_annotate")
    if annotate is not None:
        report = subprocess.run(
            [annotate, str(out)], check=True, capture_output=True, text=True, timeout=60
        ).stdout
        totals = next(line for line in report.splitlines() if "PROGRAM TOTALS" in line)
        assert counts.instructions == int(totals.split()[0].replace(",", ""))


def test_summary_is_the_figure_and_totals_the_fallback() -> None:
    header = "# callgrind format\nversion: 1\nevents: Ir Dr Dw\n"

    both = parse_callgrind(header + "summary: 300 20 1\nfn=(1) main\n5 1\ntotals: 310 20 1\n")
    totals_only = parse_callgrind(header + "fn=(1) main\n5 1\ntotals: 310 20 1\n")

    assert both.instructions == 300
    assert both.count("Dw") == 1
    assert totals_only.instructions == 310


def test_counts_left_off_the_end_of_a_line_are_zero() -> None:
    counts = parse_callgrind("events: Ir Dr Dw\nsummary: 300\n")

    assert counts.count("Dw") == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no events: line"),
        ("summary: 12\ntotals: 12\n", "no events: line"),
        ("events:\nsummary: 12\n", "names no event"),
        ("events: Ir\n", "neither a summary: nor a totals: line"),
        ("events: Ir\nsummary: 12\nsummary: 13\n", "more than one summary: line"),
        ("events: Ir\nevents: Dr\nsummary: 12\n", "more than one events: line"),
        ("events: Ir\nsummary: twelve\n", "not counts"),
        ("events: Ir\nsummary: -12\n", "not counts"),
        ("events: Ir\nsummary: \u00b2\u0661\n", "not counts"),
        ("events: Ir\nsummary: \n", "not counts"),
        ("events: Ir\nsummary: 12 13\n", "2 counts for 1 events"),
        ("events: Ir\nsummary: " + "1" * 5000 + "x\n", "not counts"),
        ("\x00\xff binary garbage: \x01\n", "no events: line"),
    ],
)
def test_files_that_are_not_callgrind_dumps_are_refused(text: str, message: str) -> None:
    with pytest.raises(CallgrindError, match=message):
        parse_callgrind(text)


def test_a_dump_without_instructions_is_refused() -> None:
    counts = parse_callgrind("events: Dr Dw\nsummary: 1 2\n")

    with pytest.raises(CallgrindError, match="no Ir event"):
        _ = counts.instructions


# Running a process under callgrind.


def test_valgrind_starts_with_instrumentation_off_and_no_children() -> None:
    command = callgrind_command("/usr/bin/valgrind", Path("/work/callgrind/dataplane"))

    assert command[:2] == ["/usr/bin/valgrind", "--tool=callgrind"]
    assert "--instr-atstart=no" in command
    assert "--trace-children=no" in command
    assert command[-1] == "--callgrind-out-file=/work/callgrind/dataplane.%p"


@needs_valgrind
def test_counter_counts_the_work_between_zero_and_dump(tmp_path: Path) -> None:
    base = tmp_path / "worker"
    process = subprocess.Popen(
        [*callgrind_command(VALGRIND, base), sys.executable, "-c", WORKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        counter = Counter(CONTROL, process.pid, base)

        def work(amount: int) -> None:
            process.stdin.write(f"{amount}\n")
            process.stdin.flush()
            assert process.stdout.readline().strip() == str(sum(range(amount)))
            wait_idle(process.pid)

        # Once it answers, valgrind has opened the pipes callgrind_control talks through.
        work(100)
        counter.instrument()
        work(100)
        counter.zero()
        work(100)
        small = counter.dump("small")
        work(1_000_000)
        large = counter.dump("large")
    finally:
        process.kill()
        process.wait(30)

    assert small.trigger == "dump small"
    assert large.trigger == "dump large"
    # Summing a million numbers costs far more than a hundred: dumping zeroed the counters.
    assert large.instructions > 10 * small.instructions > 0


@needs_valgrind
def test_counter_refuses_a_process_that_is_not_under_callgrind(tmp_path: Path) -> None:
    counter = Counter(CONTROL, os.getpid(), tmp_path / "none")

    with pytest.raises(CallgrindError, match="failed"):
        counter.zero()


@needs_valgrind
def test_supervisor_runs_only_the_measured_proxies_under_callgrind(tmp_path: Path) -> None:
    supervisor = CallgrindSupervisor(tmp_path, VALGRIND, {"measured"})
    env = {"PATH": os.environ["PATH"], "PYTHONMALLOC": "malloc", "KEPT": "yes"}
    try:
        measured = supervisor.start("measured", ["/usr/bin/env"], env=env)
        plain = supervisor.start("plain", ["/usr/bin/env"], env=env)
        assert measured.wait(120) == 0
        assert plain.wait(30) == 0
    finally:
        supervisor.stop_all()

    measured_log = (tmp_path / "measured.log").read_text()
    plain_log = (tmp_path / "plain.log").read_text()
    assert "Callgrind" in measured_log
    assert "KEPT=yes" in measured_log
    # The node's defaults: no allocator or debug setting that changes the count.
    assert "PYTHONMALLOC" not in measured_log
    assert "Callgrind" not in plain_log
    assert "PYTHONMALLOC=malloc" in plain_log
    assert any(path.name.startswith("measured.") for path in supervisor.dump_dir.iterdir())


# Two proxy-side sockets on port 20480 (0x5000) still open, one closed, one listening; a client's.
TCP_TABLE = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt
   0: 0100007F:5000 00000000:0000 0A 00000000:00000000 00:00000000 00000000
   1: 0100007F:5000 0100007F:9C40 01 00000000:00000000 00:00000000 00000000
   2: 0100007F:5000 0100007F:9C41 08 00000000:00000000 00:00000000 00000000
   3: 0100007F:5000 0100007F:9C42 06 00000000:00000000 03:00000F9A 00000000
   4: 0100007F:9C40 0100007F:5000 01 00000000:00000000 00:00000000 00000000
   5: garbage
   6: 0100007F 0100007F:5000 01
   7: 0100007F:ZZZZ 0100007F:5000 01 00000000:00000000 00:00000000 00000000
"""


def test_open_connections_are_the_proxy_side_ones_not_yet_closed() -> None:
    assert open_connections(0x5000, TCP_TABLE) == 2
    assert open_connections(0x9C40, TCP_TABLE) == 1
    assert open_connections(1, TCP_TABLE) == 0
    assert open_connections(1, "") == 0


def test_a_connection_counts_until_the_server_side_closes_it() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        assert open_connections(port) == 1
        client.close()
        # The client's FIN leaves the server side in CLOSE_WAIT: still the server's to close.
        assert server.recv(1) == b""
        assert open_connections(port) == 1
        server.close()
        assert open_connections(port) == 0


def test_nginx_runs_as_one_process(tmp_path: Path) -> None:
    tools = Tools(*(["/bin/false"] * 6), nginx_stream_module=None)
    certificate = configs.ServerCertificate("cert", "key")
    files = {name: tmp_path / name for name in ("certificate", "key", "haproxy")}
    shared = Shared(tools, Supervisor(tmp_path), tmp_path, 20000, certificate, files)
    nginx = SingleProcessNginx(shared, configs.ProxyPorts(20001, 20002, 20003))

    nginx._write_config(())

    text = (tmp_path / "nginx-proxy.conf").read_text()
    assert "master_process off;" in text
    assert "master_process on;" not in text
    assert "worker_processes 1;" in text


# Scenarios and h2load.


def test_scenarios_are_fixed_counts_of_the_right_protocol() -> None:
    url = "http://127.0.0.1:1/0"

    http1 = SCENARIOS["http1"].command("h2load", url, 2004)
    new_connection = SCENARIOS["new_connection"].command("h2load", url, 2004)
    h2 = SCENARIOS["h2"].command("h2load", url, 2004)

    assert http1 == ["h2load", "-n2004", "-c4", "-t1", "--h1", url]
    assert new_connection[-3:] == ["-H", "Connection: close", url]
    assert "--h1" not in h2
    assert "-m10" in h2
    assert SCENARIOS["https"].tls
    assert SCENARIOS["https"].protocol == "http/1.1"
    assert SCENARIOS["h2"].protocol == "h2"
    assert SCENARIOS["new_connection"].shown_command() == (
        "h2load -nN -c4 -t1 --h1 -H 'Connection: close' http://127.0.0.1:PORT/0"
    )


def test_h2load_run_of_every_request_is_accepted() -> None:
    load = check_h2load(H1_OUTPUT, requests=10, protocol="http/1.1")

    assert load.requests == 10
    assert load.failed == 0


@pytest.mark.parametrize(
    ("output", "requests", "protocol", "message"),
    [
        (H1_OUTPUT, 10, "h2", "negotiated http/1.1, not h2"),
        (H1_OUTPUT.replace("Application protocol: http/1.1\n", ""), 10, "http/1.1", "nothing"),
        (H1_OUTPUT + "Application protocol: h2\n", 10, "h2", "h2, http/1.1, not h2"),
        (H1_OUTPUT, 11, "http/1.1", "not all 11 requests succeeded"),
        (
            H1_OUTPUT.replace(
                "10 succeeded, 0 failed, 0 errored", "7 succeeded, 3 failed, 3 errored"
            ),
            10,
            "http/1.1",
            "not all 10 requests succeeded",
        ),
        (
            H1_OUTPUT.replace("10 2xx, 0 3xx, 0 4xx, 0 5xx", "8 2xx, 0 3xx, 0 4xx, 2 5xx"),
            10,
            "http/1.1",
            "2 5xx",
        ),
    ],
)
def test_h2load_runs_with_failures_or_another_protocol_fail(
    output: str, requests: int, protocol: str, message: str
) -> None:
    with pytest.raises(LoadError, match=message):
        check_h2load(output, requests=requests, protocol=protocol)


def test_only_and_requests_options() -> None:
    args = parse_args(["--instructions", "--only", "h2, http1,h2", "--requests", "500"])

    assert args.instructions
    assert args.only == ["h2", "http1"]
    assert args.requests == 500
    assert parse_args(["--instructions"]).only is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--instructions", "--only", "http3"],
        ["--instructions", "--only", ","],
        ["--instructions", "--requests", "9"],
        ["--instructions", "--requests", "-5"],
        ["--instructions", "--requests", "1e9"],
        ["--instructions", "--requests", "\u0661\u0660\u0660"],
        ["--only", "http1"],
        ["--requests", "100"],
    ],
)
def test_bad_instruction_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)

    assert exited.value.code == 2


# The table.


def results() -> InstructionResults:
    scenarios = [SCENARIOS["http1"], SCENARIOS["h2"], SCENARIOS["https"]]
    measured = InstructionResults(2000, scenarios, ["dataplane", "haproxy", "nginx"])
    runs = {
        ("http1", "dataplane"): 168_000_000,
        ("http1", "haproxy"): 60_000_000,
        ("http1", "nginx"): 44_000_000,
        ("h2", "dataplane"): 1_670_000_000,
        ("h2", "haproxy"): 78_000_000,
        ("https", "haproxy"): 114_000_000,
        ("https", "nginx"): 80_000_000,
    }
    for key, instructions_counted in runs.items():
        measured.values[key] = Measurement(
            requests=2000,
            instructions=instructions_counted,
            setup_instructions=1_000_000,
            run_instructions=instructions_counted + 1_000_000,
            seconds=1.5,
        )
    measured.values[("https", "dataplane")] = Measurement(error="h2load negotiated h2")
    measured.environment = {"started": "2026-12-03 04:00 UTC", "commit": "abc1234"}
    return measured


def test_report_has_a_row_per_scenario_with_the_ratio_to_haproxy() -> None:
    built = instructions.build(results())
    rows = {row["key"]: row for row in built["rows"]}

    assert [row["key"] for row in built["rows"]] == ["http1", "h2", "https"]
    assert rows["http1"]["values"]["dataplane"]["instructions_per_request"] == 84_000
    assert rows["http1"]["ratio"] == pytest.approx(2.8)
    assert rows["h2"]["ratio"] == pytest.approx(1_670 / 78)
    assert "nginx" not in rows["h2"]["values"]
    assert rows["https"]["ratio"] is None
    assert built["ratios"] == {"http1": rows["http1"]["ratio"], "h2": rows["h2"]["ratio"]}


def test_markdown_table_shows_counts_errors_and_ratios() -> None:
    text = instructions.markdown(instructions.build(results()))
    lines = text.splitlines()

    assert "| scenario | dataplane | HAProxy | nginx | dataplane/HAProxy |" in lines
    assert "| HTTP/1.1 keep-alive, 4 connections, 0 B | 84,000 | 30,000 | 22,000 | 2.80 |" in lines
    assert (
        "| HTTP/2 over TLS, 4 connections x 10 streams, 0 B | 835,000 | 39,000 | - | 21.41 |"
        in (lines)
    )
    https = next(line for line in lines if line.startswith("| HTTPS"))
    assert https.endswith("| error | 57,000 | 40,000 | - |")
    assert "- https (dataplane): h2load negotiated h2" in lines
    assert "Dataplane: commit abc1234, Python." in lines


def test_reports_are_written_beside_the_timed_ones(tmp_path: Path) -> None:
    md_path, json_path = instructions.write(instructions.build(results()), tmp_path)

    assert md_path == tmp_path / "instructions.md"
    assert json_path == tmp_path / "instructions.json"
    assert "84,000" in md_path.read_text()
    assert '"http1": 2.8' in json_path.read_text()


# One real count: the dataplane under callgrind, 20 requests.


@pytest.fixture
def work_directory() -> Iterator[Path]:
    # nginx's workers run as nobody and must read the backend's bodies, as in python -m bench,
    # which runs under the shell's umask; the console's settings set 077 for the test process.
    old_umask = os.umask(0o022)
    directory = Path(tempfile.mkdtemp(prefix="bench-instructions-test-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        os.umask(old_umask)
        shutil.rmtree(directory, ignore_errors=True)


@needs_valgrind
@pytest.mark.skipif(
    bool(missing_packages()), reason="the benchmark's tools (nginx, h2load) are not installed"
)
@pytest.mark.timeout(240)
def test_dataplane_instructions_per_request_are_counted(work_directory: Path) -> None:
    tools = ensure_tools()
    supervisor = CallgrindSupervisor(work_directory, VALGRIND, ["dataplane"])
    try:
        measured = instructions.measure(
            tools,
            work_directory,
            supervisor,
            scenarios=[SCENARIOS["http1"]],
            proxies=["dataplane"],
            requests=20,
            warm_up=20,
        )
    finally:
        supervisor.stop_all()

    value = measured.values[("http1", "dataplane")]
    assert value.error == ""
    assert value.requests == 20
    assert value.run_instructions > value.setup_instructions > 0
    # Parsing, routing and forwarding a request in Python takes thousands of instructions.
    assert value.per_request > 5_000
    dumps = sorted(path.name for path in supervisor.dump_dir.iterdir())
    assert any(name.endswith(".1") for name in dumps)
