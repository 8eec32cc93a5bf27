"""gRPC server groups: real grpcio servers behind an HTTPS listener with HTTP/2, real grpcio
clients in front of it."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from tests.dataplane.conftest import certificate_entry, snapshot
from tests.dataplane.test_https import https_listener
from tests.fixtures.ports import free_port

SERVICE = "ferry.test.Echo"


class EchoServer:
    """A grpcio server with unary and server-streaming methods that report who served them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.metadata: list[dict[str, str]] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            "Say": grpc.unary_unary_rpc_method_handler(self.say),
            "Count": grpc.unary_stream_rpc_method_handler(self.count),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
            "Collect": grpc.stream_unary_rpc_method_handler(self.collect),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def say(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.metadata.append(dict(context.invocation_metadata()))
        context.set_trailing_metadata((("served-by", self.name),))
        return self.name.encode() + b": " + request

    def count(self, request: bytes, context: grpc.ServicerContext):
        for n in range(int(request)):
            yield b"%d" % n

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, f"no such thing: {request.decode()}")

    def collect(self, requests, context: grpc.ServicerContext) -> bytes:
        return b"".join(requests)

    def stop(self) -> None:
        self.server.stop(0)


@pytest.fixture
def echo_servers():
    started: list[EchoServer] = []

    def start(name: str) -> EchoServer:
        server = EchoServer(name)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def grpc_group(*servers: EchoServer, ports: list[int] | None = None) -> dict:
    ports = ports if ports is not None else [s.port for s in servers]
    return {
        "id": "sgp-web",
        "name": "grpc",
        "backend_protocol": "grpc",
        "servers": [
            {"id": f"srv-{n}", "address": "127.0.0.1", "port": port, "weight": 100}
            for n, port in enumerate(ports)
        ],
        "health_check": {"enabled": False},
    }


@pytest.fixture
def grpc_listener(dataplane, ca):
    def start(group: dict, **settings) -> grpc.Channel:
        port = free_port()
        certificates = [certificate_entry("cert-default", ca.issue_cert("grpc.example.com"))]
        listener = https_listener(port, http2=True, **settings)
        result = dataplane.apply(snapshot([listener], [group], certificates=certificates))
        assert result["lsn-tls"]["status"] == "running", result
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
        channel = grpc.secure_channel(
            f"127.0.0.1:{port}",
            credentials,
            options=[("grpc.ssl_target_name_override", "grpc.example.com")],
        )
        channels.append(channel)
        return channel

    channels: list[grpc.Channel] = []
    yield start
    for channel in channels:
        channel.close()


def test_unary_call_with_trailers_and_forwarded_headers(grpc_listener, echo_servers):
    server = echo_servers("a")
    channel = grpc_listener(grpc_group(server), x_forwarded_proto=True)
    say = channel.unary_unary(f"/{SERVICE}/Say")
    reply, call = say.with_call(b"hello", metadata=(("x-request-id", "42"),), timeout=10)
    assert reply == b"a: hello"
    assert call.code() == grpc.StatusCode.OK
    # Trailers cross the dataplane: the server's trailing metadata reaches the client.
    assert ("served-by", "a") in call.trailing_metadata()
    seen = server.metadata[-1]
    assert seen["x-request-id"] == "42"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"


def test_calls_on_one_channel_spread_over_the_group(grpc_listener, echo_servers):
    a, b = echo_servers("a"), echo_servers("b")
    channel = grpc_listener(grpc_group(a, b))
    say = channel.unary_unary(f"/{SERVICE}/Say")
    served = [say(b"x", timeout=10).split(b":")[0] for _ in range(20)]
    # Weighted round robin per call, not per connection.
    assert served.count(b"a") == 10
    assert served.count(b"b") == 10


def test_streaming_both_ways(grpc_listener, echo_servers):
    channel = grpc_listener(grpc_group(echo_servers("a")))
    count = channel.unary_stream(f"/{SERVICE}/Count")
    assert list(count(b"2000", timeout=20)) == [b"%d" % n for n in range(2000)]
    collect = channel.stream_unary(f"/{SERVICE}/Collect")
    chunks = [bytes([n % 256]) * 65536 for n in range(48)]  # 3 MiB, beyond every window
    assert collect(iter(chunks), timeout=20) == b"".join(chunks)


def test_backend_status_and_details_pass_through(grpc_listener, echo_servers):
    channel = grpc_listener(grpc_group(echo_servers("a")))
    fail = channel.unary_unary(f"/{SERVICE}/Fail")
    with pytest.raises(grpc.RpcError) as error:
        fail(b"widget", timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error.value.details() == "no such thing: widget"


def test_unreachable_servers_fail_the_call_as_unavailable(grpc_listener, echo_servers):
    up = echo_servers("up")
    channel = grpc_listener(grpc_group(up, ports=[free_port(), up.port]))
    say = channel.unary_unary(f"/{SERVICE}/Say")
    # A refused connection is retried on the other server: every call succeeds.
    assert {say(b"x", timeout=10) for _ in range(4)} == {b"up: x"}
    up.stop()
    with pytest.raises(grpc.RpcError) as error:
        say(b"x", timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_http11_clients_cannot_reach_a_grpc_group(grpc_listener, echo_servers, ca):
    import http.client

    from tests.dataplane.test_https import trusting

    channel = grpc_listener(grpc_group(echo_servers("a")))
    port = int(channel._channel.target().decode().rsplit(":", 1)[1])
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=trusting(ca), timeout=10)
    connection.request("POST", f"/{SERVICE}/Say", body=b"")
    assert connection.getresponse().status == 505
    connection.close()
