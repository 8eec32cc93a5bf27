"""QUIC listeners: real HTTP/3 requests from aioquic's client, through the listener, to recording
HTTP/1.1 backends; certificates come from trustme at test time."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import trustme
import uvloop
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

from dataplane.config import AccessControl as AclSetting
from dataplane.config import Acl, Listener, Snapshot
from dataplane.node import Node
from dataplane.protocols import ListenerSettings
from dataplane.protocols.quic import QuicListener, alt_svc_value, quic_configuration
from dataplane.protocols.udp import bind_udp
from dataplane.stats import ListenerStats
from dataplane.tls import TlsError
from dataplane.upstream import UpstreamPool
from tests.dataplane.conftest import LoopThread, Recorded, RecordingBackend, Reply
from tests.fixtures.ports import free_port as closed_tcp_port

# Every wait in this file is bounded by this, so a broken listener fails instead of hanging.
WAIT = 10.0
SERVER_NAME = "quic.example"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="QUIC Test CA")


@pytest.fixture(scope="module")
def leaf(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert(SERVER_NAME)


def pem_of(leaf: trustme.LeafCert) -> tuple[str, str, str]:
    chain = [blob.bytes().decode() for blob in leaf.cert_chain_pems]
    return chain[0], leaf.private_key_pem.bytes().decode(), "".join(chain[1:])


class StreamReset(ConnectionResetError):
    """The listener reset a request stream; `code` is the HTTP/3 error code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"stream reset by the listener with code {code:#x}")
        self.code = code


class ConnectionClosed(ConnectionError):
    """The listener closed the whole QUIC connection; `code` is its error code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"connection closed by the listener with code {code:#x}")
        self.code = code


class H3Client(QuicConnectionProtocol):
    """A small HTTP/3 client on aioquic: one future per request stream."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.pending: dict[int, asyncio.Future] = {}
        self.heads: dict[int, list[tuple[bytes, bytes]]] = {}
        self.bodies: dict[int, bytearray] = {}

    async def request(
        self,
        method: bytes,
        path: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes | list[bytes] = b"",
        timeout: float = WAIT,
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        stream_id = self._quic.get_next_available_stream_id()
        pieces = [body] if isinstance(body, bytes) else body
        pieces = [piece for piece in pieces if piece]
        fields = [
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", SERVER_NAME.encode()),
            (b":path", path),
            *(headers or []),
        ]
        future = self._loop.create_future()
        self.pending[stream_id] = future
        self.h3.send_headers(stream_id, fields, end_stream=not pieces)
        for index, piece in enumerate(pieces):
            self.h3.send_data(stream_id, piece, end_stream=index == len(pieces) - 1)
        self.transmit()
        fields = await asyncio.wait_for(future, timeout)
        head = dict(fields)
        return int(head[b":status"]), head, bytes(self.bodies.pop(stream_id, b""))

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.ConnectionTerminated):
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ConnectionClosed(event.error_code))
            self.pending.clear()
            return
        if isinstance(event, events.StreamReset):
            future = self.pending.pop(event.stream_id, None)
            if future is not None and not future.done():
                future.set_exception(StreamReset(event.error_code))
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self.heads[h3_event.stream_id] = h3_event.headers
            elif isinstance(h3_event, DataReceived):
                self.bodies.setdefault(h3_event.stream_id, bytearray()).extend(h3_event.data)
            if getattr(h3_event, "stream_ended", False):
                future = self.pending.pop(h3_event.stream_id, None)
                if future is not None and not future.done():
                    future.set_result(self.heads.pop(h3_event.stream_id, []))


@dataclasses.dataclass
class Server:
    """A backend server the snapshot names that is not a RecordingBackend."""

    name: str
    port: int
    weight: int = 100


class ListenerHandle:
    """The QUIC listener a snapshot started on the node, changed or removed by new snapshots."""

    def __init__(self, harness: Harness, datagram: QuicListener) -> None:
        self.harness = harness
        self.datagram = datagram

    @property
    def connections(self) -> set:
        return self.datagram.connections

    def update(self, spec: dict[str, Any], leaf: trustme.LeafCert) -> None:
        self.harness.apply(spec, leaf)

    def close(self) -> None:
        self.harness.apply(None)


