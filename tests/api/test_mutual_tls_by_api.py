"""An HTTPS listener with mutual TLS built by the API alone (certificate uploads, a server group,
the listener, Start) over real HTTP to a live console; the real Celery worker pushes it to a real
dataplane node, the API shows it Running, and real clients go through it to a recording backend:
one with a certificate from the trusted CA is served, one without is refused."""

from __future__ import annotations

import socket
import ssl

import pytest
import requests
import trustme
from cryptography import x509

from console import tokens
from tests.fixtures.processes import free_port, wait_until
from tests.fixtures.single_node import Stack
from tests.fixtures.users import make_user

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
CONVERGENCE = 20


def pem(blob) -> str:
    return blob.bytes().decode()


def get(https_port: int, context: ssl.SSLContext, path: str) -> bytes:
    """One HTTP/1.1 GET over TLS to the listener, as www.example.com."""
    with socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="www.example.com") as tls:
            head = f"GET {path} HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n"
            tls.sendall(head.encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    return answer


def test_an_https_listener_with_mutual_tls_made_by_api_alone_serves_verified_clients(
    stack: Stack, live_server
) -> None:
    stack.start_pipeline()
    user = make_user("automation", "Administrators")
    secret = tokens.issue_token(user=user, name="pipeline", role="admin", days=1).secret
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {secret}"
    base = f"{live_server.url}/api/v1"
    server_ca = trustme.CA(organization_name="Server CA")
    server = server_ca.issue_cert("www.example.com")
    client_ca = trustme.CA(organization_name="Client CA")
    client = client_ca.issue_cert("client.example.com")

    # Given: certificates, a server group and a stopped listener, each made by one API call.
    certificate = api.post(
        f"{base}/certificates",
        json={
            "name": "www",
            "kind": "server",
            "certificate": pem(server.cert_chain_pems[0]),
            "private_key": pem(server.private_key_pem),
        },
    )
    assert certificate.status_code == 201, certificate.text
    client_ca_row = api.post(
        f"{base}/certificates",
        json={"name": "clients", "kind": "ca", "certificate": pem(client_ca.cert_pem)},
    )
    assert client_ca_row.status_code == 201, client_ca_row.text
    group = api.post(
        f"{base}/server-groups",
        json={
            "name": "web-api",
            "backend_protocol": "http",
            "servers": [{"address": "127.0.0.1", "port": stack.backend.port}],
        },
    )
    assert group.status_code == 201, group.text
    port = free_port()
    created = api.post(
        f"{base}/instances/{stack.instance.id}/listeners",
        json={
            "protocol": "https",
            "port": port,
            "name": "mtls",
            "enabled": False,
            "server_group": group.json()["id"],
            "default_certificate": certificate.json()["id"],
            "tls_policy": "tls_cipher_policy_1_2_strict_with_1_3",
            "mutual_authentication": True,
            "ca_certificate": client_ca_row.json()["id"],
            "header_clientcert_subjectdn": True,
        },
    )
    assert created.status_code == 201, created.text
    listener = created.json()
    assert listener["status"] == "configuring"
    url = f"{base}/instances/{stack.instance.id}/listeners/{listener['id']}"
    wait_until(lambda: api.get(url).json()["status"] == "stopped", timeout=CONVERGENCE)

    # When: it is started by the API.
    started = api.post(f"{url}/start")
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "configuring"
    assert started.json()["generation"] > listener["generation"]
    wait_until(lambda: api.get(url).json()["status"] == "running", timeout=CONVERGENCE)

    # Then: a client with a certificate of the trusted CA is served, and the backend got its
    # request with the client's subject; a client without a certificate is refused.
    trusted = ssl.create_default_context()
    server_ca.configure_trust(trusted)
    client.configure_cert(trusted)
    answer = get(port, trusted, "/through-mutual-tls")
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(stack.backend.name.encode())
    seen = [r for r in stack.backend.requests if r["path"] == "/through-mutual-tls"]
    assert len(seen) == 1
    client_subject = x509.load_pem_x509_certificate(client.cert_chain_pems[0].bytes()).subject
    forwarded = seen[0]["headers"]["X-Forwarded-Clientcert-subjectdn"]
    assert forwarded == client_subject.rfc4514_string()

    anonymous = ssl.create_default_context()
    server_ca.configure_trust(anonymous)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(port, anonymous, "/without-certificate")
    assert not [r for r in stack.backend.requests if r["path"] == "/without-certificate"]
    shown = api.get(url).json()
    assert (shown["status"], shown["last_error"]) == ("running", "")
