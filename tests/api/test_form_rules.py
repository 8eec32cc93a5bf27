"""Every rule the console's forms apply holds through the API with the same message: port
uniqueness, the quota, protocol and port fixed after creation, the refusal while Configuring,
field ranges and certificate validation."""

from __future__ import annotations

import html

import pytest
from django import forms

from certificates import validation
from console.api.listeners import ListenerSettings
from console.models import Instance
from listeners import services
from listeners.forms.listener import ListenerSettingsForm
from listeners.models import Listener
from tests.factories.certs import (
    garbage_in_armour,
    make_ca,
    make_server_cert,
    private_key,
    private_key_pem,
)
from tests.fixtures.listeners import make_listener

pytestmark = pytest.mark.django_db


def settled(listener: Listener) -> Listener:
    """As after every node applied it: Running, edits allowed."""
    Listener.objects.filter(pk=listener.pk).update(status="running", configuring_since=None)
    return Listener.objects.get(pk=listener.pk)


def page_says(response, message: str) -> bool:
    return html.escape(message) in response.content.decode()


def create_body(server_group, **fields):
    return {"protocol": "http", "port": 80, "server_group": server_group.id, **fields}


def test_a_second_listener_on_the_same_port_gets_the_forms_message_on_port(
    api, admin_client, instance, server_group
):
    path = f"/api/v1/instances/{instance.id}/listeners"
    assert api.send("post", path, create_body(server_group)).status_code == 201

    refused = api.send("post", path, create_body(server_group))
    page = admin_client.post(
        f"/instances/{instance.id}/listeners/quick-create/",
        {"protocol": "http", "port": 80, "server_group": server_group.id},
    )

    assert refused.status_code == 422
    problem = refused.json()
    assert problem["errors"][0]["field"] == "port"
    assert "Port 80 is already used" in problem["detail"]
    assert page.status_code == 422
    assert page_says(page, problem["detail"])
    assert instance.listeners.count() == 1


def test_the_quota_refuses_with_the_forms_message(api, admin_client, server_group):
    instance = Instance.objects.create(name="small", listener_quota=1)
    make_listener(instance, server_group, port=81)

    refused = api.send(
        "post", f"/api/v1/instances/{instance.id}/listeners", create_body(server_group)
    )
    page = admin_client.post(
        f"/instances/{instance.id}/listeners/quick-create/",
        {"protocol": "http", "port": 80, "server_group": server_group.id},
    )

    assert refused.status_code == 422
    assert "quota of 1" in refused.json()["detail"]
    assert page_says(page, refused.json()["detail"])
    assert instance.listeners.count() == 1


@pytest.mark.parametrize("field, value", [("protocol", "tcp"), ("port", 81)])
def test_protocol_and_port_cannot_change(field, value, api, instance, server_group):
    listener = settled(make_listener(instance, server_group, port=80))

    refused = api.send(
        "patch", f"/api/v1/instances/{instance.id}/listeners/{listener.id}", {field: value}
    )

    assert refused.status_code == 422
    assert refused.json()["errors"] == [{"field": field, "message": f"Unknown field {field}."}]
    assert getattr(Listener.objects.get(pk=listener.pk), field) == getattr(listener, field)


@pytest.mark.parametrize(
    "method, action, body, page_action",
    [
        ("patch", "", {"idle_timeout": 30}, "modify"),
        ("post", "/start", None, "start"),
        ("post", "/stop", None, "stop"),
        ("delete", "", None, "delete"),
        ("put", "/server-group", "GROUP", "server-group"),
        (
            "post",
            "/rules",
            {"path": "/api/", "action": "fixed_response", "status_code": 200},
            "rules/add",
        ),
    ],
)
def test_a_configuring_listener_refuses_changes_with_the_pages_message(
    method, action, body, page_action, api, admin_client, instance, server_group
):
    listener = make_listener(instance, server_group, port=80, status="configuring")
    Listener.objects.filter(pk=listener.pk).update(configuring_since=listener.created_at)
    generation = Instance.objects.get(pk=instance.pk).generation
    if body == "GROUP":
        body = {"server_group": server_group.id}

    refused = api.send(
        method, f"/api/v1/instances/{instance.id}/listeners/{listener.id}{action}", body
    )
    page = admin_client.post(
        f"/instances/{instance.id}/listeners/{listener.id}/{page_action}/", HTTP_HX_REQUEST="true"
    )

    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert detail.startswith(f"Listener {listener.name} is Configuring;")
    assert page.status_code == 409
    assert page_says(page, detail)
    assert Instance.objects.get(pk=instance.pk).generation == generation
    assert Listener.objects.filter(pk=listener.pk).exists()


def test_modify_answers_at_once_configuring_with_the_new_generation(api, instance, server_group):
    listener = settled(make_listener(instance, server_group, port=80))
    before = Instance.objects.get(pk=instance.pk).generation

    response = api.send(
        "patch",
        f"/api/v1/instances/{instance.id}/listeners/{listener.id}",
        {"idle_timeout": 30, "tags": [{"key": "env", "value": "prod"}]},
    )

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "configuring"
    assert body["generation"] == before + 1
    assert body["settings"]["idle_timeout"] == 30
    assert body["tags"] == [{"key": "env", "value": "prod"}]
    assert api.get(f"/api/v1/instances/{instance.id}/listeners?tag=env=prod").json()[0]["id"] == (
        listener.id
    )


