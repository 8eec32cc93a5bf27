"""TLS alerts and the CertificateRequest of mutual-TLS listeners, as OpenSSL itself would send them.

A client refused during the handshake learns why from the alert: handshake_failure (TLS 1.2) or
certificate_required (TLS 1.3) without a certificate, unknown_ca with one from another CA,
inappropriate_fallback for a downgraded retry. The CertificateRequest names the CA the listener
trusts, so a client holding several certificates can pick the right one. Both hold for HTTPS and
TCP SSL listeners. Python's ssl gives the alert a client received as the SSLError's reason;
`openssl s_client` shows the CA names and the alerts of the handshakes Python cannot make.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from typing import Any

import pytest
import trustme
from cryptography import x509

from dataplane.node import TLS_HANDSHAKE_TIMEOUT
from tests.dataplane import conftest as dataplane_fixtures
from tests.dataplane.conftest import (
    WAIT,
    certificate_entry,
    listener,
    server_group,
    snapshot,
)
from tests.fixtures.ports import free_port

# The in-process node and recording backends of tests/dataplane/conftest.py.
loop_thread = dataplane_fixtures.loop_thread
dataplane = dataplane_fixtures.dataplane
backends = dataplane_fixtures.backends
ca = dataplane_fixtures.ca

PROTOCOLS = ("https", "tcp_ssl")
VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


@pytest.fixture
def client_ca() -> trustme.CA:
    return trustme.CA(organization_name="Mutual TLS Client CA")


@pytest.fixture
def listeners(dataplane, backends, ca, client_ca) -> dict[str, Any]:
    """An HTTPS and a TCP SSL listener, both requiring certificates from `client_ca`."""
    web = backends("web")
    ports = {protocol: free_port() for protocol in PROTOCOLS}
    common = {
        "default_certificate_id": "cert-web",
        "sni_certificate_ids": ["cert-shop"],
        "ca_certificate_id": "cert-clientca",
        "tls_policy": "tls_cipher_policy_1_2_strict_with_1_3",
    }
    results = dataplane.apply(
        snapshot(
            [
                listener(ports["https"], listener_id="lsn-https", protocol="https", **common),
                listener(
                    ports["tcp_ssl"],
                    listener_id="lsn-tcpssl",
                    protocol="tcp_ssl",
                    group_id="sgp-tcp",
                    **common,
                ),
            ],
            [server_group(web), server_group(web, group_id="sgp-tcp", protocol="tcp")],
            certificates=[
                certificate_entry("cert-web", ca.issue_cert("www.example.com")),
                certificate_entry("cert-shop", ca.issue_cert("shop.example.com")),
            ],
            ca_certificates=[
                {"id": "cert-clientca", "certificate_pem": client_ca.cert_pem.bytes().decode()}
            ],
        )
    )
    assert {result["status"] for result in results.values()} == {"running"}
    return ports


def client(ca: trustme.CA, version: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    context.check_hostname = False
    context.minimum_version = context.maximum_version = VERSIONS[version]
    return context


def refusal(port: int, context: ssl.SSLContext, server_name: str = "www.example.com") -> str:
    """The reason of the SSLError a client gets, in the handshake or on its first read.

    With TLS 1.3 the client's handshake is over before the server has seen its certificate, so
    the server's alert arrives on the first read.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=server_name) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
                data = tls.recv(1024)
        except ssl.SSLError as exc:
            return str(exc.reason)
        except OSError as exc:
            return type(exc).__name__
    return f"no error; read {data!r}"


def s_client(port: int, *options: str) -> str:
    """What `openssl s_client` prints for one handshake (with -msg: every message and alert)."""
    completed = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-msg", *options],
        input=b"",
        check=False,
        capture_output=True,
        timeout=WAIT,
    )
    return completed.stdout.decode(errors="replace") + completed.stderr.decode(errors="replace")


def acceptable_ca_names(output: str) -> list[str]:
    lines = output.splitlines()
    if "Acceptable client certificate CA names" not in output:
        return []
    start = lines.index("Acceptable client certificate CA names") + 1
    names = []
    for line in lines[start:]:
        if not line or line.startswith(("Requested", "Client Certificate", "Shared", "Peer")):
            break
        names.append(line)
    return names


