"""A new server group's health check speaks its backends' protocol, however the group is made.

An HTTP group checked over TCP keeps a server that hangs or answers 500 in rotation; the
Server Groups page, the wizard and the service all start from ``services.default_health_check``.
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from console.models import Instance
from listeners import services
from listeners.models import HealthCheck, Listener, ServerGroup
from tests.listeners.test_servergroups import group_data
from tests.listeners.test_wizard import ADVANCED_DEFAULTS, post_step, servers_data, step_url

pytestmark = pytest.mark.django_db

EXPECTED = [
    ("http", "http"),
    ("https", "https"),
    # A gRPC server answers only HTTP/2, which the HTTP probe does not speak.
    ("grpc", "tcp"),
    ("tcp", "tcp"),
    ("udp", "udp"),
]


@pytest.mark.parametrize(("backend", "check"), EXPECTED)
def test_server_groups_page(admin_client: Client, backend: str, check: str) -> None:
    response = admin_client.post(
        reverse("servergroup-create"),
        group_data(("192.0.2.10", 8080, 100), name=f"{backend}-pool", protocol=backend),
    )
    assert response.status_code == 302, response.context["form"].errors
    group = ServerGroup.objects.get(name=f"{backend}-pool")
    health = HealthCheck.objects.get(group=group)
    assert (health.protocol, health.path, health.expected_codes) == (
        check,
        "/",
        ["http_2xx", "http_3xx"],
    )


@pytest.mark.parametrize(("backend", "check"), EXPECTED)
def test_service_without_health_check_values(backend: str, check: str) -> None:
    group = services.create_server_group(
        name="pool", backend_protocol=backend, servers=[{"address": "192.0.2.10", "port": 80}]
    )
    assert group.health_check.protocol == check


@pytest.mark.parametrize(
    ("listener", "backend", "check"),
    [("http", "http", "http"), ("http", "https", "https"), ("tcp", "tcp", "tcp")],
)
def test_wizard_with_the_health_check_step_unvisited(
    admin_client: Client, instance: Instance, listener: str, backend: str, check: str
) -> None:
    port = "80" if listener == "http" else "9000"
    post_step(
        admin_client,
        instance,
        "protocol",
        {"protocol": listener, "port": port, "name": "web", **ADVANCED_DEFAULTS},
    )
    response = post_step(
        admin_client,
        instance,
        "servergroup",
        {"group_mode": "new", "new_group_name": "pool", "new_backend_protocol": backend}
        | servers_data([("192.0.2.10", 8080, 100)]),
    )
    assert response["Location"] == step_url(instance, "healthcheck")
    # The step the operator skips offers the same default as the one saved.
    offered = admin_client.get(step_url(instance, "healthcheck"))
    assert offered.context["form"]["protocol"].value() == check
    confirm = admin_client.get(step_url(instance, "confirm"))
    assert confirm.status_code == 200, confirm.get("Location")
    admin_client.post(step_url(instance, "confirm"), {"token": confirm.context["token"]})
    assert Listener.objects.get().server_group.health_check.protocol == check
