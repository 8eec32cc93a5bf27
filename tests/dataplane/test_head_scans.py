"""dataplane.heads against the Python it replaced, on ordinary and hostile input: special_lines
finds the same response lines, spans and order as the regular expression did, head_span the same
bounds as lstrip and find did, and fits_request_line gives the same answer as the set and the
regular expression; field_line builds what bytes formatting did; line_version reads a request
line's version exactly where httptools' would be, and nowhere else."""

from __future__ import annotations

import random
import re

import pytest
from dataplane.heads import field_line, fits_request_line, head_span, line_version, special_lines

# The reference: what the proxy matched before, over the lower-cased head.
REFERENCE = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection|keep-alive|proxy-connection|te|trailer"
    rb"|upgrade|set-cookie|etag):[^\r]*"
)


def reference(head: bytes) -> list[tuple[bytes, int, int, int]]:
    return [
        (match[1], match.start(), match.end(), match.end(1) + 1)
        for match in REFERENCE.finditer(head.lower())
    ]


HEADS = [
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 0\r\nConnection: keep-alive\r\n"
    b'ETag: "5f-1"\r\nAccept-Ranges: bytes',
    b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH:12\r\nTransfer-Encoding: chunked\r\nKeep-Alive: t=5",
    b"HTTP/1.1 204 No Content\r\n",
    b"HTTP/1.1 200 OK",
    b"",
    b"\r\n",
    b"\r\nte:",
    b"HTTP/1.1 200 OK\r\nTe : trailers\r\nTE:trailers\r\nTrailer: x\r\nUpgrade: h2c",
    b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nset-cookie: b=2; Path=/\r\nSet-Cookie:\r\n",
    b"HTTP/1.1 200 OK\r\nX-Connection: close\r\nConnection-Id: 4\r\nconnection:close",
    b"HTTP/1.1 200 OK\r\nFoo: bar\rContent-Length: 5\r\nEtag: x\r\r\nProxy-Connection: x",
    b"HTTP/1.1 200 OK\nContent-Length: 5\r\n\nConnection: close\r\nEtag:\xff\xfe\r\n",
    b"HTTP/1.1 200 OK\r\n: no name\r\nno colon here\r\nContent-Length: 1: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\nContent-Length: 3\r\n\r\n",
]


@pytest.mark.parametrize("head", HEADS)
def test_the_same_lines_as_the_regular_expression(head):
    assert special_lines(head) == reference(head)


def test_random_heads_built_from_hostile_pieces():
    pieces = [
        b"\r\n", b"\r", b"\n", b":", b" ", b"\t", b"Content-Length", b"content-length",
        b"TE", b"te", b"Trailer", b"ETag", b"Set-Cookie", b"Connection", b"keep-alive",
        b"Proxy-Connection", b"Upgrade", b"Transfer-Encoding", b"X-Other", b"0", b"12",
        b"\x00", b"\xff", b"value",
    ]  # fmt: skip
    rng = random.Random(20261203)
    for _ in range(3000):
        head = b"HTTP/1.1 200 OK" + b"".join(rng.choice(pieces) for _ in range(rng.randrange(40)))
        assert special_lines(head) == reference(head), head


def test_a_large_head_with_many_lines():
    head = b"HTTP/1.1 200 OK" + b"".join(
        b"\r\nSet-Cookie: c%d=v" % n if n % 3 else b"\r\nX-Filler-%d: %s" % (n, b"v" * 50)
        for n in range(2000)
    )
    found = special_lines(head)
    assert found == reference(head)
    assert len(found) == 1333


# The reference for pseudo-headers: a token for the method (RFC 9110 5.6.2), and no control
# byte, space or DEL in the target or the authority.
TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
UNSAFE_IN_TARGET = re.compile(rb"[\x00-\x20\x7f]")


def fits_reference(method: bytes, path: bytes, authority: bytes) -> bool:
    return (
        bool(method)
        and TOKEN.issuperset(method)
        and not UNSAFE_IN_TARGET.search(path)
        and not UNSAFE_IN_TARGET.search(authority)
    )


@pytest.mark.parametrize(
    ("method", "path", "authority", "fits"),
    [
        (b"GET", b"/", b"example.com", True),
        (b"M-SEARCH", b"*", b"", True),
        (b"", b"/", b"a", False),
        (b"GE T", b"/", b"a", False),
        (b"GET", b"/a b", b"a", False),
        (b"GET", b"/a\tb", b"a", False),
        (b"GET", b"/a", b"a\x7f", False),
        (b"GET", b"/a", b"a b", False),
        (b"G\xc3\xa9T", b"/", b"a", False),
        (b"GET", b"/caf\xc3\xa9", b"h\xc3\xb4te", True),
    ],
)
def test_pseudo_headers_that_fit_a_request_line(method, path, authority, fits):
    assert fits_request_line(method, path, authority) is fits
    assert fits_reference(method, path, authority) is fits


def test_every_byte_in_every_place_answers_as_the_reference():
    for byte in range(256):
        one = bytes([byte])
        for args in ((one, b"/", b"a"), (b"GET", b"/" + one, b"a"), (b"GET", b"/", one)):
            assert fits_request_line(*args) is fits_reference(*args), args


