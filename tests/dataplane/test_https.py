"""HTTPS listeners: certificates by SNI, mutual TLS, security policies, session tickets."""

from __future__ import annotations

import hashlib
import http.client
import socket
import ssl
import warnings

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from dataplane import tls
from tests.dataplane.conftest import (
    WAIT,
    certificate_entry,
    listener,
    peer_certificate,
    self_signed,
    server_group,
    snapshot,
    unverified_client,
)
from tests.fixtures.ports import free_port


def https_listener(port: int, **settings: object) -> dict[str, object]:
    settings.setdefault("default_certificate_id", "cert-default")
    settings.setdefault("listener_id", "lsn-tls")
    return listener(port, protocol="https", **settings)  # type: ignore[arg-type]


def dns_names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return san.value.get_values_for_type(x509.DNSName)


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = False
    return context


def https_get(port: int, context: ssl.SSLContext, path: str = "/") -> tuple[int, bytes]:
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=WAIT, context=context)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def handshake(port: int, context: ssl.SSLContext, server_name: str | None = None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    return context.wrap_socket(raw, server_hostname=server_name)


def test_sni_selects_exact_then_wildcard_else_the_default(dataplane, backends, ca):
    web = backends("web")
    port = free_port()
    certificates = [
        certificate_entry("cert-default", ca.issue_cert("www.example.com")),
        certificate_entry("cert-wild", ca.issue_cert("*.example.org")),
        certificate_entry("cert-exact", ca.issue_cert("api.example.org")),
    ]
    listeners = [https_listener(port, sni_certificate_ids=["cert-wild", "cert-exact"])]
    result = dataplane.apply(snapshot(listeners, [server_group(web)], certificates=certificates))
    assert result["lsn-tls"]["status"] == "running"
    client = trusting(ca)

    def served(name: str | None) -> list[str]:
        return dns_names(peer_certificate(port, name, client))

    assert served("api.example.org") == ["api.example.org"]
    assert served("shop.example.org") == ["*.example.org"]
    assert served("SHOP.Example.ORG") == ["*.example.org"]
    # The wildcard covers one label only; deeper names and unknown names get the default.
    assert served("a.b.example.org") == ["www.example.com"]
    assert served("unknown.test") == ["www.example.com"]
    assert served(None) == ["www.example.com"]


def test_https_request_reaches_backend_with_forwarded_proto(dataplane, backends, ca):
    web = backends("web")
    port = free_port()
    certificates = [certificate_entry("cert-default", ca.issue_cert("www.example.com"))]
    listeners = [https_listener(port, x_forwarded_proto=True, x_forwarded_port=True)]
    dataplane.apply(snapshot(listeners, [server_group(web)], certificates=certificates))

    assert https_get(port, trusting(ca)) == (200, b"web")
    received = web.requests[-1]
    assert received.header("X-Forwarded-Proto") == "https"
    assert received.header("X-Forwarded-Port") == str(port)
    assert received.header("X-Forwarded-For") == "127.0.0.1"


@pytest.fixture
def mutual_tls(dataplane, backends, ca):
    """An HTTPS listener that requires client certificates from `client_ca`."""
    web = backends("web")
    port = free_port()
    client_ca = trustme.CA(organization_name="Client CA")
    listeners = [
        https_listener(
            port,
            ca_certificate_id="cert-clientca",
            clientcert_subjectdn=True,
            clientcert_issuerdn=True,
            clientcert_fingerprint=True,
            clientcert_clientverify=True,
        )
    ]
    dataplane.apply(
        snapshot(
            listeners,
            [server_group(web)],
            certificates=[certificate_entry("cert-default", ca.issue_cert("www.example.com"))],
            ca_certificates=[
                {"id": "cert-clientca", "certificate_pem": client_ca.cert_pem.bytes().decode()}
            ],
        )
    )
    return port, web, client_ca


def test_mutual_tls_passes_client_certificate_headers(mutual_tls, ca):
    port, web, client_ca = mutual_tls
    client_cert = client_ca.issue_cert("client.example.com")
    context = trusting(ca)
    client_cert.configure_cert(context)

    assert https_get(port, context) == (200, b"web")

    received = web.requests[-1]
    leaf = x509.load_pem_x509_certificate(client_cert.cert_chain_pems[0].bytes())
    der = leaf.public_bytes(Encoding.DER)
    assert received.header("X-Forwarded-Clientcert-subjectdn") == leaf.subject.rfc4514_string()
    assert received.header("X-Forwarded-Clientcert-issuerdn") == leaf.issuer.rfc4514_string()
    assert received.header("X-Forwarded-Clientcert-fingerprint") == hashlib.sha1(der).hexdigest()
    assert received.header("X-Forwarded-Clientcert-clientverify") == "SUCCESS"


def test_mutual_tls_refuses_a_client_from_a_foreign_ca(mutual_tls, ca):
    port, web, _ = mutual_tls
    foreign = trustme.CA(organization_name="Foreign CA")
    context = trusting(ca)
    foreign.issue_cert("intruder.example.com").configure_cert(context)

    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        https_get(port, context)
    assert web.requests == []


def test_mutual_tls_refuses_a_client_without_certificate(mutual_tls, ca):
    port, web, _ = mutual_tls
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        https_get(port, trusting(ca))
    assert web.requests == []


def test_mutual_tls_client_headers_cannot_be_forged(mutual_tls, ca):
    port, web, client_ca = mutual_tls
    client_cert = client_ca.issue_cert("client.example.com")
    context = trusting(ca)
    client_cert.configure_cert(context)
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=WAIT, context=context)
    connection.request("GET", "/", headers={"X-Forwarded-Clientcert-subjectdn": "CN=admin"})
    assert connection.getresponse().status == 200
    connection.close()

    leaf = x509.load_pem_x509_certificate(client_cert.cert_chain_pems[0].bytes())
    forwarded = web.requests[-1].all("X-Forwarded-Clientcert-subjectdn")
    assert forwarded == [leaf.subject.rfc4514_string()]


