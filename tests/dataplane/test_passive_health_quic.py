"""Passive health checks for HTTP/3 (QUIC listeners) through a real node: a real aioquic client,
recording backends, one answering 500. Its requests count as HTTP/1.1 requests do: the failing
server is ejected after its consecutive 5xx, gets nothing while ejected, and returns after its
time (1 s, the shortest the schema allows; the wait for it is bounded with generous slack)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aioquic.asyncio.client import connect as quic_connect
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration

from tests.dataplane.conftest import WAIT, certificate_entry, listener, snapshot, wait_until
from tests.dataplane.test_passive_health_node import failing, passive_group, servers
from tests.dataplane.test_quic import SERVER_NAME, H3Client
from tests.fixtures.ports import free_port

LISTENER = "lsn-quic"


def h3_requests(port: int, ca: Any, paths: list[str]) -> list[tuple[int, bytes]]:
    """The paths requested one after another on one HTTP/3 connection: (status, body) of each."""

    async def run() -> list[tuple[int, bytes]]:
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=list(H3_ALPN), server_name=SERVER_NAME
        )
        configuration.load_verify_locations(cadata=ca.cert_pem.bytes())
        # aioquic's closing handshake counts in the time limit too.
        async with asyncio.timeout(WAIT * 3):
            async with quic_connect(
                "127.0.0.1", port, configuration=configuration, create_protocol=H3Client
            ) as client:
                answers = []
                for path in paths:
                    status, _, body = await client.request(b"GET", path.encode())  # type: ignore[attr-defined]
                    answers.append((status, body))
                return answers

    return asyncio.run(run())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_http3_requests_eject_a_failing_server_which_returns_after_its_time(
    dataplane, backends, ca
):
    good, bad = backends("good"), backends("bad", failing)
    port = free_port()
    result = dataplane.apply(
        snapshot(
            [
                listener(
                    port,
                    protocol="quic",
                    listener_id=LISTENER,
                    default_certificate_id="cert-quic",
                    scheduler="round_robin",
                )
            ],
            [passive_group(good, bad, consecutive_failures=3, base_ejection_time=1)],
            certificates=[certificate_entry("cert-quic", ca.issue_cert(SERVER_NAME))],
        )
    )
    assert result[LISTENER]["status"] == "running", result
    # Warm: one request to each server, whose pooled connections `before` counts.
    assert [status for status, _ in h3_requests(port, ca, ["/warm/0", "/warm/1"])] == [200, 500]
    before = open_fds()

    answers = h3_requests(port, ca, [f"/{n}" for n in range(12)])

    # Round robin: two more 500s (three in a row), then it is out and the other takes all.
    assert [status for status, _ in answers] == [200, 500] * 2 + [200] * 8
    assert len(bad.requests) == 3
    entry = servers(dataplane, LISTENER)["srv-bad-1"]
    assert entry["ejected"] is True and entry["healthy"] is False
    assert entry["ejection_reason"] == "passive: 3 consecutive 5xx"
    assert entry["ejections"] == 1

    # After its second it returns and takes its share again (failing, so it is out again).
    assert wait_until(lambda: servers(dataplane, LISTENER)["srv-bad-1"]["ejected"] is False)
    answers = h3_requests(port, ca, [f"/back/{n}" for n in range(4)])
    assert sorted(status for status, _ in answers) == [200, 200, 500, 500]
    assert [request.target for request in bad.requests] == [
        "/warm/1",
        "/1",
        "/3",
        *[request.target for request in bad.requests[3:] if request.target.startswith("/back/")],
    ]
    assert len(bad.requests) == 5
    # The connections of both runs are closed: no descriptor is left behind.
    assert wait_until(lambda: open_fds() <= before), (open_fds(), before)
