"""QUIC listeners take the Layer-7 options in the console (seed 003: HTTP, HTTPS and QUIC are the
Layer-7 listeners): Data Compression, cookie Session Persistence, the managed headers and
Forwarding Rules, from the wizard, the Modify dialog, the rules dialog and the API alike, and the
snapshot carries them to the nodes. Retrieve Client IP stays refused ("This setting is not
supported for QUIC listeners"), next to its field. Traffic through them is tested in
tests/integration/test_quic_layer7_traffic.py."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from console import tokens
from console.models import Instance
from console.snapshot import build_snapshot
from dataplane import config as dp
from listeners.models import ForwardingRule, Listener, ServerGroup
from tests.api.conftest import TokenClient
from tests.api.test_form_rules import settled
from tests.fixtures.listeners import make_listener
from tests.listeners.test_wizard import (
    ADVANCED_DEFAULTS,
    post_step,
    servers_data,
    step_url,
    upload_server_cert,
)

pytestmark = pytest.mark.django_db

NOT_FOR_QUIC = "This setting is not supported for QUIC listeners."
QUIC_STEP1 = {**ADVANCED_DEFAULTS, "protocol": "quic", "port": "443", "name": "edge-h3"}


def node_accepts(instance: Instance) -> dp.Snapshot:
    """The snapshot as a node decodes and validates it from the wire."""
    return dp.Snapshot.from_json(build_snapshot(instance).to_json())


def snapshot_listener(snapshot: dp.Snapshot, listener: Listener) -> dp.Listener:
    found = snapshot.listener(listener.id)
    assert found is not None
    return found


@pytest.fixture
def quic(admin_client: Client, instance: Instance, server_group: ServerGroup) -> Listener:
    certificate = upload_server_cert(admin_client)
    return make_listener(
        instance,
        server_group,
        protocol="quic",
        port=443,
        default_certificate=certificate,
        status="running",
    )


@pytest.fixture
def api(admin_user) -> TokenClient:
    return TokenClient(tokens.issue_token(user=admin_user, name="ci", role="admin", days=30).secret)


@pytest.fixture
def api_group(db) -> ServerGroup:
    return ServerGroup.objects.create(name="api", backend_protocol="http")


# -- the wizard --------------------------------------------------------------------------------
def test_the_quic_options_offer_compression_cookie_persistence_and_headers_not_client_ip(
    admin_client: Client, instance: Instance
) -> None:
    page = admin_client.get(
        reverse("listener-wizard-options", args=[instance.id]), {"protocol": "quic"}
    )
    text = page.content.decode()
    form = page.context["form"]
    assert page.status_code == 200
    assert [value for value, _ in form.fields["persistence"].choices] == [
        "none",
        "insert_cookie",
        "rewrite_cookie",
    ]
    for shown in ('name="persistence"', 'name="cookie_name"', 'name="compression"'):
        assert shown in text
    assert 'name="header_x_forwarded_proto"' in text and 'name="x_forwarded_for"' in text
    # Seed 003: Retrieve Client IP is not supported, HTTP/2 and QUIC Upgrade are HTTPS-only,
    # and the client certificate headers need mutual authentication, which QUIC lacks.
    for hidden in ("retrieve_client_ip", "trusted_proxies", "http2", "quic_listener"):
        assert f'name="{hidden}"' not in text
    assert 'name="header_clientcert_subjectdn"' not in text


def test_the_wizard_saves_a_quic_listener_with_compression_and_insert_cookie(
    admin_client: Client, instance: Instance
) -> None:
    certificate = upload_server_cert(admin_client)
    step1 = {
        **QUIC_STEP1,
        "persistence": "insert_cookie",
        "persistence_timeout": "600",
        "compression": "gzip",
        "header_x_forwarded_proto": "on",
        "header_slb_id": "on",
    }
    assert post_step(admin_client, instance, "protocol", step1).status_code == 302
    post_step(admin_client, instance, "certificate", {"default_certificate": certificate.id})
    response = post_step(
        admin_client,
        instance,
        "servergroup",
        {"group_mode": "new", "new_group_name": "h3-pool", "new_backend_protocol": "http"}
        | servers_data([("127.0.0.1", 8081, 100)]),
    )
    assert response["Location"] == step_url(instance, "healthcheck")
    confirm = admin_client.get(step_url(instance, "confirm"))
    assert confirm.status_code == 200, confirm.get("Location")
    review = confirm.content.decode()
    assert "Data Compression" in review and "Insert Cookie" in review
    assert "Retrieve Client IP" not in review

    admin_client.post(step_url(instance, "confirm"), {"token": confirm.context["token"]})

    listener = Listener.objects.get(protocol="quic")
    assert (listener.compression, listener.persistence, listener.persistence_timeout) == (
        "gzip",
        "insert_cookie",
        600,
    )
    assert listener.header_x_forwarded_proto and listener.header_slb_id
    carried = snapshot_listener(node_accepts(instance), listener)
    assert carried.compression == "gzip"
    assert (carried.persistence.mode, carried.persistence.cookie_timeout) == ("insert_cookie", 600)
    assert carried.x_forwarded_proto and carried.slb_id
    assert carried.retrieve_client_ip.enabled is False


def test_retrieve_client_ip_is_refused_for_quic_next_to_its_field(
    admin_client: Client, instance: Instance
) -> None:
    step1 = {**QUIC_STEP1, "retrieve_client_ip": "on", "trusted_proxies": "0.0.0.0/0"}
    response = post_step(admin_client, instance, "protocol", step1)
    assert response.status_code == 422
    assert response.context["form"].errors["retrieve_client_ip"] == [NOT_FOR_QUIC]
    # Even with a hostile trusted list, the answer is the protocol's, not a parse error.
    hostile = {**step1, "trusted_proxies": "not-an-ip;" * 500}
    response = post_step(admin_client, instance, "protocol", hostile)
    assert response.context["form"].errors["retrieve_client_ip"] == [NOT_FOR_QUIC]
    assert "trusted_proxies" not in response.context["form"].errors


@pytest.mark.parametrize(
    "field, value",
    [
        ("persistence", "source_ip"),  # TCP and TCP SSL only
        ("persistence", "insert_cookie; Path=/"),
        ("compression", "zstd"),
        ("compression", "gzip" * 1000),
    ],
)
def test_options_quic_does_not_have_are_refused_on_their_field(
    admin_client: Client, instance: Instance, field: str, value: str
) -> None:
    response = post_step(admin_client, instance, "protocol", {**QUIC_STEP1, field: value})
    assert response.status_code == 422
    assert field in response.context["form"].errors


def test_rewrite_cookie_on_quic_needs_a_cookie_name_without_separators(
    admin_client: Client, instance: Instance
) -> None:
    base = {**QUIC_STEP1, "persistence": "rewrite_cookie"}
    missing = post_step(admin_client, instance, "protocol", base)
    assert missing.context["form"].errors["cookie_name"] == [
        "Rewrite Cookie needs the name of the cookie."
    ]
    bad = post_step(admin_client, instance, "protocol", {**base, "cookie_name": "sid; Path=/"})
    assert bad.context["form"].errors["cookie_name"] == [
        "A cookie name may not contain spaces, ; , or =."
    ]
    ok = post_step(admin_client, instance, "protocol", {**base, "cookie_name": "sid"})
    assert ok.status_code == 302


# -- Modify Listener and the details page ------------------------------------------------------
def test_modify_listener_sets_rewrite_cookie_and_brotli_on_quic(
    admin_client: Client, instance: Instance, quic: Listener
) -> None:
    dialog = admin_client.get(reverse("listener-modify", args=[instance.id, quic.id]))
    assert 'name="compression"' in dialog.content.decode()
    assert 'name="retrieve_client_ip"' not in dialog.content.decode()
    response = admin_client.post(
        reverse("listener-modify", args=[instance.id, quic.id]),
        {
            **ADVANCED_DEFAULTS,
            "name": "edge-h3",
            "persistence": "rewrite_cookie",
            "cookie_name": "JSESSIONID",
            "compression": "brotli_gzip",
            "x_forwarded_for": "remove",
        },
    )
    assert response.status_code == 302, response.context["form"].errors
    quic.refresh_from_db()
    assert (quic.persistence, quic.cookie_name, quic.compression, quic.x_forwarded_for) == (
        "rewrite_cookie",
        "JSESSIONID",
        "brotli_gzip",
        "remove",
    )
    settled(quic)
    details = admin_client.get(quic.get_absolute_url()).content.decode()
    assert "Rewrite Cookie" in details and "(cookie JSESSIONID)" in details
    assert "Data Compression" in details and "Forwarding Rules" in details
    assert "Retrieve Client IP" not in details
    carried = snapshot_listener(node_accepts(instance), quic)
    assert (carried.persistence.mode, carried.persistence.cookie_name) == (
        "rewrite_cookie",
        "JSESSIONID",
    )
    assert (carried.compression, carried.x_forwarded_for) == ("brotli_gzip", "remove")


def test_modify_refuses_retrieve_client_ip_on_quic(
    admin_client: Client, instance: Instance, quic: Listener
) -> None:
    response = admin_client.post(
        reverse("listener-modify", args=[instance.id, quic.id]),
        {**ADVANCED_DEFAULTS, "retrieve_client_ip": "on", "trusted_proxies": "10.0.0.1"},
    )
    assert response.status_code == 422
    assert response.context["form"].errors["retrieve_client_ip"] == [NOT_FOR_QUIC]
    quic.refresh_from_db()
    assert quic.retrieve_client_ip is False


# -- Forwarding Rules --------------------------------------------------------------------------
def test_forwarding_rules_on_a_quic_listener_from_the_rules_dialog(
    admin_client: Client, instance: Instance, quic: Listener, api_group: ServerGroup
) -> None:
    add = reverse("listener-rule-create", args=[instance.id, quic.id])
    assert admin_client.get(add).status_code == 200
    response = admin_client.post(
        add,
        {"path": "/api", "path_match": "prefix", "action": "forward", "server_group": api_group.id},
    )
    assert response.status_code == 302, response.context["form"].errors
    settled(quic)
    # Keep the protocol and change nothing else: the client would come straight back.
    loop = admin_client.post(
        add, {"path": "/old", "path_match": "prefix", "action": "redirect", "status_code": "301"}
    )
    assert loop.status_code == 422
    assert loop.context["form"].non_field_errors()
    moved = admin_client.post(
        add,
        {
            "path": "/old",
            "path_match": "prefix",
            "action": "redirect",
            "status_code": "301",
            "redirect_path": "/new",
        },
    )
    assert moved.status_code == 302, moved.context["form"].errors
    settled(quic)
    details = admin_client.get(quic.get_absolute_url()).content.decode()
    assert "Add Rule" in details and api_group.name in details

    carried = snapshot_listener(node_accepts(instance), quic)
    assert [rule.action.type for rule in carried.forwarding_rules] == ["forward", "redirect"]
    assert carried.forwarding_rules[0].action.server_group_id == api_group.id
    snapshot = build_snapshot(instance)
    assert api_group.id in {group.id for group in snapshot.server_groups}


def test_forwarding_rules_on_a_quic_listener_through_the_api(
    api: TokenClient, instance: Instance, quic: Listener, api_group: ServerGroup
) -> None:
    path = f"/api/v1/instances/{instance.id}/listeners/{quic.id}/rules"
    forward = api.send(
        "post", path, {"path": "/api", "action": "forward", "server_group": api_group.id}
    )
    settled(quic)
    fixed = api.send(
        "post",
        path,
        {"path": "/health", "action": "fixed_response", "status_code": 200, "body": "ok"},
    )
    settled(quic)
    empty = api.send("post", path, {"action": "forward", "server_group": api_group.id})

    assert forward.status_code == fixed.status_code == 201, forward.json()
    assert empty.status_code == 422
    assert empty.json()["detail"] == "Add at least one condition."
    carried = snapshot_listener(node_accepts(instance), quic)
    assert [rule.action.type for rule in carried.forwarding_rules] == [
        "forward",
        "fixed_response",
    ]
    assert carried.forwarding_rules[1].action.body == "ok"


def test_tcp_listeners_still_have_no_forwarding_rules(
    api: TokenClient, admin_client: Client, instance: Instance
) -> None:
    group = ServerGroup.objects.create(name="tcp-pool", backend_protocol="tcp")
    tcp = settled(make_listener(instance, group, protocol="tcp", port=9000))
    page = admin_client.get(reverse("listener-rule-create", args=[instance.id, tcp.id]))
    refused = api.send(
        "post",
        f"/api/v1/instances/{instance.id}/listeners/{tcp.id}/rules",
        {"path": "/api", "action": "fixed_response", "status_code": 200},
    )
    assert page.status_code == 404
    assert refused.status_code == 422
    assert refused.json()["detail"] == (
        "A TCP listener has no forwarding rules: they are for HTTP, HTTPS and QUIC listeners."
    )
    assert not ForwardingRule.objects.exists()


# -- the API -----------------------------------------------------------------------------------
def test_api_creates_a_quic_listener_with_layer7_options_and_refuses_client_ip(
    api: TokenClient, admin_client: Client, instance: Instance, server_group: ServerGroup
) -> None:
    certificate = upload_server_cert(admin_client)
    path = f"/api/v1/instances/{instance.id}/listeners"
    body = {
        "protocol": "quic",
        "port": 443,
        "server_group": server_group.id,
        "default_certificate": certificate.id,
        "persistence": "insert_cookie",
        "persistence_timeout": 300,
        "compression": "brotli_gzip",
        "header_x_forwarded_proto": True,
    }
    refused = api.send(
        "post", path, {**body, "retrieve_client_ip": True, "trusted_proxies": "::/0"}
    )
    assert refused.status_code == 422
    assert {"field": "retrieve_client_ip", "message": NOT_FOR_QUIC} in refused.json()["errors"]
    source_ip = api.send("post", path, {**body, "persistence": "source_ip"})
    assert source_ip.status_code == 422
    assert [e["field"] for e in source_ip.json()["errors"]] == ["persistence"]
    assert not Listener.objects.exists()

    created = api.send("post", path, body)
    assert created.status_code == 201, created.json()
    settings = created.json()["settings"]
    assert (settings["persistence"], settings["persistence_timeout"]) == ("insert_cookie", 300)
    assert settings["compression"] == "brotli_gzip"
    assert settings["retrieve_client_ip"] is False

    listener = settled(Listener.objects.get())
    patched = api.send(
        "patch",
        f"{path}/{listener.id}",
        {"retrieve_client_ip": True, "trusted_proxies": "10.0.0.1"},
    )
    assert patched.status_code == 422
    assert patched.json()["errors"] == [{"field": "retrieve_client_ip", "message": NOT_FOR_QUIC}]
    carried = snapshot_listener(node_accepts(instance), listener)
    assert (carried.compression, carried.persistence.mode) == ("brotli_gzip", "insert_cookie")
