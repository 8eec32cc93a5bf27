"""QUIC listeners: HTTP/3 to clients (aioquic), HTTP/1.1 to the backend servers.

A QUIC listener terminates TLS 1.3 inside QUIC with a server certificate and never asks for a
client certificate (seed 003: "A QUIC listener requires only a server certificate and does not
support mutual authentication"). Its server group speaks HTTP (seed 003's table).

Each HTTP/3 request stream is forwarded on its own HTTP/1.1 connection to a backend picked by the
listener's scheduler (one retry on another server when connecting fails), with X-Forwarded-For and
the listener's other X-Forwarded-*/SLB-* headers added. The request body streams to the backend as
it arrives; the response streams back as HTTP/3 HEADERS and DATA frames. The dataplane answers by
itself with 503 (no eligible server), 502 (no server reachable, or not valid HTTP) and 504 (no
response head within the request timeout).

`alt_svc_value` is the other half of seed 001's "QUIC upgrade": an HTTPS listener linked to a QUIC
listener adds `Alt-Svc: h3=":<port>"; ma=86400` to its responses, so HTTP/3 clients move over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any

import httptools
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

from dataplane.acl import AccessControl
from dataplane.balancing import Backend, Scheduler, make_scheduler
from dataplane.bandwidth import pay
from dataplane.hostnames import is_host_field
from dataplane.protocols import HOP_BY_HOP, compile_acl, fits_request_line, managed_headers
from dataplane.tls import TlsError

if TYPE_CHECKING:
    from dataplane.bandwidth import TokenBucket
    from dataplane.config import Listener, Snapshot
    from dataplane.slowstart import SlowStart
    from dataplane.stats import ListenerStats

log = logging.getLogger(__name__)

# How long clients may remember an Alt-Svc advertisement: one day, as the big CDNs send it.
ALT_SVC_MAX_AGE = 86400
# Response bytes read from a backend per read, and a ceiling on a response head.
READ_SIZE = 65536
MAX_RESPONSE_HEAD = 64 * 1024
# A response's bytes held by aioquic for one stream (not yet sent, or sent and not yet
# acknowledged) above which the backend is not read, and below which reading resumes: a client
# that reads slowly must not make the node hold its whole download in memory.
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024

# Request headers that are not copied to the backend: hop-by-hop ones (HTTP/3 forbids most, but a
# client may still send them), and those the dataplane writes itself.
_NOT_FORWARDED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"expect",
        b"cookie",
        b"x-forwarded-for",
    }
)
_REASONS = {
    400: b"Bad Request",
    405: b"Method Not Allowed",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
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


# -- settings --------------------------------------------------------------------------------------


class QuicSettings:
    """One QUIC listener generation, compiled for the request path."""

    __slots__ = (
        "acl",
        "bucket",
        "drop_headers",
        "forwarded_host",
        "forwarded_srcport",
        "idle_timeout",
        "listener_id",
        "response_timeout",
        "scheduler",
        "static_headers",
        "stats",
        "xff_mode",
    )

    def __init__(
        self,
        *,
        listener_id: str,
        scheduler: Scheduler | None,
        stats: ListenerStats,
        acl: AccessControl | None = None,
        response_timeout: float = 60.0,
        idle_timeout: float = 15.0,
        xff_mode: str = "add",
        x_forwarded_proto: bool = True,
        x_forwarded_host: bool = False,
        x_forwarded_client_srcport: bool = False,
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
        bucket: TokenBucket | None = None,
    ) -> None:
        if xff_mode not in ("add", "remove", "off"):
            raise ValueError(f"unknown X-Forwarded-For mode {xff_mode!r}")
        self.listener_id = listener_id
        self.scheduler = scheduler
        self.stats = stats
        self.acl = acl
        self.response_timeout = response_timeout
        self.idle_timeout = idle_timeout
        self.xff_mode = xff_mode
        # Seed 000 bandwidth: response bodies are read from the backend no faster than this.
        self.bucket = bucket
        headers = list(extra_headers)
        if x_forwarded_proto:
            # The URL scheme of an HTTP/3 request is https; backends build links from it.
            headers.append((b"X-Forwarded-Proto", b"https"))
        self.static_headers = b"".join(b"%s: %s\r\n" % header for header in headers)
        # Per request: the :authority and the client's source port.
        self.forwarded_host = x_forwarded_host
        self.forwarded_srcport = x_forwarded_client_srcport
        # A client's own copy of a header the dataplane sets is dropped, so it cannot forge it.
        drop = {name.lower() for name, _ in headers}
        if x_forwarded_host:
            drop.add(b"x-forwarded-host")
        if x_forwarded_client_srcport:
            drop.add(b"x-forwarded-client-srcport")
        self.drop_headers = frozenset(drop)

    @classmethod
    def from_listener(
        cls,
        listener: Listener,
        snapshot: Snapshot,
        backends: list[Backend],
        stats: ListenerStats,
        *,
        slow_start: SlowStart | None = None,
        bucket: TokenBucket | None = None,
    ) -> QuicSettings:
        """Compile a snapshot listener; the header switches are those of HTTP listeners."""
        acl = compile_acl(listener, snapshot)
        # X-Forwarded-Proto has its own switch here (HTTP/3 is always https).
        extra = [
            header
            for name, header in managed_headers(listener, snapshot, b"https").items()
            if name != b"x-forwarded-proto"
        ]
        return cls(
            listener_id=listener.id,
            scheduler=(
                make_scheduler(listener.scheduler, backends, slow_start=slow_start)
                if backends
                else None
            ),
            stats=stats,
            acl=acl,
            response_timeout=float(listener.response_timeout),
            idle_timeout=float(listener.idle_timeout),
            xff_mode=listener.x_forwarded_for,
            x_forwarded_proto=listener.x_forwarded_proto,
            x_forwarded_host=listener.x_forwarded_host,
            x_forwarded_client_srcport=listener.x_forwarded_client_srcport,
            extra_headers=tuple(extra),
            bucket=bucket,
        )

    def pick(self, client_ip: str, exclude: Backend | None = None) -> Backend | None:
        scheduler = self.scheduler
        if scheduler is None:
            return None
        return scheduler.pick(client_ip, exclude)


# -- the listener ----------------------------------------------------------------------------------


class QuicListener:
    """A QUIC listener on one UDP socket: the aioquic server, its connections and settings."""

    def __init__(self, settings: QuicSettings, configuration: QuicConfiguration) -> None:
        self.settings = settings
        # Shared with every connection's handshake: replacing its certificate fields changes the
        # certificate for new connections only.
        self.configuration = configuration
        self.connections: set[Http3Connection] = set()
        self.server: _ListenerServer | None = None

    async def start(self, sock: socket.socket) -> None:
        """Serve a bound UDP socket (dataplane.protocols.udp.bind_udp); the listener owns it."""
        loop = asyncio.get_running_loop()
        _, self.server = await loop.create_datagram_endpoint(
            lambda: _ListenerServer(self), sock=sock
        )

    def update(
        self, settings: QuicSettings, configuration: QuicConfiguration | None = None
    ) -> None:
        """Adopt a new generation: new requests use it, requests in flight finish on the old one.

        A new certificate applies to new connections. Connections from clients the new ACL
        refuses are closed.
        """
        self.settings = settings
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
        self._listener.settings.stats.bytes_out += len(data)
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
        settings = self.listener.settings
        acl = settings.acl
        if acl is not None and not acl.allows(addr[0]):
            # Dropped before aioquic parses it: a refused client cannot even start a handshake.
            settings.stats.denied_connections += 1
            return
        settings.stats.bytes_in += len(data)
        super().datagram_received(data, addr)


# -- connections and requests ----------------------------------------------------------------------


class _Exchange:
    """One request stream: its body on the way to the backend and the task forwarding it."""

    __slots__ = ("body", "ended", "response_started", "stream_id", "task")

    def __init__(self, stream_id: int, ended: bool) -> None:
        self.stream_id = stream_id
        self.ended = ended
        self.body: asyncio.Queue[bytes | None] = asyncio.Queue()
        if ended:
            self.body.put_nowait(None)
        self.response_started = False
        self.task: asyncio.Task[None] | None = None


class _BackendError(Exception):
    """The backend failed before the response head; `status` is what the client gets."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _ResponseHead:
    """httptools callbacks for one backend response; 1xx interim responses are skipped."""

    __slots__ = ("body", "complete", "headers", "parser", "ready", "status")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.ready = False
        self.complete = False
        self.body: list[bytes] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.headers = []
            return
        self.status = status
        self.ready = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.ready:
            self.complete = True

    def take_body(self) -> bytes:
        body = b"".join(self.body)
        self.body = []
        return body


