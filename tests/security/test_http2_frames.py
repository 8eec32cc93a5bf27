"""HTTP/2 conformance and abuse, frame by frame, against a real node's HTTPS listener.

Each case opens a TLS connection with ALPN h2 and writes frames built by hand: well-formed ones
with `hyperframe` and `hpack`, malformed ones packed with `struct`, which those libraries refuse
to build. The frames the node sends back are decoded and the test asserts what RFC 9113 requires
of a server: a GOAWAY or an RST_STREAM naming the error, or a response. After every case a new
connection still gets a normal answer and the node holds no more descriptors than before.

Where nghttp2 (the node's engine) documents a choice the RFC leaves open, or departs from the
letter of the RFC on purpose, the test asserts nghttp2's behaviour and says so.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.dataplane import conftest as dataplane_fixtures
from tests.dataplane.conftest import (
    WAIT,
    Reply,
    certificate_entry,
    server_group,
    snapshot,
    wait_until,
)
from tests.dataplane.test_https import https_listener, trusting
from tests.fixtures.ports import free_port
from tests.fixtures.resources import rss_kib
from tests.security.raw_backend import RawBackend, RawConnection, hold
from tests.security.raw_http import fds_return

loop_thread = dataplane_fixtures.loop_thread
dataplane = dataplane_fixtures.dataplane
backends = dataplane_fixtures.backends
ca = dataplane_fixtures.ca

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# RFC 9113 section 7 error codes.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

# Frame types (RFC 9113 section 6).
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0,
    0x1,
    0x3,
    0x4,
    0x6,
    0x7,
    0x8,
    0x9,
)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4

# Short: a well-behaved node answers a broken frame at once.
READ_WAIT = 5.0


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """A frame exactly as given: no check on its length, type, flags or stream."""
    return (
        struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id) + payload
    )


def request_fields(
    path: str = "/", method: str = "GET", authority: str = "www.example.com"
) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", method.encode()),
        (b":scheme", b"https"),
        (b":authority", authority.encode()),
        (b":path", path.encode()),
    ]


@dataclass
class Answer:
    """What the node sent on one stream."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    reset: int | None = None
    ended: bool = False

    @property
    def status(self) -> int:
        return int(dict(self.headers).get(b":status", b"0"))