class Harness:
    """A node in its own uvloop thread, serving one QUIC listener from snapshots."""

    def __init__(self, ca: trustme.CA, leaf: trustme.LeafCert) -> None:
        self.ca = ca
        self.leaf = leaf
        self.thread = LoopThread()
        self.node: Node = self.thread.call(Node)
        self.generation = 0
        self.port = 0
        self.stats = ListenerStats()
        self.backends: list[RecordingBackend] = []

    async def backend(self, name: str, handler=None) -> RecordingBackend:
        backend = RecordingBackend(name, handler)
        await backend.start()
        self.backends.append(backend)
        return backend

    def settings(self, *servers: RecordingBackend | Server, **options: Any) -> dict[str, Any]:
        return {"servers": servers, "options": {"x_forwarded_proto": True, **options}}

    def apply(self, spec: dict[str, Any] | None, leaf: trustme.LeafCert | None = None) -> None:
        self.generation += 1
        listeners, groups, acls, certificates = [], [], [], []
        if spec is not None:
            certificate, key, chain = pem_of(leaf or self.leaf)
            certificates.append(
                {
                    "id": "cert-quic0001",
                    "certificate_pem": certificate,
                    "private_key_pem": key,
                    "chain_pem": chain,
                }
            )
            options = dict(spec["options"])
            acl = options.pop("acl", None)
            if acl is not None:
                mode, entries = acl
                acls.append({"id": "acl-test0001", "entries": list(entries)})
                options["acl"] = {"mode": mode, "acl_id": "acl-test0001"}
            listeners.append(
                {
                    "id": "lsn-quic",
                    "name": "quic",
                    "protocol": "quic",
                    "port": self.port,
                    "server_group_id": "sgp-web",
                    "default_certificate_id": "cert-quic0001",
                    **options,
                }
            )
            groups.append(
                {
                    "id": "sgp-web",
                    "name": "web",
                    "backend_protocol": "http",
                    "servers": [
                        {
                            "id": f"srv-{server.name}",
                            "address": "127.0.0.1",
                            "port": server.port,
                            "weight": getattr(server, "weight", 100),
                        }
                        for server in spec["servers"]
                    ],
                    "health_check": {"enabled": False},
                }
            )
        snapshot = Snapshot.from_dict(
            {
                "instance_id": "lb-test0001",
                "generation": self.generation,
                "listeners": listeners,
                "server_groups": groups,
                "acls": acls,
                "certificates": certificates,
            }
        )
        self.thread.run(self.node.apply(snapshot))

    async def listener(
        self, spec: dict[str, Any], leaf: trustme.LeafCert | None = None
    ) -> tuple[ListenerHandle, int]:
        with contextlib.closing(bind_udp("127.0.0.1", 0)) as sock:
            self.port = sock.getsockname()[1]
        self.apply(spec, leaf)
        runtime = self.node.listeners["lsn-quic"]
        assert runtime.status == "running", runtime.reason
        self.stats = runtime.stats
        return ListenerHandle(self, runtime.datagram), self.port  # type: ignore[arg-type]

    def active(self, name: str) -> int:
        """Requests the node counts as in flight on one of its servers."""
        group = self.node.listeners["lsn-quic"].group
        return next(b.active for b in group.backends if b.id == f"srv-{name}")  # type: ignore[union-attr]

    @contextlib.asynccontextmanager
    async def client(
        self,
        port: int,
        server_name: str = SERVER_NAME,
        idle_timeout: float = WAIT,
        # The whole exchange, the closing handshake included: aioquic waits out its draining
        # period (three probe timeouts, which grow when a loaded machine delays acknowledgements)
        # before the context exits. CI once went past 10 s on two 300 kB responses.
        timeout: float = 3 * WAIT,
    ) -> AsyncIterator[H3Client]:
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=list(H3_ALPN),
            server_name=server_name,
            idle_timeout=idle_timeout,
        )
        configuration.load_verify_locations(cadata=self.ca.cert_pem.bytes())
        async with asyncio.timeout(timeout):
            async with connect(
                "127.0.0.1", port, configuration=configuration, create_protocol=H3Client
            ) as client:
                yield client  # type: ignore[misc]

    async def close(self) -> None:
        self.thread.run(self.node.shutdown(0))
        self.thread.close()
        for backend in self.backends:
            await backend.stop()


@pytest_asyncio.fixture
async def quic(ca, leaf):
    harness = Harness(ca, leaf)
    yield harness
    await harness.close()