@pytest.mark.parametrize("policy", ["tls_cipher_policy_1_0", "tls_cipher_policy_1_2_strict"])
def test_rsa_1024_certificate_is_served(dataplane, backends, policy):
    web = backends("web")
    port = free_port()
    weak = {"id": "cert-default", **self_signed("legacy.example.com", key_size=1024)}
    listeners = [https_listener(port, tls_policy=policy)]
    result = dataplane.apply(snapshot(listeners, [server_group(web)], certificates=[weak]))
    assert result["lsn-tls"]["status"] == "running"

    served = peer_certificate(port, "legacy.example.com", unverified_client())
    assert served.public_key().key_size == 1024
    assert https_get(port, unverified_client()) == (200, b"web")


def policy_listener(dataplane, backends, ca, policy: str, **extra: object) -> int:
    web = backends("web")
    port = free_port()
    certificates = [certificate_entry("cert-default", ca.issue_cert("www.example.com"))]
    dataplane.apply(
        snapshot(
            [https_listener(port, tls_policy=policy)],
            [server_group(web)],
            certificates=certificates,
            **extra,
        )
    )
    return port


def client_with(minimum: ssl.TLSVersion, maximum: ssl.TLSVersion, ciphers: str = "DEFAULT"):
    context = unverified_client()
    with warnings.catch_warnings():
        # TLS 1.0 and 1.1 are deprecated in Python; the legacy policies must still serve them.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = minimum
        context.maximum_version = maximum
    context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    return context


def test_tls_1_2_policy_refuses_a_tls_1_1_client(dataplane, backends, ca):
    port = policy_listener(dataplane, backends, ca, "tls_cipher_policy_1_2")
    context = client_with(ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_1)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(port, context).close()


def test_tls_1_0_policy_accepts_a_tls_1_0_client(dataplane, backends, ca):
    port = policy_listener(dataplane, backends, ca, "tls_cipher_policy_1_0")
    context = client_with(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1)
    with handshake(port, context) as tls:
        assert tls.version() == "TLSv1"


def test_strict_policy_refuses_rsa_key_exchange(dataplane, backends, ca):
    strict = policy_listener(dataplane, backends, ca, "tls_cipher_policy_1_2_strict")
    context = client_with(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2, "AES128-SHA")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(strict, context).close()


def test_policy_bounds_the_negotiated_version(dataplane, backends, ca):
    client = unverified_client()
    legacy = policy_listener(dataplane, backends, ca, "tls_cipher_policy_1_2")
    with handshake(legacy, client) as tls:
        assert tls.version() == "TLSv1.2"


def test_strict_with_1_3_policy_negotiates_tls_1_3(dataplane, backends, ca):
    port = policy_listener(dataplane, backends, ca, "tls_cipher_policy_1_2_strict_with_1_3")
    with handshake(port, unverified_client()) as tls:
        assert tls.version() == "TLSv1.3"


def test_custom_policy_limits_tls_1_3_suites(dataplane, backends, ca):
    custom = {
        "id": "tls-chacha01",
        "name": "chacha only",
        "min_version": "TLSv1.3",
        "max_version": "TLSv1.3",
        "ciphers": [],
        "tls13_ciphersuites": ["TLS_CHACHA20_POLY1305_SHA256"],
    }
    port = policy_listener(dataplane, backends, ca, "tls-chacha01", tls_policies=[custom])
    with handshake(port, unverified_client()) as tls:
        assert tls.version() == "TLSv1.3"
        assert tls.cipher()[0] == "TLS_CHACHA20_POLY1305_SHA256"


def test_session_tickets_live_300_seconds_and_resume(dataplane, backends, ca):
    port = policy_listener(dataplane, backends, ca, "tls_cipher_policy_1_2")
    client = unverified_client()
    with handshake(port, client) as tls:
        session = tls.session
    assert session is not None and session.has_ticket
    assert session.ticket_lifetime_hint == 300

    raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    with client.wrap_socket(raw, session=session) as resumed:
        assert resumed.session_reused