class RawH2:
    """A client that writes frames as given and decodes every frame the node sends back."""

    def __init__(
        self,
        port: int,
        context: ssl.SSLContext,
        *,
        preface: bool = True,
        settings: dict[int, int] | None = None,
        auto_window: bool = True,
    ) -> None:
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock = context.wrap_socket(raw, server_hostname="www.example.com")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buffer = b""
        self.frames: list[Frame] = []
        self.answers: dict[int, Answer] = {}
        self.goaway: GoAwayFrame | None = None
        self.closed = False
        self.sent = 0
        self.server_settings: dict[int, int] = {}
        # Whether every DATA frame is acknowledged with WINDOW_UPDATEs as it arrives.
        self.auto_window = auto_window
        if preface:
            self.send(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------

    def send(self, *frames: Frame | bytes) -> bool:
        """Write the frames in one go; False if the node had already closed the connection."""
        data = b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames)
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            return False
        self.sent += len(data)
        return True

    def block(self, fields: list[tuple[bytes, bytes]]) -> bytes:
        return self.encoder.encode(fields, huffman=False)

    def headers(
        self, stream_id: int, fields: list[tuple[bytes, bytes]], *, end_stream: bool = True
    ) -> HeadersFrame:
        flags = ["END_HEADERS"] + (["END_STREAM"] if end_stream else [])
        return HeadersFrame(stream_id, data=self.block(fields), flags=flags)

    def get(self, stream_id: int, path: str = "/") -> bool:
        return self.send(self.headers(stream_id, request_fields(path)))

    # -- reading -------------------------------------------------------------------------------

    def read_frame(self, timeout: float = READ_WAIT) -> Frame | None:
        """The next frame, or None once the node closed the connection (or said nothing)."""
        while True:
            if len(self.buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
                if len(self.buffer) >= 9 + length:
                    frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
                    self.buffer = self.buffer[9 + length :]
                    self._note(frame)
                    return frame
            if self.closed:
                return None
            self.sock.settimeout(timeout)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            except (ConnectionResetError, ssl.SSLError):
                chunk = b""
            if not chunk:
                self.closed = True
            self.buffer += chunk

    def _note(self, frame: Frame) -> None:
        self.frames.append(frame)
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.server_settings.update(frame.settings)
            self.send(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(frame, GoAwayFrame):
            self.goaway = frame
        elif isinstance(frame, HeadersFrame):
            answer = self.answers.setdefault(frame.stream_id, Answer())
            answer.headers += self.decoder.decode(frame.data, raw=True)
            answer.ended = "END_STREAM" in frame.flags
        elif isinstance(frame, DataFrame):
            answer = self.answers.setdefault(frame.stream_id, Answer())
            answer.body += frame.data
            answer.ended = "END_STREAM" in frame.flags
            if frame.flow_controlled_length and self.auto_window:
                self.send(
                    WindowUpdateFrame(0, window_increment=frame.flow_controlled_length),
                    WindowUpdateFrame(
                        frame.stream_id, window_increment=frame.flow_controlled_length
                    ),
                )
        elif isinstance(frame, RstStreamFrame):
            self.answers.setdefault(frame.stream_id, Answer()).reset = frame.error_code

    def until_goaway(self, timeout: float = READ_WAIT) -> GoAwayFrame | None:
        """Read until the node sends GOAWAY and closes, or closes, or goes quiet."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.read_frame(deadline - time.monotonic()) is None:
                break
        return self.goaway

    def answer(self, stream_id: int, timeout: float = READ_WAIT) -> Answer:
        """Read until the stream ends or is reset, or the connection ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.answers.get(stream_id)
            if answer is not None and (answer.ended or answer.reset is not None):
                return answer
            if self.read_frame(deadline - time.monotonic()) is None:
                break
        return self.answers.get(stream_id, Answer())

    def alive(self) -> bool:
        """The connection still answers a PING (RFC 9113 6.7)."""
        if not self.send(PingFrame(0, opaque_data=b"pingpong")):
            return False
        deadline = time.monotonic() + READ_WAIT
        while time.monotonic() < deadline:
            frame = self.read_frame(deadline - time.monotonic())
            if frame is None:
                return False
            if isinstance(frame, PingFrame) and "ACK" in frame.flags:
                return frame.opaque_data == b"pingpong"
        return False


# -- the node ---------------------------------------------------------------------------------


@dataclass
class Node:
    port: int
    web: Any
    context: ssl.SSLContext
    dataplane: Any
    certificates: list[dict[str, str]]

    def bytes_in(self) -> int:
        """Bytes the listener took from its HTTP/2 clients, after TLS."""
        return self.dataplane.stats("lsn-tls")["bytes_in"]

    def side_listener(self, backend: Any) -> int:
        """A second HTTP/2 listener, in front of `backend` alone; returns its port."""
        port = free_port()
        result = self.dataplane.apply(
            snapshot(
                [
                    https_listener(self.port, http2=True),
                    https_listener(port, http2=True, listener_id="lsn-side", group_id="sgp-side"),
                ],
                [server_group(self.web), server_group(backend, group_id="sgp-side")],
                certificates=self.certificates,
                generation=2,
            )
        )
        assert result["lsn-side"]["status"] == "running", result
        return port

    def connect(self, port: int | None = None, **kwargs: Any) -> RawH2:
        return RawH2(port or self.port, self.context, **kwargs)

    def assert_healthy(self) -> None:
        """A new connection gets a normal answer."""
        with self.connect() as client:
            client.get(1, "/health-check")
            answer = client.answer(1)
        assert (answer.status, answer.body) == (200, b"fine"), answer

    def requests(self) -> list[str]:
        return [r.target for r in self.web.requests if r.target != "/health-check"]


def _handler(request: Any) -> Reply:
    if request.target.startswith("/big"):
        return Reply(body=b"b" * 200_000)
    if request.target.startswith("/warm"):
        return Reply(body=b"warm", delay=0.1)
    if request.target.startswith("/slow"):
        return Reply(body=b"late", delay=0.5)
    return Reply(body=b"fine")


@pytest.fixture
def h2node(dataplane: Any, backends: Any, ca: Any) -> Node:
    """An HTTPS listener with HTTP/2 in front of one recording backend; its pool is warm."""
    web = backends("web", _handler)
    port = free_port()
    certificates = [certificate_entry("cert-default", ca.issue_cert("www.example.com"))]
    result = dataplane.apply(
        snapshot([https_listener(port, http2=True)], [server_group(web)], certificates=certificates)
    )
    assert result["lsn-tls"]["status"] == "running", result
    running = Node(port, web, trusting(ca), dataplane, certificates)
    # Four exchanges at once fill the backend pool as far as the cases below need it, so a
    # pooled connection is not mistaken for a leaked descriptor.
    with running.connect() as client:
        for stream_id in (1, 3, 5, 7):
            client.get(stream_id, "/warm")
        assert [client.answer(n).status for n in (1, 3, 5, 7)] == [200] * 4
    running.assert_healthy()
    web.requests.clear()
    return running


@contextmanager
def misbehaving(node: Node) -> Iterator[None]:
    """The case's connection leaves no descriptor behind, and the node serves afterwards."""
    with fds_return():
        yield
    node.assert_healthy()


def connection_error(client: RawH2) -> int | None:
    """The GOAWAY's code once the node has closed the connection."""
    goaway = client.until_goaway()
    assert client.closed, "the node kept the connection open"
    return None if goaway is None else goaway.error_code


# -- connection preface (RFC 9113 3.4) ----------------------------------------------------------


def test_a_wrong_preface_ends_the_connection(h2node):
    """An invalid preface is a connection error of type PROTOCOL_ERROR; the GOAWAY "MAY be
    omitted" (3.4), and nghttp2 omits it: the node closes after its own SETTINGS."""
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"):
        with misbehaving(h2node), h2node.connect(preface=False) as client:
            client.send(junk + SettingsFrame(0).serialize())
            assert connection_error(client) in (None, PROTOCOL_ERROR)
            assert not client.answers
    assert h2node.requests() == []


def test_a_preface_split_into_single_bytes_still_works(h2node):
    with misbehaving(h2node), h2node.connect(preface=False) as client:
        for byte in PREFACE + SettingsFrame(0).serialize():
            client.send(bytes([byte]))
        client.get(1, "/split")
        answer = client.answer(1)
    assert (answer.status, answer.body) == (200, b"fine")
    assert h2node.requests() == ["/split"]


# -- frame size (RFC 9113 4.2) -------------------------------------------------------------------


def test_a_frame_over_max_frame_size_is_a_frame_size_error(h2node):
    with misbehaving(h2node), h2node.connect() as client:
        client.send(client.headers(1, request_fields("/upload", "POST"), end_stream=False))
        client.send(raw_frame(DATA, END_STREAM, 1, b"x" * (16384 + 1)))
        assert connection_error(client) == FRAME_SIZE_ERROR


@pytest.mark.parametrize("with_body", [False, True], ids=["no-body", "body-follows"])
def test_a_header_list_over_64_kib_is_answered_431_and_the_connection_goes_on(h2node, with_body):
    """The node advertises SETTINGS_MAX_HEADER_LIST_SIZE 64 KiB; a larger list may be answered
    with 431 (RFC 9113 10.5.1), as an HTTP/1.1 client's would be. Four CONTINUATIONs stay under
    the limit on CONTINUATION frames, so this is the header-list limit alone."""
    with misbehaving(h2node), h2node.connect() as client:
        assert client.read_frame() is not None
        assert client.server_settings.get(SettingsFrame.MAX_HEADER_LIST_SIZE) == 64 * 1024
        fields = request_fields("/huge", "POST")
        fields += [(b"x-filler-%d" % n, b"v" * 8000) for n in range(10)]
        block = client.block(fields)
        pieces = [block[start : start + 16384] for start in range(0, len(block), 16384)]
        flags = [] if with_body else ["END_STREAM"]
        frames: list[Frame] = [HeadersFrame(1, data=pieces[0], flags=flags)]
        frames += [ContinuationFrame(1, data=piece) for piece in pieces[1:-1]]
        frames.append(ContinuationFrame(1, data=pieces[-1], flags=["END_HEADERS"]))
        if with_body:
            # The body still coming is taken and dropped: the window reopens, nothing breaks.
            frames += [DataFrame(1, data=b"d" * 16384) for _ in range(8)]
            frames.append(DataFrame(1, data=b"", flags=["END_STREAM"]))
        client.send(*frames)
        answer = client.answer(1)
        assert (answer.status, answer.body, answer.ended) == (431, b"", True), answer
        client.get(3, "/after")
        assert client.answer(3).status == 200
        assert client.alive()
    assert h2node.requests() == ["/after"]


# -- stream states (RFC 9113 5.1) ------------------------------------------------------------------


def test_data_on_an_idle_stream_is_a_protocol_error(h2node):
    with misbehaving(h2node), h2node.connect() as client:
        client.send(raw_frame(DATA, END_STREAM, 1, b"hello"))
        assert connection_error(client) == PROTOCOL_ERROR
    assert h2node.requests() == []


def test_headers_on_an_even_stream_from_the_client_is_a_protocol_error(h2node):
    with misbehaving(h2node), h2node.connect() as client:
        client.get(2, "/even")
        assert connection_error(client) == PROTOCOL_ERROR
    assert h2node.requests() == []


def test_headers_on_stream_zero_is_a_protocol_error(h2node):
    with misbehaving(h2node), h2node.connect() as client:
        client.send(raw_frame(HEADERS, END_HEADERS | END_STREAM, 0, client.block(request_fields())))
        assert connection_error(client) == PROTOCOL_ERROR
    assert h2node.requests() == []


def test_headers_on_a_closed_stream_is_stream_closed(h2node):
    """A stream that ended both ways is closed; HEADERS on it after END_STREAM is a connection
    error of type STREAM_CLOSED (RFC 9113 5.1, "closed")."""
    with misbehaving(h2node), h2node.connect() as client:
        client.get(1, "/first")
        assert client.answer(1).status == 200
        client.get(1, "/again")
        assert connection_error(client) == STREAM_CLOSED
    assert h2node.requests() == ["/first"]


def test_data_after_the_clients_end_stream_is_stream_closed(h2node):
    """Half-closed (remote): DATA is a STREAM_CLOSED error (RFC 9113 5.1); nghttp2 makes it a
    connection error, which 5.4.1 allows for any stream error."""
    with misbehaving(h2node), h2node.connect() as client:
        client.get(1, "/slow")
        client.send(raw_frame(DATA, 0, 1, b"more"))
        assert connection_error(client) == STREAM_CLOSED


def test_a_stream_id_going_backwards_opens_nothing(h2node):
    """RFC 9113 5.1.1 asks for PROTOCOL_ERROR on a new stream id lower than one already used.
    nghttp2 cannot tell that from trailers the client sent before it saw our RST_STREAM, so it
    ignores a HEADERS block on any stream id it no longer tracks (the comment in
    session_on_request_headers_received, nghttp2_session.c): no stream opens, nothing reaches
    the backend, and the connection goes on."""
    with misbehaving(h2node), h2node.connect() as client:
        client.get(5, "/five")
        assert client.answer(5).status == 200
        client.get(3, "/three")
        assert client.alive()
        assert 3 not in client.answers
        client.get(7, "/seven")
        assert client.answer(7).status == 200
    assert h2node.requests() == ["/five", "/seven"]


# -- flow control (RFC 9113 5.2, 6.9) ------------------------------------------------------------


def test_a_window_update_of_zero_is_a_protocol_error(h2node):
    """RFC 9113 6.9: an increment of 0 is a PROTOCOL_ERROR, a connection error on stream 0; on
    a stream it is a stream error, which nghttp2 makes a connection error (5.4.1 allows it)."""
    with misbehaving(h2node), h2node.connect() as client:
        client.send(raw_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)))
        assert connection_error(client) == PROTOCOL_ERROR
    with misbehaving(h2node), h2node.connect() as client:
        client.get(1, "/slow")
        client.send(raw_frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0)))
        assert connection_error(client) == PROTOCOL_ERROR
        assert client.goaway.last_stream_id == 1


