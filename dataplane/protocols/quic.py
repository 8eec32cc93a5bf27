"""QUIC listeners: HTTP/3 to clients (aioquic), HTTP/1.1 to the backend servers.

A QUIC listener terminates TLS 1.3 inside QUIC with a server certificate and never asks for a
client certificate (seed 003: "A QUIC listener requires only a server certificate and does not
support mutual authentication"). Its server group speaks HTTP (seed 003's table).

Seed 003 lists QUIC with HTTP and HTTPS as a Layer-7 listener, so each HTTP/3 request stream is
served exactly as an HTTP/2 stream is (dataplane.protocols.streams): its exchange applies
the listener's forwarding rules, persistence, managed headers, compression, bandwidth, pooled
backend connections, timeouts, counters and access log, from the same compiled settings as an
HTTP or HTTPS listener's (dataplane.protocols.ListenerSettings). aioquic does QUIC and HTTP/3
framing; this module moves requests and responses between it and the streams.

`alt_svc_value` is the other half of seed 001's "QUIC upgrade": an HTTPS listener linked to a QUIC
listener adds `Alt-Svc: h3=":<port>"; ma=86400` to its responses, so HTTP/3 clients move over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection, ProtocolError
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from dataplane.heads import field_line
from dataplane.nghttp2 import CANCEL, NO_ERROR, PROTOCOL_ERROR, REFUSED_STREAM
from dataplane.protocols.streams import Stream, StreamConnection, head_fields, start_proxied
from dataplane.tls import TlsError

if TYPE_CHECKING:
    from dataplane.protocols import ListenerHandle, ListenerSettings

log = logging.getLogger(__name__)

# How long clients may remember an Alt-Svc advertisement: one day, as the big CDNs send it.
ALT_SVC_MAX_AGE = 86400
# A response's bytes held by aioquic for one stream (not yet sent, or sent and not yet
# acknowledged) above which the backend is not read, and below which reading resumes: a client
# that reads slowly must not make the node hold its whole download in memory.
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024

# The streams speak HTTP/2's error codes (RFC 9113 7); HTTP/3's (RFC 9114 8.1) for each.
_H3_CODES = {
    NO_ERROR: ErrorCode.H3_NO_ERROR,
    PROTOCOL_ERROR: ErrorCode.H3_MESSAGE_ERROR,
    REFUSED_STREAM: ErrorCode.H3_REQUEST_REJECTED,
    CANCEL: ErrorCode.H3_REQUEST_CANCELLED,
}


def alt_svc_value(quic_port: int, *, max_age: int = ALT_SVC_MAX_AGE) -> bytes:
    """The Alt-Svc header value an HTTPS listener sends to advertise its QUIC listener."""
    if not 1 <= quic_port <= 65535:
        raise ValueError("QUIC listener port must be 1-65535")
    if max_age < 0:
        raise ValueError("Alt-Svc max age must not be negative")
    return b'h3=":%d"; ma=%d' % (quic_port, max_age)


# -- certificate -----------------------------------------------------------------------------------


def quic_configuration(
    certificate_pem: str,
    private_key_pem: str,
    chain_pem: str = "",
    *,
    idle_timeout: float = 15.0,
) -> QuicConfiguration:
    """The server side of QUIC for one certificate; raises TlsError naming what is wrong."""
    configuration = QuicConfiguration(
        is_client=False, alpn_protocols=list(H3_ALPN), idle_timeout=idle_timeout
    )
    set_certificate(configuration, certificate_pem, private_key_pem, chain_pem)
    return configuration


def set_certificate(
    configuration: QuicConfiguration,
    certificate_pem: str,
    private_key_pem: str,
    chain_pem: str = "",
) -> None:
    """Load a certificate into a configuration; handshakes that start later use it."""
    try:
        certificates = x509.load_pem_x509_certificates(
            (certificate_pem.strip() + "\n" + chain_pem.strip()).encode()
        )
    except ValueError as exc:
        raise TlsError(f"unreadable certificate: {exc}") from None
    try:
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    except TypeError:
        raise TlsError("the private key is encrypted; upload it without a passphrase") from None
    except ValueError as exc:
        raise TlsError(f"unreadable private key: {exc}") from None
    if not isinstance(
        key,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise TlsError(f"{type(key).__name__} keys cannot sign TLS 1.3 handshakes")
    if key.public_key() != certificates[0].public_key():
        raise TlsError("the private key does not match the certificate")
    configuration.certificate = certificates[0]
    configuration.certificate_chain = certificates[1:]
    configuration.private_key = key


# -- the listener ----------------------------------------------------------------------------------


class QuicListener:
    """A QUIC listener on one UDP socket: the aioquic server and its connections.

    Its settings are the listener runtime's (`runtime.settings`), compiled as any HTTP
    listener's; a new generation replaces them there and new requests use it.
    """

    def __init__(self, runtime: ListenerHandle, configuration: QuicConfiguration) -> None:
        self.runtime = runtime
        # Shared with every connection's handshake: replacing its certificate fields changes the
        # certificate for new connections only.
        self.configuration = configuration
        self.connections: set[Http3Connection] = set()
        self.server: _ListenerServer | None = None

    @property
    def settings(self) -> ListenerSettings:
        return self.runtime.settings  # type: ignore[return-value]

    async def start(self, sock: socket.socket) -> None:
        """Serve a bound UDP socket (dataplane.protocols.udp.bind_udp); the listener owns it."""
        loop = asyncio.get_running_loop()
        _, self.server = await loop.create_datagram_endpoint(
            lambda: _ListenerServer(self), sock=sock
        )

    def update(self, configuration: QuicConfiguration | None = None) -> None:
        """Adopt a new generation (already in `runtime.settings`): requests in flight finish on
        the old one. A new certificate applies to new connections. Connections from clients the
        new ACL refuses are closed."""
        settings = self.settings
        self.configuration.idle_timeout = settings.idle_timeout
        if configuration is not None:
            self.configuration.certificate = configuration.certificate
            self.configuration.certificate_chain = configuration.certificate_chain
            self.configuration.private_key = configuration.private_key
        acl = settings.acl
        if acl is not None:
            for connection in list(self.connections):
                if connection.peer is not None and not acl.allows(connection.peer[0]):
                    connection.abort()

    def close(self) -> None:
        """Stop listening and cut every connection and request (seed 003)."""
        for connection in list(self.connections):
            connection.abort()
        if self.server is not None:
            self.server.close()
            self.server = None


class _CountingTransport:
    """The listener socket's transport as connections see it: counts the bytes sent."""

    __slots__ = ("_listener", "_transport")

    def __init__(self, transport: asyncio.DatagramTransport, listener: QuicListener) -> None:
        self._transport = transport
        self._listener = listener

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self._listener.runtime.stats.bytes_out += len(data)
        self._transport.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _ListenerServer(QuicServer):
    """aioquic's server, with the listener's access control in front of it."""

    def __init__(self, listener: QuicListener) -> None:
        super().__init__(
            configuration=listener.configuration,
            create_protocol=lambda quic, stream_handler=None: Http3Connection(quic, listener),
        )
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_CountingTransport(transport, self.listener))  # type: ignore[arg-type]

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        runtime = self.listener.runtime
        settings = runtime.settings
        if settings is None:
            return
        acl = settings.acl
        if acl is not None and not acl.allows(addr[0]):
            # Dropped before aioquic parses it: a refused client cannot even start a handshake.
            runtime.stats.denied_connections += 1
            return
        runtime.stats.bytes_in += len(data)
        super().datagram_received(data, addr)


