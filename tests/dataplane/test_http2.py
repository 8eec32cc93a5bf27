"""HTTP/2 on HTTPS listeners: ALPN, multiplexed streams, flow control, and HTTP/1.1 backends."""

from __future__ import annotations

import gzip
import logging
import re
import socket
import ssl
import subprocess
import time

import h2.errors
import h2.settings
import pytest

from tests.dataplane.conftest import (
    WAIT,
    Reply,
    certificate_entry,
    server_group,
    snapshot,
    wait_until,
)
from tests.dataplane.h2client import H2Client
from tests.dataplane.test_https import https_listener, trusting
from tests.fixtures.ports import free_port


@pytest.fixture
def h2_listener(dataplane, backends, ca):
    """An HTTPS listener with HTTP/2 on, in front of one recording backend."""

    generation = 0

    def start(handler=None, **settings):
        nonlocal generation
        generation += 1
        web = backends("web", handler)
        port = free_port()
        settings.setdefault("http2", True)
        certificates = [certificate_entry("cert-default", ca.issue_cert("www.example.com"))]
        result = dataplane.apply(
            snapshot(
                [https_listener(port, **settings)],
                [server_group(web)],
                certificates=certificates,
                generation=generation,
            )
        )
        assert result["lsn-tls"]["status"] == "running", result
        return port, web

    return start


def alpn(port: int, context: ssl.SSLContext, offered: list[str]) -> str | None:
    context.set_alpn_protocols(offered)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        with context.wrap_socket(raw, server_hostname="www.example.com") as tls:
            return tls.selected_alpn_protocol()


def test_alpn_offers_h2_only_when_http2_is_on(h2_listener, dataplane, ca):
    port, _ = h2_listener()
    assert alpn(port, trusting(ca), ["h2", "http/1.1"]) == "h2"
    assert alpn(port, trusting(ca), ["http/1.1"]) == "http/1.1"

    off_port, _ = h2_listener(http2=False)
    # Without HTTP/2 the listener takes part in no ALPN at all, as before.
    assert alpn(off_port, trusting(ca), ["h2", "http/1.1"]) is None


def test_multiplexed_streams_reach_the_backend_as_http11(h2_listener, ca):
    port, web = h2_listener(
        lambda r: Reply(body=f"you asked {r.target}".encode()), x_forwarded_proto=True
    )
    with H2Client(port, trusting(ca)) as client:
        assert client.alpn == "h2"
        streams = [client.request("GET", f"/item/{n}") for n in range(20)]
        responses = client.wait(*streams)
    assert [r.status for r in responses] == [200] * 20
    assert [r.body for r in responses] == [f"you asked /item/{n}".encode() for n in range(20)]
    assert sorted(r.target for r in web.requests) == sorted(f"/item/{n}" for n in range(20))
    received = web.requests[0]
    assert received.version == "HTTP/1.1"
    assert received.header("Host") == "www.example.com"
    assert received.header("X-Forwarded-For") == "127.0.0.1"
    assert received.header("X-Forwarded-Proto") == "https"
    # The dataplane's own hop-by-hop choice stays between it and the stream.
    assert received.header("Connection") is None


def test_request_bodies_with_and_without_length(h2_listener, ca):
    port, web = h2_listener(lambda r: Reply(body=b"%d bytes" % len(r.body)))
    payload = bytes(range(256)) * 4096  # 1 MiB: more than one window's worth of frames
    with H2Client(port, trusting(ca)) as client:
        sized = client.request(
            "POST", "/sized", headers=[("content-length", str(len(payload)))], body=payload
        )
        streamed = client.request("PUT", "/streamed", body=payload)
        responses = client.wait(sized, streamed)
    assert [r.body for r in responses] == [b"1048576 bytes"] * 2
    by_target = {r.target: r for r in web.requests}
    assert by_target["/sized"].body == payload
    assert by_target["/sized"].header("Content-Length") == str(len(payload))
    assert by_target["/streamed"].body == payload
    assert by_target["/streamed"].header("Transfer-Encoding") == "chunked"


def test_large_response_respects_the_clients_window(h2_listener, ca):
    body = bytes(range(251)) * 20000  # ~5 MB, far beyond the 64 KiB default window
    port, _ = h2_listener(lambda r: Reply(body=body, chunked=r.target == "/chunked"))
    with H2Client(port, trusting(ca)) as client:
        plain = client.get("/plain")
        chunked = client.get("/chunked")
    assert plain.body == body
    assert plain.header("content-length") == str(len(body))
    assert chunked.body == body
    assert chunked.header("transfer-encoding") is None


def test_streams_of_a_client_that_stops_reading_finish_once_it_reads_again(h2_listener, ca):
    # Large windows let the node write far ahead of the client: its transport pauses, every
    # stream's backend read pauses, and each must resume once the client reads again, whatever
    # each stream still had queued when the transport resumed.
    body = bytes(range(251)) * 16000  # ~4 MB a stream
    port, _ = h2_listener(lambda r: Reply(body=body))
    with H2Client(port, trusting(ca)) as client:
        client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**30})
        client.conn.increment_flow_control_window(2**30)
        client._send()
        streams = [client.request("GET", f"/big/{index}") for index in range(6)]
        time.sleep(1.0)  # not reading: the node's buffers fill and it pauses
        responses = client.wait(*streams)
    assert [len(response.body) for response in responses] == [len(body)] * 6
    assert all(response.body == body for response in responses)