def test_a_window_over_2_31_minus_1_is_a_flow_control_error(h2node):
    """RFC 9113 6.9.1: the connection's window overflowing ends the connection, a stream's
    window overflowing resets that stream, both with FLOW_CONTROL_ERROR."""
    with misbehaving(h2node), h2node.connect() as client:
        client.send(raw_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0x7FFFFFFF)))
        assert connection_error(client) == FLOW_CONTROL_ERROR
    with misbehaving(h2node), h2node.connect() as client:
        client.get(1, "/slow")
        client.send(raw_frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0x7FFFFFFF)))
        assert client.answer(1).reset == FLOW_CONTROL_ERROR
        client.get(3, "/after")
        assert client.answer(3).status == 200


# -- HPACK (RFC 7541, RFC 9113 4.3) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b"\xbf", id="index-63-beyond-both-tables"),
        pytest.param(b"\x80", id="index-0"),
        pytest.param(b"\x00\x81\xff\x01a", id="bad-huffman-name"),
        pytest.param(b"\x3f\xe1\x3f", id="table-size-update-over-4096"),
        pytest.param(b"\x82\x20", id="table-size-update-after-a-field"),
        pytest.param(b"\x00\x7f\x80\x80\x80\x80\x08", id="string-length-overflow"),
    ],
)
def test_hpack_errors_are_compression_errors(h2node, block):
    with misbehaving(h2node), h2node.connect() as client:
        client.send(raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
        assert connection_error(client) == COMPRESSION_ERROR
    assert h2node.requests() == []


def test_a_valid_dynamic_table_size_update_works(h2node):
    with misbehaving(h2node), h2node.connect() as client:
        client.encoder.header_table_size = 0
        client.get(1, "/zero")
        assert client.answer(1).status == 200
        client.encoder.header_table_size = 4096
        for stream_id in (3, 5):
            # The second request's fields come from the dynamic table the first one filled.
            client.get(stream_id, "/full")
            assert client.answer(stream_id).status == 200
    assert h2node.requests() == ["/zero", "/full", "/full"]


# -- SETTINGS (RFC 9113 6.5.2) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "code"),
    [
        pytest.param(SettingsFrame.ENABLE_PUSH, 2, PROTOCOL_ERROR, id="enable-push-2"),
        pytest.param(
            SettingsFrame.INITIAL_WINDOW_SIZE, 2**31, FLOW_CONTROL_ERROR, id="window-2^31"
        ),
        pytest.param(SettingsFrame.MAX_FRAME_SIZE, 16383, PROTOCOL_ERROR, id="frame-size-16383"),
        pytest.param(SettingsFrame.MAX_FRAME_SIZE, 2**24, PROTOCOL_ERROR, id="frame-size-2^24"),
    ],
)
def test_invalid_settings_values(h2node, setting, value, code):
    with misbehaving(h2node), h2node.connect() as client:
        client.send(raw_frame(SETTINGS, 0, 0, struct.pack(">HI", setting, value)))
        assert connection_error(client) == code


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        # RFC 9113 6.5: a SETTINGS length not a multiple of 6, or an ACK with a payload, is a
        # FRAME_SIZE_ERROR; SETTINGS on a stream is a PROTOCOL_ERROR.
        pytest.param(
            raw_frame(SETTINGS, 0, 0, b"\x00\x01\x00"), FRAME_SIZE_ERROR, id="settings-of-3-bytes"
        ),
        pytest.param(
            raw_frame(SETTINGS, ACK, 0, b"\x00" * 6), FRAME_SIZE_ERROR, id="settings-ack-with-data"
        ),
        pytest.param(raw_frame(SETTINGS, 0, 1), PROTOCOL_ERROR, id="settings-on-a-stream"),
        # 6.7, 6.4, 6.9: PING is 8 bytes, RST_STREAM and WINDOW_UPDATE 4.
        pytest.param(raw_frame(PING, 0, 0, b"1234567"), FRAME_SIZE_ERROR, id="ping-of-7-bytes"),
        pytest.param(
            raw_frame(RST_STREAM, 0, 1, b"\x00" * 3), FRAME_SIZE_ERROR, id="rst-stream-of-3-bytes"
        ),
        pytest.param(
            raw_frame(WINDOW_UPDATE, 0, 0, b"\x00" * 3), FRAME_SIZE_ERROR, id="window-update-of-3"
        ),
    ],
)
def test_misframed_control_frames(h2node, frame, code):
    with misbehaving(h2node), h2node.connect() as client:
        client.send(frame)
        assert connection_error(client) == code


