"""The control API before and around authentication: what a client without the token can cost.

A node's control API is reachable by whoever reaches its port. Without the token a client must
get nothing but a 401: the token is checked once the head is complete, before any body byte is
read, and heads and bodies have size limits and timeouts. An authenticated client that sends a
malformed snapshot (nested a thousand deep, a string where a list belongs) gets a 422 naming the
problem, never a 500.

The node runs as a real `python -m dataplane` process; memory is read from its /proc entry.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from dataplane.config import Snapshot
from dataplane.control import ControlApi
from tests.dataplane import conftest as dataplane_fixtures
from tests.dataplane.conftest import (
    WAIT,
    LoopThread,
    NodeHandle,
    certificate_entry,
    listener,
    read_until_closed,
    snapshot,
    split_responses,
)
from tests.dataplane.test_process import TOKEN, DataplaneProcess
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.integration

MiB = 1024 * 1024

# The in-process node of tests/dataplane/conftest.py, for limits the test sets small.
loop_thread = dataplane_fixtures.loop_thread
dataplane = dataplane_fixtures.dataplane


@pytest.fixture
def node(tmp_path: Path) -> Iterator[DataplaneProcess]:
    process = DataplaneProcess(tmp_path, tmp_path / "state")
    yield process
    process.kill()


def proc_kib(pid: int, field: str) -> int:
    """A memory figure of a process from /proc/PID/status, in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def reset_peak_rss(pid: int) -> None:
    # Writing 5 to clear_refs sets VmHWM back to the current RSS (proc(5)).
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def head(method: str, path: str, *lines: str) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: node\r\n" + "".join(f"{x}\r\n" for x in lines)
    ).encode() + b"\r\n"


def put(port: int, body: bytes, *, token: str = TOKEN) -> tuple[int, dict[str, Any]]:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(
            head(
                "PUT",
                "/v1/config",
                f"Authorization: Bearer {token}",
                "Content-Type: application/json",
                f"Content-Length: {len(body)}",
                "Connection: close",
            )
            + body
        )
        ((status, payload),) = split_responses(read_until_closed(sock))
    return status, json.loads(payload)


# -- before the token ------------------------------------------------------------------------------


def test_a_body_without_token_is_refused_when_the_head_is_complete(node):
    with socket.create_connection(("127.0.0.1", node.port), timeout=WAIT) as sock:
        sock.sendall(head("PUT", "/v1/config", "Content-Length: 60000000"))
        # No body byte is sent: the answer must not wait for one.
        answer = read_until_closed(sock)

    assert answer.startswith(b"HTTP/1.1 401 ")
    assert b"\r\nConnection: close\r\n" in answer
    assert b'WWW-Authenticate: Bearer realm="dataplane"' in answer


def test_a_wrong_token_is_refused_before_the_body(node):
    with socket.create_connection(("127.0.0.1", node.port), timeout=WAIT) as sock:
        sock.sendall(
            head("PUT", "/v1/config", "Authorization: Bearer guess", "Content-Length: 1000")
        )
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 401 ")


