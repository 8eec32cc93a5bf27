"""Access logs on a real node: real clients and backends on loopback, each line checked field by
field, for HTTP, HTTPS, TCP and UDP, the node's own 502, 504 and a rule's fixed response; the
rotated file, the control API endpoint, and hostile input that must still give one JSON line."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path

import pytest

from dataplane.accesslog import AccessLogWriter, format_line, line_fields
from dataplane.control import ControlApi
from dataplane.node import Node
from tests.dataplane.conftest import (
    WAIT,
    Reply,
    certificate_entry,
    listener,
    read_until_closed,
    server_group,
    snapshot,
    wait_until,
)
from tests.dataplane.h2client import H2Client
from tests.dataplane.test_control import TOKEN, ControlClient
from tests.dataplane.test_datagram_node import free_udp_port, udp_echoes, udp_group  # noqa: F401
from tests.dataplane.test_https import https_listener, trusting
from tests.dataplane.test_quic import leaf, quic  # noqa: F401
from tests.fixtures.ports import free_port


class LoggedNode:
    """A node whose listeners' access logs are written to `directory` (and kept in memory)."""

    def __init__(self, loop_thread, directory: Path) -> None:
        self.loop_thread = loop_thread
        self.writer = AccessLogWriter(directory=directory, max_bytes=1 << 20, keep=2)
        self.node = loop_thread.call(lambda: Node(access_log=self.writer))

    def apply(self, data: dict) -> dict:
        from dataplane.config import Snapshot

        return self.loop_thread.run(self.node.apply(Snapshot.from_dict(data)))

    def lines(self, listener_id: str, **filters) -> list[dict]:
        found = self.loop_thread.call(lambda: self.node.access_log(listener_id, **filters))
        return found["lines"] if found else []

    def wait_lines(self, listener_id: str, count: int) -> list[dict]:
        assert wait_until(lambda: len(self.lines(listener_id)) >= count), self.lines(listener_id)
        return self.lines(listener_id)


@pytest.fixture
def logged(loop_thread, tmp_path):
    handle = LoggedNode(loop_thread, tmp_path)
    yield handle
    loop_thread.run(handle.node.shutdown(0))
    handle.writer.close()