async def stall(connection: RawConnection) -> None:
    """Take the request head, then read nothing more and never answer."""
    await asyncio.Event().wait()


def test_data_beyond_the_stream_window_is_a_flow_control_error(h2node, loop_thread):
    """The node advertises a 1 MiB stream window and reopens it only as the body goes on to the
    backend; a backend that stops reading closes it, and DATA past it is a FLOW_CONTROL_ERROR
    (RFC 9113 6.9.1), here a stream error: that stream is reset, the connection goes on.

    Before the window shuts, the kernel's send buffer towards the backend takes a few MiB
    (net.ipv4.tcp_wmem allows 4 MiB), so the client offers 12 MiB, within the 16 MiB
    connection window."""
    stalled = RawBackend(loop_thread, stall, name="stalled").start()
    port = h2node.side_listener(stalled)
    with misbehaving(h2node):
        with h2node.connect(port) as client:
            client.read_frame()
            assert client.server_settings[SettingsFrame.INITIAL_WINDOW_SIZE] == 1 << 20
            client.send(client.headers(1, request_fields("/upload", "POST"), end_stream=False))
            piece = DataFrame(1, data=b"u" * 16384).serialize()
            for _ in range(12 * 64):
                assert client.send(piece)
            answer = client.answer(1)
            assert answer.reset == FLOW_CONTROL_ERROR, answer
            assert client.goaway is None
            assert client.alive()
        # The backend's end of the connection is a descriptor of this process too.
        stalled.stop()