# -- requests --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_http3_request_reaches_the_backend_with_forwarded_headers(quic):
    backend = await quic.backend(
        "web", lambda request: Reply(headers=[("X-Served-By", "web")], body=b"hello over h3")
    )
    _, port = await quic.listener(quic.settings(backend))

    async with quic.client(port) as client:
        status, headers, body = await client.request(
            b"GET",
            b"/greeting?lang=en",
            [
                (b"x-forwarded-for", b"203.0.113.9"),
                (b"x-forwarded-proto", b"forged"),
                (b"cookie", b"a=1"),
                (b"cookie", b"b=2"),
                (b"user-agent", b"h3-test"),
            ],
        )

    assert (status, body) == (200, b"hello over h3")
    assert headers[b"x-served-by"] == b"web"
    assert b"connection" not in headers
    [seen] = backend.requests
    assert (seen.method, seen.target, seen.version) == ("GET", "/greeting?lang=en", "HTTP/1.1")
    assert seen.header("Host") == SERVER_NAME
    assert seen.header("X-Forwarded-For") == "203.0.113.9, 127.0.0.1"
    assert seen.all("X-Forwarded-Proto") == ["https"]
    assert seen.header("Cookie") == "a=1; b=2"
    assert seen.header("User-Agent") == "h3-test"
    assert quic.stats.requests == 1
    assert quic.stats.responses[2] == 1
    assert quic.stats.bytes_in > 0
    assert quic.stats.bytes_out > 0


@pytest.mark.asyncio
async def test_header_switches_remove_xff_and_add_host_and_source_port(quic):
    backend = await quic.backend("web")
    _, port = await quic.listener(
        quic.settings(
            backend,
            x_forwarded_for="remove",
            x_forwarded_proto=False,
            x_forwarded_host=True,
            x_forwarded_client_srcport=True,
        )
    )

    async with quic.client(port) as client:
        await client.request(
            b"GET",
            b"/",
            [(b"x-forwarded-for", b"203.0.113.9"), (b"x-forwarded-host", b"forged.example")],
        )

    [seen] = backend.requests
    assert seen.header("X-Forwarded-For") is None
    assert seen.header("X-Forwarded-Proto") is None
    assert seen.all("X-Forwarded-Host") == [SERVER_NAME]
    assert int(seen.header("X-Forwarded-Client-srcport") or 0) > 0


@pytest.mark.asyncio
async def test_request_bodies_reach_the_backend_with_and_without_a_length(quic):
    backend = await quic.backend("echo", lambda request: Reply(body=b"got %d" % len(request.body)))
    _, port = await quic.listener(quic.settings(backend))
    pieces = [bytes([65 + n]) * 40_000 for n in range(5)]

    async with quic.client(port) as client:
        streamed = await client.request(b"POST", b"/upload", body=pieces)
        sized = await client.request(
            b"PUT", b"/upload", [(b"content-length", b"11")], body=b"hello world"
        )

    assert streamed[0] == 200 and streamed[2] == b"got 200000"
    assert sized[0] == 200 and sized[2] == b"got 11"
    first, second = backend.requests
    assert first.header("Transfer-Encoding") == "chunked"
    assert first.body == b"".join(pieces)
    assert second.header("Content-Length") == "11"
    assert second.body == b"hello world"


@pytest.mark.asyncio
async def test_large_and_chunked_responses_arrive_whole(quic):
    big = bytes(range(256)) * 1200
    backend = await quic.backend(
        "big",
        lambda request: Reply(body=big, chunked=request.target == "/chunked"),
    )
    _, port = await quic.listener(quic.settings(backend))

    async with quic.client(port) as client:
        sized = await client.request(b"GET", b"/sized")
        chunked = await client.request(b"GET", b"/chunked")
        head = await client.request(b"HEAD", b"/sized")

    assert sized[0] == 200 and sized[2] == big
    assert sized[1][b"content-length"] == str(len(big)).encode()
    assert chunked[0] == 200 and chunked[2] == big
    assert b"transfer-encoding" not in chunked[1]
    assert head[0] == 200 and head[2] == b""


@pytest.mark.asyncio
async def test_concurrent_streams_share_one_connection_and_are_balanced(quic):
    a, b = await quic.backend("a"), await quic.backend("b")
    _, port = await quic.listener(quic.settings(a, b))

    async with quic.client(port) as client:
        answers = await asyncio.gather(*(client.request(b"GET", b"/item/%d" % n) for n in range(6)))

    assert sorted(body for _, _, body in answers) == [b"a"] * 3 + [b"b"] * 3
    assert quic.stats.total_connections == 1
    assert quic.stats.requests == 6
    assert sorted(r.target for r in a.requests + b.requests) == [f"/item/{n}" for n in range(6)]


# -- answers of the listener itself ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_503_without_an_eligible_server(quic):
    backend = await quic.backend("web")
    _, port = await quic.listener(quic.settings(Server("web", backend.port, weight=0)))

    async with quic.client(port) as client:
        status, _, body = await client.request(b"GET", b"/")

    assert (status, body) == (503, b"503 Service Unavailable\n")
    assert backend.requests == []
    assert quic.stats.responses[5] == 1


