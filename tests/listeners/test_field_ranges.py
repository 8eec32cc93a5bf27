"""Number fields state their range to the browser (min/max) and name it in the server's message."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from console.models import Instance
from listeners.forms.listener import HealthCheckForm, ProtocolListenerForm, QuickCreateForm
from listeners.forms.rules import ForwardingRuleForm
from listeners.forms.servergroups import ServerGroupForm
from listeners.models import ServerGroup
from tests.fixtures.listeners import make_listener

pytestmark = pytest.mark.django_db

HEALTH_CHECK = {
    "enabled": "on",
    "protocol": "http",
    "path": "/",
    "interval": "5",
    "timeout": "2",
    "healthy_threshold": "3",
    "unhealthy_threshold": "3",
    "expected_codes": ["http_2xx"],
}


@pytest.mark.parametrize(
    ("field", "low", "high", "message"),
    [
        ("interval", 1, 300, "Health Check Interval must be 1-300 s."),
        ("timeout", 1, 60, "Response Timeout must be 1-60 s."),
        ("healthy_threshold", 2, 10, "Healthy Threshold must be 2-10."),
        ("unhealthy_threshold", 1, 10, "Unhealthy Threshold must be 1-10."),
        ("port", 1, 65535, "Health Check Port must be 1-65535."),
    ],
)
def test_health_check_numbers_carry_the_seed_ranges(field, low, high, message) -> None:
    rendered = str(HealthCheckForm()[field])
    assert f'min="{low}"' in rendered
    assert f'max="{high}"' in rendered

    for value in (low - 1, high + 1):
        form = HealthCheckForm(data={**HEALTH_CHECK, field: str(value)})
        assert not form.is_valid()
        assert form.errors[field] == [message]


def test_the_health_check_dialog_renders_the_interval_range(
    admin_client: Client, instance: Instance, server_group: ServerGroup
) -> None:
    listener = make_listener(instance, server_group, status="running")
    url = reverse("listener-health-check", args=[instance.id, listener.id])

    page = admin_client.get(url).content.decode()

    assert 'name="interval" value="5" min="1" max="300"' in page
    response = admin_client.post(url, {**HEALTH_CHECK, "interval": "500"})
    assert "Health Check Interval must be 1-300 s." in response.content.decode()


def test_listener_and_quick_create_numbers_name_their_range(instance: Instance) -> None:
    form = ProtocolListenerForm(
        data={"protocol": "http", "port": "0", "idle_timeout": "900"}, instance=instance
    )
    assert not form.is_valid()
    assert form.errors["port"] == ["Listener Port must be 1-65535."]
    assert form.errors["idle_timeout"] == ["Idle Connection Timeout Period must be 1-600 s."]

    quick = QuickCreateForm(instance=instance)
    assert 'min="1" max="65535"' in str(quick["port"])


def test_the_server_group_form_states_the_slow_start_range() -> None:
    assert 'min="30" max="1200"' in str(ServerGroupForm()["slow_start_duration"])
    form = ServerGroupForm(
        data={
            "name": "pool",
            "backend_protocol": "http",
            "slow_start": "on",
            "slow_start_duration": "5",
        }
    )
    assert not form.is_valid()
    assert form.errors["slow_start_duration"] == ["Slow Start Duration must be 30-1200 s."]


def test_the_forwarding_rule_redirect_port_names_its_range(
    instance: Instance, server_group: ServerGroup
) -> None:
    listener = make_listener(instance, server_group)
    form = ForwardingRuleForm(listener=listener)
    assert 'min="1" max="65535"' in str(form["redirect_port"])
    form = ForwardingRuleForm(data={"redirect_port": "70000"}, listener=listener)
    assert not form.is_valid()
    assert form.errors["redirect_port"] == ["Redirect Port must be 1-65535."]
