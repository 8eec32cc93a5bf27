"""Access-log lines, every field of them, for each protocol: the exact set of fields a line has
and the value of each, against what the client, the backend and the TLS handshake saw.

test_access_log.py covers the single fields, the node's 502 and 504, a rule's fixed response, the
file and the control API; this file adds what it left open: the client-certificate subject of a
mutual-TLS client (HTTPS and TCP SSL), the full field list of HTTP/2, HTTP/3 and UDP lines, a 502
over HTTP/3, and why a request or connection ended when the client leaves first.
"""

from __future__ import annotations

import json
import socket
import struct
import threading

import pytest
import trustme
from cryptography import x509

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
from tests.dataplane.test_access_log import logged  # noqa: F401
from tests.dataplane.test_datagram_node import udp_echoes, udp_group  # noqa: F401
from tests.dataplane.test_https import https_listener, trusting
from tests.dataplane.test_quic import SERVER_NAME, Server, leaf, quic  # noqa: F401
from tests.fixtures.ports import free_port, free_udp_port

# The fields every line of a kind has (dataplane.accesslog.ListenerLog), TLS ones apart.
HTTP_FIELDS = {
    "time",
    "listener",
    "protocol",
    "client_ip",
    "client_port",
    "method",
    "authority",
    "path",
    "http_version",
    "status",
    "bytes_in",
    "bytes_out",
    "request_time_ms",
    "backend_connect_time_ms",
    "backend_response_time_ms",
    "server",
    "server_address",
    "rule",
    "attempts",
    "user_agent",
    "termination",
}
CONNECTION_FIELDS = {
    "time",
    "listener",
    "protocol",
    "client_ip",
    "client_port",
    "bytes_in",
    "bytes_out",
    "request_time_ms",
    "backend_connect_time_ms",
    "server",
    "server_address",
    "termination",
}
UDP_FIELDS = CONNECTION_FIELDS - {"backend_connect_time_ms"}
TLS_FIELDS = {"tls_version", "tls_cipher"}


class ClientCa:
    """A CA for client certificates, its snapshot entry and one client certificate."""

    def __init__(self) -> None:
        self.ca = trustme.CA(organization_name="Ferry Client CA")
        self.leaf = self.ca.issue_cert("client.example.com", common_name="client.example.com")
        self.entry = {"id": "cert-clients", "certificate_pem": self.ca.cert_pem.bytes().decode()}
        first = self.leaf.cert_chain_pems[0].bytes()
        self.subject = x509.load_pem_x509_certificate(first).subject.rfc4514_string()

    def context(self, server_ca: trustme.CA) -> object:
        context = trusting(server_ca)
        self.leaf.configure_cert(context)
        return context


def _timings_are_ordered(line: dict) -> None:
    """Connect time is inside the backend's response time, which is inside the request's."""
    assert 0 <= line["backend_connect_time_ms"] <= line["backend_response_time_ms"]
    assert line["backend_response_time_ms"] <= line["request_time_ms"]


def test_https_line_with_a_client_certificate_every_field(logged, backends, ca):  # noqa: F811
    web = backends("web", lambda request: Reply(status=201, body=b"stored"))
    clients = ClientCa()
    port = free_port()
    logged.apply(
        snapshot(
            [https_listener(port, access_log=True, ca_certificate_id="cert-clients")],
            [server_group(web)],
            certificates=[certificate_entry("cert-default", ca.issue_cert("www.example.com"))],
            ca_certificates=[clients.entry],
        )
    )
    request = (
        b"POST /upload?id=7 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: mtls-probe/2\r\n"
        b"Content-Length: 5\r\nConnection: close\r\n\r\nhello"
    )

    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        client_ip, client_port = raw.getsockname()
        with clients.context(ca).wrap_socket(raw, server_hostname="www.example.com") as tls:
            version, cipher = tls.version(), tls.cipher()[0]
            tls.sendall(request)
            answer = read_until_closed(tls)

    assert answer.startswith(b"HTTP/1.1 201 ")
    [line] = logged.wait_lines("lsn-tls", 1)
    assert set(line) == HTTP_FIELDS | TLS_FIELDS | {"client_cert_subject"}
    assert {
        name: line[name]
        for name in sorted(set(line) - {"time"} - {n for n in line if n.endswith("_ms")})
    } == {
        "attempts": 1,
        "authority": "www.example.com",
        "bytes_in": len(request),
        "bytes_out": len(answer),
        "client_cert_subject": clients.subject,
        "client_ip": client_ip,
        "client_port": client_port,
        "http_version": "HTTP/1.1",
        "listener": "lsn-tls",
        "method": "POST",
        "path": "/upload?id=7",
        "protocol": "https",
        "rule": None,
        "server": "srv-web-0",
        "server_address": f"127.0.0.1:{web.port}",
        "status": 201,
        "termination": "completed",
        "tls_cipher": cipher,
        "tls_version": version,
        "user_agent": "mtls-probe/2",
    }
    assert "CN=client.example.com" in clients.subject
    _timings_are_ordered(line)
    assert [recorded.body for recorded in web.requests] == [b"hello"]


