"""A client's TLS connection: the protocol on the TCP transport, the transport of the codec above.

This replaces the event loop's own TLS (`loop.create_server(ssl=...)`), for one reason: per
request, uvloop's SSL protocol moves records through `ssl.SSLObject`'s Python methods, each
releasing the GIL and ending in an `SSLWantReadError`, which costs about as many instructions
again as OpenSSL's record work (bench/README.md, instructions per request). Here the handshake
still runs in `ssl.SSLObject` (SNI, ALPN, client certificates, the ACME challenge answers, the
alerts of `dataplane.tls.AlertingSSLObject`), and once it is done the records move through a
`dataplane.tlsrecords.RecordPump`, OpenSSL called from C; `SslObjectPump` below does the same
through `ssl.SSLObject` where the pump cannot be used.

What a codec sees is what the event loop's TLS transport offers: `connection_made` once the
handshake is done, `eof_received` and then `connection_lost` when the client ends the session
(close_notify or a bare close: TLS cannot stay half-open), `get_extra_info("ssl_object")`,
reading and writing flow control. The node's side of a closing session is a close_notify and
a TCP close, without waiting for the client's close_notify, as HAProxy and nginx do.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from dataplane import tlsrecords

# A handshake that has not finished by then is abandoned (slowloris on the handshake).
HANDSHAKE_TIMEOUT = 10.0
# How long a closed session waits for the client to close its side (nginx's lingering_timeout).
LINGER_TIMEOUT = 5.0

# _CLOSING: our close_notify and FIN are out; what the client still sends is read and dropped
# until it closes too. Closing a socket with unread input makes the kernel send a reset, and a
# reset can destroy what the client had not read yet (a GOAWAY, an error response).
_HANDSHAKE, _OPEN, _CLOSING, _CLOSED = 0, 1, 2, 3


class SslObjectPump(tlsrecords.RecordPump):
    """A `RecordPump` that moves records through `ssl.SSLObject`: the same OpenSSL calls, made
    by Python (where `tlsrecords.usable` is False)."""

    __slots__ = ("records_in", "records_out", "tls")

    def __init__(self, ssl_object: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO):
        # Not RecordPump's __init__: nothing here reads CPython's private layouts.
        self.tls = ssl_object
        self.records_in = incoming
        self.records_out = outgoing
        self.eof = False

    def feed(self, data: bytes) -> None:
        self.records_in.write(data)

    def read(self) -> bytes:
        if self.eof:
            return b""
        chunks = []
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def pending(self) -> bool:
        return self.tls.pending() > 0 or self.records_in.pending > 0

    def write(self, data: bytes) -> bytes:
        if data:
            self.tls.write(data)
        return self.records_out.read()

    def drain(self) -> bytes:
        return self.records_out.read()

    def shutdown(self) -> bytes:
        try:
            self.tls.unwrap()
        except ssl.SSLError:
            # Want-read: our close_notify is out, the peer's not read, which is all we wait for.
            pass
        return self.records_out.read()


def record_pump(
    ssl_object: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
) -> tlsrecords.RecordPump:
    if tlsrecords.usable:
        return tlsrecords.RecordPump(ssl_object, incoming, outgoing)
    return SslObjectPump(ssl_object, incoming, outgoing)


class TlsLayer:
    """One client's TLS session between its TCP transport and the codec (`app`) serving it: an
    asyncio protocol to the one, an asyncio transport to the other (`tls_layer.pxd` makes it an
    extension type in the compiled build)."""

    __slots__ = (
        "app",
        "context",
        "ended",
        "handshake_timeout",
        "incoming",
        "make_pump",
        "outgoing",
        "paused",
        "pump",
        "ssl_object",
        "state",
        "tcp",
        "timer",
    )

    def __init__(
        self,
        context: ssl.SSLContext,
        app: Any,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        make_pump: Any = record_pump,
    ) -> None:
        self.context = context
        self.app: Any = app
        self.tcp: Any = None
        self.ssl_object: ssl.SSLObject | None = None
        self.pump: tlsrecords.RecordPump | None = None
        self.state = _HANDSHAKE
        self.paused = False
        # The client ended the session (close_notify or FIN) and the codec has not heard yet.
        self.ended = False
        self.timer: asyncio.TimerHandle | None = None
        self.handshake_timeout = handshake_timeout
        self.make_pump = make_pump

    # -- the TCP transport's protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tcp = transport
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.ssl_object = self.context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.timer = asyncio.get_running_loop().call_later(
            self.handshake_timeout, self._handshake_timed_out
        )

    def data_received(self, data: bytes) -> None:
        if self.state == _OPEN:
            self.pump.feed(data)
            self._deliver()
        elif self.state == _HANDSHAKE:
            self.incoming.write(data)
            self._handshake()

    def eof_received(self) -> bool:
        if self.state == _CLOSING:
            # The client closed its side after ours: the TCP transport closes.
            return False
        if self.state == _HANDSHAKE:
            # Asked again, AlertingSSLObject raises the failure it held back for its alert.
            self.incoming.write_eof()
            self._handshake()
            if self.state == _HANDSHAKE:
                self._abort()
        elif self.state == _OPEN:
            self.ended = True
            self._end_of_session()
        # True keeps the TCP transport open for what the codec has not read yet: the session's
        # own close ends it.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        was_open = self.state != _HANDSHAKE
        self.state = _CLOSED
        app, self.app = self.app, None
        self.pump = None
        if was_open and app is not None:
            app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.state == _OPEN:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.state == _OPEN:
            self.app.resume_writing()

    # -- the handshake -----------------------------------------------------------------------------

    def _handshake(self) -> None:
        try:
            self.ssl_object.do_handshake()  # type: ignore[union-attr]
        except ssl.SSLWantReadError:
            self._flush()
            return
        except Exception:
            # Whatever OpenSSL queued (the alert) goes out first; the failure is counted by
            # AlertingSSLObject.
            self._flush()
            self._abort()
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pump = self.make_pump(self.ssl_object, self.incoming, self.outgoing)
        self._flush()
        self.state = _OPEN
        self.app.connection_made(self)
        # The client's first request often comes in the same read as its Finished.
        if self.state == _OPEN:
            self._deliver()

    def _handshake_timed_out(self) -> None:
        self.timer = None
        if self.state == _HANDSHAKE:
            self._abort()

    # -- records -----------------------------------------------------------------------------------

    def _deliver(self) -> None:
        """Plaintext to the codec until the records run out, it stops reading or it closes."""
        pump = self.pump
        try:
            while not self.paused and self.state == _OPEN:
                data = pump.read()
                if not data:
                    break
                self.app.data_received(data)
                # Asked only when something is left: a read that finds nothing costs OpenSSL
                # about as much as one that decrypts a record.
                if not pump.pending():
                    break
        except ssl.SSLError as exc:
            self._fail(exc)
            return
        if self.state != _OPEN:
            return
        if pump.eof or self.ended:
            self.ended = True
            self._end_of_session()
            return
        # A key update or a session ticket OpenSSL answered while reading.
        self._flush()

    def _flush(self) -> None:
        """What OpenSSL wrote to the outgoing BIO, to the client: through the pump once there is
        one (a C call, where the BIO's `pending` is a Python property)."""
        pump = self.pump
        if pump is not None:
            records = pump.drain()
        elif self.outgoing.pending:
            records = self.outgoing.read()
        else:
            return
        if records:
            self.tcp.write(records)

    def _end_of_session(self) -> None:
        """The client's close_notify or TCP FIN: the codec hears of it, then the session ends."""
        if self.paused or self.state != _OPEN:
            # What the codec has not read yet is read first (resume_reading comes back here).
            return
        self.app.eof_received()
        self.close()

    def _fail(self, exc: Exception) -> None:
        self.state = _CLOSED
        tcp = self.tcp
        app, self.app = self.app, None
        self.pump = None
        tcp.abort()
        if app is not None:
            app.connection_lost(exc)

    def _abort(self) -> None:
        if not self.tcp.is_closing():
            self.tcp.abort()

    # -- the codec's transport ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.state == _OPEN:
            try:
                records = self.pump.write(data if type(data) is bytes else bytes(data))
            except ssl.SSLError as exc:
                self._fail(exc)
                return
            self.tcp.write(records)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS cannot stay half-open")

    def pause_reading(self) -> None:
        if not self.paused:
            self.paused = True
            self.tcp.pause_reading()

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            self.tcp.resume_reading()
            pump = self.pump
            if pump is not None and (pump.pending() or pump.eof or self.ended):
                # Not from inside the codec's own call: it resumes mid-way through its work.
                asyncio.get_running_loop().call_soon(self._resume_delivery)

    def _resume_delivery(self) -> None:
        if self.state == _OPEN and not self.paused:
            self._deliver()

    def is_reading(self) -> bool:
        return not self.paused and self.state == _OPEN

    def close(self) -> None:
        if self.state != _OPEN:
            if self.state == _HANDSHAKE:
                self._abort()
            return
        self.state = _CLOSING
        try:
            records = self.pump.shutdown()
        except ssl.SSLError:
            records = b""
        tcp = self.tcp
        if records:
            tcp.write(records)
        if self.ended:
            # The client has closed its side already.
            tcp.close()
            return
        # The TCP transport sends what it holds, then its FIN; the client's close (or the linger
        # timeout) ends the connection, and connection_lost follows.
        tcp.write_eof()
        if self.paused:
            self.paused = False
            tcp.resume_reading()
        self.timer = asyncio.get_running_loop().call_later(LINGER_TIMEOUT, self._linger_over)

    def _linger_over(self) -> None:
        self.timer = None
        self.tcp.abort()

    def abort(self) -> None:
        if self.state in (_OPEN, _CLOSING):
            self.state = _CLOSED
        self.tcp.abort()

    def is_closing(self) -> bool:
        return self.state != _OPEN or self.tcp.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.ssl_object
        if name == "sslcontext":
            return self.ssl_object.context if self.ssl_object is not None else self.context
        if name == "peercert":
            return self.ssl_object.getpeercert() if self.ssl_object is not None else default
        if name == "cipher":
            return self.ssl_object.cipher() if self.ssl_object is not None else default
        return self.tcp.get_extra_info(name, default)

    def set_protocol(self, protocol: Any) -> None:
        self.app = protocol

    def get_protocol(self) -> Any:
        return self.app

    def get_write_buffer_size(self) -> int:
        return self.tcp.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.tcp.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.tcp.set_write_buffer_limits(high, low)
