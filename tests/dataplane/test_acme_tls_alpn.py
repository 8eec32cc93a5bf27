"""TLS-ALPN-01 (RFC 8737): the node answers an ACME validation handshake on its TLS listeners.

While a snapshot carries a challenge, a ClientHello offering only "acme-tls/1" for the name gets
the self-signed challenge certificate with "acme-tls/1" negotiated; every other client keeps the
listener's own certificate, and hellos that are split, truncated or malformed are judged by
OpenSSL as before, without taking the node down.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import struct

import pytest
import trustme
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane import acme_tls
from dataplane.config import ConfigError, Snapshot
from dataplane.tls import AlertingSSLObject
from tests.dataplane.conftest import (
    WAIT,
    certificate_entry,
    listener,
    read_until_closed,
    server_group,
    snapshot,
    unverified_client,
)
from tests.dataplane.test_https import https_get, trusting
from tests.fixtures.ports import free_port

DOMAIN = "acme.example.com"
KEY_AUTHORIZATION = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA." + "A" * 43


def client_hello(server_name: str | None, alpn: list[str] | None) -> bytes:
    """The bytes a real OpenSSL client sends first (one or more TLS records)."""
    context = unverified_client()
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def acme_client() -> ssl.SSLContext:
    context = unverified_client()
    context.set_alpn_protocols(["acme-tls/1"])
    return context


def served(port: int, context: ssl.SSLContext, name: str | None) -> tuple[x509.Certificate, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
            protocol = tls.selected_alpn_protocol()
    return x509.load_der_x509_certificate(der), protocol


def acme_identifier(certificate: x509.Certificate) -> x509.Extension:
    return certificate.extensions.get_extension_for_oid(acme_tls.ACME_IDENTIFIER_OID)


# -- ClientHello parsing -----------------------------------------------------------------------


def test_parse_a_real_hello():
    message = acme_tls.hello_message(client_hello(DOMAIN, ["acme-tls/1"]))
    assert message is not None
    assert acme_tls.parse_hello(message) == acme_tls.Hello(DOMAIN, (b"acme-tls/1",))
    plain = acme_tls.hello_message(client_hello(None, None))
    assert acme_tls.parse_hello(plain) == acme_tls.Hello(None, ())


def test_every_truncation_asks_for_more_bytes_or_is_refused():
    records = client_hello(DOMAIN, ["acme-tls/1", "h2"])
    for end in range(len(records)):
        assert acme_tls.hello_message(records[:end]) is None
    message = acme_tls.hello_message(records)
    # A message cut short inside (its own length fields lying) is refused, never an IndexError.
    for end in range(len(message)):
        cut = message[:end]
        with pytest.raises(acme_tls.HelloError):
            acme_tls.parse_hello(cut)


def test_a_hello_split_over_many_records_is_put_together():
    message = acme_tls.hello_message(client_hello(DOMAIN, ["acme-tls/1"]))
    records = b"".join(
        b"\x16\x03\x01" + struct.pack("!H", len(chunk)) + chunk
        for chunk in (message[i : i + 7] for i in range(0, len(message), 7))
    )
    assert acme_tls.hello_message(records) == message


@pytest.mark.parametrize(
    "records",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # not TLS
        b"\x17\x03\x03\x00\x05hello",  # application data first
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x16\x03\x01\x40\x01" + b"\x01" * 20,  # record longer than 2^14
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
        b"\x16\x03\x01\x00\x04\x01\xff\xff\xff",  # a 16 MB ClientHello announced
    ],
)
def test_what_is_not_a_hello_is_refused(records):
    with pytest.raises(acme_tls.HelloError):
        acme_tls.hello_message(records)


def _with_extensions(extensions: bytes) -> bytes:
    body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack("!H", len(extensions)) + extensions
    return b"\x01" + len(body).to_bytes(3, "big") + body


def _extension(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


@pytest.mark.parametrize(
    "extensions",
    [
        _extension(16, b"\x00\x0b\x0aacme-tls/1") * 2,  # ALPN twice
        _extension(16, b"\x00\x01\x00"),  # empty protocol name
        _extension(16, b"\x00\x0b\x0aacme-tls/1extra"),  # bytes after the list
        _extension(0, b"\x00\x05\x00\x00\x02\xff\xfe"),  # server name not ASCII
        _extension(16, b"\x00\x0c\x0aacme-tls/1"),  # list longer than the extension
        b"\x00",  # half an extension header
    ],
)
def test_malformed_extensions_are_refused(extensions):
    with pytest.raises(acme_tls.HelloError):
        acme_tls.parse_hello(_with_extensions(extensions))


def test_challenge_certificate_carries_the_key_authorization_digest():
    certificate_pem, _ = acme_tls.challenge_certificate(DOMAIN, KEY_AUTHORIZATION)
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    extension = acme_identifier(certificate)
    assert extension.critical
    digest = hashlib.sha256(KEY_AUTHORIZATION.encode()).digest()
    assert extension.value.value == b"\x04\x20" + digest
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert names.value.get_values_for_type(x509.DNSName) == [DOMAIN]


def test_snapshot_refuses_bad_challenges():
    with pytest.raises(ConfigError) as refused:
        Snapshot.from_dict(
            snapshot(
                [],
                [],
                acme_tls_alpn_challenges=[
                    {"domain": "*.example.com", "key_authorization": KEY_AUTHORIZATION},
                    {"domain": DOMAIN, "key_authorization": "token.short"},
                ],
            )
        )
    assert refused.value.reasons == [
        "acme_tls_alpn_challenges[0].domain: '*.example.com' is not a host name",
        "acme_tls_alpn_challenges[1].key_authorization: not an ACME key authorization",
    ]


# -- a node answering ----------------------------------------------------------------------------


@pytest.fixture
def https_node(dataplane, backends):
    """An HTTPS listener (mutual TLS, HTTP/2) and a function applying it with or without the
    challenge."""
    web = backends("web")
    port = free_port()
    ca = trustme.CA()
    client_ca = trustme.CA(organization_name="Client CA")
    client_cert = client_ca.issue_cert("client.example.com")

    def apply(generation: int, *, challenge: bool) -> None:
        extra = {
            "certificates": [certificate_entry("cert-default", ca.issue_cert(DOMAIN))],
            "ca_certificates": [
                {"id": "cert-clientca", "certificate_pem": client_ca.cert_pem.bytes().decode()}
            ],
        }
        if challenge:
            extra["acme_tls_alpn_challenges"] = [
                {"domain": DOMAIN, "key_authorization": KEY_AUTHORIZATION}
            ]
        https = listener(
            port,
            listener_id="lsn-tls",
            protocol="https",
            default_certificate_id="cert-default",
            ca_certificate_id="cert-clientca",
            http2=True,
        )
        result = dataplane.apply(
            snapshot([https], [server_group(web)], generation=generation, **extra)
        )
        assert result["lsn-tls"]["status"] == "running"

    def client() -> ssl.SSLContext:
        context = trusting(ca)
        client_cert.configure_cert(context)
        return context

    return port, apply, client


def test_node_answers_the_challenge_and_only_it(https_node):
    port, apply, client = https_node
    apply(1, challenge=True)

    certificate, protocol = served(port, acme_client(), DOMAIN)
    assert protocol == "acme-tls/1"
    digest = hashlib.sha256(KEY_AUTHORIZATION.encode()).digest()
    assert acme_identifier(certificate).value.value == b"\x04\x20" + digest
    # No client certificate was asked of the CA although the listener is mutual TLS.

    # A browser offering more protocols, another name, or no SNI gets the listener's own.
    for name, alpn in ((DOMAIN, ["acme-tls/1", "h2"]), ("other.example.com", ["acme-tls/1"])):
        context = client()
        context.set_alpn_protocols(alpn)
        certificate, protocol = served(port, context, name)
        assert protocol != "acme-tls/1"
        with pytest.raises(x509.ExtensionNotFound):
            acme_identifier(certificate)
    assert https_get(port, client()) == (200, b"web")


def test_removing_the_challenge_restores_plain_handshakes(https_node):
    port, apply, client = https_node
    apply(1, challenge=True)
    apply(2, challenge=False)
    context = acme_client()
    client_cert = client()
    # The listener's own context again: it asks for a client certificate and offers no acme-tls/1.
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        served(port, context, DOMAIN)
    assert https_get(port, client_cert) == (200, b"web")


def test_split_truncated_and_garbage_hellos_leave_the_node_serving(https_node):
    port, apply, client = https_node
    apply(1, challenge=True)
    hello = client_hello(DOMAIN, ["acme-tls/1"])

    # Byte by byte: the hello is put together before OpenSSL sees it.
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        for byte in hello:
            raw.sendall(bytes([byte]))
        answer = raw.recv(5)
    assert answer[:1] == b"\x16"  # a ServerHello record came back

    for bad in (
        hello[: len(hello) // 2],  # the client hangs up mid-hello
        b"\x16\x03\x01\x00\x04\x01\xff\xff\xff" + b"\x00" * 64,  # a 16 MB hello announced
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\xff\xff" + b"\x00" * 100,
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
            raw.sendall(bad)
            raw.shutdown(socket.SHUT_WR)
            reply = read_until_closed(raw)
        # Nothing but an alert, if anything: no certificate was served for garbage.
        assert reply == b"" or reply[:1] == b"\x15"

    _, protocol = served(port, acme_client(), DOMAIN)
    assert protocol == "acme-tls/1"
    assert https_get(port, client()) == (200, b"web")


def test_no_challenge_no_hello_reading():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    acme_tls.answer(context, AlertingSSLObject, ())
    assert context.sslobject_class is AlertingSSLObject


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_break_the_parser(data):
    for parse in (acme_tls.hello_message, acme_tls.parse_hello):
        try:
            parse(data)
        except acme_tls.HelloError:
            pass