def test_none_is_refused_not_read():
    with pytest.raises(TypeError):
        fits_request_line(b"GET", None, b"a")


def span_reference(buffer: bytes, start: int) -> tuple[int, int]:
    start = len(buffer) - len(buffer[start:].lstrip(b"\r\n"))
    return start, buffer.find(b"\r\n\r\n", start)


@pytest.mark.parametrize(
    ("buffer", "start"),
    [
        (b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody", 0),
        (b"xx\r\n\r\n\nHTTP/1.1 200 OK\r\n\r\n", 2),
        (b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", 19),
        (b"HTTP/1.1 200 OK\r\nA: b\r\n", 0),
        (b"\r\n\r\n", 0),
        (b"\r\n\r\n", 4),
        (b"", 0),
        (b"HTTP/1.1 200 OK\r\n\r", 0),
        (b"HTTP/1.1 200 OK\r\r\n\r\r\n\r\n", 0),
        (b"\r\r\r\n\r\n", 0),
        (b"A\r\n\r\n", 0),
        (b"A\r\n\r", 0),
    ],
)
def test_head_span_as_lstrip_and_find(buffer, start):
    assert head_span(buffer, start) == span_reference(buffer, start)


def test_head_span_of_random_buffers():
    pieces = [b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"HTTP/1.1 200 OK", b"A: b", b"\x00", b" "]
    rng = random.Random(20261204)
    for _ in range(3000):
        buffer = b"".join(rng.choice(pieces) for _ in range(rng.randrange(12)))
        start = rng.randrange(len(buffer) + 1)
        assert head_span(buffer, start) == span_reference(buffer, start), (buffer, start)


def test_head_span_refuses_a_start_outside_the_buffer():
    with pytest.raises(IndexError):
        head_span(b"abc", 4)
    with pytest.raises(IndexError):
        head_span(b"abc", -1)


@pytest.mark.parametrize(
    ("name", "value"),
    [(b"User-Agent", b"curl/8"), (b"x", b""), (b"", b""), (b"A" * 70000, b"\x00\xff" * 9000)],
)
def test_field_line_as_bytes_formatting(name, value):
    assert field_line(name, value) == b"%s: %s\r\n" % (name, value)


def test_field_line_refuses_what_is_not_bytes():
    with pytest.raises(TypeError):
        field_line(b"a", None)
    with pytest.raises(TypeError):
        field_line("a", b"b")


def reference_version(data: bytes, method: bytes, url: bytes) -> int:
    line, crlf, _ = data.partition(b"\r\n")
    if not crlf or b"\r" in line or b"\n" in line:
        return 0
    if line[: -len(b" HTTP/1.1")] != method + b" " + url:
        return 0
    return {b" HTTP/1.1": 11, b" HTTP/1.0": 10}.get(line[-len(b" HTTP/1.1") :], 0)


@pytest.mark.parametrize(
    ("data", "method", "url"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"GET", b"/"),
        (b"GET / HTTP/1.0\r\n", b"GET", b"/"),
        (b"POST /a?b=HTTP/1.1 HTTP/1.0\r\n", b"POST", b"/a?b=HTTP/1.1"),
        (b"GET http://x/ HTTP/1.1\r\n", b"GET", b"http://x/"),
        (b"\r\nGET / HTTP/1.1\r\n", b"GET", b"/"),  # an empty line first
        (b"GET  / HTTP/1.1\r\n", b"GET", b"/"),  # two spaces
        (b"GET / HTTP/1.1 \r\n", b"GET", b"/"),
        (b"GET / HTTP/1.1\r", b"GET", b"/"),  # the line not all there
        (b"GET / HTTP/1.1", b"GET", b"/"),
        (b"GET / HTTP/2.0\r\n", b"GET", b"/"),
        (b"GET / HTTP/1.2\r\n", b"GET", b"/"),
        (b"GET / http/1.1\r\n", b"GET", b"/"),
        (b"GET /b HTTP/1.1\r\n", b"GET", b"/a"),  # another request's line
        (b"PUT / HTTP/1.1\r\n", b"GET", b"/"),
        (b"GET \r\n HTTP/1.1\r\n", b"GET", b"\r\n"),  # a line break in the target
        (b"G\nT / HTTP/1.1\r\n", b"G\nT", b"/"),
        (b"", b"GET", b"/"),
        (b"G", b"GET", b"/"),
        (b"GET / HTTP/1.1\r\n", b"GET", b"/" * 70000),  # longer than the data
    ],
)
def test_line_version_as_partition(data, method, url):
    assert line_version(data, method, url) == reference_version(data, method, url)


def test_line_version_of_random_lines():
    generator = random.Random(5)
    alphabet = b" /HTP1.0\r\nGE"
    for _ in range(20000):
        data = bytes(generator.choice(alphabet) for _ in range(generator.randrange(0, 24)))
        method = b"GET"[: generator.randrange(0, 4)]
        url = bytes(generator.choice(alphabet) for _ in range(generator.randrange(0, 4)))
        assert line_version(data, method, url) == reference_version(data, method, url), data


def test_line_version_refuses_what_is_not_bytes():
    with pytest.raises(TypeError):
        line_version(bytearray(b"GET / HTTP/1.1\r\n"), b"GET", b"/")  # type: ignore[arg-type]
