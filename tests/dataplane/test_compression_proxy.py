"""Seed 001 compression through a real node: every row of the rule, with real responses."""

from __future__ import annotations

import gzip
import http.client

import brotli
import pytest

from tests.dataplane.conftest import (
    WAIT,
    Reply,
    listener,
    raw_exchange,
    server_group,
    snapshot,
)
from tests.fixtures.ports import free_port

TEXT = b"The quick brown fox jumps over the lazy dog. " * 60  # 2,700 bytes


def reply_for(request) -> Reply:
    """The backend answers what the request's path asks for: /<status>/<type>/<size>[/...]."""
    parts = request.target.strip("/").split("/")
    status, media, size = int(parts[0]), parts[1].replace("~", "/"), int(parts[2])
    headers = [("Content-Type", media)]
    flags = set(parts[3:])
    if "encoded" in flags:
        headers.append(("Content-Encoding", "gzip"))
    if "etag" in flags:
        headers.append(("ETag", '"v1"'))
    if "notransform" in flags:
        headers.append(("Cache-Control", "public, no-transform"))
    if "vary" in flags:
        headers.append(("Vary", "Accept-Encoding"))
    return Reply(status=status, headers=headers, body=TEXT[:size], chunked="chunked" in flags)


@pytest.fixture
def node_with(dataplane, backends):
    def start(compression: str) -> int:
        app = backends("app", reply_for)
        port = free_port()
        dataplane.apply(snapshot([listener(port, compression=compression)], [server_group(app)]))
        return port

    return start


def fetch(port: int, path: str, accept: str | None, method: str = "GET"):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        headers = {} if accept is None else {"Accept-Encoding": accept}
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


def decoded(response, body: bytes) -> bytes:
    encoding = response.getheader("Content-Encoding")
    if encoding == "br":
        return brotli.decompress(body)
    if encoding == "gzip":
        return gzip.decompress(body)
    return body


@pytest.mark.parametrize(
    ("mode", "path", "accept", "expected"),
    [
        # Compression off: nothing is compressed.
        ("off", "/200/text~plain/2000", "br, gzip", None),
        # Brotli preferred when the client accepts both, whatever the type.
        ("brotli_gzip", "/200/text~plain/2000", "gzip, br", "br"),
        ("brotli_gzip", "/200/image~png/2000", "br;q=0.5, gzip", "br"),
        # Only gzip accepted: gzip for a listed type...
        ("brotli_gzip", "/200/application~json/2000", "gzip", "gzip"),
        ("brotli_gzip", "/200/text~css; charset=utf-8/2000", "gzip", "gzip"),
        # ...and nothing for a type not in the list.
        ("brotli_gzip", "/200/image~png/2000", "gzip", None),
        ("brotli_gzip", "/200/text~html/2000", "gzip", None),
        # Content-Length must exceed 1,024 bytes.
        ("brotli_gzip", "/200/text~plain/1024", "br, gzip", None),
        ("brotli_gzip", "/200/text~plain/1025", "br, gzip", "br"),
        # No Accept-Encoding, or one that refuses both.
        ("brotli_gzip", "/200/text~plain/2000", None, None),
        ("brotli_gzip", "/200/text~plain/2000", "br;q=0, gzip;q=0", None),
        # Never recompress an encoded response; no length means no trigger.
        ("brotli_gzip", "/200/text~plain/2000/encoded", "br, gzip", "gzip-from-backend"),
        ("brotli_gzip", "/200/text~plain/2000/chunked", "br, gzip", None),
        # Statuses and headers that rule it out.
        ("brotli_gzip", "/206/text~plain/2000", "br, gzip", None),
        ("brotli_gzip", "/200/text~plain/2000/notransform", "br, gzip", None),
        ("brotli_gzip", "/404/text~plain/2000", "br, gzip", "br"),
        # Seed 000 GZIP only: Brotli is never chosen.
        ("gzip", "/200/text~plain/2000", "br, gzip", "gzip"),
        ("gzip", "/200/image~png/2000", "br, gzip", None),
        ("gzip", "/200/text~plain/2000", "br", None),
    ],
)
def test_compression_rule(node_with, mode, path, accept, expected):
    port = node_with(mode)
    response, body = fetch(port, path.replace(" ", "%20"), accept)
    size = int(path.split("/")[3])
    if expected == "gzip-from-backend":
        # Passed through untouched, length and all.
        assert response.getheader("Content-Encoding") == "gzip"
        assert body == TEXT[:size]
        assert response.getheader("Content-Length") == str(size)
        return
    assert response.getheader("Content-Encoding") == expected
    assert decoded(response, body) == TEXT[:size]
    if expected is None:
        assert response.getheader("Vary") is None
    else:
        assert response.getheader("Vary") == "Accept-Encoding"
        assert response.getheader("Content-Length") is None
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert len(body) < size


def test_compressed_response_headers(node_with):
    port = node_with("brotli_gzip")
    response, body = fetch(port, "/200/text~plain/2000/etag/vary", "br")
    assert response.getheader("ETag") == 'W/"v1"'
    # The backend already varies on Accept-Encoding: not said twice.
    assert response.getheaders().count(("Vary", "Accept-Encoding")) == 1
    assert brotli.decompress(body) == TEXT[:2000]
    # Not compressed: the strong ETag stays.
    response, _ = fetch(port, "/200/text~plain/2000/etag", None)
    assert response.getheader("ETag") == '"v1"'


def test_head_gets_no_compression(node_with):
    port = node_with("brotli_gzip")
    response, body = fetch(port, "/200/text~plain/2000", "br, gzip", method="HEAD")
    assert response.getheader("Content-Encoding") is None
    assert response.getheader("Content-Length") == "2000"
    assert body == b""


def test_keep_alive_connection_carries_several_compressed_responses(node_with):
    port = node_with("brotli_gzip")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        for accept, path in (
            ("br", "/200/text~plain/2000"),
            ("gzip", "/200/application~json/1500"),
            ("gzip", "/200/image~png/1500"),
            ("br", "/200/text~plain/2500"),
        ):
            connection.request("GET", path, headers={"Accept-Encoding": accept})
            response = connection.getresponse()
            body = response.read()
            assert decoded(response, body) == TEXT[: int(path.split("/")[3])]
            assert not response.will_close
    finally:
        connection.close()


def test_http_1_0_client_gets_a_close_delimited_compressed_body(node_with):
    port = node_with("brotli_gzip")
    data = raw_exchange(
        port, b"GET /200/text~plain/2000 HTTP/1.0\r\nHost: x\r\nAccept-Encoding: gzip, br\r\n\r\n"
    )
    head, _, body = data.partition(b"\r\n\r\n")
    lower = head.lower()
    assert b"content-encoding: br" in lower
    assert b"transfer-encoding" not in lower
    assert b"content-length" not in lower
    assert b"connection: close" in lower
    assert brotli.decompress(body) == TEXT[:2000]
