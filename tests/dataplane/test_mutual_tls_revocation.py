"""Mutual TLS with revocation lists, on a real node process (python -m dataplane).

Given an HTTPS listener that requires client certificates from a CA whose snapshot entry carries
CRLs, when clients hand over certificates at real TLS handshakes, then a revoked one is refused
with OpenSSL's certificate_revoked alert and the backend sees nothing, and an unrevoked one is
served and its request reaches the recording backend. With intermediates, the chain check
refuses the clients of a revoked intermediate. A snapshot smuggling a certificate into a CRL
entry is refused by the node.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

from tests.dataplane.conftest import (
    WAIT,
    certificate_entry,
    listener,
    read_until_closed,
    server_group,
    snapshot,
    split_responses,
)
from tests.factories.certs import CaMaterial, make_ca
from tests.factories.crls import ClientMaterial, crl_pem, make_client_cert, make_crl
from tests.fixtures.ports import free_port
from tests.fixtures.processes import DataplaneNode

REVOKED_ALERT = "SSLV3_ALERT_CERTIFICATE_REVOKED"


class Node:
    """A dataplane node process and the snapshots the test PUTs to its control API."""

    def __init__(self, process: DataplaneNode, server_ca: trustme.CA) -> None:
        self.process = process
        self.server_ca = server_ca
        self.generation = 0

    def put(self, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.process.url + "/v1/config",
            data=json.dumps(body).encode(),
            method="PUT",
            headers={
                "Authorization": f"Bearer {self.process.token}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def serve_mutual_tls(
        self, port: int, backend, ca: CaMaterial, crls: list[str], crl_check: str = "leaf"
    ) -> dict:
        """Apply an HTTPS listener on `port` that requires client certificates from `ca`."""
        self.generation += 1
        status, answer = self.put(
            snapshot(
                [
                    listener(
                        port,
                        listener_id="lsn-mtls",
                        protocol="https",
                        default_certificate_id="cert-server",
                        ca_certificate_id="cert-clients",
                        clientcert_subjectdn=True,
                    )
                ],
                [server_group(backend)],
                generation=self.generation,
                certificates=[
                    certificate_entry("cert-server", self.server_ca.issue_cert("www.example.com"))
                ],
                ca_certificates=[
                    {
                        "id": "cert-clients",
                        "certificate_pem": ca.cert_pem,
                        "crls": crls,
                        "crl_check": crl_check,
                    }
                ],
            )
        )
        assert status == 200, answer
        assert answer["listeners"]["lsn-mtls"]["status"] == "running", answer
        return answer


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    token = secrets.token_urlsafe(24)
    (tmp_path / "token").write_text(token)
    port = free_port()
    process = DataplaneNode(
        "node",
        [
            sys.executable,
            "-m",
            "dataplane",
            "--control",
            f"127.0.0.1:{port}",
            "--token-file",
            str(tmp_path / "token"),
            "--state-dir",
            str(state_dir),
            "--drain-timeout",
            "1",
        ],
        {**os.environ, "PYTHONUNBUFFERED": "1"},
        tmp_path / "node.log",
        control_port=port,
        token=token,
        state_dir=state_dir,
    )
    process.start()
    try:
        process.wait_ready()
        yield Node(process, trustme.CA(organization_name="Server CA"))
    finally:
        process.stop(timeout=5)


@pytest.fixture(scope="module")
def client_root() -> CaMaterial:
    return make_ca("Mutual TLS Client Root CA")


def client_context(
    node: Node, client: ClientMaterial, tmp_path: Path, *, tls12: bool = False
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    node.server_ca.configure_trust(context)
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    # ssl reads a client certificate only from a file; the key is made for this test only.
    bundle = tmp_path / f"client-{client.cert.serial_number}.pem"
    bundle.write_text(client.bundle_pem())
    context.load_cert_chain(bundle)
    return context


def request(port: int, context: ssl.SSLContext) -> tuple[int, bytes]:
    """One GET over a verified TLS connection to www.example.com: (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        with context.wrap_socket(raw, server_hostname="www.example.com") as tls:
            tls.sendall(
                b"GET /account HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n"
            )
            [(status, body)] = split_responses(read_until_closed(tls))
    return status, body


def refusal(port: int, context: ssl.SSLContext) -> ssl.SSLError:
    """The TLS error a client gets: in the handshake (TLS 1.2), or at its first read (TLS 1.3,
    where the server checks the client's certificate after the client has finished)."""
    with pytest.raises(ssl.SSLError) as caught:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
            with context.wrap_socket(raw, server_hostname="www.example.com") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
                tls.recv(1024)
    return caught.value


@pytest.mark.parametrize("tls12", [True, False], ids=["tls1.2", "tls1.3"])
def test_revoked_client_is_refused_and_unrevoked_one_served(
    node, backends, client_root, tmp_path, tls12
) -> None:
    web = backends("web")
    port = free_port()
    alice = make_client_cert(client_root, "alice")
    mallory = make_client_cert(client_root, "mallory")
    node.serve_mutual_tls(
        port, web, client_root, [crl_pem(make_crl(client_root, revoked=[mallory.cert]))]
    )

    error = refusal(port, client_context(node, mallory, tmp_path, tls12=tls12))
    assert error.reason == REVOKED_ALERT
    assert web.requests == []

    assert request(port, client_context(node, alice, tmp_path, tls12=tls12)) == (200, b"web")
    assert [r.header("X-Forwarded-Clientcert-subjectdn") for r in web.requests] == [
        alice.cert.subject.rfc4514_string()
    ]


def test_a_new_crl_refuses_a_client_that_was_served(node, backends, client_root, tmp_path):
    web = backends("web")
    port = free_port()
    bob = make_client_cert(client_root, "bob")
    node.serve_mutual_tls(port, web, client_root, [crl_pem(make_crl(client_root))])
    context = client_context(node, bob, tmp_path, tls12=True)
    session = resumed = None
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
            with context.wrap_socket(
                raw, server_hostname="www.example.com", session=session
            ) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert split_responses(read_until_closed(tls)) == [(200, b"web")]
                session, resumed = tls.session, tls.session_reused
    assert resumed, "the second connection should resume the first one's session"

    node.serve_mutual_tls(
        port, web, client_root, [crl_pem(make_crl(client_root, revoked=[bob.cert], number=2))]
    )

    # Offering the session from before the CRL does not skip the check: the listener's new
    # context cannot resume it, so the handshake is a full one with the client's certificate.
    with pytest.raises(ssl.SSLError) as caught:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
            with context.wrap_socket(raw, server_hostname="www.example.com", session=session):
                pass
    assert caught.value.reason == REVOKED_ALERT
    assert len(web.requests) == 2


def test_a_client_whose_issuer_has_no_crl_is_refused(node, backends, client_root, tmp_path):
    """OpenSSL fails closed: with CRL checks on, a certificate whose issuer's CRL is missing
    cannot be checked, so it is refused (docs/dataplane-config.md says so)."""
    web = backends("web")
    port = free_port()
    issuing = make_ca("Mutual TLS Issuing CA 1", issuer=client_root)
    dave = make_client_cert(issuing, "dave", chain=[issuing])
    node.serve_mutual_tls(port, web, client_root, [crl_pem(make_crl(client_root))])

    error = refusal(port, client_context(node, dave, tmp_path, tls12=True))
    assert error.reason == "TLSV1_ALERT_UNKNOWN_CA"
    assert web.requests == []


def test_intermediate_crl_refuses_its_revoked_client(node, backends, client_root, tmp_path):
    web = backends("web")
    port = free_port()
    issuing = make_ca("Mutual TLS Issuing CA 1", issuer=client_root)
    erin = make_client_cert(issuing, "erin", chain=[issuing])
    frank = make_client_cert(issuing, "frank", chain=[issuing])
    node.serve_mutual_tls(
        port, web, client_root, [crl_pem(make_crl(issuing, revoked=[frank.cert]))], "leaf"
    )

    assert refusal(port, client_context(node, frank, tmp_path, tls12=True)).reason == (
        REVOKED_ALERT
    )
    assert request(port, client_context(node, erin, tmp_path, tls12=True)) == (200, b"web")
    assert len(web.requests) == 1


def test_chain_check_refuses_the_clients_of_a_revoked_intermediate(
    node, backends, client_root, tmp_path
):
    web = backends("web")
    port = free_port()
    kept = make_ca("Mutual TLS Issuing CA 1", issuer=client_root)
    leaked = make_ca("Mutual TLS Issuing CA 2", issuer=client_root)
    grace = make_client_cert(kept, "grace", chain=[kept])
    heidi = make_client_cert(leaked, "heidi", chain=[leaked])
    crls = [
        crl_pem(make_crl(client_root, revoked=[leaked.cert])),
        crl_pem(make_crl(kept)),
        crl_pem(make_crl(leaked)),
    ]

    # The leaf check alone does not look at the intermediate: heidi is served.
    node.serve_mutual_tls(port, web, client_root, crls, "leaf")
    assert request(port, client_context(node, heidi, tmp_path, tls12=True)) == (200, b"web")

    node.serve_mutual_tls(port, web, client_root, crls, "chain")
    assert refusal(port, client_context(node, heidi, tmp_path, tls12=True)).reason == (
        REVOKED_ALERT
    )
    assert request(port, client_context(node, grace, tmp_path, tls12=True)) == (200, b"web")
    assert len(web.requests) == 2


def test_an_expired_crl_on_the_node_refuses_every_client(node, backends, client_root, tmp_path):
    """The console refuses an expired CRL and flags one about to expire; should one expire on
    the node anyway, OpenSSL refuses every client of that CA until a current CRL arrives."""
    web = backends("web")
    port = free_port()
    now = datetime.now(UTC)
    stale = make_crl(
        client_root, this_update=now - timedelta(days=8), next_update=now - timedelta(days=1)
    )
    ivan = make_client_cert(client_root, "ivan")
    node.serve_mutual_tls(port, web, client_root, [crl_pem(stale)])

    assert refusal(port, client_context(node, ivan, tmp_path, tls12=True)).reason == (
        "SSLV3_ALERT_CERTIFICATE_EXPIRED"
    )
    assert web.requests == []


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param("certificate", id="certificate-appended"),
        pytest.param("not pem", id="garbage"),
        pytest.param("", id="empty"),
    ],
)
def test_node_refuses_a_crl_entry_that_is_not_one_crl(node, backends, client_root, entry):
    web = backends("web")
    rogue = make_ca("Rogue CA")
    if entry == "certificate":
        # A CERTIFICATE block loaded with the CRLs would make its CA trusted.
        entry = crl_pem(make_crl(client_root)) + rogue.cert_pem
    body = snapshot(
        [
            listener(
                free_port(),
                listener_id="lsn-mtls",
                protocol="https",
                default_certificate_id="cert-server",
                ca_certificate_id="cert-clients",
            )
        ],
        [server_group(web)],
        certificates=[
            certificate_entry("cert-server", node.server_ca.issue_cert("www.example.com"))
        ],
        ca_certificates=[
            {"id": "cert-clients", "certificate_pem": client_root.cert_pem, "crls": [entry]}
        ],
    )
    status, answer = node.put(body)
    assert status == 422
    assert answer["reasons"] == ["ca_certificates[0].crls[0]: not one PEM X509 CRL block"]


def test_node_refuses_an_unknown_crl_check(node, backends, client_root):
    body = snapshot(
        [],
        [],
        ca_certificates=[
            {
                "id": "cert-clients",
                "certificate_pem": client_root.cert_pem,
                "crls": [crl_pem(make_crl(client_root))],
                "crl_check": "none",
            }
        ],
    )
    status, answer = node.put(body)
    assert status == 422
    assert answer["reasons"] == ["ca_certificates[0].crl_check: 'none' is not one of leaf, chain"]
