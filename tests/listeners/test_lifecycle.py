"""Listener details and lifecycle actions (seed 003)."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from listeners.models import Listener, ServerGroup
from tests.fixtures.listeners import make_listener
from tests.listeners.test_wizard import ADVANCED_DEFAULTS, upload_server_cert

pytestmark = pytest.mark.django_db


def url(name: str, listener: Listener) -> str:
    return reverse(name, args=[listener.instance_id, listener.id])


@pytest.fixture
def running(instance, server_group) -> Listener:
    return make_listener(instance, server_group, port=80, status=Listener.Status.RUNNING)


@pytest.fixture
def configuring(instance, server_group) -> Listener:
    return make_listener(instance, server_group, port=81)


def test_details_page_has_every_section(admin_client: Client, running: Listener) -> None:
    page = admin_client.get(running.get_absolute_url())
    assert page.status_code == 200
    for heading in (b"Basic Information", b"Server Group", b"Health Check", b"Status"):
        assert heading in page.content
    assert b"SSL Certificates" not in page.content  # HTTP listener


def test_modify_changes_settings_but_not_protocol_or_port(
    admin_client: Client, running: Listener
) -> None:
    response = admin_client.post(
        url("listener-modify", running),
        {
            **ADVANCED_DEFAULTS,
            "name": "renamed",
            "idle_timeout": "30",
            "protocol": "https",
            "port": "9999",
            "tags": "env=prod",
        },
    )
    assert response.status_code == 302
    running.refresh_from_db()
    assert (running.name, running.idle_timeout, running.tags) == (
        "renamed",
        30,
        [{"key": "env", "value": "prod"}],
    )
    assert (running.protocol, running.port) == ("http", 80)
    assert running.status == Listener.Status.CONFIGURING


@pytest.mark.parametrize(
    "action", ["listener-modify", "listener-delete", "listener-server-group", "listener-stop"]
)
def test_actions_are_refused_while_configuring(
    admin_client: Client, configuring: Listener, action: str
) -> None:
    response = admin_client.post(url(action, configuring), {**ADVANCED_DEFAULTS, "name": "x"})
    assert response.status_code == 302
    assert Listener.objects.filter(pk=configuring.pk, name=configuring.name).exists()
    page = admin_client.get(configuring.get_absolute_url())
    assert b"is Configuring" in page.content


def test_refusal_inside_htmx_dialog(admin_client: Client, configuring: Listener) -> None:
    response = admin_client.get(url("listener-delete", configuring), headers={"HX-Request": "true"})
    assert response.status_code == 409
    assert b"is Configuring" in response.content


def test_stop_warns_and_start_restores(admin_client: Client, running: Listener) -> None:
    dialog = admin_client.get(url("listener-stop", running))
    assert b"interrupts all active connections" in dialog.content
    admin_client.post(url("listener-stop", running))
    running.refresh_from_db()
    assert running.desired_state == "stopped" and running.status == "configuring"
    Listener.objects.filter(pk=running.pk).update(status="stopped")
    admin_client.post(url("listener-start", running))
    running.refresh_from_db()
    assert running.desired_state == "running"


def test_delete(admin_client: Client, running: Listener, instance) -> None:
    generation = instance.generation
    response = admin_client.post(url("listener-delete", running))
    assert response.status_code == 302
    assert not Listener.objects.filter(pk=running.pk).exists()
    instance.refresh_from_db()
    assert instance.generation == generation + 1


def test_change_server_group_only_to_a_compatible_group(
    admin_client: Client, running: Listener
) -> None:
    tcp_group = ServerGroup.objects.create(name="tcp", backend_protocol="tcp")
    http_group = ServerGroup.objects.create(name="other-http", backend_protocol="http")
    refused = admin_client.post(
        url("listener-server-group", running), {"server_group": tcp_group.id}
    )
    assert refused.status_code == 422
    admin_client.post(url("listener-server-group", running), {"server_group": http_group.id})
    running.refresh_from_db()
    assert running.server_group == http_group


def test_manage_certificates_and_tls_policy(admin_client: Client, instance, server_group) -> None:
    first = upload_server_cert(admin_client, "ec-p256", name="first")
    second = upload_server_cert(admin_client, "rsa-2048", name="second")
    listener = make_listener(
        instance,
        server_group,
        port=443,
        protocol="https",
        default_certificate=first,
        tls_policy_id="tls_cipher_policy_1_0",
        status="running",
    )
    response = admin_client.post(
        url("listener-certificates", listener),
        {"default_certificate": first.id, "additional_certificates": [second.id]},
    )
    assert response.status_code == 302
    assert list(listener.additional_certificates.all()) == [second]
    Listener.objects.filter(pk=listener.pk).update(status="running")
    response = admin_client.post(
        url("listener-tls-policy", listener), {"tls_policy": "tls_cipher_policy_1_2_strict"}
    )
    assert response.status_code == 302
    listener.refresh_from_db()
    assert listener.tls_policy_id == "tls_cipher_policy_1_2_strict"
    # A certificate in use cannot be deleted; the refusal names the listener.
    refusal = admin_client.post(reverse("certificate-delete", args=[second.id]))
    assert refusal.status_code == 409
    assert listener.name.encode() in refusal.content


def test_health_check_modify(admin_client: Client, running: Listener) -> None:
    response = admin_client.post(
        url("listener-health-check", running),
        {
            "enabled": "on",
            "protocol": "tcp",
            "interval": "10",
            "timeout": "3",
            "healthy_threshold": "2",
            "unhealthy_threshold": "4",
        },
    )
    assert response.status_code == 302
    check = running.server_group.health_check
    check.refresh_from_db()
    assert (check.interval, check.timeout, check.unhealthy_threshold) == (10, 3, 4)


def test_status_polling_slows_once_settled(admin_client: Client, running, configuring) -> None:
    polling = admin_client.get(url("listener-status", configuring), headers={"HX-Request": "true"})
    assert polling.status_code == 200
    assert b"Configuring" in polling.content
    assert b'hx-trigger="every 1s"' in polling.content
    # A settled listener is still watched, more slowly: a node may fail or heal later.
    settled = admin_client.get(url("listener-status", running), headers={"HX-Request": "true"})
    assert settled.status_code == 200
    assert b"Running" in settled.content
    assert b'hx-trigger="every 5s"' in settled.content


def test_tab_filters_by_tag(admin_client: Client, instance, server_group) -> None:
    make_listener(
        instance, server_group, port=80, name="tagged", tags=[{"key": "env", "value": "prod"}]
    )
    make_listener(instance, server_group, port=81, name="untagged")
    page = admin_client.get(reverse("instance-listeners", args=[instance.id]), {"tag": "env=prod"})
    body = page.content.split(b"<tbody>")[1]
    assert b"tagged" in body and b"untagged" not in body


def test_viewer_sees_details_but_cannot_stop(viewer_client: Client, running: Listener) -> None:
    assert viewer_client.get(running.get_absolute_url()).status_code == 200
    assert viewer_client.post(url("listener-stop", running)).status_code == 403
    running.refresh_from_db()
    assert running.desired_state == "running"
