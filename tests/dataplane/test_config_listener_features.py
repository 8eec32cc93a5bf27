"""Snapshot schema rules of the listener features: UDP and QUIC listeners, QUIC upgrade,
compression, bandwidth, slow start and UDP health checks."""

from __future__ import annotations

import pytest

from dataplane.config import ConfigError, Snapshot

PEM_CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"


def base(protocol: str = "http", backend_protocol: str = "http", **fields) -> dict:
    return {
        "instance_id": "lb-abc12345",
        "generation": 1,
        "listeners": [
            {
                "id": "lsn-one00001",
                "protocol": protocol,
                "port": 443,
                "server_group_id": "sgp-one00001",
                **fields,
            }
        ],
        "server_groups": [
            {
                "id": "sgp-one00001",
                "backend_protocol": backend_protocol,
                "servers": [{"id": "srv-1", "address": "10.0.0.1", "port": 8080}],
                "health_check": {"enabled": False},
            }
        ],
        "certificates": [{"id": "cert-a", "certificate_pem": PEM_CERT, "private_key_pem": PEM_KEY}],
    }


def reasons(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        Snapshot.from_dict(data)
    return caught.value.reasons


def test_defaults_of_the_new_fields():
    snapshot = Snapshot.from_dict(base())
    listener = snapshot.listeners[0]
    group = snapshot.server_groups[0]
    assert (listener.compression, listener.bandwidth_mbit, listener.quic_listener_id) == (
        "off",
        None,
        None,
    )
    assert (group.slow_start, group.slow_start_duration) == (False, 30)
    assert (group.health_check.udp_request, group.health_check.udp_expected) == ("", "")
    assert snapshot.bandwidth_mbit is None


def test_a_valid_udp_and_quic_pair():
    data = base("udp", "udp", scheduler="source_ip_hash")
    data["server_groups"][0]["health_check"] = {
        "protocol": "udp",
        "udp_request": "ping",
        "udp_expected": "pong",
    }
    data["listeners"].append(
        {
            "id": "lsn-quic0001",
            "protocol": "quic",
            "port": 443,
            "server_group_id": "sgp-web00001",
            "default_certificate_id": "cert-a",
        }
    )
    data["listeners"].append(
        {
            "id": "lsn-tls00001",
            "protocol": "https",
            "port": 443,
            "server_group_id": "sgp-web00001",
            "default_certificate_id": "cert-a",
            "quic_listener_id": "lsn-quic0001",
            "compression": "brotli_gzip",
            "bandwidth_mbit": 100,
        }
    )
    data["server_groups"].append({"id": "sgp-web00001", "slow_start": True})
    # UDP 443 twice would clash; UDP 443 and TCP 443 do not.
    data["listeners"][0]["port"] = 53
    snapshot = Snapshot.from_dict(data)
    udp, quic, https = snapshot.listeners
    assert (udp.protocol, udp.port, udp.scheduler) == ("udp", 53, "source_ip_hash")
    assert (quic.protocol, quic.port, quic.default_certificate_id) == ("quic", 443, "cert-a")
    assert (https.quic_listener_id, https.compression, https.bandwidth_mbit) == (
        "lsn-quic0001",
        "brotli_gzip",
        100,
    )
    udp_group, web_group = snapshot.server_groups
    assert (
        udp_group.health_check.protocol,
        udp_group.health_check.udp_request,
        udp_group.health_check.udp_expected,
    ) == ("udp", "ping", "pong")
    assert (web_group.slow_start, web_group.slow_start_duration) == (True, 30)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (
            {"compression": "zstd"},
            "listeners[0].compression: 'zstd' is not one of off, gzip, brotli_gzip",
        ),
        ({"bandwidth_mbit": 0}, "listeners[0].bandwidth_mbit: 0 is out of range 1-5120"),
        ({"bandwidth_mbit": 5121}, "listeners[0].bandwidth_mbit: 5121 is out of range 1-5120"),
        (
            {"quic_listener_id": "lsn-nothere"},
            "listeners[0].quic_listener_id: only https listeners upgrade to QUIC",
        ),
    ],
)
def test_http_listener_fields(fields, reason):
    assert reason in reasons(base(**fields))


def test_compression_is_for_http_listeners_only():
    assert "listeners[0].compression: only http, https and quic listeners compress" in reasons(
        base("tcp", "tcp", compression="gzip")
    )


def test_quic_upgrade_must_name_a_quic_listener():
    data = base("https", default_certificate_id="cert-a", quic_listener_id="lsn-one00001")
    assert "listeners[0].quic_listener_id: no quic listener 'lsn-one00001'" in reasons(data)


def test_instance_bandwidth_bounds_the_listener_limits():
    data = base(bandwidth_mbit=60)
    data["listeners"].append(
        {"id": "lsn-two00001", "protocol": "tcp", "port": 22, "bandwidth_mbit": 50}
    )
    data["bandwidth_mbit"] = 100
    assert reasons(data) == [
        "bandwidth_mbit: the listeners' limits add up to 110 Mbit/s, more than the instance's "
        "100 Mbit/s"
    ]
    data["bandwidth_mbit"] = 110
    Snapshot.from_dict(data)