def test_a_download_to_a_tiny_window_completes_once_the_client_opens_it(h2node):
    with (
        misbehaving(h2node),
        h2node.connect(
            settings={SettingsFrame.INITIAL_WINDOW_SIZE: 10}, auto_window=False
        ) as client,
    ):
        client.get(1, "/big")
        while client.read_frame(timeout=0.5) is not None:
            pass
        answer = client.answers[1]
        # RFC 9113 6.9.1: no more than the window, and the stream stays open.
        assert (answer.status, answer.body, answer.ended) == (200, b"b" * 10, False)
        assert not client.closed
        client.send(
            WindowUpdateFrame(0, window_increment=1 << 20),
            WindowUpdateFrame(1, window_increment=1 << 20),
        )
        answer = client.answer(1)
    assert (answer.ended, answer.body) == (True, b"b" * 200_000)


# -- SETTINGS and PING floods (CVE-2019-9512, -9515) ------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(SettingsFrame(0).serialize(), id="settings"),
        pytest.param(PingFrame(0, opaque_data=b"floodnow").serialize(), id="ping"),
    ],
)
def test_a_flood_of_frames_that_need_an_ack_is_cut_short(h2node, frame):
    """Each SETTINGS and PING makes the node queue an ACK; a client that sends them by the
    thousand and never reads must not make the node buffer without bound."""
    before = h2node.bytes_in()
    with misbehaving(h2node), h2node.connect() as client:
        batch = frame * 1000
        for _ in range(200):
            if not client.send(batch):
                break
        # nghttp2 ends the session once 1000 ACKs wait unsent (nghttp2_option_set_max_outbound_ack);
        # the binding tells the client why with ENHANCE_YOUR_CALM.
        assert connection_error(client) == ENHANCE_YOUR_CALM
    accepted = h2node.bytes_in() - before
    # The node stopped reading after some tens of KiB while the client offered megabytes.
    assert accepted < 256 * 1024 < client.sent, (accepted, client.sent)


