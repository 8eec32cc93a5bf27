"""Finished connections and streams are freed by reference counting, not by the cycle collector.

A connection whose parts hold each other (the proxy and its parser's callbacks, an HTTP/2 stream
and the proxy it is the transport of) lives until the next collection, and each collection walks
every object young enough: measured on HTTP/2, that was 8,000 instructions per request. These
tests run real traffic with the collector saving what it finds, and expect it to find none of the
node's objects.
"""

from __future__ import annotations

import collections
import gc
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.dataplane.conftest import (
    Recorded,
    Reply,
    listener,
    server_group,
    snapshot,
)
from tests.dataplane.test_http2 import h2_listener  # noqa: F401 - a fixture
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "h2load"], capture_output=True, check=False).returncode != 0,
    reason="h2load (nghttp2-client) drives the traffic",
)


# Every test makes at least 40 connections or streams.
PER_CONNECTION = 10


@pytest.fixture
def collector_saves_all() -> Iterator[None]:
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def node_garbage() -> dict[str, int]:
    """The node's objects that only the cycle collector could free, by type, where a type
    counts ten or more: one per connection or request, not a listener's or a node's own
    (those of an earlier test's node are collected whenever it lets go of them)."""
    # Closing a connection runs its last callbacks on the next loop iterations.
    time.sleep(0.3)
    gc.collect()
    counts = collections.Counter(
        type(found).__qualname__
        for found in gc.garbage
        if type(found).__module__.startswith("dataplane")
    )
    return {name: count for name, count in counts.items() if count >= PER_CONNECTION}


def h2load(*args: str, answered: str = "2xx") -> None:
    """Run h2load; every request gets a response of the `answered` class."""
    result = subprocess.run(
        ["h2load", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    requests = args[args.index("-n") + 1]
    assert f"{requests} done" in result.stdout, result.stdout
    assert f" {requests} {answered}" in result.stdout, result.stdout


def test_http2_streams_leave_no_cycles(h2_listener, collector_saves_all):  # noqa: F811
    port, web = h2_listener()
    h2load("-n", "400", "-c", "4", "-m", "10", f"https://127.0.0.1:{port}/")
    assert len(web.requests) == 400
    assert node_garbage() == {}


def test_http2_answers_of_the_node_its_own_leave_no_cycles(
    h2_listener,  # noqa: F811
    loop_thread,
    collector_saves_all,
):
    # With its server gone, the node answers 502 itself: written as HTTP/1.1 and read back by
    # the stream's response parser, which holds the stream through its callbacks.
    port, web = h2_listener()
    loop_thread.run(web.stop())
    h2load("-n", "40", "-c", "2", "-m", "4", f"https://127.0.0.1:{port}/", answered="5xx")
    assert node_garbage() == {}


def test_https_connections_leave_no_cycles(h2_listener, collector_saves_all):  # noqa: F811
    port, web = h2_listener(http2=False)
    url = f"https://127.0.0.1:{port}/"
    h2load("-n", "200", "-c", "4", "--h1", url)
    h2load("-n", "100", "-c", "4", "--h1", "-H", "Connection: close", url)
    assert len(web.requests) == 300
    assert node_garbage() == {}


def test_plain_http_connections_and_closed_backend_connections_leave_no_cycles(
    dataplane, backends, collector_saves_all
):
    def closing(request: Recorded) -> Reply:
        # Every backend connection ends after one response: the upstream side closes too.
        return Reply(body=b"ok", close=True)

    web = backends("web", closing)
    port = free_port()
    result = dataplane.apply(snapshot([listener(port)], [server_group(web)]))
    assert result["lsn-web"]["status"] == "running", result
    h2load("-n", "100", "-c", "4", "--h1", "-H", "Connection: close", f"http://127.0.0.1:{port}/")
    assert len(web.requests) == 100
    assert node_garbage() == {}