def _exchange(port: int, request: bytes) -> tuple[bytes, tuple[str, int]]:
    """Send one raw request, read until the node closes; the answer and our address."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        local = sock.getsockname()
        sock.sendall(request)
        return read_until_closed(sock), local


def test_http_request_line_field_by_field(logged, backends, tmp_path):
    web = backends("web", lambda request: Reply(body=b"hello"))
    port = free_port()
    logged.apply(snapshot([listener(port, access_log=True)], [server_group(web)]))
    request = (
        b"GET /a/b?x=1 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: probe/1.0\r\n"
        b"Connection: close\r\n\r\n"
    )

    answer, (client_ip, client_port) = _exchange(port, request)

    assert answer.startswith(b"HTTP/1.1 200 ")
    [line] = logged.wait_lines("lsn-web", 1)
    assert line["listener"] == "lsn-web"
    assert line["protocol"] == "http"
    assert line["http_version"] == "HTTP/1.1"
    assert (line["client_ip"], line["client_port"]) == (client_ip, client_port)
    assert (line["method"], line["authority"], line["path"]) == ("GET", "shop.example", "/a/b?x=1")
    assert line["status"] == 200
    assert line["bytes_in"] == len(request)
    assert line["bytes_out"] == len(answer)
    assert line["server"] == "srv-web-0"
    assert line["server_address"] == f"127.0.0.1:{web.port}"
    assert line["rule"] is None
    assert line["user_agent"] == "probe/1.0"
    assert line["termination"] == "completed"
    assert "tls_version" not in line
    # A new backend connection: its connect time is part of the backend's response time,
    # which is part of the request's.
    assert 0 <= line["backend_connect_time_ms"] <= line["backend_response_time_ms"]
    assert line["backend_response_time_ms"] <= line["request_time_ms"]
    assert line["time"].endswith("Z")
    # The file has the same line, written by the writer thread.
    path = tmp_path / "access.log"
    assert wait_until(lambda: path.exists() and path.read_bytes().count(b"\n") == 1)
    assert json.loads(path.read_bytes()) == line


def test_keep_alive_requests_get_a_line_each_with_their_own_bytes(logged, backends):
    web = backends("web", lambda request: Reply(body=b"x" * int(request.target[1:])))
    port = free_port()
    logged.apply(snapshot([listener(port, access_log=True)], [server_group(web)]))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        sizes = []
        for size in (10, 1000):
            connection.request("GET", f"/{size}")
            response = connection.getresponse()
            sizes.append(len(response.read()))
    finally:
        connection.close()

    newest, oldest = logged.wait_lines("lsn-web", 2)
    assert (oldest["path"], newest["path"]) == ("/10", "/1000")
    # 990 more body bytes, and two more digits in Content-Length.
    assert newest["bytes_out"] - oldest["bytes_out"] == 992
    # The second request reused the pooled backend connection: no connect of its own.
    assert newest["backend_connect_time_ms"] == 0.0
    assert sizes == [10, 1000]


def test_https_line_has_the_tls_version_and_cipher(logged, backends, ca):
    web = backends("web")
    port = free_port()
    logged.apply(
        snapshot(
            [https_listener(port, access_log=True, tls_policy="tls_cipher_policy_1_2_strict")],
            [server_group(web)],
            certificates=[certificate_entry("cert-default", ca.issue_cert("www.example.com"))],
        )
    )
    context = trusting(ca)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        with context.wrap_socket(raw, server_hostname="www.example.com") as tls:
            version, cipher = tls.version(), tls.cipher()[0]
            tls.sendall(
                b"GET /secure HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n"
            )
            assert read_until_closed(tls).startswith(b"HTTP/1.1 200 ")

    [line] = logged.wait_lines("lsn-tls", 1)
    assert line["protocol"] == "https"
    assert (line["tls_version"], line["tls_cipher"]) == (version, cipher)
    assert version == "TLSv1.2"
    assert "client_cert_subject" not in line
    assert (line["path"], line["status"], line["termination"]) == ("/secure", 200, "completed")


def test_a_dead_backend_gives_a_502_line_naming_the_server(logged, backends):
    dead_port = free_port()
    port = free_port()
    group = {
        "id": "sgp-web",
        "name": "web",
        "backend_protocol": "http",
        "servers": [{"id": "srv-dead", "address": "127.0.0.1", "port": dead_port, "weight": 100}],
        "health_check": {"enabled": False},
    }
    logged.apply(snapshot([listener(port, access_log=True)], [group]))

    answer, _ = _exchange(port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")

    assert answer.startswith(b"HTTP/1.1 502 ")
    [line] = logged.wait_lines("lsn-web", 1)
    assert (line["status"], line["termination"]) == (502, "backend_error")
    assert line["server"] == "srv-dead"
    assert line["bytes_out"] == len(answer)
    status = logged.loop_thread.call(logged.node.status)
    [backend] = status["listeners"]["lsn-web"]["backends"]
    assert (backend["requests"], backend["connect_failures"]) == (1, 1)


def test_a_backend_that_does_not_answer_gives_a_504_line(logged, backends):
    slow = backends("slow", lambda request: Reply(body=b"late", delay=5))
    port = free_port()
    logged.apply(
        snapshot([listener(port, access_log=True, response_timeout=1)], [server_group(slow)])
    )

    answer, _ = _exchange(port, b"GET /wait HTTP/1.1\r\nHost: a\r\n\r\n")

    assert answer.startswith(b"HTTP/1.1 504 ")
    [line] = logged.wait_lines("lsn-web", 1)
    assert (line["status"], line["termination"]) == (504, "backend_timeout")
    assert line["server"] == "srv-slow-0"
    assert line["request_time_ms"] >= 1000
    assert line["backend_response_time_ms"] is None


def test_a_rules_fixed_response_is_logged_with_the_rule(logged, backends):
    web = backends("web")
    port = free_port()
    rule = {
        "id": "r-teapot",
        "conditions": [{"type": "path", "values": ["/tea"]}],
        "action": {"type": "fixed_response", "status_code": 418, "body": "short and stout"},
    }
    logged.apply(
        snapshot([listener(port, access_log=True, forwarding_rules=[rule])], [server_group(web)])
    )

    answer, _ = _exchange(port, b"GET /tea HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")

    assert answer.startswith(b"HTTP/1.1 418 ")
    [line] = logged.wait_lines("lsn-web", 1)
    assert (line["status"], line["rule"], line["server"]) == (418, "r-teapot", None)
    assert line["termination"] == "completed"
    assert web.requests == []


def test_hostile_paths_still_give_one_valid_json_line_each(logged, backends, tmp_path):
    web = backends("web")
    port = free_port()
    logged.apply(snapshot([listener(port, access_log=True)], [server_group(web)]))
    hostile = [
        b'GET /q"uote\\back%0A HTTP/1.1\r\nHost: a\r\nUser-Agent: "x"\\\xc3\xff\r\n'
        b"Connection: close\r\n\r\n",
        # Bytes that are not UTF-8 in the target: refused (400) by the parser.
        b"GET /\xff\xfe HTTP/1.1\r\nHost: a\r\n\r\n",
        # A raw newline in the target ends the request line: a malformed request, 400.
        b"GET /new\nline HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40,
    ]
    for request in hostile:
        _exchange(port, request)

    lines = logged.wait_lines("lsn-web", 4)
    # A TLS hello on a plain HTTP listener is a malformed request too.
    assert sorted(line["status"] for line in lines) == [200, 400, 400, 400]
    first = next(line for line in lines if line["status"] == 200)
    assert first["path"] == '/q"uote\\back%0A'
    # Bytes that are not UTF-8 are written as backslash escapes, as text.
    assert first["user_agent"] == '"x"\\' + "\\xc3\\xff"
    path = tmp_path / "access.log"
    assert wait_until(lambda: path.exists() and path.read_bytes().count(b"\n") == len(lines))
    for raw in path.read_bytes().splitlines():
        assert raw.isascii()
        assert json.loads(raw)["listener"] == "lsn-web"


def test_format_line_escapes_everything_into_one_line():
    entry = {
        "time": 0.0,
        "path": '/a"b\nc\r\x00\u2028' + "\udcff",
        "user_agent": "\\" * 3,
    }
    data = format_line(entry)
    assert data.count(b"\n") == 1 and data.endswith(b"\n")
    assert json.loads(data)["path"] == entry["path"]
    assert line_fields(entry)["time"] == "1970-01-01T00:00:00.000Z"


def test_tcp_connection_line(logged, backends):
    web = backends("web", lambda request: Reply(body=b"over tcp", close=True))
    port = free_port()
    logged.apply(
        snapshot(
            [listener(port, protocol="tcp", access_log=True)],
            [server_group(web, protocol="tcp")],
        )
    )
    request = b"GET /t HTTP/1.1\r\nHost: a\r\n\r\n"

    answer, (client_ip, client_port) = _exchange(port, request)

    assert answer.endswith(b"over tcp")
    [line] = logged.wait_lines("lsn-web", 1)
    assert line["protocol"] == "tcp"
    assert (line["client_ip"], line["client_port"]) == (client_ip, client_port)
    assert (line["bytes_in"], line["bytes_out"]) == (len(request), len(answer))
    assert line["server"] == "srv-web-0"
    assert line["termination"] == "backend_closed"
    assert line["backend_connect_time_ms"] >= 0
    assert "method" not in line and "status" not in line


def test_tcp_ssl_connection_line_has_tls_fields(logged, backends, ca):
    web = backends("web", lambda request: Reply(body=b"sealed", close=True))
    port = free_port()
    logged.apply(
        snapshot(
            [
                listener(
                    port,
                    protocol="tcp_ssl",
                    access_log=True,
                    default_certificate_id="cert-default",
                    tls_policy="tls_cipher_policy_1_2_strict_with_1_3",
                )
            ],
            [server_group(web, protocol="tcp")],
            certificates=[certificate_entry("cert-default", ca.issue_cert("www.example.com"))],
        )
    )
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        with trusting(ca).wrap_socket(raw, server_hostname="www.example.com") as tls:
            version, cipher = tls.version(), tls.cipher()[0]
            tls.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_until_closed(tls).endswith(b"sealed")

    [line] = logged.wait_lines("lsn-web", 1)
    assert line["protocol"] == "tcp_ssl"
    assert (line["tls_version"], line["tls_cipher"]) == (version, cipher)


def test_udp_session_line_after_its_idle_timeout(logged, udp_echoes):  # noqa: F811
    echo = udp_echoes("a")
    port = free_udp_port()
    logged.apply(
        snapshot(
            [
                listener(
                    port, protocol="udp", listener_id="lsn-udp", idle_timeout=1, access_log=True
                )
            ],
            [udp_group(echo)],
        )
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(WAIT)
        client.bind(("127.0.0.1", 0))
        for data in (b"one", b"three"):
            client.sendto(data, ("127.0.0.1", port))
            assert client.recvfrom(2048)[0].endswith(data)
        local = client.getsockname()

    [line] = logged.wait_lines("lsn-udp", 1)
    assert line["protocol"] == "udp"
    assert (line["client_ip"], line["client_port"]) == local
    assert line["bytes_in"] == len(b"one") + len(b"three")
    assert line["bytes_out"] >= line["bytes_in"]
    assert line["termination"] == "idle_timeout"
    assert line["server"] == "srv-a-0"


def test_no_line_without_the_switch(logged, backends, tmp_path):
    web = backends("web")
    port = free_port()
    logged.apply(snapshot([listener(port)], [server_group(web)]))
    answer, _ = _exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    time.sleep(0.3)
    assert logged.lines("lsn-web") == []
    assert not (tmp_path / "access.log").exists()


def test_rotation_keeps_the_newest_files(tmp_path):
    writer = AccessLogWriter(directory=tmp_path, max_bytes=2000, keep=2)
    try:
        for number in range(100):
            writer.put({"time": 1.0, "listener": "lsn-web", "n": number, "pad": "x" * 60})
        writer.flush()
        for number in range(100, 140):
            writer.put({"time": 1.0, "listener": "lsn-web", "n": number, "pad": "x" * 60})
            writer.flush()
    finally:
        writer.close()
    names = sorted(path.name for path in tmp_path.iterdir() if not path.name.endswith(".lock"))
    assert names == ["access.log", "access.log.1", "access.log.2"]
    numbers = []
    for name in ("access.log.2", "access.log.1", "access.log"):
        raw = (tmp_path / name).read_bytes()
        assert len(raw) <= 2000 or raw.count(b"\n") == 100  # the first batch is one write
        numbers += [json.loads(line)["n"] for line in raw.splitlines()]
    # The files hold the newest lines in order; the oldest went with the file rotated out.
    assert numbers == list(range(numbers[0], 140))


def test_a_writer_that_falls_behind_drops_and_counts(tmp_path):
    writer = AccessLogWriter(directory=tmp_path, max_pending=0)
    try:
        for _ in range(5):
            writer.put({"time": 1.0})
    finally:
        writer.close()
    assert writer.dropped == 5
    assert not (tmp_path / "access.log").exists()


@pytest.fixture
def control(loop_thread, logged) -> ControlClient:
    api = loop_thread.call(lambda: ControlApi(logged.node, token=TOKEN))
    _, port = loop_thread.run(api.start("127.0.0.1", 0))
    yield ControlClient(port)
    loop_thread.call(api.close)


def _get(port: int, path: str, token: str | None = TOKEN) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_control_api_serves_filtered_lines(logged, control, backends):
    web = backends("web", lambda request: Reply(status=404 if "missing" in request.target else 200))
    port = free_port()
    logged.apply(snapshot([listener(port, access_log=True)], [server_group(web)]))
    for path in ("/ok", "/missing", "/ok2"):
        _exchange(port, f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
    logged.wait_lines("lsn-web", 3)
    base = "/v1/listeners/lsn-web/access-log"

    status, found = _get(control.port, base)
    assert status == 200
    assert [line["path"] for line in found["lines"]] == ["/ok2", "/missing", "/ok"]
    assert found["enabled"] is True
    assert [line["path"] for line in _get(control.port, base + "?status=4xx")[1]["lines"]] == [
        "/missing"
    ]
    assert [
        line["path"] for line in _get(control.port, base + "?status=200&limit=1")[1]["lines"]
    ] == ["/ok2"]
    assert len(_get(control.port, base + "?path=ok")[1]["lines"]) == 2
    assert len(_get(control.port, base + "?client=127.0.")[1]["lines"]) == 3
    assert _get(control.port, base + "?client=10.")[1]["lines"] == []
    # Hostile or wrong queries are refused, never a 500.
    assert _get(control.port, base + "?limit=0")[0] == 400
    assert _get(control.port, base + "?limit=99999")[0] == 400
    assert _get(control.port, base + "?limit=" + "9" * 50)[0] == 400
    assert _get(control.port, base + "?path=%ff%fe")[0] in (200, 400)
    assert _get(control.port, "/v1/listeners/lsn-nope/access-log")[0] == 404
    assert _get(control.port, "/v1/listeners/../access-log")[0] == 404
    assert _get(control.port, base, token=None)[0] == 401
    assert _get(control.port, base, token="wrong")[0] == 401


@pytest.mark.asyncio
async def test_http3_request_line(quic):  # noqa: F811
    backend = await quic.backend("web", lambda request: Reply(body=b"over h3"))
    _, port = await quic.listener(quic.settings(backend, access_log=True))

    async with quic.client(port) as client:
        status, _, body = await client.request(b"GET", b"/h3/path?q=1", [(b"user-agent", b"h3c")])
    assert (status, body) == (200, b"over h3")

    def lines() -> list[dict]:
        found = quic.thread.call(lambda: quic.node.access_log("lsn-quic"))
        return found["lines"] if found else []

    assert wait_until(lambda: len(lines()) == 1)
    [line] = lines()
    assert (line["protocol"], line["http_version"], line["tls_version"]) == (
        "quic",
        "HTTP/3",
        "TLSv1.3",
    )
    assert (line["method"], line["path"], line["status"]) == ("GET", "/h3/path?q=1", 200)
    assert (line["server"], line["user_agent"], line["termination"]) == (
        "srv-web",
        "h3c",
        "completed",
    )
    assert line["bytes_in"] >= len(b"GET/h3/path?q=1h3c")
    assert line["bytes_out"] > len(b"over h3")


def test_http2_streams_get_a_line_each(logged, backends, ca):
    web = backends("web")
    port = free_port()
    logged.apply(
        snapshot(
            [https_listener(port, access_log=True, http2=True)],
            [server_group(web)],
            certificates=[certificate_entry("cert-default", ca.issue_cert("www.example.com"))],
        )
    )
    with H2Client(port, trusting(ca)) as client:
        assert client.alpn == "h2"
        tls_version, cipher = client.sock.version(), client.sock.cipher()[0]
        assert [client.get(f"/s{n}").status for n in range(2)] == [200, 200]

    lines = logged.wait_lines("lsn-tls", 2)
    assert [line["path"] for line in lines] == ["/s1", "/s0"]
    for line in lines:
        assert (line["http_version"], line["status"], line["termination"]) == (
            "HTTP/2",
            200,
            "completed",
        )
        assert (line["tls_version"], line["tls_cipher"]) == (tls_version, cipher)
        assert line["server"] == "srv-web-0"
        # A stream's bytes: its head's fields, and the response it was written.
        assert line["bytes_in"] >= len(b"GET") + len(line["path"]) + len(b"www.example.com")
        assert line["bytes_out"] > len(b"web")
