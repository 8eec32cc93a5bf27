"""Options from the rest of the seeds, in the console: UDP, QUIC, compression, bandwidth,
slow start. Traffic through them is tested in tests/dataplane and tests/e2e."""

from __future__ import annotations

import pytest
from django.urls import reverse

from console.snapshot import build_snapshot
from listeners.models import HealthCheck, Listener, ServerGroup
from tests.fixtures.listeners import make_listener
from tests.listeners.test_wizard import (
    ADVANCED_DEFAULTS,
    post_step,
    servers_data,
    step_url,
    upload_server_cert,
)

pytestmark = pytest.mark.django_db

UDP_STEP1 = {
    "protocol": "udp",
    "port": "5353",
    "scheduler": "weighted_round_robin",
    "persistence": "none",
    "acl_mode": "off",
    "idle_timeout": "60",
}


def test_udp_wizard_creates_a_udp_group_and_udp_health_check(admin_client, instance) -> None:
    assert post_step(admin_client, instance, "protocol", UDP_STEP1).status_code == 302
    form = admin_client.get(step_url(instance, "servergroup")).context["form"]
    assert [value for value, _ in form.fields["new_backend_protocol"].choices] == ["udp"]
    response = post_step(
        admin_client,
        instance,
        "servergroup",
        {"group_mode": "new", "new_group_name": "dns", "new_backend_protocol": "udp"}
        | servers_data([("127.0.0.1", 5300, 100)]),
    )
    assert response["Location"] == step_url(instance, "healthcheck")
    check_form = admin_client.get(step_url(instance, "healthcheck")).context["form"]
    assert [value for value, _ in check_form.fields["protocol"].choices] == ["udp"]
    post_step(
        admin_client,
        instance,
        "healthcheck",
        {
            "enabled": "on",
            "protocol": "udp",
            "interval": "5",
            "timeout": "2",
            "healthy_threshold": "3",
            "unhealthy_threshold": "3",
            "udp_request": "ping",
            "udp_expected": "pong",
        },
    )
    confirm = admin_client.get(step_url(instance, "confirm"))
    assert confirm.status_code == 200, confirm.get("Location")
    admin_client.post(step_url(instance, "confirm"), {"token": confirm.context["token"]})
    listener = Listener.objects.get()
    assert listener.protocol == "udp" and listener.server_group.backend_protocol == "udp"
    check = listener.server_group.health_check
    assert (check.protocol, check.udp_request, check.udp_expected) == ("udp", "ping", "pong")
    snapshot = build_snapshot(instance)
    assert snapshot.server_groups[0].health_check.udp_request == "ping"


def test_udp_may_share_a_port_number_with_tcp_but_not_with_quic(
    admin_client, instance, server_group
) -> None:
    make_listener(instance, server_group, protocol="tcp", port=5353)
    assert post_step(admin_client, instance, "protocol", UDP_STEP1).status_code == 302
    udp_group = ServerGroup.objects.create(name="u", backend_protocol="udp")
    make_listener(instance, udp_group, protocol="quic", port=4433)
    response = post_step(admin_client, instance, "protocol", {**UDP_STEP1, "port": "4433"})
    assert (
        "Listeners carried over UDP cannot share a port"
        in response.context["form"].errors["port"][0]
    )


def test_udp_has_no_http_options(admin_client, instance) -> None:
    response = post_step(
        admin_client, instance, "protocol", {**UDP_STEP1, "persistence": "source_ip"}
    )
    assert "persistence" in response.context["form"].errors


def test_quic_needs_only_a_server_certificate(admin_client, instance) -> None:
    certificate = upload_server_cert(admin_client)
    post_step(
        admin_client, instance, "protocol", {**ADVANCED_DEFAULTS, "protocol": "quic", "port": "443"}
    )
    form = admin_client.get(step_url(instance, "certificate")).context["form"]
    assert set(form.fields) == {"default_certificate"}
    response = post_step(
        admin_client, instance, "certificate", {"default_certificate": certificate.id}
    )
    assert response["Location"] == step_url(instance, "servergroup")


def test_https_quic_upgrade_and_compression_reach_the_snapshot(
    admin_client, instance, server_group
) -> None:
    certificate = upload_server_cert(admin_client)
    quic = make_listener(
        instance,
        server_group,
        protocol="quic",
        port=443,
        default_certificate=certificate,
        status="running",
    )
    https = make_listener(
        instance,
        server_group,
        protocol="https",
        port=443,
        default_certificate=certificate,
        tls_policy_id="tls_cipher_policy_1_0",
        status="running",
    )
    response = admin_client.post(
        reverse("listener-modify", args=[instance.id, https.id]),
        {
            **ADVANCED_DEFAULTS,
            "name": "shop",
            "compression": "brotli_gzip",
            "quic_listener": quic.id,
            "bandwidth_mbit": "20",
        },
    )
    assert response.status_code == 302, response.context["form"].errors
    https.refresh_from_db()
    assert (https.compression, https.quic_listener, https.bandwidth_mbit) == (
        "brotli_gzip",
        quic,
        20,
    )
    snapshot = build_snapshot(instance)
    listener = next(item for item in snapshot.listeners if item.id == https.id)
    assert (listener.compression, listener.quic_listener_id, listener.bandwidth_mbit) == (
        "brotli_gzip",
        quic.id,
        20,
    )