def test_quic_listener_rules():
    data = base(
        "quic",
        ca_certificate_id="cert-b",
        sni_certificate_ids=["cert-a"],
        persistence={"mode": "source_ip"},
        retrieve_client_ip={"enabled": True, "trusted": ["10.0.0.0/8"]},
    )
    data["server_groups"][0]["backend_protocol"] = "tcp"
    found = reasons(data)
    assert "listeners[0].default_certificate_id: quic needs one" in found
    assert "listeners[0].ca_certificate_id: quic listeners have no mutual authentication" in found
    assert "listeners[0].sni_certificate_ids: quic listeners serve one certificate" in found
    assert (
        "listeners[0].persistence.mode: source_ip persistence is for tcp and tcp_ssl listeners"
        in found
    )
    assert "listeners[0].retrieve_client_ip: not offered on quic listeners" in found
    assert (
        "listeners[0].server_group_id: quic listeners need http server groups, sgp-one00001 is "
        "tcp" in found
    )


def test_quic_listeners_take_the_layer7_features():
    """Seed 003: QUIC is a Layer-7 listener like HTTP and HTTPS."""
    data = base(
        "quic",
        default_certificate_id="cert-a",
        compression="brotli_gzip",
        persistence={"mode": "insert_cookie"},
    )
    listener = Snapshot.from_dict(data).listeners[0]
    assert (listener.compression, listener.persistence.mode) == ("brotli_gzip", "insert_cookie")


def test_udp_listener_rules():
    data = base(
        "udp",
        "http",
        default_certificate_id="cert-a",
        x_forwarded_proto=True,
        persistence={"mode": "source_ip"},
    )
    found = reasons(data)
    assert "listeners[0].default_certificate_id: udp listeners use no TLS" in found
    assert "listeners[0]: udp listeners carry no HTTP headers" in found
    assert "listeners[0].persistence.mode: udp listeners have no persistence" in found
    assert (
        "listeners[0].server_group_id: udp listeners need udp server groups, sgp-one00001 is http"
        in found
    )


def test_udp_and_quic_share_udp_ports():
    data = base("udp", "udp")
    data["listeners"].append(
        {"id": "lsn-quic0001", "protocol": "quic", "port": 443, "default_certificate_id": "cert-a"}
    )
    assert reasons(data) == [
        "listeners[1].port: UDP port 443 is already used by udp listener lsn-one00001"
    ]


def test_http_and_tcp_share_tcp_ports():
    data = base()
    data["listeners"].append({"id": "lsn-tcp00001", "protocol": "tcp", "port": 443})
    assert reasons(data) == [
        "listeners[1].port: TCP port 443 is already used by http listener lsn-one00001"
    ]


def test_slow_start_rules():
    data = base(scheduler="round_robin")
    data["server_groups"][0].update(slow_start=True, slow_start_duration=29)
    found = reasons(data)
    assert "server_groups[0].slow_start_duration: 29 is out of range 30-1200" in found
    assert (
        "listeners[0].scheduler: server group sgp-one00001 uses slow start, which needs "
        "weighted_round_robin or weighted_least_connections, not round_robin" in found
    )
    data = base(scheduler="source_ip_hash")
    data["server_groups"][0].update(slow_start=True, slow_start_duration=1200)
    assert len(reasons(data)) == 1
    data["listeners"][0]["scheduler"] = "weighted_least_connections"
    Snapshot.from_dict(data)


def test_udp_health_check_rules():
    data = base("udp", "udp")
    data["server_groups"][0]["health_check"] = {
        "protocol": "tcp",
        "udp_request": "x" * 65,
        "udp_expected": "caf\u00e9",
    }
    found = reasons(data)
    assert (
        "server_groups[0].health_check.protocol: udp server groups are checked with udp, other "
        "groups with tcp, http or https" in found
    )
    assert (
        "server_groups[0].health_check.udp_request: at most 64 printable ASCII characters" in found
    )
    assert (
        "server_groups[0].health_check.udp_expected: at most 64 printable ASCII characters" in found
    )
    # A UDP check on an HTTP group is refused too.
    data = base()
    data["server_groups"][0]["health_check"] = {"protocol": "udp"}
    assert len(reasons(data)) == 1


@pytest.mark.parametrize(("protocol", "backend"), [("udp", "udp"), ("quic", "http")])
def test_datagram_listeners_take_a_bandwidth_limit(protocol, backend):
    data = base(protocol, backend, bandwidth_mbit=10, default_certificate_id="cert-a")
    if protocol == "udp":
        del data["listeners"][0]["default_certificate_id"]
    assert Snapshot.from_dict(data).listeners[0].bandwidth_mbit == 10
