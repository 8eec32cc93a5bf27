"""The snapshot schema: strict decoding, ranges, cross references and JSON round trip."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from dataplane import balancing
from dataplane.config import SCHEDULERS, ConfigError, Listener, Snapshot
from dataplane.example import fill

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def base() -> dict:
    return {
        "instance_id": "lb-abc12345",
        "generation": 1,
        "listeners": [
            {
                "id": "lsn-web00001",
                "protocol": "http",
                "port": 80,
                "server_group_id": "sgp-web00001",
            }
        ],
        "server_groups": [
            {
                "id": "sgp-web00001",
                "servers": [{"id": "srv-1", "address": "10.0.0.1", "port": 8080}],
            }
        ],
    }


def reasons(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        Snapshot.from_dict(data)
    return caught.value.reasons


def with_listener(**fields) -> dict:
    data = base()
    data["listeners"][0].update(fields)
    return data


def test_minimal_snapshot_gets_the_seed_defaults():
    snapshot = Snapshot.from_dict(base())
    listener = snapshot.listeners[0]
    assert snapshot.bind_address == "127.0.0.1"
    assert (listener.idle_timeout, listener.request_timeout) == (15, 60)
    assert listener.x_forwarded_for == "add"
    assert listener.scheduler == "weighted_round_robin"
    assert listener.tls_policy == "tls_cipher_policy_1_0"
    assert listener.persistence.cookie_timeout == 1000
    assert snapshot.server_groups[0].servers[0].weight == 100
    check = snapshot.server_groups[0].health_check
    assert (check.interval, check.timeout, check.healthy_threshold) == (5, 2, 3)


def test_json_round_trip_is_lossless():
    data = json.loads((EXAMPLES / "http.json").read_text())
    snapshot = Snapshot.from_dict(data)
    assert Snapshot.from_json(snapshot.to_json()) == snapshot
    assert json.loads(snapshot.to_json())["listeners"][0]["acl"] == {
        "mode": "blacklist",
        "acl_id": "acl-block001",
    }


@pytest.mark.parametrize("name", ["http.json", "https.json", "tcp_ssl.json", "quic_udp.json"])
def test_documented_examples_are_valid_once_certificates_are_filled_in(name, tmp_path):
    data = fill(json.loads((EXAMPLES / name).read_text()), tmp_path)
    snapshot = Snapshot.from_dict(data)
    assert snapshot.listeners[0].protocol in ("http", "https", "tcp_ssl")
    assert snapshot.to_dict() == Snapshot.from_json(snapshot.to_json()).to_dict()


def test_examples_hold_no_key_material():
    for path in EXAMPLES.glob("*.json"):
        assert "BEGIN" not in path.read_text(), path


def test_unknown_fields_and_wrong_types_are_refused_with_paths():
    data = base()
    data["listeners"][0]["colour"] = "blue"
    data["listeners"][0]["port"] = "80"
    data["server_groups"][0]["servers"][0]["weight"] = True
    data["surprise"] = 1
    assert sorted(reasons(data)) == [
        "listeners[0].colour: unknown field",
        "listeners[0].port: must be an integer",
        "server_groups[0].servers[0].weight: must be an integer",
        "surprise: unknown field",
    ]


def test_missing_required_fields():
    data = base()
    del data["listeners"][0]["port"]
    del data["generation"]
    assert sorted(reasons(data)) == ["generation: is required", "listeners[0].port: is required"]


def test_invalid_json():
    with pytest.raises(ConfigError) as caught:
        Snapshot.from_json(b"{")
    assert caught.value.reasons[0].startswith("snapshot: not valid JSON")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"port": 70000}, "listeners[0].port: 70000 is out of range 1-65535"),
        ({"port": 0}, "listeners[0].port: 0 is out of range 1-65535"),
        ({"idle_timeout": 0}, "listeners[0].idle_timeout: 0 is out of range 1-600"),
        ({"idle_timeout": 601}, "listeners[0].idle_timeout: 601 is out of range 1-600"),
        ({"request_timeout": 601}, "listeners[0].request_timeout: 601 is out of range 1-600"),
        (
            {"protocol": "sctp"},
            "listeners[0].protocol: 'sctp' is not one of http, https, tcp, tcp_ssl, udp, quic",
        ),
        (
            {"x_forwarded_for": "append"},
            "listeners[0].x_forwarded_for: 'append' is not one of add, remove, off",
        ),
        (
            {"persistence": {"mode": "insert_cookie", "cookie_timeout": 86401}},
            "listeners[0].persistence.cookie_timeout: 86401 is out of range 1-86400",
        ),
        (
            {"persistence": {"mode": "rewrite_cookie"}},
            "listeners[0].persistence.cookie_name: rewrite_cookie needs a valid cookie name",
        ),
        (
            {"persistence": {"mode": "source_ip"}},
            "listeners[0].persistence.mode: source_ip persistence is for tcp and tcp_ssl listeners",
        ),
        (
            {"server_group_id": "sgp-missing"},
            "listeners[0].server_group_id: no server group 'sgp-missing'",
        ),
        (
            {"acl": {"mode": "whitelist", "acl_id": "acl-none"}},
            "listeners[0].acl.acl_id: no access control list 'acl-none'",
        ),
        (
            {"default_certificate_id": "cert-x"},
            "listeners[0].default_certificate_id: only https and tcp_ssl listeners use TLS",
        ),
        (
            {"retrieve_client_ip": {"enabled": True, "trusted": ["10.0.0.300"]}},
            "listeners[0].retrieve_client_ip.trusted[0]: '10.0.0.300' is not an IP address or "
            "CIDR block",
        ),
        ({"id": "listener-1"}, "listeners[0].id: 'listener-1' must look like lsn-xxxxxxxx"),
        ({"name": "x" * 256}, "listeners[0].name: longer than 255 characters"),
    ],
)
def test_listener_ranges_and_rules(fields, reason):
    assert reason in reasons(with_listener(**fields))


def test_https_needs_an_existing_certificate_and_policy():
    data = with_listener(protocol="https", tls_policy="tls-nope", sni_certificate_ids=["cert-a"])
    found = reasons(data)
    assert "listeners[0].default_certificate_id: https needs one" in found
    assert "listeners[0].sni_certificate_ids[0]: no certificate 'cert-a'" in found
    assert "listeners[0].tls_policy: no TLS policy 'tls-nope'" in found


def test_client_certificate_headers_need_mutual_authentication():
    data = with_listener(
        protocol="https",
        default_certificate_id="cert-a",
        clientcert_subjectdn=True,
    )
    data["certificates"] = [
        {
            "id": "cert-a",
            "certificate_pem": "-----BEGIN CERTIFICATE-----",
            "private_key_pem": "-----BEGIN PRIVATE KEY-----",
        }
    ]
    assert reasons(data) == [
        "listeners[0]: client certificate headers need mutual authentication (ca_certificate_id)"
    ]


def test_tcp_ssl_offers_wrr_and_wlc_only():
    data = base()
    data["server_groups"][0]["backend_protocol"] = "tcp"
    data["listeners"][0].update(
        protocol="tcp_ssl", scheduler="source_ip_hash", default_certificate_id="cert-a"
    )
    data["certificates"] = [
        {
            "id": "cert-a",
            "certificate_pem": "-----BEGIN CERTIFICATE-----",
            "private_key_pem": "-----BEGIN EC PRIVATE KEY-----",
        }
    ]
    assert reasons(data) == [
        "listeners[0].scheduler: 'source_ip_hash' is not one of weighted_round_robin, "
        "weighted_least_connections"
    ]


def test_backend_protocol_must_suit_the_listener():
    data = base()
    data["server_groups"][0]["backend_protocol"] = "tcp"
    assert reasons(data) == [
        "listeners[0].server_group_id: http listeners need http or https server groups, "
        "sgp-web00001 is tcp"
    ]


@pytest.mark.parametrize(
    ("check", "reason"),
    [
        ({"interval": 301}, "server_groups[0].health_check.interval: 301 is out of range 1-300"),
        (
            {"timeout": 61, "interval": 100},
            "server_groups[0].health_check.timeout: 61 is out of range 1-60",
        ),
        (
            {"timeout": 6, "interval": 5},
            "server_groups[0].health_check.timeout: 6 must not exceed the interval 5",
        ),
        (
            {"healthy_threshold": 11},
            "server_groups[0].health_check.healthy_threshold: 11 is out of range 1-10",
        ),
        (
            {"unhealthy_threshold": 0},
            "server_groups[0].health_check.unhealthy_threshold: 0 is out of range 1-10",
        ),
        (
            {"path": "index.html"},
            "server_groups[0].health_check.path: 'index.html' must start with / and have 1-80 "
            "allowed characters",
        ),
        (
            {"path": "/" + "a" * 80},
            "server_groups[0].health_check.path: '/"
            + "a" * 80
            + "' must start with / and have 1-80 allowed characters",
        ),
        (
            {"expected_codes": ["http_6xx"]},
            "server_groups[0].health_check.expected_codes[0]: 'http_6xx' is neither a class such "
            "as http_2xx nor a status code 100-599",
        ),
        (
            {"protocol": "icmp"},
            "server_groups[0].health_check.protocol: 'icmp' is not one of tcp, http, https, udp",
        ),
        (
            {"domain": "bad_domain!"},
            "server_groups[0].health_check.domain: 'bad_domain!' is not a domain name or IP "
            "address",
        ),
    ],
)
def test_health_check_ranges(check, reason):
    data = base()
    data["server_groups"][0]["health_check"] = check
    assert reason in reasons(data)


def test_server_rules():
    data = base()
    data["server_groups"][0]["servers"] = [
        {"id": "srv-1", "address": "10.0.0.1", "port": 8080, "weight": 101},
        {"id": "srv-1", "address": "10.0.0.1", "port": 8080},
        {"id": "srv-3", "address": "not an address", "port": 8080},
    ]
    found = reasons(data)
    assert "server_groups[0].servers[0].weight: 101 is out of range 0-100" in found
    assert "server_groups[0].servers[1].id: duplicate server id 'srv-1'" in found
    assert "server_groups[0].servers[1]: 10.0.0.1:8080 is listed twice" in found
    assert (
        "server_groups[0].servers[2].address: 'not an address' is not an IP address or host"
        in found
    )


def test_duplicate_ids_and_ports():
    data = base()
    data["listeners"].append(copy.deepcopy(data["listeners"][0]))
    found = reasons(data)
    assert "listeners[1].id: duplicate id 'lsn-web00001'" in found
    assert "listeners[1].port: TCP port 80 is already used by http listener lsn-web00001" in found


def test_stopped_listeners_may_share_a_port():
    data = base()
    second = {**data["listeners"][0], "id": "lsn-web00002", "enabled": False}
    data["listeners"].append(second)
    assert len(Snapshot.from_dict(data).listeners) == 2


def test_custom_tls_policy_rules():
    data = base()
    data["tls_policies"] = [
        {
            "id": "tls-custom01",
            "min_version": "TLSv1.3",
            "max_version": "TLSv1.2",
            "ciphers": ["RC4-MD5"],
        },
        {
            "id": "tls_cipher_policy_1_0",
            "min_version": "TLSv1.2",
            "max_version": "TLSv1.3",
            "ciphers": ["AES128-SHA"],
            "tls13_ciphersuites": [],
        },
    ]
    found = reasons(data)
    assert "tls_policies[0].min_version: TLSv1.3 is above max_version" in found
    assert any(r.startswith("tls_policies[0].ciphers[0]: 'RC4-MD5' is not one of") for r in found)
    assert "tls_policies[1].id: 'tls_cipher_policy_1_0' is a predefined policy name" in found
    assert "tls_policies[1].tls13_ciphersuites: at least one is needed for TLSv1.3" in found


def test_certificates_are_pem_without_dh_parameters():
    data = base()
    data["certificates"] = [
        {
            "id": "cert-a",
            "certificate_pem": "hello",
            "private_key_pem": "-----BEGIN ENCRYPTED PRIVATE KEY-----",
        },
        {
            "id": "cert-b",
            "certificate_pem": "-----BEGIN CERTIFICATE-----",
            "private_key_pem": "-----BEGIN PRIVATE KEY-----",
            "chain_pem": "-----BEGIN DH PARAMETERS-----",
        },
    ]
    found = reasons(data)
    assert "certificates[0].certificate_pem: not a PEM certificate" in found
    assert "certificates[0].private_key_pem: not an unencrypted PEM private key" in found
    assert "certificates[1].chain_pem: DH PARAMETERS are not supported" in found


def test_acl_entries_accept_ipv4_and_ipv6_cidrs():
    data = with_listener(acl={"mode": "whitelist", "acl_id": "acl-one00001"})
    data["acls"] = [
        {"id": "acl-one00001", "entries": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7", "nope"]}
    ]
    assert reasons(data) == ["acls[0].entries[3]: 'nope' is not an IP address or CIDR block"]


def test_snapshot_level_fields():
    data = base()
    data.update(instance_id="instance", generation=0, bind_address="localhost")
    found = reasons(data)
    assert "instance_id: 'instance' must look like lb-xxxxxxxx" in found
    assert "generation: 0 must be at least 1" in found
    assert "bind_address: 'localhost' is not an IP address" in found


def test_many_reasons_are_reported_together():
    data = with_listener(port=0, idle_timeout=0, request_timeout=0)
    assert len(reasons(data)) == 3


def test_scheduler_names_match_the_balancing_module():
    assert SCHEDULERS == balancing.ALGORITHMS


def test_certificate_repr_hides_the_private_key():
    data = json.loads((EXAMPLES / "https.json").read_text())
    snapshot = Snapshot.from_dict(fill(data))
    assert "PRIVATE" not in repr(snapshot.certificates[0])
    assert isinstance(snapshot.listeners[0], Listener) and snapshot.listeners[0].mutual_tls