def test_certificate_change_applies_to_new_handshakes(dataplane, backends, ca):
    web = backends("web")
    port = free_port()
    groups = [server_group(web)]
    first = [certificate_entry("cert-default", ca.issue_cert("old.example.com"))]
    dataplane.apply(snapshot([https_listener(port)], groups, certificates=first))
    client = trusting(ca)
    socket_before = dataplane.node.listeners["lsn-tls"].sock.fileno()
    kept = http.client.HTTPSConnection("127.0.0.1", port, timeout=WAIT, context=client)
    kept.request("GET", "/")
    assert kept.getresponse().read() == b"web"

    second = [certificate_entry("cert-default", ca.issue_cert("new.example.com"))]
    result = dataplane.apply(
        snapshot([https_listener(port)], groups, certificates=second, generation=2)
    )

    assert result["lsn-tls"]["status"] == "running"
    assert dns_names(peer_certificate(port, "new.example.com", client)) == ["new.example.com"]
    assert dataplane.node.listeners["lsn-tls"].sock.fileno() == socket_before
    # The connection made before the change carries on.
    kept.request("GET", "/")
    assert kept.getresponse().read() == b"web"
    kept.close()


def test_https_backends_are_reached_over_tls(dataplane, backends, ca):
    backend_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("backend.internal").configure_cert(backend_context)
    secure = backends("secure", tls=backend_context)
    port = free_port()
    certificates = [certificate_entry("cert-default", ca.issue_cert("www.example.com"))]
    dataplane.apply(
        snapshot(
            [https_listener(port)],
            [server_group(secure, protocol="https")],
            certificates=certificates,
        )
    )
    assert https_get(port, trusting(ca)) == (200, b"secure")
    assert https_get(port, trusting(ca)) == (200, b"secure")
    # Both requests shared one pooled TLS connection to the backend.
    assert secure.connections == 1


def test_listener_with_a_broken_certificate_fails_alone(dataplane, backends, ca):
    web = backends("web")
    good_port, bad_port = free_port(), free_port()
    good = certificate_entry("cert-default", ca.issue_cert("www.example.com"))
    other = certificate_entry("cert-other", ca.issue_cert("other.example.com"))
    mismatched = {**good, "id": "cert-broken", "private_key_pem": other["private_key_pem"]}
    listeners = [
        https_listener(good_port),
        listener(
            bad_port,
            listener_id="lsn-broken",
            protocol="https",
            default_certificate_id="cert-broken",
        ),
    ]
    result = dataplane.apply(
        snapshot(listeners, [server_group(web)], certificates=[good, mismatched])
    )
    assert result["lsn-tls"]["status"] == "running"
    assert result["lsn-broken"]["status"] == "failed"
    assert "cert-broken" in result["lsn-broken"]["reason"]
    assert https_get(good_port, trusting(ca)) == (200, b"web")


@pytest.fixture
def shared_ticket_keys():
    """As in a worker process: front contexts get ticket keys derived from one secret."""
    tls.set_ticket_secret(b"k" * 32)
    yield
    tls.set_ticket_secret(None)


def test_a_ticket_from_a_listener_without_mutual_tls_cannot_skip_it_on_another(
    shared_ticket_keys, dataplane, backends, ca
):
    """Derived ticket keys depend on every TLS input: a session from an open listener must not
    resume on a listener that requires a client certificate, or it would get in without one."""
    web = backends("web")
    open_port, mutual_port = free_port(), free_port()
    client_ca = trustme.CA(organization_name="Client CA")
    dataplane.apply(
        snapshot(
            [
                https_listener(open_port, listener_id="lsn-open"),
                https_listener(
                    mutual_port, listener_id="lsn-mutual", ca_certificate_id="cert-clientca"
                ),
            ],
            [server_group(web)],
            certificates=[certificate_entry("cert-default", ca.issue_cert("www.example.com"))],
            ca_certificates=[
                {"id": "cert-clientca", "certificate_pem": client_ca.cert_pem.bytes().decode()}
            ],
        )
    )
    client = trusting(ca)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with handshake(open_port, client, "www.example.com") as first:
        session = first.session
    # The open listener resumes its own tickets with the derived keys...
    raw = socket.create_connection(("127.0.0.1", open_port), timeout=WAIT)
    with client.wrap_socket(raw, server_hostname="www.example.com", session=session) as again:
        assert again.session_reused
    # ...and the mutual one cannot open them: a full handshake, which needs a certificate.
    raw = socket.create_connection(("127.0.0.1", mutual_port), timeout=WAIT)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        with client.wrap_socket(raw, server_hostname="www.example.com", session=session) as tls_:
            tls_.sendall(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
            tls_.recv(1)