# -- connections -----------------------------------------------------------------------------------


def _ignore_connection_id(connection_id: bytes) -> None:
    """A terminated connection's handler of connection IDs issued and retired."""


def _ignore_termination() -> None:
    """A terminated connection's handler of its own termination, already handled."""


class Http3Connection(QuicConnectionProtocol, StreamConnection):
    """One client's QUIC connection: HTTP/3 framing in, one proxied stream per request."""

    def __init__(self, quic: QuicConnection, listener: QuicListener) -> None:
        super().__init__(quic)
        self.listener = listener
        self.runtime = listener.runtime
        self.loop = self._loop
        self.h3: H3Connection | None = None
        # The client's latest address: QUIC connections survive a client's address change.
        self.peer: tuple | None = None
        self.peer_ip = ""
        self.peer_port = 0
        self.peer_ip_bytes = b""
        self.xff_line = b""
        self.header_lines = None
        self.streams: dict[int, Stream] = {}
        self.ended_streams: list[Stream] = []
        # Streams whose backend is paused until aioquic has sent enough of their response.
        self.held: set[Stream] = set()
        self.writing_paused = False
        # QUIC is TLS 1.3 always (RFC 9001), but aioquic shows no SSLObject to read it from.
        self.ssl_object = None
        self.version = "HTTP/3"
        self.registered = False
        # The counters this connection is counted in as active.
        self.stats = self.runtime.stats

    # -- QUIC ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.registered = True
        self.listener.connections.add(self)
        self.stats.total_connections += 1
        self.stats.active_connections += 1

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if addr != self.peer:
            self.peer = addr
            self.peer_ip, self.peer_port = addr[0], addr[1]
            self.peer_ip_bytes = self.peer_ip.encode()
            self.xff_line = field_line(b"X-Forwarded-For", self.peer_ip_bytes)
            self.header_lines = None
        super().datagram_received(data, addr)
        # Acknowledgements arrive in datagrams: they are what drains a stream's buffer.
        if self.held:
            for stream in list(self.held):
                if self._buffered(stream.stream_id) <= LOW_WATER:
                    self.held.discard(stream)
                    stream.resume_backend()

    def _buffered(self, stream_id: int) -> int:
        """Response bytes aioquic holds for a stream: queued, in flight or lost and to resend.

        aioquic has no public measure of this; its sender keeps exactly these bytes in one
        buffer, trimmed as acknowledgements arrive. Without that attribute the answer is 0, and
        responses are relayed without this backpressure rather than not at all.
        """
        stream = self._quic._streams.get(stream_id)
        buffer = getattr(getattr(stream, "sender", None), "_buffer", None)
        return len(buffer) if buffer is not None else 0

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.ProtocolNegotiated):
            if event.alpn_protocol in H3_ALPN:
                self.h3 = H3Connection(self._quic)
        elif isinstance(event, events.StreamReset | events.StopSendingReceived):
            # The client gave up on this request.
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                self.held.discard(stream)
                stream.cancel()
        elif isinstance(event, events.ConnectionTerminated):
            self._unregister()
            self._release_server_callbacks()
        if self.h3 is not None:
            for h3_event in self.h3.handle_event(event):
                self._h3_event_received(h3_event)

    def _h3_event_received(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                # Trailers after the response was already complete carry no :method; they
                # must not start a request of their own.
                if any(name == b":method" for name, _ in event.headers):
                    self._begin(event)
            elif event.stream_ended:
                # Request trailers: not forwarded, but they end the body.
                stream.request_end()
        elif isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None or stream.request_ended:
                return
            if event.data:
                stream.request_data(event.data, len(event.data))
            if event.stream_ended:
                stream.request_end()

    def _begin(self, event: HeadersReceived) -> None:
        settings = self.runtime.settings
        if settings is None:
            self.refuse(event.stream_id, REFUSED_STREAM)
            return
        start_proxied(self, event.stream_id, event.headers, ended=event.stream_ended)

    def _unregister(self, *, stopping: bool = False) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        self.held.clear()
        for stream in streams:
            if stopping:
                stream.stop()
            else:
                stream.cancel()
        if self.registered:
            self.registered = False
            self.listener.connections.discard(self)
            self.stats.active_connections -= 1

    def _release_server_callbacks(self) -> None:
        # aioquic's server gives each connection callbacks that hold the connection itself
        # (partials of its own methods with protocol=self). Once the connection has terminated,
        # the server has forgotten it and no connection ID event can follow: without them, the
        # connection is freed by reference counting, not left to the cycle collector.
        self._connection_id_issued_handler = _ignore_connection_id
        self._connection_id_retired_handler = _ignore_connection_id
        self._connection_terminated_handler = _ignore_termination

    def abort(self) -> None:
        """Cut this connection and its requests now: its listener stopped."""
        self._unregister(stopping=True)
        self.close()

    # -- what the streams send (StreamConnection) ------------------------------------------------

    def send_headers(
        self, stream: Stream, headers: list[tuple[bytes, bytes]], *, end_stream: bool = False
    ) -> None:
        h3 = self.h3
        if h3 is None or self.streams.get(stream.stream_id) is not stream:
            return
        if end_stream:
            # A HEAD, 204 or 304 answer: RFC 9114 allows a length here, but aioquic-based
            # clients close the whole connection when DATA does not add up to it.
            headers = [field for field in headers if field[0] != b"content-length"]
        try:
            h3.send_headers(stream.stream_id, headers, end_stream=end_stream)
        except (ProtocolError, ValueError, AssertionError):
            # The client reset the stream or the connection is closing.
            self._drop(stream)
            return
        self.transmit()
        if end_stream:
            stream.out.end = stream.out.ended = True
            self._done(stream)

    def send_head(self, stream: Stream, status: int, head: bytes, end_stream: bool) -> None:
        self.send_headers(stream, head_fields(status, head), end_stream=end_stream)

    def send_data(self, stream: Stream, data: bytes, credit: int = 0) -> None:
        h3 = self.h3
        if h3 is None or self.streams.get(stream.stream_id) is not stream:
            return
        try:
            h3.send_data(stream.stream_id, data, end_stream=False)
        except (ProtocolError, ValueError, AssertionError):
            self._drop(stream)
            return
        self.transmit()
        if self._buffered(stream.stream_id) > HIGH_WATER and stream not in self.held:
            self.held.add(stream)
            stream.pause_backend()

    def finish(self, stream: Stream, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        h3 = self.h3
        if h3 is None or self.streams.get(stream.stream_id) is not stream:
            return
        stream.out.end = stream.out.ended = True
        try:
            h3.send_data(stream.stream_id, b"", end_stream=True)
        except (ProtocolError, ValueError, AssertionError):
            self._drop(stream)
            return
        self.transmit()
        self._done(stream)

    def reset(self, stream: Stream, code: int) -> None:
        if self.streams.get(stream.stream_id) is not stream:
            return
        del self.streams[stream.stream_id]
        self.held.discard(stream)
        self.refuse(stream.stream_id, code)

    def refuse(self, stream_id: int, code: int) -> None:
        """End a stream both ways: nothing more is sent on it, nor wanted from the client."""
        h3_code = _H3_CODES.get(code, ErrorCode.H3_INTERNAL_ERROR)
        for end in (self._quic.reset_stream, self._quic.stop_stream):
            with contextlib.suppress(ValueError, AssertionError):
                # Already ended by the client or finished: nothing more to say on this stream.
                end(stream_id, h3_code)
        self.transmit()

    def acknowledge(self, stream_id: int, credit: int) -> None:
        """aioquic opens the client's flow-control windows itself as it delivers the data."""

    def _done(self, stream: Stream) -> None:
        """The response has ended; a request body still coming is not needed any more."""
        if self.streams.get(stream.stream_id) is not stream:
            return
        del self.streams[stream.stream_id]
        self.held.discard(stream)
        if not stream.request_ended:
            # RFC 9114 4.1.1: a complete response may end the request early with NO_ERROR.
            with contextlib.suppress(ValueError, AssertionError):
                self._quic.stop_stream(stream.stream_id, ErrorCode.H3_NO_ERROR)
            self.transmit()

    def _drop(self, stream: Stream) -> None:
        if self.streams.pop(stream.stream_id, None) is stream:
            self.held.discard(stream)
            stream.cancel()