def test_compression_is_refused_quietly_on_tcp(admin_client, instance) -> None:
    data = {**ADVANCED_DEFAULTS, "protocol": "tcp", "port": "9000", "compression": "gzip"}
    post_step(admin_client, instance, "protocol", data)
    form = admin_client.get(step_url(instance, "protocol")).context["form"]
    assert form.is_valid() and form.cleaned_data["compression"] == "off"


def test_bandwidth_may_not_exceed_the_instance(admin_client, instance, server_group) -> None:
    instance.bandwidth_mbit = 100
    instance.save()
    make_listener(instance, server_group, port=80, bandwidth_mbit=80)
    response = post_step(
        admin_client,
        instance,
        "protocol",
        {**ADVANCED_DEFAULTS, "protocol": "http", "port": "81", "bandwidth_mbit": "30"},
    )
    assert (
        "110 Mbit/s in all, more than the instance's 100 Mbit/s"
        in (response.context["form"].errors["bandwidth_mbit"][0])
    )


def test_slow_start_needs_wrr_or_wlc(admin_client, instance, server_group) -> None:
    server_group.slow_start = True
    server_group.save()
    post_step(
        admin_client,
        instance,
        "protocol",
        {**ADVANCED_DEFAULTS, "protocol": "http", "port": "80", "scheduler": "round_robin"},
    )
    response = post_step(
        admin_client,
        instance,
        "servergroup",
        {"group_mode": "existing", "server_group": server_group.id},
    )
    assert "Slow start works only with" in response.context["form"].errors["server_group"][0]


def test_slow_start_reaches_the_snapshot(admin_client, instance, server_group) -> None:
    response = admin_client.post(
        reverse("servergroup-edit", args=[server_group.id]),
        {
            "name": server_group.name,
            "backend_protocol": "http",
            "slow_start": "on",
            "slow_start_duration": "120",
        }
        | servers_data([("127.0.0.1", 8081, 100)]),
    )
    assert response.status_code == 302, response.context and response.context["form"].errors
    make_listener(instance, server_group, port=80)
    group = build_snapshot(instance).server_groups[0]
    assert (group.slow_start, group.slow_start_duration) == (True, 120)


def test_udp_health_check_text_must_be_printable(admin_client, instance) -> None:
    udp_group = ServerGroup.objects.create(name="u", backend_protocol="udp")
    HealthCheck.objects.create(group=udp_group, protocol="udp")
    listener = make_listener(instance, udp_group, protocol="udp", port=53, status="running")
    response = admin_client.post(
        reverse("listener-health-check", args=[instance.id, listener.id]),
        {
            "enabled": "on",
            "protocol": "udp",
            "interval": "5",
            "timeout": "2",
            "healthy_threshold": "3",
            "unhealthy_threshold": "3",
            "udp_request": "caf\u00e9",
        },
    )
    assert response.status_code == 422
    assert "printable ASCII" in response.context["form"].errors["udp_request"][0]


def test_proxy_protocol_only_for_tcp_listeners(admin_client, instance) -> None:
    tcp = {
        "protocol": "tcp",
        "port": "9000",
        "scheduler": "weighted_round_robin",
        "persistence": "none",
        "acl_mode": "off",
        "idle_timeout": "15",
        "proxy_protocol": "v2",
    }
    post_step(admin_client, instance, "protocol", tcp)
    form = admin_client.get(step_url(instance, "protocol")).context["form"]
    assert form.is_valid() and form.cleaned_data["proxy_protocol"] == "v2"
    post_step(
        admin_client,
        instance,
        "protocol",
        {**ADVANCED_DEFAULTS, "protocol": "http", "port": "80", "proxy_protocol": "v2"},
    )
    form = admin_client.get(step_url(instance, "protocol")).context["form"]
    assert form.cleaned_data["proxy_protocol"] == "off"


def test_backend_ca_only_for_https_groups(admin_client) -> None:
    from tests.listeners.test_wizard import upload_ca

    ca = upload_ca(admin_client)
    response = admin_client.post(
        reverse("servergroup-create"),
        {"name": "plain", "backend_protocol": "http", "backend_ca_certificate": ca.id}
        | servers_data([("127.0.0.1", 8443, 100)]),
    )
    assert response.status_code == 422
    assert "Only HTTPS backends" in response.context["form"].errors["backend_ca_certificate"][0]
    response = admin_client.post(
        reverse("servergroup-create"),
        {"name": "tls", "backend_protocol": "https", "backend_ca_certificate": ca.id}
        | servers_data([("127.0.0.1", 8443, 100)]),
    )
    assert response.status_code == 302
    assert ServerGroup.objects.get(name="tls").backend_ca_certificate == ca