def test_a_value_out_of_range_gets_the_modify_dialogs_message(
    api, admin_client, instance, server_group
):
    listener = settled(make_listener(instance, server_group, port=80))

    refused = api.send(
        "patch", f"/api/v1/instances/{instance.id}/listeners/{listener.id}", {"idle_timeout": 0}
    )
    page = admin_client.post(
        f"/instances/{instance.id}/listeners/{listener.id}/modify/",
        {"name": listener.name, "scheduler": "weighted_round_robin", "idle_timeout": 0},
    )

    assert refused.status_code == 422
    error = refused.json()["errors"][0]
    assert error["field"] == "idle_timeout"
    assert page_says(page, error["message"])


def test_a_certificate_upload_gets_the_upload_dialogs_per_field_messages(api, admin_client):
    server = make_server_cert()
    cases = [
        ({"certificate": garbage_in_armour(), "private_key": server.key_pem}, "certificate"),
        (
            {
                "certificate": server.cert_pem,
                "private_key": private_key_pem(private_key("ec-p256", slot="other")),
            },
            "private_key",
        ),
        ({"certificate": server.cert_pem, "private_key": ""}, "private_key"),
    ]
    for fields, field in cases:
        refused = api.send(
            "post", "/api/v1/certificates", {"name": "web", "kind": "server", **fields}
        )
        page = admin_client.post("/certificates/upload/server/", {"name": "web", **fields})

        assert refused.status_code == 422, fields
        error = refused.json()["errors"][0]
        assert error["field"] == field
        assert page_says(page, error["message"])


def test_a_certificate_upload_stores_the_key_and_never_returns_it(api):
    server = make_server_cert()

    created = api.send(
        "post",
        "/api/v1/certificates",
        {
            "name": "web",
            "kind": "server",
            "certificate": server.cert_pem,
            "private_key": server.key_pem,
        },
    )

    assert created.status_code == 201
    assert "PRIVATE KEY" not in created.content.decode()
    assert created.json()["fingerprint_sha256"] == server.fingerprint_sha256


def test_a_ca_certificate_has_no_private_key_field(api):
    refused = api.send(
        "post",
        "/api/v1/certificates",
        {"name": "ca", "kind": "ca", "certificate": make_ca().cert_pem, "private_key": "x"},
    )

    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "private_key"


def test_a_resource_in_use_cannot_be_deleted(api, instance, server_group):
    listener = make_listener(instance, server_group, port=80)

    refused = api.delete(f"/api/v1/server-groups/{server_group.id}")

    assert refused.status_code == 409
    assert refused.json()["errors"][0]["message"] == (
        f"Used by listener {listener.name} ({listener.id})."
    )


def test_the_same_client_token_returns_the_first_listener(api, instance, server_group):
    path = f"/api/v1/instances/{instance.id}/listeners"
    body = create_body(server_group, client_token="deploy-42")

    first = api.send("post", path, body)
    retried = api.send("post", path, body)
    other = api.send("post", path, {**body, "port": 81})

    assert first.status_code == retried.status_code == 201
    assert retried.json()["id"] == first.json()["id"]
    assert instance.listeners.count() == 1
    assert other.status_code == 409
    assert other.json()["errors"][0]["field"] == "client_token"


def bounded_fields(listener: Listener) -> list[tuple[str, int, int, str]]:
    """Every number of Modify Listener with a range, as the form the page and the API use
    states it: (field, low, high, message)."""
    form = ListenerSettingsForm(
        instance=listener.instance, protocol=listener.protocol, listener=listener
    )
    return [
        (name, field.min_value, field.max_value, field.error_messages["max_value"])
        for name, field in form.fields.items()
        if isinstance(field, forms.IntegerField)
        and field.min_value is not None
        and field.max_value is not None
        and name in ListenerSettings.model_fields
    ]


@pytest.mark.parametrize("protocol", ["http", "https", "tcp", "udp"])
def test_every_range_of_modify_listener_gets_its_message_on_its_field(
    api, instance, server_group, protocol
):
    fields: dict = {"protocol": protocol}
    if protocol == "https":
        material = make_server_cert()
        checked = validation.validate_server_certificate(material.cert_pem, material.key_pem)
        fields["default_certificate"] = services.upload_certificate(
            name="www", kind="server", validated=checked
        )
    if protocol in ("tcp", "udp"):
        server_group.backend_protocol = protocol
        server_group.save()
    listener = settled(make_listener(instance, server_group, port=80, **fields))
    path = f"/api/v1/instances/{instance.id}/listeners/{listener.id}"
    ranges = bounded_fields(listener)
    assert len(ranges) >= 3

    for name, low, high, message in ranges:
        for value in (low - 1, high + 1):
            refused = api.send("patch", path, {name: value})

            assert refused.status_code == 422, (name, value, refused.content)
            assert {"field": name, "message": message % {"limit_value": high}} in refused.json()[
                "errors"
            ], (name, value)
    assert Listener.objects.get(pk=listener.pk).status == "running"  # nothing was changed