def test_tcp_ssl_line_with_a_client_certificate_every_field(logged, backends, ca):  # noqa: F811
    web = backends("web", lambda request: Reply(body=b"sealed", close=True))
    clients = ClientCa()
    port = free_port()
    logged.apply(
        snapshot(
            [
                listener(
                    port,
                    protocol="tcp_ssl",
                    access_log=True,
                    default_certificate_id="cert-default",
                    ca_certificate_id="cert-clients",
                )
            ],
            [server_group(web, protocol="tcp")],
            certificates=[certificate_entry("cert-default", ca.issue_cert("www.example.com"))],
            ca_certificates=[clients.entry],
        )
    )
    request = b"GET /over-tls HTTP/1.1\r\nHost: a\r\n\r\n"

    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        client_ip, client_port = raw.getsockname()
        with clients.context(ca).wrap_socket(raw, server_hostname="www.example.com") as tls:
            version, cipher = tls.version(), tls.cipher()[0]
            tls.sendall(request)
            answer = read_until_closed(tls)

    assert answer.endswith(b"sealed")
    [line] = logged.wait_lines("lsn-web", 1)
    assert set(line) == CONNECTION_FIELDS | TLS_FIELDS | {"client_cert_subject"}
    assert line["protocol"] == "tcp_ssl"
    assert (line["client_ip"], line["client_port"]) == (client_ip, client_port)
    # A TCP SSL connection's bytes are what went through the tunnel, TLS taken off.
    assert (line["bytes_in"], line["bytes_out"]) == (len(request), len(answer))
    assert (line["server"], line["server_address"]) == ("srv-web-0", f"127.0.0.1:{web.port}")
    assert (line["tls_version"], line["tls_cipher"]) == (version, cipher)
    assert line["client_cert_subject"] == clients.subject
    assert line["termination"] == "backend_closed"
    assert 0 <= line["backend_connect_time_ms"] <= line["request_time_ms"]


def test_http2_stream_line_every_field(logged, backends, ca):  # noqa: F811
    web = backends("web", lambda request: Reply(status=404, body=b"not here"))
    port = free_port()
    logged.apply(
        snapshot(
            [https_listener(port, access_log=True, http2=True)],
            [server_group(web)],
            certificates=[certificate_entry("cert-default", ca.issue_cert("www.example.com"))],
        )
    )

    with H2Client(port, trusting(ca)) as client:
        client_ip, client_port = client.sock.getsockname()
        version, cipher = client.sock.version(), client.sock.cipher()[0]
        response = client.get("/h2/page?x=1", headers=[("user-agent", "h2-probe/3")])

    assert response.status == 404
    [line] = logged.wait_lines("lsn-tls", 1)
    assert set(line) == HTTP_FIELDS | TLS_FIELDS
    assert (line["client_ip"], line["client_port"]) == (client_ip, client_port)
    assert (line["method"], line["authority"], line["path"]) == (
        "GET",
        "www.example.com",
        "/h2/page?x=1",
    )
    assert (line["http_version"], line["status"], line["user_agent"]) == (
        "HTTP/2",
        404,
        "h2-probe/3",
    )
    assert (line["server"], line["server_address"]) == ("srv-web-0", f"127.0.0.1:{web.port}")
    assert (line["rule"], line["attempts"], line["termination"]) == (None, 1, "completed")
    assert (line["tls_version"], line["tls_cipher"]) == (version, cipher)
    assert line["bytes_out"] > len(b"not here")
    _timings_are_ordered(line)