# -- RST_STREAM and GOAWAY ------------------------------------------------------------------------


def test_a_client_reset_cancels_the_backend_exchange(h2node, loop_thread):
    """RST_STREAM from the client (RFC 9113 6.4) ends the exchange: the node closes the backend
    connection that was waiting for the answer, and the client's connection goes on."""
    silent = RawBackend(loop_thread, hold, name="silent").start()
    port = h2node.side_listener(silent)
    try:
        with misbehaving(h2node), h2node.connect(port) as client:
            client.get(1, "/waiting")
            assert wait_until(lambda: len(silent.connections) == 1)
            client.send(RstStreamFrame(1, error_code=CANCEL))
            assert silent.all_closed()
            assert client.alive()
            assert 1 not in client.answers
    finally:
        silent.stop()


def test_a_client_goaway_lets_streams_in_flight_finish(h2node):
    with misbehaving(h2node), h2node.connect() as client:
        for stream_id in (1, 3, 5):
            client.get(stream_id, f"/slow/{stream_id}")
        assert wait_until(lambda: len(h2node.requests()) == 3)
        client.send(GoAwayFrame(0, last_stream_id=0, error_code=NO_ERROR))
        answers = [client.answer(stream_id) for stream_id in (1, 3, 5)]
        assert [(a.status, a.body) for a in answers] == [(200, b"late")] * 3
        client.until_goaway()
        assert client.closed


# -- CONTINUATION flood (CVE-2024-28182) -------------------------------------------------------


def test_a_continuation_flood_ends_the_connection_early(h2node):
    """HEADERS without END_HEADERS, then CONTINUATION frames that never end the block: nghttp2
    holds each one, so the node allows MAX_CONTINUATIONS (8) and ends the connection."""
    before_bytes, before_rss = h2node.bytes_in(), rss_kib()
    with misbehaving(h2node), h2node.connect() as client:
        block = client.block(request_fields("/flood"))
        client.send(HeadersFrame(1, data=block, flags=["END_STREAM"]))
        filler = ContinuationFrame(1, data=client.block([(b"x-filler", b"f" * 100)])).serialize()
        for _ in range(100):
            if not client.send(filler * 100):
                break
        assert connection_error(client) == ENHANCE_YOUR_CALM
    accepted = h2node.bytes_in() - before_bytes
    assert accepted < 256 * 1024 < client.sent, (accepted, client.sent)
    assert rss_kib() - before_rss < 32 * 1024
    assert h2node.requests() == []


# -- rapid reset (CVE-2023-44487) ---------------------------------------------------------------