@pytest.mark.asyncio
async def test_a_target_that_would_split_the_request_line_is_refused(quic):
    backend = await quic.backend("web")
    _, port = await quic.listener(quic.settings(backend))

    async with quic.client(port) as client:
        # RFC 9114 4.1.2: a malformed request is a stream error of type H3_MESSAGE_ERROR.
        with pytest.raises(StreamReset) as spaced:
            await client.request(b"GET", b"/a b HTTP/1.1\tX")
        connect = await client.request(b"CONNECT", b"/")
        after = await client.request(b"GET", b"/after")

    assert spaced.value.code == ErrorCode.H3_MESSAGE_ERROR
    assert (connect[0], after[0]) == (405, 200)
    assert [request.target for request in backend.requests] == ["/after"]


@pytest.mark.asyncio
async def test_a_refused_connection_is_retried_once_on_another_server(quic):
    live = await quic.backend("live")
    _, port = await quic.listener(quic.settings(Server("dead", closed_tcp_port()), live))

    async with quic.client(port) as client:
        answers = [await client.request(b"GET", b"/") for _ in range(2)]

    assert [(status, body) for status, _, body in answers] == [(200, b"live")] * 2
    assert quic.active("dead") == 0


@pytest.mark.asyncio
async def test_502_when_no_server_can_be_reached(quic):
    dead = [Server(f"dead{n}", closed_tcp_port()) for n in range(2)]
    _, port = await quic.listener(quic.settings(*dead))

    async with quic.client(port) as client:
        status, _, _ = await client.request(b"GET", b"/")

    assert status == 502
    assert [quic.active(server.name) for server in dead] == [0, 0]


@pytest.mark.asyncio
async def test_504_when_the_backend_does_not_answer_in_time(quic):
    slow = await quic.backend("slow", lambda request: Reply(body=b"late", delay=WAIT))
    _, port = await quic.listener(quic.settings(slow, response_timeout=1))

    async with quic.client(port) as client:
        status, _, _ = await client.request(b"GET", b"/")

    assert status == 504
    assert quic.active("slow") == 0


@pytest.mark.asyncio
async def test_502_for_a_response_that_is_not_http(quic):
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    try:
        port_of_garbage = server.sockets[0].getsockname()[1]
        _, port = await quic.listener(quic.settings(Server("odd", port_of_garbage)))
        async with quic.client(port) as client:
            status, _, _ = await client.request(b"GET", b"/")
    finally:
        server.close()

    assert status == 502


# -- access control, certificates, lifecycle -------------------------------------------------------


@pytest.mark.asyncio
async def test_a_client_the_acl_refuses_cannot_even_handshake(quic):
    backend = await quic.backend("web")
    _, port = await quic.listener(quic.settings(backend, acl=("whitelist", ["10.0.0.0/8"])))

    # The client gives up when its idle timeout passes without a single answer.
    with pytest.raises(ConnectionError):
        async with quic.client(port, idle_timeout=0.5):
            pass

    assert quic.stats.denied_connections > 0
    assert quic.stats.total_connections == 0
    assert backend.requests == []


@pytest.mark.asyncio
async def test_a_new_certificate_serves_new_connections(quic, ca):
    backend = await quic.backend("web")
    listener, port = await quic.listener(quic.settings(backend))
    renewed = ca.issue_cert("renewed.example")

    listener.update(quic.settings(backend), renewed)
    async with quic.client(port, server_name="renewed.example") as client:
        status, _, _ = await client.request(b"GET", b"/")

    assert status == 200


@pytest.mark.asyncio
async def test_close_ends_connections_and_frees_the_port(quic):
    backend = await quic.backend("web")
    listener, port = await quic.listener(quic.settings(backend))

    async with quic.client(port) as client:
        await client.request(b"GET", b"/")
        listener.close()
        await asyncio.wait_for(client.wait_closed(), WAIT)

    assert listener.connections == set()
    assert quic.stats.active_connections == 0
    with contextlib.closing(bind_udp("127.0.0.1", port)):
        pass


def test_requests_work_on_uvloop(ca, leaf):
    # The dataplane runs on uvloop; the other tests run on the default loop.
    async def scenario() -> tuple[int, bytes, Recorded]:
        harness = Harness(ca, leaf)
        try:
            backend = await harness.backend("uv")
            _, port = await harness.listener(harness.settings(backend))
            async with harness.client(port) as client:
                status, _, body = await client.request(b"GET", b"/uv")
            return status, body, backend.requests[0]
        finally:
            await harness.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        status, body, seen = runner.run(asyncio.wait_for(scenario(), WAIT * 2))

    assert (status, body) == (200, b"uv")
    assert seen.header("X-Forwarded-For") == "127.0.0.1"


