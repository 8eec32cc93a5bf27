"""Forwarding Rules on the listener details page (seed 002 advanced forwarding)."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from listeners.models import ForwardingRule, Listener, ServerGroup
from tests.fixtures.listeners import make_listener

pytestmark = pytest.mark.django_db


@pytest.fixture
def listener(instance, server_group) -> Listener:
    return make_listener(instance, server_group, port=80, status="running")


def rule_url(name: str, listener: Listener, *args) -> str:
    return reverse(name, args=[listener.instance_id, listener.id, *args])


def test_add_forward_rule(admin_client: Client, listener: Listener) -> None:
    api = ServerGroup.objects.create(name="api", backend_protocol="http")
    response = admin_client.post(
        rule_url("listener-rule-create", listener),
        {
            "name": "api",
            "path": "/api/",
            "path_match": "prefix",
            "methods": ["GET", "POST"],
            "action": "forward",
            "server_group": api.id,
        },
    )
    assert response.status_code == 302, response.context["form"].errors
    rule = ForwardingRule.objects.get()
    assert rule.conditions == [
        {"type": "path", "values": ["/api/"], "match": "prefix"},
        {"type": "method", "values": ["GET", "POST"]},
    ]
    assert rule.server_group == api
    listener.refresh_from_db()
    assert listener.status == "configuring"
    assert b"Forwarding Rules" in admin_client.get(listener.get_absolute_url()).content


def test_redirect_and_fixed_response_rules_are_checked(admin_client, listener) -> None:
    loop = admin_client.post(
        rule_url("listener-rule-create", listener),
        {"host": "example.com", "path_match": "prefix", "action": "redirect", "status_code": "301"},
    )
    assert loop.status_code == 422
    assert loop.context["form"].non_field_errors()
    ok = admin_client.post(
        rule_url("listener-rule-create", listener),
        {
            "host": "example.com",
            "path_match": "prefix",
            "action": "redirect",
            "status_code": "301",
            "redirect_protocol": "https",
        },
    )
    assert ok.status_code == 302
    Listener.objects.filter(pk=listener.pk).update(status="running")
    bad_status = admin_client.post(
        rule_url("listener-rule-create", listener),
        {
            "path": "/maintenance",
            "path_match": "exact",
            "action": "fixed_response",
            "status_code": "302",
            "content_type": "text/plain",
            "body": "down",
        },
    )
    assert bad_status.status_code == 422


def test_a_rule_needs_a_condition(admin_client, listener) -> None:
    response = admin_client.post(
        rule_url("listener-rule-create", listener), {"path_match": "prefix", "action": "forward"}
    )
    assert "Add at least one condition." in response.context["form"].non_field_errors()


def test_reorder_and_delete(admin_client, listener) -> None:
    first = ForwardingRule.objects.create(
        listener=listener,
        position=0,
        name="a",
        action="fixed_response",
        conditions=[{"type": "path", "values": ["/a"], "match": "prefix"}],
    )
    second = ForwardingRule.objects.create(
        listener=listener,
        position=1,
        name="b",
        action="fixed_response",
        conditions=[{"type": "path", "values": ["/b"], "match": "prefix"}],
    )
    admin_client.post(rule_url("listener-rule-move", listener, second.pk, "up"))
    assert list(listener.rules.values_list("name", flat=True)) == ["b", "a"]
    Listener.objects.filter(pk=listener.pk).update(status="running")
    admin_client.post(rule_url("listener-rule-delete", listener, first.pk))
    assert list(listener.rules.values_list("name", flat=True)) == ["b"]


def test_rules_only_on_http_listeners(admin_client, instance) -> None:
    tcp_group = ServerGroup.objects.create(name="t", backend_protocol="tcp")
    tcp = make_listener(instance, tcp_group, protocol="tcp", port=9000, status="running")
    assert admin_client.get(rule_url("listener-rule-create", tcp)).status_code == 404


def test_viewer_cannot_add_rules(viewer_client, listener) -> None:
    response = viewer_client.post(
        rule_url("listener-rule-create", listener), {"path": "/x", "action": "forward"}
    )
    assert response.status_code == 403
    assert not ForwardingRule.objects.exists()


def test_rules_and_their_groups_reach_the_snapshot(admin_client, instance, listener) -> None:
    from console.snapshot import build_snapshot
    from dataplane.config import Snapshot

    api = ServerGroup.objects.create(name="api", backend_protocol="http")
    admin_client.post(
        rule_url("listener-rule-create", listener),
        {"path": "/api/", "path_match": "prefix", "action": "forward", "server_group": api.id},
    )
    snapshot = Snapshot.from_json(build_snapshot(instance).to_json())
    rule = snapshot.listeners[0].forwarding_rules[0]
    assert rule.action.server_group_id == api.id
    assert rule.conditions[0].values == ("/api/",)
    assert api.id in {group.id for group in snapshot.server_groups}


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"path": "api", "action": "forward"}, "path", "must start with /"),
        ({"path": "/a", "action": "forward"}, "server_group", "choose a server group"),
        (
            {"path": "/a", "action": "fixed_response", "status_code": "302"},
            "status_code",
            "302 is not a 2xx, 4xx or 5xx code",
        ),
        (
            {"path": "/a", "action": "redirect", "redirect_protocol": "https"}
            | {"redirect_path": "x"},
            "redirect_path",
            "must start with / or ${path}",
        ),
        ({"header_name": "bad header", "action": "forward"}, "header_name", "is not a header"),
        ({"source_ip": "10.0.0.300", "action": "forward"}, "source_ip", "not an IP address"),
        ({"host": "bad!host", "action": "forward"}, "host", ""),
    ],
)
def test_rule_problems_show_next_to_their_field(
    admin_client, listener, fields, field, message
) -> None:
    response = admin_client.post(
        rule_url("listener-rule-create", listener), {"path_match": "prefix", **fields}
    )
    assert response.status_code == 422
    form = response.context["form"]
    assert not form.non_field_errors()
    assert message in form.errors[field][0]
    assert not ForwardingRule.objects.exists()
