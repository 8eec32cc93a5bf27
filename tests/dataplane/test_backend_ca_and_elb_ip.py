"""Seed 002 "Transfer Load Balancer EIP" (X-Forwarded-ELB-IP) and HTTPS backends verified against
a CA (`backend_ca_certificate_id`), through a real node with real TLS backends."""

from __future__ import annotations

import logging
import ssl

import pytest
import trustme

from dataplane.config import ConfigError, Listener, Snapshot
from dataplane.protocols import ListenerSettings
from dataplane.stats import ListenerStats
from dataplane.upstream import UpstreamPool
from tests.dataplane.conftest import get, listener, server_group, snapshot
from tests.fixtures.ports import free_port

# -- X-Forwarded-ELB-IP ----------------------------------------------------------------------------


def test_elb_ip_header_carries_the_bind_address_and_replaces_the_clients(dataplane, backends):
    web = backends("web")
    port = free_port()
    dataplane.apply(snapshot([listener(port, x_forwarded_elb_ip=True)], [server_group(web)]))
    get(port, "/", headers={"X-Forwarded-ELB-IP": "203.0.113.9"})
    assert web.requests[-1].all("X-Forwarded-ELB-IP") == ["127.0.0.1"]


def test_without_the_flag_a_clients_header_passes_unchanged(dataplane, backends):
    web = backends("web")
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [server_group(web)]))
    get(port, "/")
    assert web.requests[-1].header("X-Forwarded-ELB-IP") is None
    get(port, "/", headers={"X-Forwarded-ELB-IP": "203.0.113.9"})
    assert web.requests[-1].all("X-Forwarded-ELB-IP") == ["203.0.113.9"]


def test_quic_listeners_add_it_too():
    config = Listener(id="lsn-quic", protocol="quic", port=443, x_forwarded_elb_ip=True)
    snap = Snapshot(instance_id="lb-test0001", generation=1, bind_address="192.0.2.5")
    settings = ListenerSettings(
        config, snap, group=None, tls=None, pool=UpstreamPool(), stats=ListenerStats()
    )
    assert b"X-Forwarded-ELB-IP: 192.0.2.5\r\n" in settings.static_headers
    assert b"x-forwarded-elb-ip" in settings.drop_headers


def test_udp_listeners_refuse_it():
    raw = {
        "instance_id": "lb-test0001",
        "generation": 1,
        "listeners": [{"id": "lsn-u", "protocol": "udp", "port": 53, "x_forwarded_elb_ip": True}],
    }
    with pytest.raises(ConfigError) as info:
        Snapshot.from_dict(raw)
    assert info.value.reasons == ["listeners[0]: udp listeners carry no HTTP headers"]


# -- HTTPS backends verified against a CA ----------------------------------------------------------


@pytest.fixture(scope="module")
def backend_ca() -> trustme.CA:
    return trustme.CA(organization_name="Backend CA")


@pytest.fixture(scope="module")
def other_ca() -> trustme.CA:
    return trustme.CA(organization_name="Some Other CA")


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


def https_snapshot(port: int, backend, ca_pem: str | None, *, generation: int = 1) -> dict:
    group = server_group(backend, protocol="https")
    extra = {}
    if ca_pem is not None:
        group["backend_ca_certificate_id"] = "cert-backendca"
        extra["ca_certificates"] = [{"id": "cert-backendca", "certificate_pem": ca_pem}]
    return snapshot([listener(port)], [group], generation=generation, **extra)


def test_a_backend_certified_by_the_ca_is_reached(dataplane, backends, backend_ca):
    app = backends("app", tls=server_context(backend_ca, "127.0.0.1"))
    port = free_port()
    dataplane.apply(https_snapshot(port, app, backend_ca.cert_pem.bytes().decode()))
    assert get(port, "/")[:3:2] == (200, b"app")
    # A pooled connection serves the next request as well.
    assert get(port, "/again")[:3:2] == (200, b"app")


def test_a_backend_from_another_ca_gets_502_and_a_clear_log(
    dataplane, backends, backend_ca, other_ca, caplog
):
    caplog.set_level(logging.INFO, logger="dataplane")
    app = backends("app", tls=server_context(other_ca, "127.0.0.1"))
    port = free_port()
    dataplane.apply(https_snapshot(port, app, backend_ca.cert_pem.bytes().decode()))
    assert get(port, "/")[0] == 502
    assert not app.requests
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "is not trusted" in m and "certificate" in m and "cert-backendca" in m for m in messages
    ), messages


def test_the_certificate_must_name_the_server_address(dataplane, backends, backend_ca, caplog):
    caplog.set_level(logging.INFO, logger="dataplane")
    app = backends("app", tls=server_context(backend_ca, "backend.example.com"))
    port = free_port()
    dataplane.apply(https_snapshot(port, app, backend_ca.cert_pem.bytes().decode()))
    assert get(port, "/")[0] == 502
    assert any("IP address mismatch" in r.getMessage() for r in caplog.records)


def test_without_a_ca_https_backends_are_not_verified(dataplane, backends, other_ca):
    app = backends("app", tls=server_context(other_ca, "backend.example.com"))
    port = free_port()
    dataplane.apply(https_snapshot(port, app, None))
    assert get(port, "/")[:3:2] == (200, b"app")


def test_adding_the_ca_later_applies_to_new_connections(dataplane, backends, backend_ca, other_ca):
    app = backends("app", tls=server_context(other_ca, "127.0.0.1"))
    port = free_port()
    dataplane.apply(https_snapshot(port, app, None))
    assert get(port, "/")[0] == 200
    # The warm pooled connection was made without verification: it must not be lent any more.
    dataplane.apply(https_snapshot(port, app, backend_ca.cert_pem.bytes().decode(), generation=2))
    assert get(port, "/")[0] == 502
    # The right CA, same id, new content: the group's context is rebuilt.
    dataplane.apply(https_snapshot(port, app, other_ca.cert_pem.bytes().decode(), generation=3))
    assert get(port, "/")[0] == 200


def test_an_unreadable_ca_fails_the_listener_with_a_reason(dataplane, backends):
    app = backends("app")
    port = free_port()
    garbage = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    result = dataplane.apply(https_snapshot(port, app, garbage))
    assert result["lsn-web"]["status"] == "failed"
    assert (
        "server group sgp-web: backend CA certificate cannot be loaded"
        in (result["lsn-web"]["reason"])
    )


def _group_snapshot(group: dict, **extra) -> dict:
    return {"instance_id": "lb-test0001", "generation": 1, "server_groups": [group], **extra}


def test_the_backend_ca_is_for_https_groups_and_must_exist():
    with pytest.raises(ConfigError) as info:
        Snapshot.from_dict(
            _group_snapshot(
                {"id": "sgp-a", "backend_ca_certificate_id": "cert-ca"},
                **{
                    "ca_certificates": [
                        {"id": "cert-ca", "certificate_pem": "-----BEGIN CERTIFICATE-----"}
                    ]
                },
            )
        )
    assert info.value.reasons == [
        "server_groups[0].backend_ca_certificate_id: only https server groups verify their "
        "servers' certificates"
    ]
    with pytest.raises(ConfigError) as info:
        Snapshot.from_dict(
            _group_snapshot(
                {"id": "sgp-a", "backend_protocol": "https", "backend_ca_certificate_id": "cert-x"}
            )
        )
    assert info.value.reasons == [
        "server_groups[0].backend_ca_certificate_id: no CA certificate 'cert-x'"
    ]