# -- configuration ---------------------------------------------------------------------------------


def test_alt_svc_value_advertises_the_quic_port():
    assert alt_svc_value(443) == b'h3=":443"; ma=86400'
    assert alt_svc_value(8443, max_age=60) == b'h3=":8443"; ma=60'
    with pytest.raises(ValueError, match="port"):
        alt_svc_value(0)


def test_certificate_problems_are_named(ca, leaf):
    certificate, key, chain = pem_of(leaf)
    other_key = pem_of(ca.issue_cert("other.example"))[1]

    with pytest.raises(TlsError, match="does not match"):
        quic_configuration(certificate, other_key, chain)
    with pytest.raises(TlsError, match="unreadable certificate"):
        quic_configuration("-----BEGIN CERTIFICATE-----\nnope\n", key)
    with pytest.raises(TlsError, match="unreadable private key"):
        quic_configuration(certificate, "not a key")
    configuration = quic_configuration(certificate, key, chain, idle_timeout=30)
    assert configuration.is_client is False
    assert configuration.idle_timeout == 30
    assert configuration.verify_mode is None  # no client certificates: no mutual authentication
    assert len(configuration.certificate_chain) == len(leaf.cert_chain_pems) - 1


def test_settings_from_a_snapshot_listener():
    listener = Listener(
        id="lsn-quic",
        protocol="quic",
        port=443,
        response_timeout=30,
        x_forwarded_for="off",
        x_forwarded_proto=True,
        x_forwarded_port=True,
        slb_id=True,
        acl=AclSetting(mode="whitelist", acl_id="acl-office"),
    )
    snapshot = Snapshot(
        instance_id="lb-test0001", generation=1, acls=(Acl("acl-office", ("192.0.2.0/24",)),)
    )

    settings = ListenerSettings(
        listener, snapshot, group=None, tls=None, pool=UpstreamPool(), stats=ListenerStats()
    )

    # Seed 003: QUIC is a Layer-7 listener, compiled as HTTP and HTTPS listeners are.
    assert settings.scheme == b"https"
    assert settings.response_timeout == 30.0
    assert settings.xff_mode == "off"
    assert settings.static_headers == (
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\nSLB-ID: lb-test0001\r\n"
    )
    assert {b"x-forwarded-port", b"slb-id", b"x-forwarded-proto"} <= settings.drop_headers
    assert settings.acl is not None and settings.acl.allows("192.0.2.7")
    assert not settings.acl.allows("198.51.100.1")


# -- backpressure ----------------------------------------------------------------------------------


class CountingSource:
    """An HTTP/1.1 server answering any request with `size` bytes, counting what it got out."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.written = 0
        self.name = "source"
        self.port = 0
        self.server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size)
        chunk = b"s" * 65536
        with contextlib.suppress(ConnectionError):
            while self.written < self.size:
                writer.write(chunk)
                await writer.drain()
                self.written += len(chunk)
        writer.close()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def settled(self) -> int:
        """What the server has written once it has stopped making progress."""
        last = -1
        while self.written != last:
            last = self.written
            await asyncio.sleep(0.5)
        return last


@pytest.mark.asyncio
async def test_a_stalled_client_stops_the_backend_read_and_the_download_resumes(quic):
    """A client that takes nothing (no acknowledgements) must not make the node read the whole
    response into memory: the backend is paused once a megabyte waits for the client, and the
    download completes whole once the client reads again."""
    size = 32 * 1024 * 1024
    source = CountingSource(size)
    await source.start()
    try:
        _, port = await quic.listener(quic.settings(source))  # type: ignore[arg-type]
        async with quic.client(port, idle_timeout=60, timeout=90) as client:
            request = asyncio.ensure_future(client.request(b"GET", b"/big", timeout=80))
            while not client.bodies:
                await asyncio.sleep(0.01)
            # Stall: datagrams from the listener are dropped unread, so nothing is acknowledged.
            client.datagram_received = lambda data, addr: None  # type: ignore[method-assign]
            held = await source.settled()
            # The node holds at most its high-water mark plus what the sockets buffer, not the
            # 32 MiB the backend has to send.
            assert held < size // 2
            del client.datagram_received
            status, _, body = await asyncio.wait_for(request, 60)
        assert status == 200 and len(body) == size
    finally:
        source.server.close()  # type: ignore[union-attr]
