"""The console side of HTTP/2 and gRPC server groups (seeds 000, 001, 003) and of seed 002's
request and response timeouts: which options are offered, the rules that tie them together,
and what reaches the snapshot."""

from __future__ import annotations

import pytest
from django.test import Client

from console.snapshot import build_snapshot
from listeners.forms.listener import HealthCheckForm
from listeners.models import BackendServer, HealthCheck, Listener, ServerGroup
from tests.fixtures.listeners import make_listener
from tests.listeners.test_lifecycle import url
from tests.listeners.test_wizard import (
    ADVANCED_DEFAULTS,
    post_step,
    servers_data,
    step_url,
    upload_server_cert,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def grpc_group() -> ServerGroup:
    group = ServerGroup.objects.create(name="rpc", backend_protocol="grpc")
    BackendServer.objects.create(group=group, address="127.0.0.1", port=50051, weight=100)
    HealthCheck.objects.create(group=group, protocol="tcp")
    return group


def https_listener(admin_client, instance, group, **fields) -> Listener:
    cert = upload_server_cert(admin_client)
    fields.setdefault("status", Listener.Status.RUNNING)
    return make_listener(
        instance,
        group,
        port=443,
        protocol="https",
        default_certificate=cert,
        tls_policy_id="tls_cipher_policy_1_0",
        **fields,
    )


def test_http2_is_offered_on_https_only_and_on_by_default(admin_client: Client, instance):
    page = admin_client.get(step_url(instance, "protocol") + "?protocol=https")
    assert page.context["form"]["http2"].initial is True
    https = post_step(
        admin_client,
        instance,
        "protocol",
        {"protocol": "https", "port": "443", **ADVANCED_DEFAULTS},
    )
    assert https.status_code == 302
    # A crafted POST cannot turn HTTP/2 on for HTTP: the option does not apply and is reset.
    form_data = {"protocol": "http", "port": "80", "http2": "on", **ADVANCED_DEFAULTS}
    post_step(admin_client, instance, "protocol", form_data)
    post_step(
        admin_client,
        instance,
        "servergroup",
        {"group_mode": "new", "new_group_name": "web", "new_backend_protocol": "http"}
        | servers_data([("127.0.0.1", 9000, 100)]),
    )
    confirm = admin_client.get(step_url(instance, "confirm"))
    admin_client.post(step_url(instance, "confirm"), {"token": confirm.context["token"]})
    listener = Listener.objects.get()
    assert listener.protocol == "http" and listener.http2 is False


def test_wizard_refuses_a_grpc_group_without_http2(admin_client: Client, instance, grpc_group):
    cert = upload_server_cert(admin_client)
    settings = {"protocol": "https", "port": "443", **ADVANCED_DEFAULTS, "compression": "gzip"}
    post_step(admin_client, instance, "protocol", settings)  # no "http2": the box is unticked
    post_step(
        admin_client,
        instance,
        "certificate",
        {"default_certificate": cert.id, "tls_policy": "tls_cipher_policy_1_0"},
    )
    refused = post_step(
        admin_client,
        instance,
        "servergroup",
        {"group_mode": "existing", "server_group": grpc_group.id},
    )
    assert refused.status_code == 422
    errors = refused.context["form"].errors["server_group"]
    assert any("need HTTP/2" in error for error in errors)
    assert any("compresses its own messages" in error for error in errors)

    post_step(admin_client, instance, "protocol", {**settings, "http2": "on", "compression": "off"})
    accepted = post_step(
        admin_client,
        instance,
        "servergroup",
        {"group_mode": "existing", "server_group": grpc_group.id},
    )
    assert accepted.status_code == 302


def test_a_new_grpc_group_is_checked_over_tcp(admin_client: Client, instance):
    form = HealthCheckForm(backend_protocol="grpc")
    assert [value for value, _ in form.fields["protocol"].choices] == ["tcp"]
    cert = upload_server_cert(admin_client)
    post_step(
        admin_client,
        instance,
        "protocol",
        {"protocol": "https", "port": "443", "http2": "on", **ADVANCED_DEFAULTS},
    )
    post_step(
        admin_client,
        instance,
        "certificate",
        {"default_certificate": cert.id, "tls_policy": "tls_cipher_policy_1_0"},
    )
    post_step(
        admin_client,
        instance,
        "servergroup",
        {"group_mode": "new", "new_group_name": "rpc", "new_backend_protocol": "grpc"}
        | servers_data([("127.0.0.1", 50051, 100)]),
    )
    refused = post_step(
        admin_client,
        instance,
        "healthcheck",
        {
            "enabled": "on",
            "protocol": "http",
            "interval": "5",
            "timeout": "2",
            "healthy_threshold": "3",
            "unhealthy_threshold": "3",
        },
    )
    assert refused.status_code == 422
    assert "protocol" in refused.context["form"].errors


def test_modify_cannot_turn_http2_off_under_a_grpc_group(
    admin_client: Client, instance, grpc_group
):
    listener = https_listener(admin_client, instance, grpc_group, http2=True)
    refused = admin_client.post(url("listener-modify", listener), {**ADVANCED_DEFAULTS})
    assert refused.status_code == 422
    assert "need HTTP/2" in refused.context["form"].errors["http2"][0]
    listener.refresh_from_db()
    assert listener.http2 is True


def test_change_server_group_to_grpc_checks_the_listener(
    admin_client: Client, instance, server_group, grpc_group
):
    listener = https_listener(admin_client, instance, server_group, http2=True, compression="gzip")
    refused = admin_client.post(
        url("listener-server-group", listener), {"server_group": grpc_group.id}
    )
    assert refused.status_code == 422
    assert "compresses its own messages" in refused.content.decode()
    Listener.objects.filter(pk=listener.pk).update(compression="off")
    admin_client.post(url("listener-server-group", listener), {"server_group": grpc_group.id})
    listener.refresh_from_db()
    assert listener.server_group == grpc_group


def test_grpc_listener_has_no_forwarding_rules(admin_client: Client, instance, grpc_group):
    listener = https_listener(admin_client, instance, grpc_group, http2=True)
    page = admin_client.get(listener.get_absolute_url())
    assert b"Forwarding Rules" not in page.content
    assert b"gRPC server group" in page.content
    refused = admin_client.post(
        url("listener-rule-create", listener),
        {"path": "/x", "path_match": "prefix", "action": "fixed_response", "body": "x"},
    )
    assert refused.status_code == 422


def test_snapshot_carries_http2_grpc_and_both_timeouts(admin_client: Client, instance, grpc_group):
    https_listener(
        admin_client, instance, grpc_group, http2=True, request_timeout=20, response_timeout=45
    )
    snapshot = build_snapshot(instance)
    (listener,) = snapshot.listeners
    assert (listener.http2, listener.request_timeout, listener.response_timeout) == (
        True,
        20,
        45,
    )
    assert snapshot.server_group(listener.server_group_id).backend_protocol == "grpc"
    snapshot.validate()