class Http3Connection(QuicConnectionProtocol):
    """One client's QUIC connection: HTTP/3 framing in, a forwarding task per request stream."""

    def __init__(self, quic: QuicConnection, listener: QuicListener) -> None:
        super().__init__(quic)
        self.listener = listener
        self.h3: H3Connection | None = None
        # The client's latest address: QUIC connections survive a client's address change.
        self.peer: tuple | None = None
        self.exchanges: dict[int, _Exchange] = {}
        self.registered = False
        # The counters this connection is counted in as active.
        self.stats = listener.settings.stats
        # Relays waiting for their stream's buffer to drain, by stream id.
        self._draining: dict[int, asyncio.Future[None]] = {}

    # -- QUIC ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.registered = True
        self.listener.connections.add(self)
        self.stats.total_connections += 1
        self.stats.active_connections += 1

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        self.peer = addr
        super().datagram_received(data, addr)
        # Acknowledgements arrive in datagrams: they are what drains a stream's buffer.
        if self._draining:
            for stream_id, waiter in list(self._draining.items()):
                if self._buffered(stream_id) <= LOW_WATER and not waiter.done():
                    waiter.set_result(None)

    def _buffered(self, stream_id: int) -> int:
        """Response bytes aioquic holds for a stream: queued, in flight or lost and to resend.

        aioquic has no public measure of this; its sender keeps exactly these bytes in one
        buffer, trimmed as acknowledgements arrive. Without that attribute the answer is 0, and
        responses are relayed without this backpressure rather than not at all.
        """
        stream = self._quic._streams.get(stream_id)
        buffer = getattr(getattr(stream, "sender", None), "_buffer", None)
        return len(buffer) if buffer is not None else 0

    async def _drained(self, stream_id: int) -> None:
        """Wait until the client has taken enough of this stream's response to read more."""
        if self._buffered(stream_id) <= HIGH_WATER:
            return
        waiter = self._loop.create_future()
        self._draining[stream_id] = waiter
        try:
            await waiter
        finally:
            del self._draining[stream_id]

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.ProtocolNegotiated):
            if event.alpn_protocol in H3_ALPN:
                self.h3 = H3Connection(self._quic)
        elif isinstance(event, events.StreamReset | events.StopSendingReceived):
            # The client gave up on this request.
            self._cancel(event.stream_id)
        elif isinstance(event, events.ConnectionTerminated):
            self._unregister()
        if self.h3 is not None:
            for h3_event in self.h3.handle_event(event):
                self._h3_event_received(h3_event)

    def _h3_event_received(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            exchange = self.exchanges.get(event.stream_id)
            if exchange is None:
                # Trailers after the response was already complete carry no :method; they
                # must not start a request of their own.
                if any(name == b":method" for name, _ in event.headers):
                    self._begin(event)
            elif event.stream_ended:
                # Request trailers: not forwarded, but they end the body.
                exchange.ended = True
                exchange.body.put_nowait(None)
        elif isinstance(event, DataReceived):
            exchange = self.exchanges.get(event.stream_id)
            if exchange is None or exchange.ended:
                return
            if event.data:
                exchange.body.put_nowait(event.data)
            if event.stream_ended:
                exchange.ended = True
                exchange.body.put_nowait(None)

    def _begin(self, event: HeadersReceived) -> None:
        exchange = _Exchange(event.stream_id, event.stream_ended)
        self.exchanges[event.stream_id] = exchange
        settings = self.listener.settings
        settings.stats.requests += 1
        exchange.task = self._loop.create_task(self._forward(exchange, event.headers, settings))

    def _cancel(self, stream_id: int) -> None:
        exchange = self.exchanges.pop(stream_id, None)
        if exchange is not None and exchange.task is not None:
            exchange.task.cancel()

    def _unregister(self) -> None:
        for stream_id in list(self.exchanges):
            self._cancel(stream_id)
        if self.registered:
            self.registered = False
            self.listener.connections.discard(self)
            self.stats.active_connections -= 1

    def abort(self) -> None:
        """Cut this connection and its requests now."""
        self._unregister()
        self.close()

    # -- forwarding ------------------------------------------------------------------------------

    async def _forward(
        self, exchange: _Exchange, headers: list[tuple[bytes, bytes]], settings: QuicSettings
    ) -> None:
        writer: asyncio.StreamWriter | None = None
        backend: Backend | None = None
        sender: asyncio.Task[None] | None = None
        try:
            head, body_framing = self._request_head(exchange, headers, settings)
            client_ip = self.peer[0] if self.peer else ""
            chosen = settings.pick(client_ip)
            if chosen is None:
                raise _BackendError(503)
            loop = self._loop
            deadline = loop.time() + settings.response_timeout
            backend, reader, writer = await self._connect(chosen, client_ip, settings, deadline)
            writer.write(head)
            sender = loop.create_task(self._send_body(exchange, writer, body_framing))
            response = await self._read_head(reader, deadline)
            await self._relay(exchange, response, reader, settings, headers)
        except _BackendError as exc:
            self._respond_error(exchange, exc.status, settings)
        except (OSError, httptools.HttpParserError, ProtocolError, ValueError) as exc:
            # The backend broke off in the middle of a response, or the client's stream ended
            # (reset, or the connection closed) while it was being answered.
            log.info(
                "backend response failed: %s",
                exc,
                extra={"listener_id": settings.listener_id},
            )
            self._reset(exchange)
        finally:
            if sender is not None:
                sender.cancel()
            if writer is not None:
                writer.transport.abort()
            if backend is not None:
                backend.active -= 1
            if self.exchanges.get(exchange.stream_id) is exchange:
                del self.exchanges[exchange.stream_id]

    def _request_head(
        self, exchange: _Exchange, headers: list[tuple[bytes, bytes]], settings: QuicSettings
    ) -> tuple[bytes, str]:
        """The HTTP/1.1 request head, and how the body is framed: none, length or chunked."""
        method = path = authority = b""
        lines: list[bytes] = []
        cookies: list[bytes] = []
        xff: list[bytes] = []
        content_length: bytes | None = None
        drop = settings.drop_headers
        # The same host and framing rules as HTTP/1.1 clients meet (dataplane.protocols.http):
        # one host, well formed, origin-form path, at most one Content-Length of digits.
        malformed = False
        for name, value in headers:
            if name.startswith(b":"):
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                continue
            if name == b"content-length":
                malformed = malformed or content_length is not None or not value.isdigit()
                content_length = value
            elif name == b"host":
                # RFC 9114 4.3.1: a Host field must say what :authority says.
                malformed = malformed or value.lower() != authority.lower()
                continue
            elif name == b"cookie":
                # HTTP/3 may split cookies into several fields; HTTP/1.1 wants one line.
                cookies.append(value)
                continue
            elif name == b"x-forwarded-for":
                xff.append(value)
                continue
            if name in _NOT_FORWARDED or name in drop:
                continue
            if name.find(b"_") >= 0:  # not `in`: on bytes it raises and clears a TypeError
                # CGI-style backends read `_` as `-`: X_Forwarded_For would pass as the real one.
                dashed = name.replace(b"_", b"-")
                if dashed in _NOT_FORWARDED or dashed in drop or dashed == b"content-length":
                    continue
            lines.append(b"%s: %s\r\n" % (name, value))
        if not fits_request_line(method, path, authority):
            raise _BackendError(400)
        if method == b"CONNECT":
            raise _BackendError(405)
        if not path:
            path = b"/" if method != b"OPTIONS" else b"*"
        if (
            malformed
            or not is_host_field(authority)
            or (path[:1] != b"/" and (path != b"*" or method != b"OPTIONS"))
        ):
            raise _BackendError(400)
        parts = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, path, authority), *lines]
        if cookies:
            parts.append(b"Cookie: %s\r\n" % b"; ".join(cookies))
        client_ip = (self.peer[0] if self.peer else "").encode()
        if settings.xff_mode == "add":
            forwarded = b", ".join([*xff, client_ip])
            parts.append(b"X-Forwarded-For: %s\r\n" % forwarded)
        elif settings.xff_mode == "off":
            parts.extend(b"X-Forwarded-For: %s\r\n" % value for value in xff)
        if settings.forwarded_host and authority:
            parts.append(b"X-Forwarded-Host: %s\r\n" % authority)
        if settings.forwarded_srcport and self.peer:
            parts.append(b"X-Forwarded-Client-srcport: %d\r\n" % self.peer[1])
        parts.append(settings.static_headers)
        if content_length is not None:
            framing = "length"
        elif exchange.ended:
            framing = "none"
        else:
            framing = "chunked"
            parts.append(b"Transfer-Encoding: chunked\r\n")
        # One request per backend connection: the response then ends at the latest when the
        # backend closes, and nothing is left on the connection to reuse wrongly.
        parts.append(b"Connection: close\r\n\r\n")
        return b"".join(parts), framing

    async def _connect(
        self, backend: Backend, client_ip: str, settings: QuicSettings, deadline: float
    ) -> tuple[Backend, asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to the chosen server, or to one other when that fails (like HTTP listeners).

        The server returned counts the request in `active`; the caller gives it back.
        """
        retried = False
        while True:
            backend.active += 1
            connected = False
            try:
                async with asyncio.timeout_at(deadline):
                    reader, writer = await asyncio.open_connection(
                        backend.address, backend.port, limit=MAX_RESPONSE_HEAD
                    )
                connected = True
                return backend, reader, writer
            except TimeoutError:
                raise _BackendError(504) from None
            except OSError as exc:
                log.info(
                    "cannot connect to backend %s (%s:%d): %s",
                    backend.id,
                    backend.address,
                    backend.port,
                    exc,
                    extra={"listener_id": settings.listener_id, "backend_id": backend.id},
                )
                other = None if retried else settings.pick(client_ip, exclude=backend)
                if other is None:
                    raise _BackendError(502) from None
            finally:
                if not connected:
                    backend.active -= 1
            retried = True
            backend = other

    async def _send_body(
        self, exchange: _Exchange, writer: asyncio.StreamWriter, framing: str
    ) -> None:
        if framing == "none":
            return
        with contextlib.suppress(OSError):
            while (chunk := await exchange.body.get()) is not None:
                if framing == "chunked":
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    writer.write(chunk)
                await writer.drain()
            if framing == "chunked":
                writer.write(b"0\r\n\r\n")
                await writer.drain()

    async def _read_head(self, reader: asyncio.StreamReader, deadline: float) -> _ResponseHead:
        response = _ResponseHead()
        size = 0
        try:
            async with asyncio.timeout_at(deadline):
                while not response.ready:
                    data = await reader.read(READ_SIZE)
                    if not data:
                        raise _BackendError(502)
                    size += len(data)
                    response.parser.feed_data(data)
                    if not response.ready and size > MAX_RESPONSE_HEAD:
                        raise _BackendError(502)
        except TimeoutError:
            raise _BackendError(504) from None
        except (httptools.HttpParserError, OSError):
            raise _BackendError(502) from None
        if response.status > 599:
            raise _BackendError(502)
        return response

    async def _relay(
        self,
        exchange: _Exchange,
        response: _ResponseHead,
        reader: asyncio.StreamReader,
        settings: QuicSettings,
        request_headers: list[tuple[bytes, bytes]],
    ) -> None:
        h3 = self.h3
        if h3 is None:
            return
        status = response.status
        settings.stats.responses[status // 100] += 1
        no_body = status in (204, 304) or (b":method", b"HEAD") in request_headers
        fields = [(b":status", b"%d" % status)]
        framed = False
        for name, value in response.headers:
            lower = name.lower()
            if lower in (b"content-length", b"transfer-encoding"):
                framed = True
                if no_body:
                    # RFC 9114 allows a length here, but aioquic-based clients close the whole
                    # connection when DATA does not add up to it.
                    continue
            if lower in HOP_BY_HOP:
                continue
            fields.append((lower, value.strip()))
        exchange.response_started = True
        h3.send_headers(exchange.stream_id, fields, end_stream=no_body)
        bucket = settings.bucket
        sent = sum(len(name) + len(value) for name, value in fields)
        if no_body:
            self.transmit()
            if bucket is not None:
                bucket.take(sent)
            return
        body = response.take_body()
        if body:
            h3.send_data(exchange.stream_id, body, end_stream=False)
        self.transmit()
        sent += len(body)
        while not response.complete:
            await self._drained(exchange.stream_id)
            if bucket is not None:
                # Shaped at the source: the backend is not read again until the bytes sent so
                # far fit the listener's bandwidth.
                await pay(bucket, sent)
                sent = 0
            data = await reader.read(READ_SIZE)
            if not data:
                if framed:
                    # The backend closed before the announced end of the body.
                    self._reset(exchange)
                    return
                # No length and no chunks: the body ends when the backend closes.
                break
            response.parser.feed_data(data)
            body = response.take_body()
            if body:
                h3.send_data(exchange.stream_id, body, end_stream=False)
                self.transmit()
                sent += len(body)
        h3.send_data(exchange.stream_id, b"", end_stream=True)
        self.transmit()
        if bucket is not None:
            bucket.take(sent)

    def _respond_error(self, exchange: _Exchange, status: int, settings: QuicSettings) -> None:
        h3 = self.h3
        if h3 is None or exchange.response_started:
            self._reset(exchange)
            return
        settings.stats.responses[status // 100] += 1
        body = b"%d %s\n" % (status, _REASONS[status])
        exchange.response_started = True
        h3.send_headers(
            exchange.stream_id,
            [
                (b":status", b"%d" % status),
                (b"content-type", b"text/plain"),
                (b"content-length", b"%d" % len(body)),
            ],
        )
        h3.send_data(exchange.stream_id, body, end_stream=True)
        self.transmit()

    def _reset(self, exchange: _Exchange) -> None:
        with contextlib.suppress(ValueError):
            # Already reset or finished by the client: nothing more to say on this stream.
            self._quic.reset_stream(exchange.stream_id, ErrorCode.H3_INTERNAL_ERROR)
        self.transmit()
