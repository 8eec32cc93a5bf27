"""Reading what wrk, h2load, openssl s_time and curl print, and the percentile."""

from __future__ import annotations

import pytest

from bench.loadgen import (
    LoadError,
    parse_curl,
    parse_h2load,
    parse_h2load_log,
    parse_s_time,
    parse_wrk,
    percentile,
)

WRK_CLEAN = """Running 4s test @ http://127.0.0.1:20001/0
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  214.31us   6.88ms   91.20%
    Req/Sec    62.91k     1.80k   65.21k    80.00%
  250410 requests in 4.00s, 36.06MB read
Requests/sec:  62594.50
Transfer/sec:      9.01MB
"""

WRK_ERRORS = """Running 8s test @ http://127.0.0.1:20001/0
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.02ms    1.31ms  40.88ms   91.20%
    Req/Sec    30.00k     1.80k   35.21k    80.00%
  240000 requests in 1.00m, 1.50GB read
  Socket errors: connect 1, read 12, write 3, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:   4000.00
Transfer/sec:     25.60MB
"""

H2LOAD = """starting benchmark...
spawning thread #0: 64 total client(s). Timing-based test with 1s of warm-up time.
Warm-up started for thread #0.
Main benchmark duration is started for thread #0.

finished in 6.00s, 12001.50 req/s, 1.83MB/s
requests: 72009 total, 72073 started, 72009 done, 72000 succeeded, 6 failed, 2 errored, 1 timeout
status codes: 72000 2xx, 0 3xx, 0 4xx, 3 5xx
traffic: 10.99MB (11520000) total, 8.52MB (8928000) headers (space savings 0.00%), 0B (0) data
"""

S_TIME_NEW = """Collecting connection statistics for 3 seconds
*************************************************

613 connections in 0.48s; 1277.08 connections/user sec, bytes read 0
613 connections in 3 real seconds, 0 bytes read per connection
"""

S_TIME_REUSE = """

Now timing with session id reuse.
starting
rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr*rrrrrrrrrr

50 connections in 0.01s; 5000.00 connections/user sec, bytes read 0
50 connections in 3 real seconds, 0 bytes read per connection
"""


def test_wrk_without_errors_counts_requests_and_transfer() -> None:
    load = parse_wrk(WRK_CLEAN)

    assert load.requests == 250410
    assert load.seconds == pytest.approx(4.0)
    assert load.per_second == pytest.approx(62602.5)
    assert load.bytes_per_second == pytest.approx(9.01 * 1024 * 1024)
    assert load.failed == 0


def test_wrk_failures_add_socket_errors_and_bad_statuses() -> None:
    load = parse_wrk(WRK_ERRORS)

    assert load.seconds == pytest.approx(60.0)
    assert load.detail == {
        "connect_errors": 1,
        "read_errors": 12,
        "write_errors": 3,
        "timeout_errors": 4,
        "non_2xx_3xx": 5,
    }
    assert load.failed == 25


def test_wrk_output_without_totals_is_an_error() -> None:
    with pytest.raises(LoadError, match="wrk"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_h2load_counts_only_successes_and_adds_every_kind_of_failure() -> None:
    load = parse_h2load(H2LOAD)

    assert load.requests == 72000
    assert load.seconds == pytest.approx(6.0)
    assert load.failed == 6 + 2 + 1 + 3


def test_h2load_log_separates_latencies_from_bad_statuses() -> None:
    log = "1700000000000000\t200\t812\n1700000000000100\t304\t95\n1700000000000200\t502\t40\n"

    latencies, failed = parse_h2load_log(log)

    assert latencies == [812, 95]
    assert failed == 1


def test_s_time_full_handshakes() -> None:
    assert parse_s_time(S_TIME_NEW) == (613, 0)


def test_s_time_resumed_handshakes_are_counted_from_the_progress_line() -> None:
    assert parse_s_time(S_TIME_REUSE) == (50, 49)


def test_s_time_that_could_not_connect_is_an_error() -> None:
    with pytest.raises(LoadError, match="s_time"):
        parse_s_time("connect: Connection refused\nconnect:errno=111\n")


def test_curl_write_out() -> None:
    assert parse_curl("200 104857600 0.512345") == (200, 104857600, 0.512345)
    with pytest.raises(LoadError):
        parse_curl("")


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.5, 50), (0.99, 99), (1.0, 100), (0.001, 1)],
)
def test_percentile_is_nearest_rank(fraction: float, expected: int) -> None:
    values = list(range(100, 0, -1))

    assert percentile(values, fraction) == expected


def test_percentile_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError):
        percentile([], 0.5)