def test_parallel_bodies_without_token_do_not_grow_the_node(node):
    pid = node.process.pid
    reset_peak_rss(pid)
    before = proc_kib(pid, "VmRSS")
    length = 60_000_000
    accepted: list[int] = []

    def attacker() -> None:
        sent = 0
        chunk = b" " * MiB
        with socket.create_connection(("127.0.0.1", node.port), timeout=WAIT) as sock:
            try:
                sock.sendall(head("PUT", "/v1/config", f"Content-Length: {length}"))
                while sent < length:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass  # the node hung up: what the test wants
        accepted.append(sent)

    threads = [threading.Thread(target=attacker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    peak = proc_kib(pid, "VmHWM")
    # Socket buffers take a few MiB of each body before the node's close resets the connection;
    # none of the eight bodies is taken whole.
    assert len(accepted) == 8
    assert max(accepted) < length
    assert (peak - before) * 1024 < 32 * MiB, f"peak RSS grew by {(peak - before) // 1024} MiB"
    assert node.request("GET", "/v1/status")[0] == 200


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(node):
    with socket.create_connection(("127.0.0.1", node.port), timeout=WAIT) as sock:
        sock.sendall(
            head(
                "PUT",
                "/v1/config",
                f"Authorization: Bearer {TOKEN}",
                f"Content-Length: {65 * MiB}",
            )
        )
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"\r\nConnection: close\r\n" in answer


def test_a_large_snapshot_sent_with_its_head_in_one_write_is_applied(node):
    # About 1 MiB: the first read holds the head and the start of the body.
    entries = [f"10.{a}.{b}.0/24" for a in range(256) for b in range(256)]
    document = snapshot([], [], acls=[{"id": "acl-large", "entries": entries}])
    status, answer = put(node.port, json.dumps(document).encode())
    assert (status, answer["generation"]) == (200, 1)


def test_the_body_limit_is_set_on_the_command_line(tmp_path):
    node = DataplaneProcess(tmp_path, tmp_path / "state", extra=("--control-max-body", "1"))
    try:
        with socket.create_connection(("127.0.0.1", node.port), timeout=WAIT) as sock:
            sock.sendall(
                head(
                    "PUT",
                    "/v1/config",
                    f"Authorization: Bearer {TOKEN}",
                    f"Content-Length: {MiB + 1}",
                )
            )
            assert read_until_closed(sock).startswith(b"HTTP/1.1 413 ")
        assert put(node.port, json.dumps(snapshot([], [])).encode())[0] == 200
    finally:
        node.kill()


def test_a_head_over_the_limit_is_refused(node):
    with socket.create_connection(("127.0.0.1", node.port), timeout=WAIT) as sock:
        try:
            sock.sendall(
                head("GET", "/v1/status", *(f"X-Filler-{n}: {'a' * 1000}" for n in range(40)))
            )
        except OSError:
            pass
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_half_sent_heads_time_out(node):
    """The battery's 50 heads that never end: each is closed after the head timeout."""
    sockets = [socket.create_connection(("127.0.0.1", node.port), timeout=30) for _ in range(50)]
    started = time.monotonic()
    try:
        for sock in sockets:
            sock.sendall(b"PUT /v1/config HTTP/1.1\r\nHost: node\r\nContent-Le")
        answers = [read_until_closed(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    elapsed = time.monotonic() - started

    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers)
    assert elapsed < 25
    # A whole request still gets its answer afterwards.
    assert node.request("GET", "/v1/status")[0] == 200


# -- limits that need short timeouts: the control API in this process, on a real node -------------


@pytest.fixture
def control(loop_thread: LoopThread, dataplane: NodeHandle) -> Callable[..., int]:
    """Factory: a ControlApi with the given limits, serving the test node; returns its port."""
    started: list[ControlApi] = []

    def start(**limits: Any) -> int:
        api = loop_thread.call(lambda: ControlApi(dataplane.node, token=TOKEN, **limits))
        started.append(api)
        _, port = loop_thread.run(api.start("127.0.0.1", 0))
        return port

    yield start
    for api in started:
        loop_thread.call(api.close)


def test_a_body_that_stalls_times_out(control):
    port = control(body_timeout=1.0)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(
            head("PUT", "/v1/config", f"Authorization: Bearer {TOKEN}", "Content-Length: 100")
            + b'{"instance_id"'
        )
        started = time.monotonic()
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 5


def test_an_idle_connection_between_requests_times_out(control):
    port = control(head_timeout=1.0)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(head("GET", "/v1/healthz"))
        answer = read_until_closed(sock)
    # The first request is answered; then the silence is closed without a second answer.
    assert [status for status, _ in split_responses(answer)] == [200]


def test_connections_over_the_cap_are_refused_until_one_closes(control):
    port = control(max_connections=4)
    held = [socket.create_connection(("127.0.0.1", port), timeout=WAIT) for _ in range(4)]
    try:
        # Let the node accept the four before the fifth arrives.
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as extra:
            refused = read_until_closed(extra)
        assert refused.startswith(b"HTTP/1.1 503 ")
        assert b"Retry-After:" in refused
    finally:
        held.pop().close()
    try:
        deadline = time.monotonic() + WAIT
        while True:
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
                sock.sendall(head("GET", "/v1/healthz", "Connection: close"))
                answer = read_until_closed(sock)
            if answer.startswith(b"HTTP/1.1 200 ") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert answer.startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in held:
            sock.close()


def test_pipelined_requests_are_answered_in_order_up_to_a_refusal(control):
    port = control()
    status = head("GET", "/v1/status", f"Authorization: Bearer {TOKEN}")
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(status + head("GET", "/v1/healthz") + head("GET", "/v1/status") + status)
        answers = split_responses(read_until_closed(sock))
    # The third has no token: it is refused after the first two are answered, and the fourth,
    # behind it on the same connection, is never read.
    assert [code for code, _ in answers] == [200, 200, 401]


def test_a_chunked_body_is_limited_while_it_is_read(control):
    port = control(max_body=1000)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        try:
            sock.sendall(
                head(
                    "PUT",
                    "/v1/config",
                    f"Authorization: Bearer {TOKEN}",
                    "Transfer-Encoding: chunked",
                )
            )
            for _ in range(10):
                sock.sendall(b"200\r\n" + b" " * 0x200 + b"\r\n")
        except OSError:
            pass
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413 ")


# -- malformed snapshots from an authenticated client ----------------------------------------------


def test_json_nested_a_thousand_deep_is_a_422(node):
    status, answer = put(node.port, b"[" * 1000 + b"]" * 1000)

    assert status == 422
    assert any("nested" in reason for reason in answer["reasons"]), answer
    node.kill()
    log = "".join(node.log) + "".join(iter_queue(node))
    assert "Traceback" not in log
    assert "RecursionError" not in log


def iter_queue(node: DataplaneProcess) -> Iterator[str]:
    while not node.lines.empty():
        yield node.lines.get_nowait()


def rich_snapshot() -> dict[str, Any]:
    """One snapshot using every part of the schema, every field written out."""
    ca = trustme.CA()
    client_ca = trustme.CA(organization_name="Client CA")
    ports = [free_port() for _ in range(6)]
    servers = [{"id": "srv-1", "address": "127.0.0.1", "port": free_port(), "weight": 50}]
    health = {"enabled": False, "protocol": "http", "path": "/health", "domain": "example.com"}
    raw = snapshot(
        [
            listener(
                ports[0],
                listener_id="lsn-http",
                persistence={"mode": "insert_cookie", "cookie_timeout": 60},
                acl={"mode": "whitelist", "acl_id": "acl-office"},
                retrieve_client_ip={"enabled": True, "trusted": ["10.0.0.0/8"]},
                compression="gzip",
                bandwidth_mbit=10,
                forwarding_rules=[
                    {
                        "id": "rule-1",
                        "conditions": [
                            {"type": "path", "values": ["/api"], "match": "prefix"},
                            {"type": "header", "name": "X-Env", "values": ["blue"]},
                        ],
                        "action": {"type": "forward", "server_group_id": "sgp-web"},
                    },
                    {
                        "id": "rule-2",
                        "conditions": [{"type": "host", "values": ["old.example.com"]}],
                        "action": {"type": "redirect", "status_code": 301, "port": 443},
                    },
                    {
                        "id": "rule-3",
                        "conditions": [{"type": "method", "values": ["DELETE"]}],
                        "action": {"type": "fixed_response", "status_code": 403, "body": "no"},
                    },
                ],
            ),
            listener(
                ports[1],
                listener_id="lsn-https",
                protocol="https",
                default_certificate_id="cert-web",
                sni_certificate_ids=["cert-shop"],
                tls_policy="tls-custom",
                ca_certificate_id="cert-clientca",
                clientcert_subjectdn=True,
                http2=True,
                quic_listener_id="lsn-quic",
            ),
            listener(
                ports[2],
                listener_id="lsn-tcp",
                protocol="tcp",
                group_id="sgp-tcp",
                proxy_protocol="v2",
                persistence={"mode": "source_ip"},
            ),
            listener(
                ports[3],
                listener_id="lsn-tcpssl",
                protocol="tcp_ssl",
                group_id="sgp-tcp",
                default_certificate_id="cert-web",
            ),
            listener(ports[4], listener_id="lsn-udp", protocol="udp", group_id="sgp-udp"),
            listener(
                ports[1], listener_id="lsn-quic", protocol="quic", default_certificate_id="cert-web"
            ),
        ],
        [
            {
                "id": "sgp-web",
                "backend_protocol": "http",
                "servers": servers,
                "health_check": health,
                "slow_start": True,
                "slow_start_duration": 60,
            },
            {"id": "sgp-tcp", "backend_protocol": "tcp", "servers": servers},
            {
                "id": "sgp-udp",
                "backend_protocol": "udp",
                "servers": servers,
                "health_check": {"enabled": False, "protocol": "udp", "udp_request": "ping"},
            },
        ],
        bandwidth_mbit=100,
        certificates=[
            certificate_entry("cert-web", ca.issue_cert("www.example.com")),
            certificate_entry("cert-shop", ca.issue_cert("shop.example.com")),
        ],
        ca_certificates=[
            {"id": "cert-clientca", "certificate_pem": client_ca.cert_pem.bytes().decode()}
        ],
        tls_policies=[
            {
                "id": "tls-custom",
                "min_version": "TLSv1.2",
                "max_version": "TLSv1.3",
                "ciphers": ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"],
                "tls13_ciphersuites": ["TLS_AES_128_GCM_SHA256"],
            }
        ],
        acls=[{"id": "acl-office", "entries": ["192.0.2.0/24", "127.0.0.1"]}],
    )
    # Every field written out, defaults included, so that every one gets the wrong values.
    return Snapshot.from_dict(raw).to_dict()


# Values of the wrong type, or of the right type and absurd, for any field of the schema.
WRONG_VALUES: list[Any] = [
    None,
    "text",
    "",
    [],
    ["text"],
    {},
    {"unexpected": 1},
    10**30,
    -(10**30),
    math.nan,
    math.inf,
    1.5,
    True,
    "\ud800",
    "\x00",
]


def mutations(document: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(path, value) for every place in the document and every wrong value."""
    for value in WRONG_VALUES:
        yield path, value
    if isinstance(document, dict):
        for key, item in document.items():
            yield from mutations(item, (*path, key))
    elif isinstance(document, list):
        for index, item in enumerate(document):
            yield from mutations(item, (*path, index))


def replaced(document: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    copy = dict(document) if isinstance(document, dict) else list(document)
    copy[path[0]] = replaced(document[path[0]], path[1:], value)
    return copy


def test_wrong_types_through_the_node_are_422_or_applied_never_500(node):
    base = rich_snapshot()
    statuses: dict[int, int] = {}
    generation = 1
    with socket.create_connection(("127.0.0.1", node.port), timeout=WAIT) as sock:
        for path, value in mutations(base):
            generation += 1
            document = replaced(base, path, value)
            if path != ("generation",) and isinstance(document, dict):
                # Each PUT that is valid is applied: it needs a newer generation.
                document = {**document, "generation": generation}
            body = json.dumps(document).encode()
            sock.sendall(
                head(
                    "PUT",
                    "/v1/config",
                    f"Authorization: Bearer {TOKEN}",
                    f"Content-Length: {len(body)}",
                )
                + body
            )
            status, payload = read_response(sock)
            assert status in (200, 422), (path, value, status, payload)
            if status == 422:
                assert payload["reasons"], (path, value)
            statuses[status] = statuses.get(status, 0) + 1
    assert statuses.get(422, 0) > 1000
    node.kill()
    assert "Traceback" not in "".join(node.log) + "".join(iter_queue(node))


def read_response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the node closed the connection"
        data += chunk
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head_bytes.split(b"\r\n")[1:]:
        name, _, field_value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(field_value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the node closed the connection"
        rest += chunk
    assert len(rest) == length
    return int(head_bytes.split()[1]), json.loads(rest)