def test_udp_session_line_every_field(logged, udp_echoes):  # noqa: F811
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
    sent = [b"ping", b"pong-pong"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(WAIT)
        client.bind(("127.0.0.1", 0))
        answers = []
        for data in sent:
            client.sendto(data, ("127.0.0.1", port))
            answers.append(client.recvfrom(2048)[0])
        client_ip, client_port = client.getsockname()

    [line] = logged.wait_lines("lsn-udp", 1)
    assert set(line) == UDP_FIELDS
    assert answers == [b"a:ping", b"a:pong-pong"]
    assert (line["listener"], line["protocol"]) == ("lsn-udp", "udp")
    assert (line["client_ip"], line["client_port"]) == (client_ip, client_port)
    assert line["bytes_in"] == sum(len(data) for data in sent)
    assert line["bytes_out"] == sum(len(answer) for answer in answers)
    assert (line["server"], line["server_address"]) == ("srv-a-0", f"127.0.0.1:{echo.port}")
    assert line["termination"] == "idle_timeout"
    # The session lasted at least its idle timeout.
    assert line["request_time_ms"] >= 1000


def _reset_mid_request(logged, backends) -> dict:  # noqa: F811
    """A client that resets its connection while the backend is still working on its request;
    the line the node writes for it."""
    slow = backends("slow", lambda request: Reply(body=b"too late", delay=2))
    port = free_port()
    logged.apply(snapshot([listener(port, access_log=True)], [server_group(slow)]))

    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"GET /gone HTTP/1.1\r\nHost: a\r\nUser-Agent: quitter\r\n\r\n")
        # Once the request reached the backend (it records before it waits), the client
        # resets the connection: a FIN alone is a half-close HTTP/1.1 lets the node answer.
        assert wait_until(lambda: len(slow.requests) == 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    [line] = logged.wait_lines("lsn-web", 1)
    return line


def test_an_http_client_that_resets_before_the_answer(logged, backends):  # noqa: F811
    line = _reset_mid_request(logged, backends)

    assert set(line) == HTTP_FIELDS
    assert (line["path"], line["user_agent"]) == ("/gone", "quitter")
    assert (line["status"], line["termination"]) == (None, "client_closed")
    assert line["bytes_out"] == 0
    assert line["backend_response_time_ms"] is None


def test_the_line_of_a_request_the_client_left_names_its_server(logged, backends):  # noqa: F811
    line = _reset_mid_request(logged, backends)

    assert (line["server"], line["attempts"]) == ("srv-slow-0", 1)


class ClosingBackend:
    """A TCP server that answers once and closes when its client has closed: what a backend
    does when the node passes the client's FIN on."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(WAIT)
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.server, self.server.accept()[0] as conn:
            conn.settimeout(WAIT)
            conn.recv(4096)
            conn.sendall(self.answer)
            while conn.recv(4096):
                pass


def test_a_tcp_client_that_closes_first(logged):  # noqa: F811
    backend = ClosingBackend(b"kept open")
    port = free_port()
    group = {
        "id": "sgp-web",
        "name": "web",
        "backend_protocol": "tcp",
        "servers": [{"id": "srv-tcp", "address": "127.0.0.1", "port": backend.port}],
        "health_check": {"enabled": False},
    }
    logged.apply(snapshot([listener(port, protocol="tcp", access_log=True)], [group]))
    request = b"hello backend"

    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        client_ip, client_port = sock.getsockname()
        sock.sendall(request)
        answer = b""
        while not answer.endswith(b"kept open"):
            chunk = sock.recv(4096)
            assert chunk
            answer += chunk
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock) == b""

    [line] = logged.wait_lines("lsn-web", 1)
    backend.thread.join(WAIT)
    assert set(line) == CONNECTION_FIELDS
    assert (line["client_ip"], line["client_port"]) == (client_ip, client_port)
    assert (line["bytes_in"], line["bytes_out"]) == (len(request), len(answer))
    assert (line["server"], line["server_address"]) == ("srv-tcp", f"127.0.0.1:{backend.port}")
    assert line["termination"] == "client_closed"
    assert "tls_version" not in line


@pytest.mark.parametrize("protocol", ["http", "tcp"])
def test_lines_reach_the_file_in_the_order_they_ended(logged, backends, tmp_path, protocol):  # noqa: F811
    web = backends("web", lambda request: Reply(body=b"ok", close=protocol == "tcp"))
    port = free_port()
    logged.apply(
        snapshot(
            [listener(port, protocol=protocol, access_log=True)],
            [server_group(web, protocol=protocol)],
        )
    )
    for number in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(
                f"GET /n{number} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()
            )
            read_until_closed(sock)
    ring = logged.wait_lines("lsn-web", 3)
    path = tmp_path / "access.log"
    assert wait_until(lambda: path.exists() and path.read_bytes().count(b"\n") == 3)
    written = [json.loads(raw) for raw in path.read_bytes().splitlines()]
    # The file and the console's ring hold the same lines, the ring newest first.
    assert written == list(reversed(ring))
    times = [line["time"] for line in written]
    assert times == sorted(times)


def _quic_lines(quic) -> list[dict]:  # noqa: F811
    found = quic.thread.call(lambda: quic.node.access_log("lsn-quic"))
    return found["lines"] if found else []


@pytest.mark.asyncio
async def test_http3_line_every_field(quic):  # noqa: F811
    backend = await quic.backend("web", lambda request: Reply(status=202, body=b"accepted"))
    _, port = await quic.listener(quic.settings(backend, access_log=True))

    async with quic.client(port) as client:
        client_port = client._transport.get_extra_info("sockname")[1]
        status, _, body = await client.request(
            b"POST", b"/h3/items?n=2", [(b"user-agent", b"h3-probe/4")], body=b"12345"
        )
    assert (status, body) == (202, b"accepted")

    assert wait_until(lambda: len(_quic_lines(quic)) == 1)
    [line] = _quic_lines(quic)
    # QUIC is TLS 1.3 always; aioquic shows no cipher or client certificate to log.
    assert set(line) == HTTP_FIELDS | {"tls_version"}
    assert (line["listener"], line["protocol"], line["http_version"]) == (
        "lsn-quic",
        "quic",
        "HTTP/3",
    )
    assert (line["client_ip"], line["client_port"]) == ("127.0.0.1", client_port)
    assert (line["method"], line["authority"], line["path"]) == (
        "POST",
        SERVER_NAME,
        "/h3/items?n=2",
    )
    assert (line["status"], line["user_agent"], line["tls_version"]) == (
        202,
        "h3-probe/4",
        "TLSv1.3",
    )
    assert (line["server"], line["server_address"]) == ("srv-web", f"127.0.0.1:{backend.port}")
    assert (line["rule"], line["attempts"], line["termination"]) == (None, 1, "completed")
    assert line["bytes_in"] >= len(b"12345") + len(b"/h3/items?n=2")
    assert line["bytes_out"] > len(b"accepted")
    _timings_are_ordered(line)
    assert [request.body for request in backend.requests] == [b"12345"]


@pytest.mark.asyncio
async def test_http3_502_line_names_the_dead_server(quic):  # noqa: F811
    dead = Server("dead", free_port())
    _, port = await quic.listener(quic.settings(dead, access_log=True))

    async with quic.client(port) as client:
        status, _, _ = await client.request(b"GET", b"/nobody-home")
    assert status == 502

    assert wait_until(lambda: len(_quic_lines(quic)) == 1)
    [line] = _quic_lines(quic)
    assert set(line) == HTTP_FIELDS | {"tls_version"}
    assert (line["status"], line["termination"]) == (502, "backend_error")
    assert (line["server"], line["server_address"]) == ("srv-dead", f"127.0.0.1:{dead.port}")
    assert line["backend_response_time_ms"] is None


def test_an_http2_stream_the_client_resets_is_logged_as_client_closed(logged, backends, ca):  # noqa: F811
    slow = backends("slow", lambda request: Reply(body=b"too late", delay=2))
    port = free_port()
    logged.apply(
        snapshot(
            [https_listener(port, access_log=True, http2=True)],
            [server_group(slow)],
            certificates=[certificate_entry("cert-default", ca.issue_cert("www.example.com"))],
        )
    )

    with H2Client(port, trusting(ca)) as client:
        stream_id = client.request("GET", "/reset-me")
        assert wait_until(lambda: len(slow.requests) == 1)
        client.conn.reset_stream(stream_id)
        client._send()
        [line] = logged.wait_lines("lsn-tls", 1)

    assert (line["path"], line["status"]) == ("/reset-me", None)
    assert (line["termination"], line["server"]) == ("client_closed", "srv-slow-0")


def test_an_http2_stream_cut_by_its_listener_stopping_is_logged_as_listener_stopped(
    logged,  # noqa: F811
    backends,
    ca,
):
    slow = backends("slow", lambda request: Reply(body=b"too late", delay=2))
    port = free_port()
    certificates = [certificate_entry("cert-default", ca.issue_cert("www.example.com"))]
    logged.apply(
        snapshot(
            [https_listener(port, access_log=True, http2=True)],
            [server_group(slow)],
            certificates=certificates,
        )
    )

    with H2Client(port, trusting(ca)) as client:
        client.request("GET", "/cut")
        assert wait_until(lambda: len(slow.requests) == 1)
        # The listener is stopped (seed 003: its connections are cut).
        stopped = https_listener(port, access_log=True, http2=True, enabled=False)
        logged.apply(
            snapshot([stopped], [server_group(slow)], certificates=certificates, generation=2)
        )
        [line] = logged.wait_lines("lsn-tls", 1)

    assert (line["path"], line["status"]) == ("/cut", None)
    assert (line["termination"], line["server"]) == ("listener_stopped", "srv-slow-0")