def openssl_name(ca: trustme.CA) -> str:
    """The CA's subject as s_client prints it: "O = ..., OU = ..., CN = ..."."""
    subject = x509.load_pem_x509_certificate(ca.cert_pem.bytes()).subject
    return (
        ", ".join(f"{attr.oid._name} = {attr.value}" for attr in subject)
        .replace("organizationName", "O")
        .replace("organizationalUnitName", "OU")
        .replace("commonName", "CN")
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("version", "alert"),
    [
        ("TLSv1.2", "SSLV3_ALERT_HANDSHAKE_FAILURE"),
        ("TLSv1.3", "TLSV13_ALERT_CERTIFICATE_REQUIRED"),
    ],
)
def test_a_client_without_certificate_gets_the_alert(listeners, ca, protocol, version, alert):
    assert refusal(listeners[protocol], client(ca, version)) == alert


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("version", VERSIONS)
def test_a_certificate_from_another_ca_gets_unknown_ca(listeners, ca, protocol, version):
    context = client(ca, version)
    trustme.CA(organization_name="Foreign CA").issue_cert("intruder.example").configure_cert(
        context
    )
    assert refusal(listeners[protocol], context) == "TLSV1_ALERT_UNKNOWN_CA"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_certificate_from_the_client_ca_is_served(listeners, ca, client_ca, protocol):
    context = client(ca, "TLSv1.3")
    client_ca.issue_cert("client.example").configure_cert(context)
    with socket.create_connection(("127.0.0.1", listeners[protocol]), timeout=WAIT) as raw:
        with context.wrap_socket(raw, server_hostname="www.example.com") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n")
            assert tls.recv(1024).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
@pytest.mark.parametrize("server_name", ["www.example.com", "shop.example.com"])
def test_the_certificate_request_names_the_client_ca(
    listeners, client_ca, protocol, version, server_name
):
    output = s_client(listeners[protocol], version, "-servername", server_name)

    assert acceptable_ca_names(output) == [openssl_name(client_ca)], output


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_downgraded_retry_gets_inappropriate_fallback(listeners, protocol):
    """TLS_FALLBACK_SCSV with TLS 1.2 at a listener that speaks TLS 1.3 (RFC 7507)."""
    output = s_client(listeners[protocol], "-tls1_2", "-fallback_scsv")

    assert "alert inappropriate fallback" in output, output


def test_a_client_that_ignores_the_alert_is_cut_off_by_the_handshake_timeout(listeners, ca):
    """The node waits for the client to close after its alert, as the client must, but not
    longer than a handshake may take (dataplane.node.TLS_HANDSHAKE_TIMEOUT)."""
    context = client(ca, "TLSv1.3")
    with socket.create_connection(("127.0.0.1", listeners["https"]), timeout=30) as raw:
        tls = context.wrap_socket(raw, server_hostname="www.example.com")
        started = time.monotonic()
        # The client neither writes nor closes; its first read gets the alert, the next the close.
        with pytest.raises(ssl.SSLError, match="TLSV13_ALERT_CERTIFICATE_REQUIRED"):
            tls.recv(1024)
        with socket.socket(fileno=os.dup(tls.fileno())) as plain:
            plain.settimeout(30)
            assert plain.recv(1024) == b""
        elapsed = time.monotonic() - started
        tls.close()
    assert elapsed < TLS_HANDSHAKE_TIMEOUT + 5


@pytest.mark.parametrize("protocol", ["https", "tcp_ssl"])
def test_plain_http_on_a_tls_port_is_closed_without_waiting_for_the_timeout(listeners, protocol):
    """OpenSSL has no alert for a plain-text request, and such a client waits for an answer
    rather than closing: the node closes at once instead of holding the connection until the
    handshake timeout."""
    with socket.create_connection(("127.0.0.1", listeners[protocol]), timeout=30) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        # Well under TLS_HANDSHAKE_TIMEOUT: a hold until the timeout fails here.
        raw.settimeout(TLS_HANDSHAKE_TIMEOUT / 2)
        try:
            answer = raw.recv(1024)
        except ConnectionResetError:
            answer = b""
    assert answer == b""
