"""TLS-ALPN-01 (RFC 8737): answering an ACME CA's validation handshake on a TLS listener.

The CA connects to port 443 of the name, offers the single ALPN protocol "acme-tls/1" with the
name in SNI, and expects a self-signed certificate for that name carrying the critical
acmeIdentifier extension (the SHA-256 of the key authorization), with "acme-tls/1" negotiated.

Python's SNI callback cannot see which ALPN protocols a client offered, so while a challenge is
pending the listener's front context hands out SSLObjects that hold the client's first bytes back
from OpenSSL until the ClientHello is whole, read its SNI and ALPN, and, for a
validation handshake, puts a fresh OpenSSL connection from the challenge context in place before
OpenSSL has seen a byte. Everything else (a partial, odd or hostile hello included) goes to the
listener's own context untouched: OpenSSL judges it as it always does. With no challenge pending
the front context hands out its usual SSLObject class, so ordinary connections pay nothing.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from dataplane.config import TlsAlpnChallenge

log = logging.getLogger(__name__)

ACME_TLS_ALPN = b"acme-tls/1"
# id-pe-acmeIdentifier (RFC 8737 section 6.1).
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
# A ClientHello with post-quantum key shares is about 2 KB; a hello that does not fit in this is
# not one an ACME CA sends, so it goes to OpenSSL as it is.
MAX_HELLO_BYTES = 16 * 1024

_HANDSHAKE_RECORD = 22
_CLIENT_HELLO = 1
_SERVER_NAME = 0
_ALPN = 16


class HelloError(ValueError):
    """Bytes that are not a well-formed ClientHello."""


@dataclass(frozen=True, slots=True)
class Hello:
    server_name: str | None
    alpn: tuple[bytes, ...]


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise HelloError("truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> _Reader:
        return _Reader(self.take(self.number(length_size)))

    def done(self) -> bool:
        return self.pos == len(self.data)


def hello_message(records: bytes) -> bytes | None:
    """The ClientHello handshake message from the start of a TLS stream, or None while more bytes
    are needed; raises HelloError when the bytes are not a ClientHello."""
    body = bytearray()
    pos = 0
    while True:
        if len(records) < pos + 5:
            return None
        kind, major, length = records[pos], records[pos + 1], records[pos + 3 : pos + 5]
        if kind != _HANDSHAKE_RECORD or major != 3:
            raise HelloError("not a TLS handshake record")
        size = int.from_bytes(length, "big")
        if size == 0 or size > 2**14:
            raise HelloError("bad record length")
        if len(records) < pos + 5 + size:
            return None
        body += records[pos + 5 : pos + 5 + size]
        pos += 5 + size
        if body[0] != _CLIENT_HELLO:
            raise HelloError("the first handshake message is not a ClientHello")
        if len(body) >= 4:
            needed = 4 + int.from_bytes(body[1:4], "big")
            if needed > MAX_HELLO_BYTES:
                raise HelloError("ClientHello too large")
            if len(body) >= needed:
                return bytes(body[:needed])


def parse_hello(message: bytes) -> Hello:
    """SNI host name and offered ALPN protocols of a ClientHello handshake message."""
    reader = _Reader(message)
    if reader.number(1) != _CLIENT_HELLO:
        raise HelloError("not a ClientHello")
    hello = reader.vector(3)
    if not reader.done():
        raise HelloError("bytes after the ClientHello")
    hello.take(2 + 32)  # legacy_version, random
    hello.vector(1)  # legacy_session_id
    hello.vector(2)  # cipher_suites
    hello.vector(1)  # legacy_compression_methods
    if hello.done():
        return Hello(None, ())
    extensions = hello.vector(2)
    if not hello.done():
        raise HelloError("bytes after the extensions")
    server_name: str | None = None
    alpn: tuple[bytes, ...] = ()
    seen: set[int] = set()
    while not extensions.done():
        kind = extensions.number(2)
        data = extensions.vector(2)
        if kind in seen:
            # RFC 8446 4.2: a repeated extension is a protocol error.
            raise HelloError(f"extension {kind} repeated")
        seen.add(kind)
        if kind == _SERVER_NAME:
            server_name = _server_name(data)
        elif kind == _ALPN:
            alpn = _protocols(data)
    return Hello(server_name, alpn)


def _server_name(data: _Reader) -> str | None:
    names = data.vector(2)
    if not data.done():
        raise HelloError("bytes after the server name list")
    found = None
    while not names.done():
        name_type = names.number(1)
        name = names.vector(2).data
        if name_type == 0 and found is None:
            try:
                found = name.decode("ascii").lower().rstrip(".")
            except UnicodeDecodeError:
                raise HelloError("server name is not ASCII") from None
    return found


def _protocols(data: _Reader) -> tuple[bytes, ...]:
    listed = data.vector(2)
    if not data.done():
        raise HelloError("bytes after the protocol list")
    protocols = []
    while not listed.done():
        protocol = listed.vector(1).data
        if not protocol:
            raise HelloError("empty ALPN protocol name")
        protocols.append(protocol)
    return tuple(protocols)


# -- the challenge certificates -----------------------------------------------------------------


def challenge_certificate(domain: str, key_authorization: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for `domain` with the acmeIdentifier of `key_authorization`, and
    its key, as PEM (RFC 8737 section 3)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        # The extension's value is the DER OCTET STRING of the digest.
        .add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _challenge_context(domain: str, key_authorization: str) -> ssl.SSLContext:
    certificate_pem, key_pem = challenge_certificate(domain, key_authorization)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # RFC 8737 section 4: TLS 1.2 or later, and "acme-tls/1" the only protocol.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ACME_TLS_ALPN.decode()])
    fd = os.memfd_create("lb-acme-challenge", os.MFD_CLOEXEC)
    try:
        os.write(fd, certificate_pem + key_pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return context


class Challenges:
    """The pending TLS-ALPN-01 challenges of a node: host name -> its challenge context."""

    def __init__(self) -> None:
        self._seen: tuple[TlsAlpnChallenge, ...] = ()
        self._by_key: dict[tuple[str, str], ssl.SSLContext] = {}
        self.by_name: dict[str, ssl.SSLContext] = {}

    def update(self, challenges: tuple[TlsAlpnChallenge, ...]) -> None:
        """Keep the contexts of `challenges`, build the new ones, drop the rest. A renewal's
        order has a new key authorization, so a new context."""
        if challenges == self._seen:
            return
        wanted = {(c.domain.lower().rstrip("."), c.key_authorization) for c in challenges}
        self._by_key = {
            key: self._by_key.get(key) or _challenge_context(*key) for key in sorted(wanted)
        }
        self.by_name = {domain: context for (domain, _), context in self._by_key.items()}
        self._seen = challenges


pending = Challenges()


def answer(
    context: ssl.SSLContext,
    plain_class: type[ssl.SSLObject],
    challenges: tuple[TlsAlpnChallenge, ...],
) -> None:
    """Make a listener's front `context` answer the snapshot's `challenges`, or stop doing so.

    `plain_class` is the SSLObject class the listener uses otherwise; while a challenge is pending
    its connections get a subclass of it that reads the ClientHello first.
    """
    pending.update(challenges)
    context.sslobject_class = _challenge_class(plain_class) if pending.by_name else plain_class


@functools.cache
def _challenge_class(plain_class: type[ssl.SSLObject]) -> type[ssl.SSLObject]:
    return type(f"Challenge{plain_class.__name__}", (_ReadsHelloFirst, plain_class), {})


class _ReadsHelloFirst(ssl.SSLObject):
    """A server SSLObject that reads the ClientHello before OpenSSL does (see the module doc)."""

    _hello: bytearray | None
    _bios: tuple[ssl.MemoryBIO, ssl.MemoryBIO]

    @classmethod
    def _create(cls, incoming, outgoing, server_side=False, server_hostname=None, **kwargs):
        self = super()._create(
            incoming, outgoing, server_side=server_side, server_hostname=server_hostname, **kwargs
        )
        self._bios = (incoming, outgoing)
        self._hello = bytearray() if server_side else None
        return self

    def do_handshake(self) -> None:
        if self._hello is not None and not self._take_hello():
            raise ssl.SSLWantReadError("the ClientHello is not complete yet")
        super().do_handshake()

    def _take_hello(self) -> bool:
        """Hold bytes back until the ClientHello is whole; then choose the context and give
        OpenSSL everything. False while more bytes are needed."""
        incoming, outgoing = self._bios
        hello = self._hello
        assert hello is not None
        hello += incoming.read()
        try:
            message = hello_message(bytes(hello))
        except HelloError:
            message = b""  # not ours to judge: OpenSSL refuses it with its own alert
        # Record headers included, a hello of MAX_HELLO_BYTES split into many records is longer;
        # past this bound the bytes go to OpenSSL as they are.
        if message is None and not incoming.eof and len(hello) <= 2 * MAX_HELLO_BYTES:
            return False
        self._hello = None
        if message:
            self._choose_context(message, incoming, outgoing)
        if incoming.eof:
            # The client closed mid-hello: a MemoryBIO takes no bytes back after its EOF, and
            # half a hello is no handshake anyway.
            raise ssl.SSLEOFError("EOF occurred in violation of protocol")
        incoming.write(bytes(hello))
        return True

    def _choose_context(
        self, message: bytes, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
    ) -> None:
        try:
            offered = parse_hello(message)
        except HelloError:
            return
        if offered.alpn != (ACME_TLS_ALPN,):
            # RFC 8737 section 3: the CA offers acme-tls/1 alone; a client offering more is a
            # browser, which gets the listener's own certificate.
            return
        context = pending.by_name.get(offered.server_name or "")
        if context is None:
            return
        # A fresh OpenSSL connection from the challenge context: its certificate, its ALPN, and
        # no client certificate request even on a mutual-TLS listener.
        self._sslobj = context._wrap_bio(  # type: ignore[attr-defined]
            incoming, outgoing, server_side=True, server_hostname=None, owner=self, session=None
        )
        log.info("answering a TLS-ALPN-01 challenge for %s", offered.server_name)
