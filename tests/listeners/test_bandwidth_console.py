"""Seed 000 bandwidth in the console: offered on every protocol, and the caution that a listener
left no share of the instance's bandwidth is inaccessible, shown before and after the change."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from console.snapshot import build_snapshot
from listeners.bandwidth import allocated_mbit, left_without_share
from listeners.models import Listener
from tests.fixtures.listeners import make_listener
from tests.listeners.test_seed_options import UDP_STEP1
from tests.listeners.test_wizard import (
    ADVANCED_DEFAULTS,
    post_step,
    servers_data,
    step_url,
    walk_http_wizard,
)

pytestmark = pytest.mark.django_db


def warnings(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request) if m.level_tag == "warning"]


def test_udp_wizard_offers_bandwidth_and_it_reaches_the_snapshot(admin_client, instance) -> None:
    options = admin_client.get(
        reverse("listener-wizard-options", args=[instance.id]), {"protocol": "udp"}
    )
    assert 'name="bandwidth_mbit"' in options.content.decode()

    post_step(admin_client, instance, "protocol", {**UDP_STEP1, "bandwidth_mbit": "25"})
    post_step(
        admin_client,
        instance,
        "servergroup",
        {"group_mode": "new", "new_group_name": "dns", "new_backend_protocol": "udp"}
        | servers_data([("127.0.0.1", 5300, 100)]),
    )
    post_step(
        admin_client,
        instance,
        "healthcheck",
        {
            "protocol": "udp",
            "interval": "5",
            "timeout": "2",
            "healthy_threshold": "3",
            "unhealthy_threshold": "3",
        },
    )
    confirm = admin_client.get(step_url(instance, "confirm"))
    assert confirm.status_code == 200, confirm.get("Location")
    rows = dict(row for _, _, rows in confirm.context["summary"] for row in rows)
    assert rows["Bandwidth Throttling (Mbit/s)"] == "25"
    admin_client.post(step_url(instance, "confirm"), {"token": confirm.context["token"]})
    listener = Listener.objects.get()
    assert (listener.protocol, listener.bandwidth_mbit) == ("udp", 25)
    assert build_snapshot(instance).listeners[0].bandwidth_mbit == 25


def test_quic_listener_keeps_a_bandwidth_limit_through_modify(
    admin_client, instance, server_group
) -> None:
    quic = make_listener(instance, server_group, protocol="quic", port=443, status="running")
    response = admin_client.post(
        reverse("listener-modify", args=[instance.id, quic.id]),
        {**ADVANCED_DEFAULTS, "bandwidth_mbit": "40"},
    )
    assert response.status_code == 302, response.context and response.context["form"].errors
    quic.refresh_from_db()
    assert quic.bandwidth_mbit == 40


def test_confirm_warns_when_the_new_limit_leaves_another_listener_no_share(
    admin_client, instance, server_group
) -> None:
    instance.bandwidth_mbit = 100
    instance.save()
    make_listener(instance, server_group, port=81, name="api", bandwidth_mbit=60)
    make_listener(instance, server_group, port=82, name="static")
    confirm = walk_http_wizard(admin_client, instance, bandwidth_mbit="40")
    warning = confirm.context["bandwidth_warning"]
    assert warning == (
        "The listeners' bandwidth limits take all of the instance's 100 Mbit/s, so "
        "static (HTTP:82) has no bandwidth left and will be inaccessible until the limits are "
        "lowered."
    )
    assert 'id="bandwidth-warning"' in confirm.content.decode()
    created = admin_client.post(
        step_url(instance, "confirm"), {"token": confirm.context["token"], "action": "submit"}
    )
    assert created.status_code == 302
    assert warnings(created) == [warning]


def test_confirm_warns_about_the_new_listener_itself(admin_client, instance, server_group) -> None:
    instance.bandwidth_mbit = 50
    instance.save()
    make_listener(instance, server_group, port=81, bandwidth_mbit=50)
    confirm = walk_http_wizard(admin_client, instance)
    assert "web (HTTP:80) has no bandwidth left" in confirm.context["bandwidth_warning"]


def test_no_warning_while_bandwidth_is_left(admin_client, instance, server_group) -> None:
    instance.bandwidth_mbit = 100
    instance.save()
    make_listener(instance, server_group, port=81, bandwidth_mbit=60)
    confirm = walk_http_wizard(admin_client, instance, bandwidth_mbit="30")
    assert confirm.context["bandwidth_warning"] == ""
    assert 'id="bandwidth-warning"' not in confirm.content.decode()
    # Every listener with its own limit and the bandwidth used up: nobody is cut off.
    make_listener(instance, server_group, port=82, bandwidth_mbit=40)
    listener = Listener.objects.get(port=82)
    assert left_without_share(instance, listener=listener, limit=40, name="x") == []


def test_modify_warns_after_taking_the_last_share(admin_client, instance, server_group) -> None:
    instance.bandwidth_mbit = 20
    instance.save()
    limited = make_listener(instance, server_group, port=81, status="running", bandwidth_mbit=5)
    make_listener(instance, server_group, port=82, name="b", protocol="tcp")
    page = admin_client.get(reverse("listener-modify", args=[instance.id, limited.id]))
    assert "of which other listeners' limits take 0 Mbit/s" in page.content.decode()
    response = admin_client.post(
        reverse("listener-modify", args=[instance.id, limited.id]),
        {**ADVANCED_DEFAULTS, "bandwidth_mbit": "20"},
    )
    assert response.status_code == 302
    assert warnings(response) == [
        "The listeners' bandwidth limits take all of the instance's 20 Mbit/s, so b (TCP:82) "
        "has no bandwidth left and will be inaccessible until the limits are lowered."
    ]
    assert allocated_mbit(instance) == 20


def test_quick_create_on_a_fully_allocated_instance_warns(
    admin_client, instance, server_group
) -> None:
    instance.bandwidth_mbit = 10
    instance.save()
    make_listener(instance, server_group, port=81, bandwidth_mbit=10)
    response = admin_client.post(
        reverse("listener-quick-create", args=[instance.id]),
        {
            "protocol": "http",
            "port": "8080",
            "server_group": server_group.id,
            "tls_policy": "tls_cipher_policy_1_0",
        },
    )
    assert response.status_code == 302
    assert warnings(response) == [
        "The listeners' bandwidth limits take all of the instance's 10 Mbit/s, so HTTP_8080 "
        "(HTTP:8080) has no bandwidth left and will be inaccessible until the limits are lowered."
    ]


def test_detail_page_says_how_a_listener_without_a_limit_is_served(
    admin_client, instance, server_group
) -> None:
    listener = make_listener(instance, server_group, port=81, status="running")
    page = admin_client.get(listener.get_absolute_url()).content.decode()
    assert "<dd>No limit</dd>" in page
    instance.bandwidth_mbit = 50
    instance.save()
    page = admin_client.get(listener.get_absolute_url()).content.decode()
    assert "shares what the other listeners' limits leave of the instance's 50 Mbit/s" in page