def test_head_and_no_content_responses_end_at_the_headers(h2_listener, ca):
    port, _ = h2_listener(
        lambda r: Reply(status=204) if r.target == "/empty" else Reply(body=b"x" * 100)
    )
    with H2Client(port, trusting(ca)) as client:
        head = client.wait(client.request("HEAD", "/"))[0]
        empty = client.get("/empty")
    assert (head.status, head.body, head.header("content-length")) == (200, b"", "100")
    assert (empty.status, empty.body) == (204, b"")


def test_backend_response_fields_reach_the_client_as_http2_fields(h2_listener, ca):
    """The backend's HTTP/1.1 head becomes HTTP/2 fields: names lowered, values trimmed, every
    connection-specific field gone (RFC 9113 8.2.2), repeated fields kept apart, and a body
    known to be empty ends the stream on the HEADERS frame."""
    fields = [
        ("X-Mixed-Case", " \tpadded value\t "),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("Upgrade", "h2c"),
        ("Trailer", "X-Checksum"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("X-Empty", ""),
        ("X-Colon", "a:b: c"),
    ]
    port, _ = h2_listener(
        lambda r: Reply(headers=fields, body=b"" if r.target == "/empty" else b"body")
    )
    with H2Client(port, trusting(ca)) as client:
        full = client.get("/full")
        empty = client.get("/empty")

    names = [name for name, _ in full.headers]
    assert names[0] == b":status" and all(name == name.lower() for name in names)
    assert full.header("x-mixed-case") == "padded value"
    assert full.header("x-colon") == "a:b: c"
    assert full.header("x-empty") == ""
    assert [value for name, value in full.headers if name == b"set-cookie"] == [b"a=1", b"b=2"]
    for hop in (b"connection", b"keep-alive", b"proxy-connection", b"upgrade", b"trailer"):
        assert hop not in names, hop
    assert (full.status, full.body, full.header("content-length")) == (200, b"body", "4")
    assert not full.ended_at_headers
    assert (empty.status, empty.body, empty.header("content-length")) == (200, b"", "0")
    assert empty.ended_at_headers


def test_a_late_backend_gets_its_stream_a_504_while_the_others_are_answered(h2_listener, ca):
    """Stream deadlines share one timer per connection: a late stream still gets its 504, and
    the streams around it are unaffected."""
    port, _ = h2_listener(
        lambda r: Reply(body=b"late", delay=4.0) if r.target == "/slow" else Reply(body=b"quick"),
        response_timeout=1,
    )
    with H2Client(port, trusting(ca)) as client:
        slow = client.request("GET", "/slow")
        quick = [client.request("GET", f"/quick/{index}") for index in range(3)]
        answers = client.wait(slow, *quick)
        again = client.get("/after")

    assert answers[0].status == 504
    assert [(a.status, a.body) for a in answers[1:]] == [(200, b"quick")] * 3
    assert (again.status, again.body) == (200, b"quick")


def test_a_stream_whose_request_body_stops_gets_408(h2_listener, ca):
    port, _ = h2_listener(request_timeout=1)
    with H2Client(port, trusting(ca)) as client:
        stalled = client.request("POST", "/upload", body=b"first part", end=False)
        answer = client.wait(stalled)[0]
        after = client.get("/after")

    assert (answer.status, answer.ended) == (408, True)
    assert after.status == 200


def test_listener_features_apply_to_h2_streams(h2_listener, ca):
    """Compression and forwarding rules run on the same request path as HTTP/1.1."""
    text = b'{"k": "' + b"v" * 4000 + b'"}'
    rules = [
        {
            "id": "rule-fixed",
            "conditions": [{"type": "path", "match": "prefix", "values": ["/maintenance"]}],
            "action": {
                "type": "fixed_response",
                "status_code": 503,
                "content_type": "text/plain",
                "body": "down for maintenance",
            },
        }
    ]
    port, _ = h2_listener(
        lambda r: Reply(headers=[("Content-Type", "application/json")], body=text),
        compression="gzip",
        forwarding_rules=rules,
    )
    with H2Client(port, trusting(ca)) as client:
        compressed = client.get("/data", headers=[("accept-encoding", "gzip")])
        fixed = client.get("/maintenance/now")
    assert compressed.header("content-encoding") == "gzip"
    assert gzip.decompress(compressed.body) == text
    assert (fixed.status, fixed.body) == (503, b"down for maintenance")


def test_no_server_answers_503_on_the_stream_and_the_connection_lives(dataplane, ca):
    port = free_port()
    certificates = [certificate_entry("cert-default", ca.issue_cert("www.example.com"))]
    group = {"id": "sgp-web", "name": "empty", "backend_protocol": "http", "servers": []}
    dataplane.apply(
        snapshot([https_listener(port, http2=True)], [group], certificates=certificates)
    )
    with H2Client(port, trusting(ca)) as client:
        first = client.get("/")
        second = client.get("/")
    assert (first.status, second.status) == (503, 503)


def test_a_backend_switching_protocols_on_a_stream_gets_a_502_and_the_connection_lives(
    h2_listener, ca
):
    # Only an HTTP/1.1 exchange that forwarded a WebSocket upgrade can carry a tunnel; a stream's
    # exchange has none to give a backend that answers 101, so the stream gets the node's 502.
    port, web = h2_listener(
        lambda r: (
            Reply(status=101, headers=[("Connection", "Upgrade"), ("Upgrade", "websocket")])
            if r.target == "/switch"
            else Reply(body=b"ok")
        )
    )
    with H2Client(port, trusting(ca)) as client:
        switched = client.get("/switch")
        after = client.get("/after")
    assert switched.status == 502
    assert (after.status, after.body) == (200, b"ok")
    assert [request.target for request in web.requests] == ["/switch", "/after"]


def test_an_answer_of_the_node_its_own_is_framed_as_http2_fields(dataplane, ca):
    # The node's 503 reaches the stream as its head and body, not as HTTP/1.1 bytes: its fields
    # are lower case, without the connection-specific ones, and a HEAD gets the head only.
    port = free_port()
    certificates = [certificate_entry("cert-default", ca.issue_cert("www.example.com"))]
    group = {"id": "sgp-web", "name": "empty", "backend_protocol": "http", "servers": []}
    dataplane.apply(
        snapshot([https_listener(port, http2=True)], [group], certificates=certificates)
    )
    with H2Client(port, trusting(ca)) as client:
        get = client.get("/")
        head = client.wait(client.request("HEAD", "/"))[0]
    body = b"503 Service Unavailable\n"
    assert (get.status, get.body) == (503, body)
    assert get.header("content-length") == str(len(body))
    assert get.header("content-type") == "text/plain"
    names = [name for name, _ in get.headers]
    assert names[0] == b":status" and all(name == name.lower() for name in names)
    assert b"connection" not in names
    assert (head.status, head.body, head.ended_at_headers) == (503, b"", True)
    assert head.header("content-length") == str(len(body))


def test_a_target_that_would_split_the_request_line_is_refused(h2_listener, ca):
    port, web = h2_listener()
    with H2Client(port, trusting(ca)) as client:
        # h2 itself allows a space in :path; on the way to HTTP/1.1 it would end the target.
        spaced = client.get("/a b HTTP/1.1")
        assert spaced.reset == h2.errors.ErrorCodes.PROTOCOL_ERROR
        assert client.get("/fine").status == 200
    with H2Client(port, trusting(ca)) as client:
        # CR and LF make the request malformed (RFC 9113 8.2.1), a stream error of type
        # PROTOCOL_ERROR (8.1.1): that stream is reset, the connection goes on.
        (injected,) = client.wait(client.request("GET", "/a\r\nX-Injected: 1"))
        assert injected.reset == h2.errors.ErrorCodes.PROTOCOL_ERROR
        assert client.get("/after").status == 200
    assert [r.target for r in web.requests] == ["/fine", "/after"]


def test_client_reset_cancels_the_backend_exchange(h2_listener, ca):
    port, _ = h2_listener(lambda r: Reply(body=b"late", delay=0.5))
    with H2Client(port, trusting(ca)) as client:
        stream = client.request("GET", "/slow")
        client.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        client._send()
        after = client.get("/next")
    assert after.status == 200


def test_a_client_goaway_lets_its_streams_in_flight_finish_then_closes(h2_listener, ca, caplog):
    """A client's GOAWAY says it opens no more streams (RFC 9113 6.8); the ones it opened still
    get their answers, then the connection closes, and nothing is logged as an error."""
    port, web = h2_listener(lambda r: Reply(body=b"late", delay=0.5))
    with H2Client(port, trusting(ca)) as client:
        streams = [client.request("GET", f"/slow/{n}") for n in range(3)]
        assert wait_until(lambda: len(web.requests) == 3)
        client.close_connection_only()
        client.sock.settimeout(WAIT)
        # The listener closes the connection once the last stream is done; the client's h2
        # state machine reads no frames after its own GOAWAY, so the bytes are read raw.
        received = b""
        while chunk := client.sock.recv(65536):
            received += chunk
        assert received.count(b"late") == len(streams)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    with H2Client(port, trusting(ca)) as client:
        assert client.get("/after").status == 200


def test_h2load_multiplexes_requests_without_errors(h2_listener):
    port, web = h2_listener()
    result = subprocess.run(
        ["h2load", "-n", "400", "-c", "4", "-m", "16", f"https://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Application protocol: h2" in result.stdout
    assert re.search(r"requests: 400 total, 400 started, 400 done, 400 succeeded", result.stdout)
    assert re.search(r"status codes: 400 2xx", result.stdout)
    assert len(web.requests) == 400
