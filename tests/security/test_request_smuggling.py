"""Request smuggling and framing: every way a client may try to make the node and the backend
disagree about where a request ends.

Each input is exact bytes over a real socket to a real node in front of a recording backend.
Most carry a second request, `GET /smuggled`, where a parser that read the framing differently
would find it. The test asserts the status the client got, what the backend received, and
that a later request on a fresh connection finds no smuggled request waiting on the pooled
backend connection.
"""

from __future__ import annotations

import pytest
from aioquic.h3.connection import ErrorCode

from tests.dataplane import conftest as dataplane_fixtures
from tests.dataplane.conftest import get
from tests.dataplane.test_quic import StreamReset
from tests.security import raw_http
from tests.security.raw_http import exchange, fds_return, serve, statuses

# The dataplane tests' fixtures: a node and backends on a background loop, a test CA.
loop_thread = dataplane_fixtures.loop_thread
dataplane = dataplane_fixtures.dataplane
backends = dataplane_fixtures.backends
ca = dataplane_fixtures.ca
quic = raw_http.quic

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
HEAD = b"POST / HTTP/1.1\r\nHost: t\r\n"


def post(*fields: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    head = b"POST / HTTP/%s\r\nHost: t\r\n" % version
    return head + b"".join(field + b"\r\n" for field in fields) + b"\r\n" + body


def chunked(body: bytes) -> bytes:
    return post(b"Transfer-Encoding: chunked", body=body)


# (input, status the client gets, body the backend receives; None: nothing reaches it)
REFUSED = 400
CASES = {
    # -- Content-Length and Transfer-Encoding together (RFC 9112 6.3: never guess) -------------
    "cl_then_te": (
        post(b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED),
        REFUSED,
        None,
    ),
    "te_then_cl": (
        post(b"Transfer-Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n" + SMUGGLED),
        REFUSED,
        None,
    ),
    "te_spaces_with_cl": (
        post(b"Content-Length: 5", b"Transfer-Encoding:   chunked  ", body=b"0\r\n\r\n" + SMUGGLED),
        REFUSED,
        None,
    ),
    "te_tab_with_cl": (
        post(b"Content-Length: 5", b"Transfer-Encoding:\tchunked", body=b"0\r\n\r\n" + SMUGGLED),
        REFUSED,
        None,
    ),
    "te_space_before_colon": (
        post(b"Content-Length: 5", b"Transfer-Encoding : chunked", body=b"0\r\n\r\n" + SMUGGLED),
        REFUSED,
        None,
    ),
    "te_folded_onto_previous_line": (
        post(b"Content-Length: 5", b"X-Pad: 1", b" Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        REFUSED,
        None,
    ),
    "xchunked_with_cl": (
        post(b"Content-Length: 5", b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n" + SMUGGLED),
        REFUSED,
        None,
    ),
    # -- Transfer-Encoding alone, obfuscated ----------------------------------------------------
    "xchunked": (
        post(b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n" + SMUGGLED),
        REFUSED,
        None,
    ),
    "chunked_then_identity": (
        post(b"Transfer-Encoding: chunked, identity", body=b"0\r\n\r\n" + SMUGGLED),
        REFUSED,
        None,
    ),
    "identity_only": (
        post(b"Transfer-Encoding: identity", body=b"0\r\n\r\n" + SMUGGLED),
        REFUSED,
        None,
    ),
    "te_duplicated": (
        post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        REFUSED,
        None,
    ),
    "te_chunked_then_identity_lines": (
        post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity", body=b"0\r\n\r\n"),
        REFUSED,
        None,
    ),
    "te_on_http10": (
        post(b"Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\n\r\n", version=b"1.0"),
        REFUSED,
        None,
    ),
    "te_on_http10_with_cl": (
        post(
            b"Content-Length: 5",
            b"Transfer-Encoding: chunked",
            body=b"0\r\n\r\n" + SMUGGLED,
            version=b"1.0",
        ),
        REFUSED,
        None,
    ),
    "unknown_coding_before_chunked": (
        post(b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"),
        501,
        None,
    ),
    "te_spaces_alone_is_chunked": (
        post(b"Transfer-Encoding:   chunked  ", body=b"5\r\nhello\r\n0\r\n\r\n"),
        200,
        b"hello",
    ),
    "te_tab_alone_is_chunked": (
        post(b"Transfer-Encoding:\tchunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
        200,
        b"hello",
    ),
    "te_trailing_tab": (
        post(b"Transfer-Encoding: chunked\t", body=b"0\r\n\r\n" + SMUGGLED),
        REFUSED,
        None,
    ),
    "te_comma_after_chunked": (
        post(b"Transfer-Encoding: chunked,", body=b"0\r\n\r\n" + SMUGGLED),
        REFUSED,
        None,
    ),
    "te_vertical_tab": (
        post(b"Transfer-Encoding:\x0bchunked", body=b"0\r\n\r\n" + SMUGGLED),
        REFUSED,
        None,
    ),
    "te_upper_case_is_chunked": (
        post(b"TRANSFER-ENCODING: CHUNKED", body=b"5\r\nhello\r\n0\r\n\r\n"),
        200,
        b"hello",
    ),
    # -- Content-Length ------------------------------------------------------------------------
    "cl_duplicated_equal": (
        post(b"Content-Length: 5", b"Content-Length: 5", body=b"hello"),
        REFUSED,
        None,
    ),
    "cl_duplicated_different": (
        post(b"Content-Length: 5", b"Content-Length: 41", body=b"hello" + SMUGGLED),
        REFUSED,
        None,
    ),
    "cl_list": (post(b"Content-Length: 5, 5", body=b"hello"), REFUSED, None),
    "cl_plus": (post(b"Content-Length: +5", body=b"hello"), REFUSED, None),
    "cl_hex": (post(b"Content-Length: 0x5", body=b"hello"), REFUSED, None),
    "cl_negative": (post(b"Content-Length: -1", body=b"hello"), REFUSED, None),
    "cl_very_large": (
        post(b"Content-Length: 184467440737095516160", body=b"hello"),
        REFUSED,
        None,
    ),
    "cl_with_space_inside": (post(b"Content-Length: 1 0", body=b"hello"), REFUSED, None),
    "cl_ows_is_fine": (post(b"Content-Length:  5 ", body=b"hello"), 200, b"hello"),
    # A client naming framing fields as hop-by-hop must not strip them from what is forwarded:
    # the backend would take the body for the next request.
    "connection_names_content_length": (
        post(
            b"Content-Length: %d" % len(SMUGGLED),
            b"Connection: content-length",
            body=SMUGGLED,
        ),
        200,
        SMUGGLED,
    ),
    # -- chunk sizes and extensions ------------------------------------------------------------
    "chunk_size_not_hex": (chunked(b"zz\r\nabc\r\n0\r\n\r\n"), REFUSED, None),
    "chunk_size_0x": (chunked(b"0x3\r\nabc\r\n0\r\n\r\n"), REFUSED, None),
    "chunk_size_negative": (chunked(b"-3\r\nabc\r\n0\r\n\r\n"), REFUSED, None),
    "chunk_size_space": (chunked(b"3 \r\nabc\r\n0\r\n\r\n"), REFUSED, None),
    "chunk_size_overflow": (chunked(b"10000000000000000\r\nabc\r\n0\r\n\r\n"), REFUSED, None),
    "chunk_lf_only": (chunked(b"3\nabc\n0\n\n" + SMUGGLED), REFUSED, None),
    "chunk_data_longer_than_size": (chunked(b"3\r\nabcGET /smuggled\r\n0\r\n\r\n"), REFUSED, None),
    "chunk_extension_nul": (chunked(b"3;a\x00=b\r\nabc\r\n0\r\n\r\n"), REFUSED, None),
    "chunk_extension_bare_lf": (chunked(b"3;a\n" + SMUGGLED + b"abc\r\n0\r\n\r\n"), REFUSED, None),
    "chunk_extension_is_dropped": (chunked(b"3;name=value\r\nabc\r\n0\r\n\r\n"), 200, b"abc"),
    "chunk_trailer_field_is_not_a_request": (
        chunked(b"3\r\nabc\r\n0\r\nX-Trailer: GET /smuggled\r\n\r\n"),
        200,
        b"abc",
    ),
    # -- header lines --------------------------------------------------------------------------
    "obs_fold": (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n", REFUSED, None),
    "obs_fold_tab": (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\r\n\tb\r\n\r\n", REFUSED, None),
    "nul_in_name": (b"GET / HTTP/1.1\r\nHost: t\r\nX\x00A: a\r\n\r\n", REFUSED, None),
    "nul_in_value": (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n", REFUSED, None),
    "cr_in_value": (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n", REFUSED, None),
    "lf_in_value": (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\n" + SMUGGLED, REFUSED, None),
    "cr_in_name": (b"GET / HTTP/1.1\r\nHost: t\r\nX\rA: a\r\n\r\n", REFUSED, None),
    "space_in_name": (b"GET / HTTP/1.1\r\nHost: t\r\nX A: a\r\n\r\n", REFUSED, None),
    "lf_line_endings": (b"GET / HTTP/1.1\nHost: t\n\n", REFUSED, None),
    "space_in_target": (b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n", REFUSED, None),
    "nul_in_target": (b"GET /a\x00 HTTP/1.1\r\nHost: t\r\n\r\n", REFUSED, None),
    # -- sizes ----------------------------------------------------------------------------------
    "request_line_over_64k": (
        b"GET /" + b"a" * (70 * 1024) + b" HTTP/1.1\r\nHost: t\r\n\r\n",
        414,
        None,
    ),
    "header_block_over_64k": (
        b"GET / HTTP/1.1\r\nHost: t\r\n"
        + b"".join(b"X-Pad-%d: %s\r\n" % (n, b"v" * 1000) for n in range(70))
        + b"\r\n",
        431,
        None,
    ),
    "too_many_header_lines": (
        b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-A: 1\r\n" * 300 + b"\r\n",
        431,
        None,
    ),
}


@pytest.mark.parametrize(("data", "status", "received"), CASES.values(), ids=CASES.keys())
def test_framing_attack(dataplane, backends, data, status, received):
    web = backends("web")
    port = serve(dataplane, web)
    with fds_return():
        answer, closed = exchange(port, data)
        assert closed
        assert statuses(answer)[:1] == [status], answer[:200]
        if received is None:
            assert web.requests == []
        else:
            assert [(r.method, r.target, r.body) for r in web.requests] == [("POST", "/", received)]
        # Nothing was left on the pooled backend connection for the next client.
        assert get(port, "/follow")[0] == 200
        assert "/smuggled" not in [r.target for r in web.requests]
        assert web.requests[-1].target == "/follow"


def test_battery_on_one_node_leaves_no_descriptor_behind(dataplane, backends):
    web = backends("web")
    port = serve(dataplane, web)
    with fds_return():
        for data, status, _ in CASES.values():
            answer, _ = exchange(port, data)
            assert statuses(answer)[:1] == [status]
    assert "/smuggled" not in [r.target for r in web.requests]


# -- HTTP/3: the same framing rules on the way to an HTTP/1.1 backend -----------------------------

QUIC_LENGTHS = {
    "plus": [(b"content-length", b"+5")],
    "underscore": [(b"content-length", b"0_5")],
    "duplicated_equal": [(b"content-length", b"5"), (b"content-length", b"5")],
    "duplicated_different": [(b"content-length", b"3"), (b"content-length", b"5")],
}


@pytest.mark.asyncio
@pytest.mark.parametrize("fields", QUIC_LENGTHS.values(), ids=QUIC_LENGTHS.keys())
async def test_http3_content_length_other_than_one_number_is_refused(quic, fields):
    backend = await quic.backend("web")
    _, port = await quic.listener(quic.settings(backend))
    async with quic.client(port) as client:
        # RFC 9114 4.1.2: malformed, a stream error of type H3_MESSAGE_ERROR.
        with pytest.raises(StreamReset) as reset:
            await client.request(b"POST", b"/", fields, body=b"hello")
        assert reset.value.code == ErrorCode.H3_MESSAGE_ERROR
        assert backend.requests == []
        # The connection still serves a well-framed request.
        status, _, _ = await client.request(
            b"POST", b"/", [(b"content-length", b"5")], body=b"hello"
        )
    assert status == 200
    assert [(r.target, r.all("Content-Length"), r.body) for r in backend.requests] == [
        ("/", ["5"], b"hello")
    ]