def test_rapid_reset_ends_the_connection_before_the_backend_sees_much(h2node):
    with misbehaving(h2node), h2node.connect() as client:
        frames = []
        for n in range(5000):
            stream_id = 2 * n + 1
            frames.append(client.headers(stream_id, request_fields(f"/reset/{n}")).serialize())
            frames.append(RstStreamFrame(stream_id, error_code=CANCEL).serialize())
        for start in range(0, len(frames), 200):
            if not client.send(b"".join(frames[start : start + 200])):
                break
        # nghttp2's stream reset rate limit (RESET_BURST 1000, then RESET_RATE a second) ends the
        # connection with a GOAWAY of INTERNAL_ERROR: nghttp2's choice of code for it
        # (session_update_stream_reset_ratelim in nghttp2_session.c), not ENHANCE_YOUR_CALM.
        assert connection_error(client) == INTERNAL_ERROR
        assert client.goaway.last_stream_id <= 2 * 1100
    # Every stream was reset as it opened: few reached the backend before their reset.
    assert len(h2node.requests()) <= 128, len(h2node.requests())


# -- malformed requests (RFC 9113 8.1.1, 8.2, 8.3) --------------------------------------------

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/malformed")]
AUTHORITY = (b":authority", b"www.example.com")


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(
            [*GET, AUTHORITY, (b":authority", b"admin.example")], id="duplicate-authority"
        ),
        pytest.param([*GET, AUTHORITY, (b":path", b"/admin")], id="duplicate-path"),
        # 8.3.1: an https request names its authority in :authority or Host, and the two agree.
        pytest.param(GET, id="neither-authority-nor-host"),
        pytest.param([*GET, AUTHORITY, (b"host", b"admin.example")], id="host-differs"),
        pytest.param([*GET[1:], AUTHORITY], id="missing-method"),
        pytest.param([GET[0], GET[1], AUTHORITY], id="missing-path"),
        pytest.param([GET[0], GET[2], AUTHORITY], id="missing-scheme"),
        pytest.param([*GET, AUTHORITY, (b":path", b"")], id="empty-path"),
        pytest.param([*GET, (b"accept", b"*/*"), AUTHORITY], id="pseudo-after-regular"),
        pytest.param([*GET, AUTHORITY, (b":status", b"200")], id="response-pseudo-in-request"),
        pytest.param(
            [*GET, AUTHORITY, (b":protocol", b"websocket")], id="protocol-without-connect"
        ),
        pytest.param([*GET, AUTHORITY, (b"connection", b"keep-alive")], id="connection"),
        pytest.param([*GET, AUTHORITY, (b"keep-alive", b"timeout=5")], id="keep-alive"),
        pytest.param([*GET, AUTHORITY, (b"proxy-connection", b"close")], id="proxy-connection"),
        pytest.param([*GET, AUTHORITY, (b"upgrade", b"h2c")], id="upgrade"),
        pytest.param([*GET, AUTHORITY, (b"transfer-encoding", b"chunked")], id="transfer-encoding"),
        pytest.param([*GET, AUTHORITY, (b"te", b"gzip")], id="te-gzip"),
        pytest.param([*GET, AUTHORITY, (b"X-Upper", b"1")], id="uppercase-name"),
        pytest.param([*GET, AUTHORITY, (b"x bad", b"1")], id="space-in-name"),
        pytest.param([*GET, AUTHORITY, (b"x\x00bad", b"1")], id="nul-in-name"),
        pytest.param([*GET, AUTHORITY, (b"x-colon:", b"1")], id="colon-in-name"),
        pytest.param([*GET, AUTHORITY, (b"", b"1")], id="empty-name"),
        pytest.param([*GET, AUTHORITY, (b"x-value", b"a\r\nx-injected: 1")], id="crlf-in-value"),
        pytest.param([*GET, AUTHORITY, (b"x-value", b"a\x00b")], id="nul-in-value"),
        pytest.param([*GET, AUTHORITY, (b"x-value", b" padded")], id="leading-space-in-value"),
        pytest.param([*GET, AUTHORITY, (b"content-length", b"5")], id="content-length-not-sent"),
    ],
)
def test_a_malformed_request_is_reset_and_never_reaches_the_backend(h2node, fields):
    """A malformed request is a stream error of type PROTOCOL_ERROR (RFC 9113 8.1.1): that
    stream is reset, the connection and its other streams go on."""
    with misbehaving(h2node), h2node.connect() as client:
        client.send(client.headers(1, fields))
        answer = client.answer(1)
        assert (answer.reset, answer.headers, client.goaway) == (PROTOCOL_ERROR, [], None)
        client.get(3, "/after")
        assert client.answer(3).status == 200
    assert h2node.requests() == ["/after"]


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param([*GET, AUTHORITY, (b"te", b"trailers")], id="te-trailers"),
        pytest.param([*GET, (b"host", b"www.example.com")], id="host-instead-of-authority"),
    ],
)
def test_allowed_fields_pass(h2node, fields):
    with misbehaving(h2node), h2node.connect() as client:
        client.send(client.headers(1, fields))
        answer = client.answer(1)
    assert (answer.status, answer.body) == (200, b"fine")
    assert h2node.requests() == ["/malformed"]


# -- more frame-level faults -------------------------------------------------------------------


@pytest.mark.parametrize(
    "frames",
    [
        # 5.1: RST_STREAM and WINDOW_UPDATE on an idle stream.
        pytest.param(raw_frame(RST_STREAM, 0, 1, struct.pack(">I", CANCEL)), id="rst-on-idle"),
        pytest.param(raw_frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 1)), id="wu-on-idle"),
        # 6.10: CONTINUATION that follows no HEADERS.
        pytest.param(raw_frame(CONTINUATION, END_HEADERS, 1, b"\x82"), id="lone-continuation"),
        # 4.3: a header block is one unit; no other frame may come between its frames.
        pytest.param(
            raw_frame(HEADERS, END_STREAM, 1, b"\x82")
            + raw_frame(DATA, 0, 1, b"x")
            + raw_frame(CONTINUATION, END_HEADERS, 1, b"\x84"),
            id="data-inside-a-header-block",
        ),
        # 8.4: a client cannot push.
        pytest.param(raw_frame(0x5, END_HEADERS, 1, b"\x00\x00\x00\x02\x82"), id="push-promise"),
        # 6.8: GOAWAY on a stream.
        pytest.param(raw_frame(GOAWAY, 0, 1, b"\x00" * 8), id="goaway-on-a-stream"),
        # 6.1: padding as long as the frame.
        pytest.param(raw_frame(HEADERS, END_HEADERS | 0x8, 1, b"\x05abc"), id="padding-too-long"),
    ],
)
def test_frames_out_of_place_are_connection_errors(h2node, frames):
    with misbehaving(h2node), h2node.connect() as client:
        client.send(frames)
        assert connection_error(client) == PROTOCOL_ERROR
        assert client.answers == {}
    assert h2node.requests() == []


def test_an_unknown_frame_type_is_ignored(h2node):
    """RFC 9113 4.1 and 5.5: frames of unknown types are ignored, even on idle streams."""
    with misbehaving(h2node), h2node.connect() as client:
        client.send(raw_frame(0xFA, 0xFF, 0, b"extension"), raw_frame(0xFA, 0, 9, b"x"))
        client.get(1, "/after-unknown")
        assert client.answer(1).status == 200
    assert h2node.requests() == ["/after-unknown"]


def test_a_stream_that_depends_on_itself_is_a_protocol_error(h2node):
    """RFC 9113 5.3.1 makes it a stream error of type PROTOCOL_ERROR; nghttp2 ends the
    connection instead, as 5.4.1 allows."""
    with misbehaving(h2node), h2node.connect() as client:
        client.send(
            HeadersFrame(
                1,
                data=client.block(request_fields("/self")),
                flags=["END_HEADERS", "END_STREAM", "PRIORITY"],
                depends_on=1,
                stream_weight=16,
            )
        )
        assert connection_error(client) == PROTOCOL_ERROR
        assert client.goaway.last_stream_id == 0
    assert h2node.requests() == []


def test_streams_over_max_concurrent_streams_end_the_connection(h2node):
    """RFC 9113 5.1.2: a stream beyond SETTINGS_MAX_CONCURRENT_STREAMS is a PROTOCOL_ERROR or
    REFUSED_STREAM. A client that acknowledged the limit and still exceeds it gets nghttp2's
    connection error PROTOCOL_ERROR, naming the last of the 128 streams it did accept."""
    with misbehaving(h2node), h2node.connect() as client:
        client.read_frame()
        limit = client.server_settings[SettingsFrame.MAX_CONCURRENT_STREAMS]
        assert limit == 128
        client.send(
            *[client.headers(2 * n + 1, request_fields(f"/slow/{n}")) for n in range(limit + 2)]
        )
        assert connection_error(client) == PROTOCOL_ERROR
        assert client.goaway.last_stream_id == 2 * limit - 1
    assert len(h2node.requests()) <= limit
